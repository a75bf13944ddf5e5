"""The `inversionview ioi` commands: what they write and print, and their refusals."""

from __future__ import annotations

import json

import pytest
from cli_runner import invoke


def ok(args):
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def refused(args, message):
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    return result.stderr


def test_corpus_writes_the_seeded_mixture(tmp_path):
    from inversionview.ioi.corpus import mixture_lines

    text = tmp_path / "kjv.txt"
    text.write_text("In the beginning was the word.\nAnd the word was good.\n")
    out = tmp_path / "mix.txt"
    record = json.loads(ok(["ioi", "corpus", "--out", str(out), "--lines", "300", "--text",
                            str(text), "--seed", "2", "--json"]))
    assert record["lines"] == 300
    assert out.read_text().splitlines() == mixture_lines(300, 2, text.read_text().splitlines())
    refused(["ioi", "corpus", "--out", str(out), "--lines", "3"], "exists")
    refused(["ioi", "corpus", "--out", str(tmp_path / "mix.json")], "must end in .txt")
    refused(["ioi", "corpus", "--out", str(tmp_path / "m.txt"), "--text", str(tmp_path / "no.txt")],
            "does not exist")


def test_eval_and_heads_print_their_tables(ioi_lm_dir, tmp_path):
    report = json.loads(ok(["ioi", "eval", str(ioi_lm_dir), "--n", "20", "--json"]))
    assert report["n"] == 20 and report["split"] == "eval"
    assert "top-1 accuracy" in ok(["ioi", "eval", str(ioi_lm_dir), "--n", "20"])
    plot = tmp_path / "heads.png"
    shown = ok(["ioi", "heads", str(ioi_lm_dir), "--n", "6", "--plot", str(plot)])
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "ABC activation patching on 6 prompts" in shown and "name mover:" in shown
    record = json.loads(ok(["ioi", "heads", str(ioi_lm_dir), "--n", "6", "--json"]))
    assert len(record["heads"]) == 8 and record["rules"]["induction"] == {"induction": [">=", 0.3]}


@pytest.mark.parametrize("args, message", [
    (["ioi", "eval", "counting"], "trained on 'counting', not 'ioi'"),
    (["ioi", "eval", "IOI", "--split", "test"], "unknown --split 'test'; use one of train, eval, all"),
    (["ioi", "heads", "IOI", "--patching", "path"], "unknown --patching 'path'"),
    (["ioi", "read", "IOI"], "no bundled decoder was trained on"),
    (["ioi", "heads", "IOI", "--plot", "x.svg"], "must end in .png"),
    # issue 31: printed empty tables; refused as `factual read` refuses it
    (["ioi", "read", "IOI", "--heads", ","], "--heads ',' names no head; give heads such as"),
])
def test_bad_input_is_one_line(ioi_lm_dir, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused([str(ioi_lm_dir) if arg == "IOI" else arg for arg in args], message)


def test_read_refuses_sites_that_are_not_heads(ioi_lm_dir, tmp_path):
    from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
    from inversionview.probed import load_probed

    train_decoder(load_probed(ioi_lm_dir), DecoderTrainingConfig(
        out=tmp_path / "decoder", examples=16, eval_every_seconds=10_000,
                                               eval_queries_per_site=1, eval_samples_per_query=2), show_progress=False)
    base = ["ioi", "read", str(ioi_lm_dir), "--decoder", str(tmp_path / "decoder")]
    refused(base + ["--heads", "x0.pre"], "--heads takes heads such as a3.1, not 'x0.pre'")
    refused(base + ["--heads", "a7.0"], "site 'a7.0' is not a site of this model")
    shown = ok(base + ["--heads", "a1.0", "--queries", "1", "--candidates", "8", "--dla-n", "5",
                       "--edit-n", "4"])
    assert "a1.0@S2" in shown and "DLA (paper's Table 4)" in shown
    assert "One-attribute edits on 4 prompts" in shown
    record = json.loads(ok(base + ["--heads", "a1.0", "--queries", "1", "--candidates", "8",
                                   "--dla-n", "5", "--edit-n", "4", "--json"]))
    assert [(row["site"], row["position"]) for row in record["edits"]] == [
        ("a1.0", "S1+1"), ("a1.0", "S2"), ("a1.0", "END")]


def test_patch_draws_ioi_pairs_itself(ioi_lm_dir):
    record = json.loads(ok(["patch", str(ioi_lm_dir), "--components", "a1.0@END,a0.1@S2",
                            "--contrast", "abc", "--n", "6", "--json"]))
    assert record["n"] == 6 and record["contrast"] == "abc" and len(record["steps"]) == 3
    swapped = json.loads(ok(["patch", str(ioi_lm_dir), "--components", "a1.0@END",
                             "--contrast", "swap", "--n", "6", "--json"]))
    assert swapped["contrast"] == "swap" and swapped["n"] == 6
    refused(["patch", str(ioi_lm_dir), "--components", "a1.0@END"],
            "unknown contrast 'random' for IOI; use one of: abc, swap")


def test_read_shows_the_roles_heads_gives():
    """Issue 31: `ioi read lm-ioi --heads a2.0` showed "-" as the role of a head that `ioi
    heads` classes as S-inhibition (the bundled model and decoder: the tiny one classes none)."""
    common = ["--n", "20", "--threads", "1"]
    heads = json.loads(ok(["ioi", "heads", "lm-ioi", "--json", *common]))
    role_of = {}
    for role, names in heads["roles"].items():
        for name in names:
            role_of.setdefault(name, []).append(role)
    head = sorted(role_of)[0]
    record = json.loads(ok(["ioi", "read", "lm-ioi", "--heads", head, "--queries", "1",
                            "--candidates", "8", "--dla-n", "5", "--edit-n", "4", "--json", *common]))
    assert record["roles"] == {head: role_of[head]} and role_of[head]


def test_heads_lists_heads_by_the_size_of_their_effect(ioi_lm_dir):
    """Issue 31: `ioi heads` listed its heads by signed effect (a 0.95 effect came last)."""
    heads = json.loads(ok(["ioi", "heads", str(ioi_lm_dir), "--n", "6", "--json"]))
    in_role = {name for names in heads["roles"].values() for name in names}
    table = ok(["ioi", "heads", str(ioi_lm_dir), "--n", "6"]).splitlines()
    start = next(i for i, line in enumerate(table) if line.startswith("head ")) + 1
    shown = [line.split()[0] for line in table[start: start + len(heads["heads"])]]
    effect = {h["name"]: abs(h["patch_all"] or 0.0) for h in heads["heads"]}
    assert sorted(shown) == sorted(effect)
    expected = sorted(effect, key=lambda name: (name not in in_role, -effect[name], name))
    assert shown == expected
