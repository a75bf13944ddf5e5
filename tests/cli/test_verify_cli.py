"""`patch`, `verify` and `dla` end to end on the bundled models."""

import json

import pytest
from cli_runner import invoke




def run_json(*args):
    result = invoke([*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_patch_cumulative_json_and_plot(tmp_path):
    plot = tmp_path / "patch.png"
    record = run_json("patch", "counting", "--components", "a0.0@query,a1.0@:", "--contrast",
                      "flip", "--n", "40", "--cumulative", "--plot", str(plot))
    assert record["n"] == 40 and record["target"] == "count"
    assert [s["components"] for s in record["steps"]] == [["a0.0@query"], ["a0.0@query", "a1.0@:"]]
    assert [s["components"] for s in record["steps_right_to_left"]] == [["a1.0@:"], ["a1.0@:", "a0.0@query"]]
    assert {s["order"] for s in record["steps"]} == {"left_to_right"}
    assert {s["order"] for s in record["steps_right_to_left"]} == {"right_to_left"}
    for step in record["steps"]:
        assert step["effect"] == pytest.approx(step["patched_ld"] - record["original_ld"], abs=1e-5)
    assert plot.stat().st_size > 10_000


def test_patch_addition_resample_with_filter():
    record = run_json("patch", "addition", "--components", "x0.mid@=", "--contrast", "resample:F1,S1",
                      "--target", "A2", "--filter", "A1==1", "--n", "30", "--seed", "1")
    assert record["n"] == 30 and record["filtered_out"] > 0 and record["steps_right_to_left"] is None
    assert len(record["steps"]) == 1


@pytest.mark.parametrize("args, message", [
    (["--components", "a0.0"], "SITE@POSITION"),
    (["--components", "a0.0@query", "--contrast", "resample:F1"], "unknown contrast 'resample'"),
    (["--components", "a0.0@query", "--filter", "count=3"], "ATTRIBUTE OP INTEGER"),
    (["--components", "a0.0@query", "--target", "A1"], "unknown target"),
    (["--components", "a0.0@query", "--n", "0"], "--n"),
])
def test_patch_bad_arguments(args, message):
    result = invoke(["patch", "counting", *args])
    assert result.exit_code == 2 and message in result.output


def test_verify_in_epsilon_samples_barely_change_the_output():
    record = run_json("verify", "counting", "--candidates", "256")
    assert record["inside"] and record["outside"]
    assert record["inside_mean"]["kl_max"] < record["outside_mean"]["kl_max"]


def test_dla_top_tokens_and_rates():
    record = run_json("dla", "counting", "--component", "a1.0@:", "--k", "3")
    assert len(record["promoted"]) == 3 and len(record["suppressed"]) == 3
    values = [v for _, v in record["promoted"]]
    assert values == sorted(values, reverse=True)
    rates = run_json("dla", "addition", "--component", "a1.0@=", "--n", "50", "--target", "A1")
    assert 0 <= rates["top_k_promoted_rate"] <= 1 and rates["n"] == 50
    bad = invoke(["dla", "counting", "--component", "m0@:"])
    assert bad.exit_code == 2 and "not a head" in bad.output


def test_ablate_reports_every_answer_token():
    record = run_json("ablate", "addition", "--component", "x0.post@=", "--n", "64")
    assert [r["target"] for r in record["rows"]] == ["A1", "A2", "A3", "A4"]
    assert all(r["kl"] >= 0 for r in record["rows"])
    bad = invoke(["ablate", "addition", "--component", "x0.post@Z"])
    assert bad.exit_code == 2 and "unknown position" in bad.output


def test_query_verify_adds_the_patching_check_to_the_record():
    record = run_json("query", "counting", "--candidates", "256", "--verify")
    verification = record["verification"]
    assert verification["site"] == record["site"] and verification["position"] == record["position"]
    assert verification["inside_mean"]["kl_max"] < verification["outside_mean"]["kl_max"]
    plain = run_json("query", "counting", "--candidates", "32")
    assert plain["verification"] is None
