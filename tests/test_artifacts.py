"""The bundled probed models: they load by name, carry manifests, and reach their targets."""

import json

import torch

import pytest
from typer.testing import CliRunner

from inversionview.artifacts import list_artifacts
from inversionview.cli import app
from inversionview.probed import load_probed
from inversionview.probed.evaluate import accuracy

TARGETS = {"counting": 0.99, "addition": 0.97}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_bundled_model_manifest_and_accuracy(name):
    directory, manifest = list_artifacts()[name]
    for key in ("command", "seed", "commit", "wall_seconds", "accuracy", "task", "weights_sha256"):
        assert key in manifest, key
    assert manifest["task"] == name and manifest["accuracy"] >= TARGETS[name]
    model = load_probed(name)
    assert model.weights_hash() == manifest["weights_sha256"]
    assert accuracy(model, n=2000, seed=99) >= TARGETS[name]
    assert (directory / "metrics.jsonl").exists()


def test_main_job_runs_on_the_bundled_default():
    result = CliRunner().invoke(app, ["inspect", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["task"] == "counting"
    assert all(p["predicted"] == p["expected"] for p in record["predictions"])


def test_shipped_counting_decoder_is_found_and_reads_the_embedding():
    """The bundled decoder for the authors' counting model: found by the weights' hash, loads
    from fp16, and its samples for x0.pre at ':' put ':' where the query has it."""
    from tests.conftest import authors_model_dir
    from inversionview.decoder.evaluate import held_out_queries, in_epsilon_rates
    from inversionview.decoder.store import find_decoder, load_decoder
    from inversionview.probed import load_probed

    model = load_probed(authors_model_dir("counting"), "counting")
    directory = find_decoder(model)
    assert directory is not None and directory.name == "decoder-counting-authors"
    decoder, manifest = load_decoder(directory, model)
    assert manifest["weights_dtype"] == "float16" and manifest["in_epsilon_mean"] > 0.4
    queries = held_out_queries(model, 4, seed=123)
    quality = in_epsilon_rates(decoder, model, queries, 8, 0.1, torch.Generator().manual_seed(0))
    assert quality["in_epsilon"]["x0.pre"] > 0.8 and quality["well_formed"] > 0.9
