"""`query` and `completeness` end to end on tiny models and decoders saved in the test."""

import json
import re
import time

import pytest
from cli_runner import invoke

from inversionview.decoder.store import save_decoder
from inversionview.decoder.train import build_decoder
from inversionview.probed import build_probed

TINY_DECODER = dict(d_model=32, n_heads=2, d_mlp=64, n_condition_blocks=2)


@pytest.fixture(scope="module", params=["counting", "addition"])
def saved(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model = build_probed(request.param, seed=2, n_embd=16, n_head=4 if request.param == "addition" else 1,
                         n_inner=32)
    model.save(root / "model")
    save_decoder(build_decoder(model, seed=4, **TINY_DECODER), model, root / "decoder", {"seed": 4})
    return request.param, root


SAMPLE_KEYS = {"text", "tokens", "distance", "best_position", "best_position_label", "in_epsilon",
               "valid", "correct", "reason", "attributes", "multiplicity", "delta_p",
               "position_distances", "log_probability", "found_by", "continuations", "ids"}
TOP_KEYS = {"site", "hook", "position", "position_label", "metric", "epsilon", "query", "stats",
            "samples", "attribute_agreement", "histogram", "schedule", "seed", "model", "decoder",
            "task", "fixed_position", "all_samples", "verification", "completeness", "constrained",
            "noise_cosine", "banned_tokens", "query_context", "epsilon_profile", "token_reading"}


def test_query_json_schema(saved):
    task, root = saved
    args = ["query", str(root / "model"), "--decoder", str(root / "decoder"), "--candidates", "64",
            "--seed", "3", "--json"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert set(record) == TOP_KEYS
    completeness = record["completeness"]  # how much of the preimage the query has seen
    assert completeness["found"] == completeness["found_by_decoder"] + completeness["found_by_search"]
    assert completeness["found"] >= record["stats"]["in_epsilon_distinct"] > 0 or completeness["found"] > 0
    assert completeness["search"]["evaluations"] <= completeness["search"]["budget"]
    assert record["site"] == {"counting": "a1.0", "addition": "x0.mid"}[task]  # the task's default
    assert record["position_label"] == {"counting": ":", "addition": "="}[task]
    assert {"text", "tokens", "attributes", "valid", "reason"} <= set(record["query"])
    assert {"candidates", "distinct", "in_epsilon", "in_epsilon_rate", "in_epsilon_distinct",
            "seconds"} <= set(record["stats"])
    assert record["stats"]["candidates"] == 64 and record["samples"]
    for sample in record["samples"]:
        assert set(sample) == SAMPLE_KEYS
        assert len(sample["position_distances"]) == len(sample["tokens"])
    again = json.loads(invoke(args).stdout)
    assert [s["text"] for s in again["samples"]] == [s["text"] for s in record["samples"]]
    # drawn within the task's grammar by default: every decoder draw is an input of the task
    assert record["constrained"] and record["stats"]["valid_rate"] == 1.0
    free = json.loads(invoke([*args, "--free", "--search", "0"]).stdout)
    assert not free["constrained"]
    assert all(s["found_by"] == "decoder" for s in free["samples"])


def test_query_human_view_and_html(saved, tmp_path):
    task, root = saved
    page = tmp_path / "view.html"
    result = invoke(["query", str(root / "model"), "--decoder", str(root / "decoder"),
                                 "--candidates", "64", "--position", "1", "--site", "x0.pre",
                                 "--temperature", "1.5", "--noise", "0.2", "--all",
                                 "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "query" in result.stdout and "ε = 0.1" in result.stdout
    label = {"counting": "(1)", "addition": "(F1)"}[task]  # position 1, named where it has a name
    assert "attribute agreement" in result.stdout and label in result.stdout
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "attribute agreement" in text.lower()
    assert not re.search(r"(https?:)?//[a-z0-9]", text.replace("</", "<")), "external reference"
    assert "<script src" not in text and "<link" not in text
    embedded = json.loads(re.search(r"<script type='application/json' id='result'>\n(.*)\n</script>",
                                    text).group(1))
    assert embedded["schedule"] == [{"temperature": 1.5, "noise": 0.2, "candidates": 64}]


@pytest.mark.parametrize("args,message", [
    (["--site", "x9.pre"], "valid sites"),
    (["--position", "nowhere"], "unknown position"),
    (["--input", "B12#"], "not in the"),
    (["--metric", "manhattan"], "euclidean"),
    (["--candidates", "0"], "from 1 to"),
])
def test_query_errors_exit_2(saved, args, message):
    _, root = saved
    result = invoke(["query", str(root / "model"), "--decoder", str(root / "decoder"),
                                 "--candidates", "64"] + args)
    assert result.exit_code == 2 and message in result.output


def test_query_without_a_decoder_says_how_to_get_one(saved):
    _, root = saved
    result = invoke(["query", str(root / "model")])
    assert result.exit_code == 2 and "train-decoder" in result.output


def test_completeness_end_to_end_on_addition(saved, tmp_path):
    task, root = saved
    args = ["completeness", str(root / "model"), "--decoder", str(root / "decoder"), "--site",
            "x0.pre", "--position", "F1", "--candidates", "64", "--epsilon", "0.3", "--json"]
    if task == "counting":
        result = invoke(args)
        assert result.exit_code == 2 and "too large to enumerate" in result.output
        return
    plot = tmp_path / "scatter.png"
    started = time.perf_counter()
    result = invoke(args + ["--plot", str(plot)])
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    # the time reported is the command's whole work (loading, scoring 810,000 inputs, the
    # plot), not the sampler's share of it
    assert record["seconds"] >= 0.8 * elapsed
    assert {"true_in_epsilon", "found_in_epsilon", "recall", "precision"} <= set(record)
    assert record["universe"] == 810_000
    # x0.pre at F1 is the embedding of the hundreds digit 6 at position 1: 90,000 inputs
    # share it exactly, and only they lie within ε of it
    assert record["true_in_epsilon"] >= 90_000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the task's default search ran; what it reports inside ε is inside, by the exact scores
    assert record["search"]["budget"] == 16_384 and record["reported_outside"] == 0
    assert record["found_in_epsilon"] == record["found_by_decoder"] + record["found_by_search"]
    alone = invoke(args + ["--search", "0", "--position", "="])
    assert alone.exit_code == 0, alone.output
    alone = json.loads(alone.stdout)
    assert alone["search"] is None and alone["found_by_search"] == 0
    assert alone["found_in_epsilon"] == alone["found_by_decoder"]


@pytest.mark.parametrize("args, message", [
    (["--noise-cosine", "0.9:0.5"], "is empty"),
    (["--noise-cosine", "abc"], "takes LOW or LOW:HIGH"),
    (["--noise-cosine", "1.5"], "each cosine must be"),
    (["--noise-cosine", "0.8", "--noise", "0.1"], "not both"),
    (["--ban-corpus", "x.txt"], "needs --ban-rare"),
    (["--ban-rare", "3"], "for language models"),
    (["--ban-rare", "0", "--ban-corpus", "x.txt"], "--ban-rare"),
])
def test_query_noise_and_ban_options_are_checked(saved, args, message):
    task, root = saved
    result = invoke(["query", str(root / "model"), "--decoder", str(root / "decoder"),
                     "--candidates", "8", *args])
    assert result.exit_code == 2 and message in result.stderr, result.output


def test_query_with_cosine_noise_on_a_toy_task(saved, tmp_path):
    task, root = saved
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("x\n")
    args = ["query", str(root / "model"), "--decoder", str(root / "decoder"), "--candidates",
            "32", "--search", "0", "--json"]
    record = json.loads(invoke([*args, "--noise-cosine", "0.8:0.9"]).stdout)
    assert record["noise_cosine"] == [0.8, 0.9] and record["completeness"]["estimate_draws"] == 0
    banned = invoke([*args, "--ban-rare", "2", "--ban-corpus", str(corpus)])
    assert banned.exit_code == 2 and "for language models" in banned.stderr
