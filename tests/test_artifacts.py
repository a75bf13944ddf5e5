"""The bundled probed models: they load by name, carry manifests, and reach their targets."""

import json

import torch

import pytest
from cli_runner import invoke

from inversionview.artifacts import list_artifacts
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
    """The README's run command: `inversionview query` on the bundled counting model and its
    bundled decoder, at the task's default query."""
    result = invoke(["query", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["task"] == "counting" and record["site"] == "a1.0" and record["position_label"] == ":"
    assert record["decoder"].endswith("decoder-counting")
    assert record["stats"]["candidates"] == 1024 and record["stats"]["in_epsilon"] > 0
    # the reading the paper made at a1.0 ':': the count agrees with the query inside the ball
    count = next(row for row in record["attribute_agreement"] if row["attribute"] == "count")
    assert count["inside"] > 0.9 and count["contrast"] > 0.5
    human = invoke(["query"])
    assert human.exit_code == 0 and "attribute agreement" in human.stdout


@pytest.mark.parametrize("task,floor", [("counting", 0.4), ("addition", 0.55)])
def test_shipped_decoder_is_found_and_reads_the_embedding(task, floor):
    """The bundled decoders for the authors' models: found by the weights' hash, load from
    fp16, and their samples read the attention heads of layer 0 or the embedding."""
    from tests.conftest import authors_model_dir
    from inversionview.decoder.evaluate import held_out_queries, in_epsilon_rates
    from inversionview.decoder.store import find_decoder, load_decoder
    from inversionview.probed import load_probed

    model = load_probed(authors_model_dir(task), task)
    directory = find_decoder(model)
    assert directory is not None and directory.name == f"decoder-{task}-authors"
    decoder, manifest = load_decoder(directory, model)
    assert manifest["weights_dtype"] == "float16" and manifest["in_epsilon_mean"] > floor
    queries = held_out_queries(model, 2, seed=123)
    quality = in_epsilon_rates(decoder, model, queries, 8, 0.1, torch.Generator().manual_seed(0))
    easy = "x0.pre" if task == "counting" else "a0.3"
    assert quality["in_epsilon"][easy] > 0.7 and quality["well_formed"] > 0.9


@pytest.mark.parametrize("source", ["authors", "bundled"])
@pytest.mark.parametrize("task", ["counting", "addition"])
def test_query_works_for_every_site_and_named_position(task, source):
    """The issue's bar: `query` works for every site and named position of both tasks on the
    bundled and the authors' models, with the decoder found by the weights' hash."""
    from tests.conftest import authors_model_dir
    from inversionview.decoder.store import find_decoder, load_decoder
    from inversionview.preimage.query import QueryConfig, run_query
    from inversionview.probed import load_probed

    model = load_probed(authors_model_dir(task), task) if source == "authors" else load_probed(task)
    decoder, _ = load_decoder(find_decoder(model), model)
    text = model.task.example
    config = QueryConfig(candidates=32)
    total_inside = 0
    for site in model.task.sites:
        for position in model.task.named_positions(text):
            result = run_query(model, decoder, text, site, position, config, seed=0)
            assert result.site == site and result.position_label == position
            assert result.stats.candidates == 32
            # every draw is either a sample shown or the query's own cut prefix, set apart
            assert result.samples or result.stats.query_context == 32
            total_inside += result.stats.in_epsilon
    # a trained decoder's samples other than the query itself land inside the ball for a good
    # share of the queries
    queries = len(model.task.sites) * len(model.task.named_positions(text))
    assert total_inside / (32 * queries) > 0.2


def test_shipped_manifests_hold_no_absolute_paths():
    """A manifest says where its model came from portably (a bundled name or a relative
    path), not as a path on the machine that trained it."""
    from inversionview.artifacts import list_artifacts

    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    for name, (_, manifest) in list_artifacts().items():
        absolute = [s for s in strings(manifest) if s.startswith("/") or "/work/" in s]
        assert not absolute, f"{name}: {absolute}"


def test_the_case_study_models_reach_their_targets():
    """The bundled IOI and factual models, as shipped (fp16): held-out IOI top-1 >= 0.95 with
    a mean logit difference >= 3, and factual top-1 >= 0.8 on the held-out templates, the
    figure the manifest records."""
    from inversionview.factual.evaluate import evaluate_factual
    from inversionview.ioi.circuit import evaluate_ioi

    ioi = load_probed("lm-ioi")
    assert ioi.task.name == "ioi" and ioi.weights_hash() == list_artifacts()["lm-ioi"][1]["weights_sha256"]
    held_out = evaluate_ioi(ioi, 300, seed=5, split="eval")
    assert held_out["top1_accuracy"] >= 0.95 and held_out["logit_difference"] >= 3
    factual = load_probed("lm-factual")
    manifest = list_artifacts()["lm-factual"][1]
    report = evaluate_factual(factual, "eval")
    assert report["top1_accuracy"] >= 0.8
    assert report["top1_accuracy"] == pytest.approx(
        manifest["factual_accuracy"]["eval"]["top1_accuracy"], abs=1e-6)
