"""The command line end to end on tiny models built in the test."""

import json

import pytest
from cli_runner import invoke

from inversionview.probed import build_probed



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models") / "tiny-counting"
    build_probed("counting", seed=2, n_embd=16, n_head=1, n_inner=32).save(directory)
    return directory


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_models_lists_tasks_and_kinds():
    record = _json(invoke(["models", "--json"]))
    assert set(record["tasks"]) == {"counting", "addition"}
    assert record["tasks"]["addition"]["sites"][1] == "a0.0"
    assert record["language_model_tasks"]["factual"]["positions"] == ["SUBJ", "END"]
    assert record["model_kinds"]
    human = invoke(["models"])
    assert human.exit_code == 0 and "Bundled artifacts:" in human.stdout
    # every artifact's row has its kind, task and path in the same columns (issue 31)
    rows = human.stdout.split("Bundled artifacts:\n", 1)[1].split("Tasks:", 1)[0].splitlines()
    assert len(rows) == len(record["artifacts"]) > 1
    for marker in (" probed-model ", " decoder ", "task=", "/"):
        starts = {row.index(marker.strip()) for row in rows if marker in row}
        assert len(starts) <= 1, (marker, rows)


def test_eval_probed_json(model_dir):
    record = _json(invoke(["eval-probed", str(model_dir), "--n", "300", "--seed", "1", "--json"]))
    assert set(record) == {"model", "task", "n", "accuracy"}
    assert record["task"] == "counting" and record["n"] == 300
    assert 0.0 <= record["accuracy"] <= 1.0
    again = _json(invoke(["eval-probed", str(model_dir), "--n", "300", "--seed", "1", "--json"]))
    assert again == record


def test_activation_json(model_dir):
    record = _json(invoke(["activation", str(model_dir), "--input", "Baabbc|a:2E",
                                       "--site", "blocks.0.hook_resid_mid", "--position", "query",
                                       "--json"]))
    assert set(record) == {"site", "hook", "position", "position_label", "vector", "norm"}
    assert record["site"] == "x0.mid" and record["hook"] == "blocks.0.hook_resid_mid"
    assert record["position"] == 7 and record["position_label"] == "query"
    assert len(record["vector"]) == 16
    assert abs(sum(v * v for v in record["vector"]) ** 0.5 - record["norm"]) < 1e-4


def test_inspect_json(model_dir):
    record = _json(invoke(["inspect", str(model_dir), "--input", "aabbc|a:2E", "--json"]))
    assert record["input"] == "Baabbc|a:2E"
    assert [p["expected"] for p in record["predictions"]] == ["2"]
    assert list(record["norms"]) == ["x0.pre", "a0.0", "x0.mid", "m0", "x0.post", "a1.0",
                                     "x1.mid", "m1", "x1.post"]
    assert len(record["norms"]["m1"]) == len("Baabbc|a:2E")


@pytest.mark.parametrize("args,message", [
    (["activation", "{m}", "--input", "Baab#|a:2E", "--site", "a0.0", "--position", ":"],
     "character '#' at index 4"),
    (["activation", "{m}", "--input", "Baabbc|a:2E", "--site", "a0.3", "--position", ":"],
     "valid sites: x0.pre, a0.0"),
    (["activation", "{m}", "--input", "Baabbc|a:2E", "--site", "attn0", "--position", ":"],
     "cannot parse site"),
    (["activation", "{m}", "--input", "Baabbc|a:2E", "--site", "a0.0", "--position", "F1"],
     "unknown position 'F1'"),
    (["activation", "{m}", "--input", "B" + "a" * 40, "--site", "a0.0", "--position", "1"],
     "at most 33"),
    (["eval-probed", "/nonexistent/model"], "does not exist"),
    (["eval-probed", "no-such-artifact"], "neither a bundled artifact"),
    (["train-probed", "sorting", "--out", "x", "--steps", "1"], "unknown task 'sorting'"),
    (["train-probed", "counting", "--out", "x"], "exactly one of --minutes or --steps"),
])
def test_user_errors_exit_2_with_a_message(model_dir, args, message):
    result = invoke([a.replace("{m}", str(model_dir)) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_train_probed_command(tmp_path):
    result = _json(invoke(["train-probed", "addition", "--out", str(tmp_path / "r"),
                                       "--steps", "5", "--batch-size", "16", "--d-model", "16",
                                       "--n-heads", "2", "--json"]))
    assert result["steps"] == 5 and result["task"] == "addition"
    resumed = _json(invoke(["train-probed", "addition", "--out", str(tmp_path / "r"),
                                        "--steps", "8", "--resume", "--json"]))
    assert resumed["steps"] == 8


def test_decoders_finds_the_decoder_of_a_model(model_dir, tmp_path, monkeypatch):
    from inversionview.decoder.store import save_decoder
    from inversionview.decoder.train import build_decoder
    from inversionview.probed import load_probed

    monkeypatch.setenv("INVERSIONVIEW_ARTIFACTS", str(tmp_path))
    probed = load_probed(str(model_dir))
    save_decoder(build_decoder(probed, seed=0, d_model=32, n_heads=2, d_mlp=64), probed,
                 tmp_path / "decoder-tiny", {"in_epsilon_mean": 0.5, "examples": 10})
    listing = _json(invoke(["decoders", "--json"]))
    assert listing["decoder-tiny"]["task"] == "counting"
    found = _json(invoke(["decoders", str(model_dir), "--json"]))
    assert found["decoder"] == str(tmp_path / "decoder-tiny")
    other = tmp_path / "other"
    build_probed("counting", seed=9, n_embd=16, n_head=1, n_inner=32).save(other)
    assert _json(invoke(["decoders", str(other), "--json"]))["decoder"] is None
