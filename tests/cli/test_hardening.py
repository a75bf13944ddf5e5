"""One test per class of CLI failure a tester found (issue 12): each failed before the fix.

Tracebacks, hangs, bad input accepted silently, and unhelpful errors; each now ends with
status 2 and one line on stderr that says what was wrong and what is allowed, before any
long work is done. (Malformed files: tests/test_malformed_files.py; training: the training
tests; the server: tests/web.)
"""

from __future__ import annotations

import json
import os
import time

import pytest
from cli_runner import invoke


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ----- numbers out of range, and values that used to be accepted silently ------------------


@pytest.mark.parametrize("argv,says", [
    (["query", "--threads", "0"], "from 1 to"),
    (["query", "--threads", "-2"], "from 1 to"),
    (["eval-probed", "counting", "--n", "0"], "from 1 to"),
    (["eval-probed", "counting", "--n", "-5"], "from 1 to"),
    (["dla", "counting", "--component", "a1.0@:", "--k", "-1"], "from 1 to"),
    (["dla", "counting", "--component", "a1.0@:", "--k", "0"], "from 1 to"),
    (["dla", "counting", "--component", "a1.0@:", "--k", "41"], "vocabulary size (40)"),
    (["dla", "counting", "--component", "a1.0@:", "--n", "-3"], "from 0 to"),
    (["verify", "--per-side", "-2"], "from 1 to"),
    (["patch", "counting", "--components", "a1.0@:", "--n", "0"], "from 1 to"),
    (["query", "--candidates", "2000000"], "from 1 to 32,768"),
    (["query", "--noise", "inf"], "finite number"),
    (["query", "--noise", "nan"], "finite number"),
    (["query", "--temperature", "inf"], "finite number"),
    (["query", "--temperature", "0"], "greater than 0"),
    (["query", "--epsilon", "nan"], "finite number"),
    (["query", "--seed", "-1"], "from 0 to"),
    (["query", "--seed", str(2**63)], "from 0 to"),
    (["query", "--metric", "manhattan"], "euclidean"),
])
def test_out_of_range_numbers_are_refused(argv, says):
    assert says in one_error_line(invoke(argv))


def test_a_huge_candidate_count_is_refused_at_once():
    started = time.perf_counter()
    line = one_error_line(invoke(["query", "--candidates", "99999999999999999999"]))
    assert "from 1 to" in line and time.perf_counter() - started < 5


@pytest.mark.parametrize("position", ["²", "٣", "3.0", "+-1"])
def test_positions_are_ascii_integers_or_names(position):
    line = one_error_line(invoke(["activation", "counting", "--input", "Bvvzc|v:2E", "--site",
                                  "a0.0", "--position", position]))
    assert "unknown position" in line


@pytest.mark.parametrize("option", ["--input", "--site", "--position"])
def test_an_empty_value_is_an_error_not_the_default(option):
    line = one_error_line(invoke(["query", option, "", "--candidates", "8"]))
    assert {"--input": "input is empty", "--site": "cannot parse site ''",
            "--position": "unknown position ''"}[option] in line


def test_a_long_input_is_not_echoed_whole():
    line = one_error_line(invoke(["query", "--input", "#" * 5000]))
    assert "5,001 characters)" in line and len(line) < 600  # the input with its BOS


# ----- output paths: checked before the query runs ------------------------------------------


@pytest.fixture
def places(tmp_path):
    (tmp_path / "a file").write_text("x")
    (tmp_path / "kept.html").write_text("keep me")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    yield tmp_path
    locked.chmod(0o755)


@pytest.mark.parametrize("command,option,name,says", [
    ("query", "--html", ".", "is a directory"),
    ("query", "--html", "a file/page.html", "is a file, not a directory"),
    ("query", "--html", "locked/page.html", "permission denied"),
    ("query", "--html", "/proc/page.html", "cannot write it"),
    ("query", "--html", "/dev/null", "not a regular file"),
    ("query", "--html", "kept.html", "pass --force"),
    ("patch", "--plot", "plot.gif", ".png or .pdf or .svg"),
    ("patch", "--plot", ".", "is a directory"),
    ("completeness", "--plot", "plot", ".png or .pdf or .svg"),
])
def test_unwritable_outputs_are_refused_before_any_work(places, command, option, name, says):
    if says == "permission denied" and os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    path = name if name.startswith("/") else str(places / name)
    argv = {"query": ["query", "--candidates", "8"],
            "patch": ["patch", "counting", "--components", "a1.0@:", "--n", "5"],
            "completeness": ["completeness", "addition", "--candidates", "8"]}[command]
    started = time.perf_counter()
    line = one_error_line(invoke(argv + [option, path]))
    assert says in line and time.perf_counter() - started < 10
    assert (places / "kept.html").read_text() == "keep me"


@pytest.mark.parametrize("link", ["loop", "dangling"])
@pytest.mark.parametrize("argv", [
    ["train-lm", "--corpus", "corpus.txt", "--steps", "1", "--out"],
    ["train-decoder", "counting", "--examples", "4", "--out"],
    ["train-probed", "counting", "--steps", "1", "--out"],
    ["reproduce", "--studies", "counting", "--quick", "--out"],
    ["summarize", "counting", "--out"],
    ["interpret", "counting", "--out"],
    ["export-decoder", "DECODER", "--out"],
    ["query", "--html"],
], ids=lambda argv: argv[0])
def test_a_link_that_leads_nowhere_is_refused_before_any_work(tmp_path, argv, link):
    """A dangling link or a loop of links as --out (issue 31: the training commands and
    reproduce failed with 'internal error (FileExistsError)', the others only once their work
    was done); the link is left as it was."""
    from inversionview.artifacts import find_artifact

    (tmp_path / "loop").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop")
    (tmp_path / "dangling").symlink_to("nowhere")
    argv = [str(find_artifact("decoder-counting")) if arg == "DECODER" else arg for arg in argv]
    started = time.perf_counter()
    line = one_error_line(invoke([*argv, tmp_path / link]))
    assert time.perf_counter() - started < 10
    assert f"{argv[-1]} '{tmp_path / link}' is " in line
    assert ("a loop of symbolic links" if link == "loop" else
            "a symbolic link to 'nowhere', which does not exist") in line
    assert os.readlink(tmp_path / link) == {"loop": "loop2", "dangling": "nowhere"}[link]
    assert not (tmp_path / "nowhere").exists()


def test_force_replaces_an_existing_page(places):
    page = places / "kept.html"
    result = invoke(["query", "--candidates", "8", "--html", str(page), "--force"])
    assert result.exit_code == 0, result.output
    assert page.read_text().startswith("<!DOCTYPE html>")


# ----- unhelpful errors ----------------------------------------------------------------------


def test_patch_works_with_its_default_contrast():
    result = invoke(["patch", "counting", "--components", "a1.0@:", "--n", "20", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 20


def test_an_unknown_site_lists_the_sites_the_decoder_reads():
    line = one_error_line(invoke(["query", "--site", "a5.0", "--candidates", "8"]))
    listed = line.split("valid sites: ")[1].split(", ")
    assert listed == ["x0.pre", "a0.0", "x0.mid", "m0", "x0.post", "a1.0", "x1.mid", "m1", "x1.post"]


def test_usage_errors_are_one_line_too():
    line = one_error_line(invoke(["dla", "counting"]))  # --component is required
    assert "--component" in line and "--help" in line
    one_error_line(invoke(["query", "--bogus"]))


def test_help_shows_flags_without_a_type_and_the_metric_choices():
    result = invoke(["query", "--help"])
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout and "euclidean|cosine" in result.stdout
    required = invoke(["dla", "--help"]).stdout
    assert "required" in required.lower()


def test_a_bug_is_one_line_with_status_1(monkeypatch):
    import inversionview.probed.model as model_module

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(model_module, "load_probed", broken)
    monkeypatch.setattr("inversionview.probed.load_probed", broken)
    result = invoke(["inspect"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("error: internal error (ZeroDivisionError")



# ----- found by review: the same classes at other entrances ---------------------------------


@pytest.mark.parametrize("argv", [["patch", "counting", "--components", "a0.0@²"],
                                  ["dla", "counting", "--component", "a0.0@٣"]])
def test_component_positions_are_ascii_integers_or_names(argv):
    assert "unknown position" in one_error_line(invoke(argv))


@pytest.mark.parametrize("damage", ["{bad", "[1]", "{}"])
def test_a_damaged_checkpoint_names_its_file(tmp_path, damage):
    run = tmp_path / "run"
    started = invoke(["train-probed", "counting", "--out", run, "--steps", "2", "--batch-size",
                      "4", "--d-model", "8", "--n-heads", "1", "--n-layers", "1",
                      "--checkpoint-every", "0.001", "--json"])
    assert started.exit_code == 0, started.output
    (run / "checkpoint" / "state.json").write_text(damage)
    line = one_error_line(invoke(["train-probed", "counting", "--out", run, "--resume",
                                  "--steps", "3"]))
    assert "state.json" in line


def test_export_without_a_probed_source_asks_for_the_model(tmp_path):
    import json
    import shutil

    from inversionview.artifacts import find_artifact

    run = tmp_path / "run"
    shutil.copytree(find_artifact("decoder-counting"), run)
    manifest = json.loads((run / "decoder.json").read_text())
    del manifest["probed_source"]
    (run / "decoder.json").write_text(json.dumps(manifest))
    line = one_error_line(invoke(["export-decoder", run, "--out", tmp_path / "out"]))
    assert "--model" in line


# ----- issue 31: input files that are not what they say, and options that did nothing ------


@pytest.fixture
def bad_files(tmp_path):
    """An empty file, a one-line file, a symlink loop, a FIFO, a file with a 1 MB line, and a
    (sparse) file of more than 1 GiB."""
    from inversionview.text.sources import MAX_CORPUS_BYTES, MAX_LINE_BYTES

    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("\n   \n")
    (tmp_path / "one.txt").write_text("In the beginning\n")
    (tmp_path / "loop").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere.txt")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "long.txt").write_text("a" * (MAX_LINE_BYTES + 1))
    with open(tmp_path / "huge.txt", "wb") as huge:
        huge.truncate(MAX_CORPUS_BYTES + 1)
    return tmp_path


@pytest.mark.parametrize("name, says", [
    ("empty.txt", "holds no text"),
    ("blank.txt", "holds no text"),
    ("loop", "is a symlink loop"),
    ("dangling", "is a symlink to"),
    ("fifo", "is not a regular file"),
    ("/dev/zero", "is not a regular file"),
    ("long.txt", "line 1: longer than 1,000,000 bytes"),
    ("huge.txt", "holds 1,073,741,825 bytes, more than the 1,073,741,824"),
])
@pytest.mark.parametrize("command", ["ioi corpus", "factual corpus", "query"])
def test_a_corpus_file_that_cannot_be_used_is_refused_at_once(bad_files, command, name, says):
    """Was: an empty --text accepted, an empty --ban-corpus banning every token but EOS, a
    FIFO read forever, /dev/zero read until the kernel killed the process (23.9 GB), and a
    symlink loop 'does not exist'."""
    path = name if name.startswith("/") else str(bad_files / name)
    argv = {"ioi corpus": ["ioi", "corpus", "--out", bad_files / "mix.txt", "--text", path],
            "factual corpus": ["factual", "corpus", "--out", bad_files / "f.txt", "--text", path],
            "query": ["query", "lm-kjv", "--ban-rare", "1", "--ban-corpus", path]}[command]
    started = time.perf_counter()
    line = one_error_line(invoke(argv))
    option = "--ban-corpus" if command == "query" else "--text"
    assert line.startswith(f"error: {option} {path}") and says in line, line
    assert time.perf_counter() - started < 10
    assert not (bad_files / "mix.txt").exists() and not (bad_files / "f.txt").exists()


def test_a_ban_that_leaves_nearly_no_token_is_refused():
    """Was: --ban-corpus with one line banned all but a few tokens, and --ban-rare 10**9 was
    accepted (the web API's ban_rare too: tests/web)."""
    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        one = pathlib.Path(folder) / "one.txt"
        one.write_text("In the beginning\n")
        line = one_error_line(invoke(["query", "lm-kjv", "--ban-rare", "1", "--ban-corpus", one,
                                      "--candidates", "8"]))
    assert "a ban must leave at least 10% of the tokens" in line
    assert "give texts that use more of the vocabulary" in line
    line = one_error_line(invoke(["query", "lm-factual", "--ban-rare", "100000"]))
    assert "--ban-rare 100,000 bans 4,087 of the 4,095 tokens" in line
    assert line.endswith("give --ban-rare 2,987 or less")
    assert "from 1 to 1,000,000" in one_error_line(invoke(["query", "lm-factual", "--ban-rare",
                                                            str(10**9)]))


@pytest.fixture
def counting_pairs(tmp_path):
    """30 counting pairs whose counts differ, and one more whose counts do not (line 33)."""
    from inversionview.probed import load_probed
    from inversionview.verify.patching import contrast_pairs

    drawn = contrast_pairs(load_probed("counting").task, 30, "flip", seed=0)
    rows = [{"original": o, "contrast": c} for o, c in zip(drawn.originals, drawn.contrasts)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    same = tmp_path / "same.jsonl"
    same.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n\n"
                    + json.dumps({"original": "Baab|a:2E", "contrast": "Bacb|a:2E"}) + "\n")
    return path, same


def test_patch_n_caps_the_pairs_of_a_file_and_says_so(counting_pairs):
    """Was: --n ignored with --pairs (10,000 pairs ran for 3 minutes)."""
    path, _ = counting_pairs
    argv = ["patch", "counting", "--components", "a1.0@:", "--pairs", path, "--n", "5"]
    record = json.loads(invoke(argv + ["--json"]).stdout)
    assert record["n"] == 5 and record["pairs_in_file"] == 30
    result = invoke(argv)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"the first 5 of the 30 pairs (--n 5) from {path}")
    every = json.loads(invoke(["patch", "counting", "--components", "a1.0@:", "--pairs", path,
                               "--json"]).stdout)
    assert every["n"] == 30


@pytest.mark.parametrize("extra, says", [
    (["--contrast", "flip"], "--contrast says how pairs are drawn"),
    (["--filter", "count>1"], "--filter says how pairs are drawn"),
    (["--target", "count"], "--target says how pairs are drawn"),
    (["--contrast", "random", "--target", "count"], "--contrast and --target say how"),
])
def test_patch_refuses_drawing_options_beside_given_pairs(counting_pairs, extra, says):
    """Was: silently ignored."""
    path, _ = counting_pairs
    line = one_error_line(invoke(["patch", "counting", "--components", "a1.0@:", "--pairs",
                                  path, *extra]))
    assert says in line and "give one or the other" in line


def test_patch_refuses_a_pair_whose_contrast_keeps_the_answer(counting_pairs, tmp_path):
    """Was: such a pair's LD is 0 on every run, patched or not, and was averaged in."""
    _, same = counting_pairs
    line = one_error_line(invoke(["patch", "counting", "--components", "a1.0@:", "--pairs",
                                  same, "--n", "100"]))
    assert line.startswith("error: same.jsonl line 33 (count): the answer and the contrast's "
                           "answer are the same token ('2')")
    text = tmp_path / "text.jsonl"
    pair = {"original": "When Mary and John went to the store, John gave a drink to",
            "contrast": "When Mary and John went to the store, Mary gave a drink to",
            "answer": " Mary", "contrast_answer": " John"}
    text.write_text(json.dumps(pair) + "\n" + json.dumps({**pair, "contrast_answer": " Mary"}))
    line = one_error_line(invoke(["patch", "lm-ioi", "--components", "a0.0@END", "--pairs", text]))
    assert line.startswith("error: text.jsonl line 2: the answer and the contrast's answer are "
                           "the same token (' Mary')")


@pytest.mark.parametrize("name, says", [("/dev/zero", "is not a regular file"),
                                        ("fifo", "is not a regular file"),
                                        ("loop", "is a symlink loop")])
def test_a_pairs_file_that_cannot_be_read_is_refused(bad_files, name, says):
    path = name if name.startswith("/") else str(bad_files / name)
    line = one_error_line(invoke(["patch", "counting", "--components", "a1.0@:", "--pairs", path]))
    assert says in line
