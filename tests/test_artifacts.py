"""The bundled probed models: they load by name, carry manifests, and reach their targets."""

import json

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
