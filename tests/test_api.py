"""The notebook API: three lines from a model to a result that renders itself, converts to
a DataFrame, and equals what the CLI computes with the same seed."""

from __future__ import annotations

import json

import pandas
import pytest

from cli_runner import invoke
from inversionview import InversionView
from inversionview.errors import UserError
from tiny_lms import make_tiny_text_model

TEXT = "When Alice and Bob went to the park, Bob gave a key to"


@pytest.fixture(scope="module")
def counting():
    return InversionView("counting")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    directory, corpus, decoder = make_tiny_text_model(tmp_path_factory.mktemp("api"))
    return InversionView(directory, decoder, corpus=corpus, max_tokens=24), directory, decoder


def test_three_lines_give_the_clis_result(counting):
    result = counting.query("Bvvzccvczvvvzvcvc|v:8E", site="a1.0", position=":", candidates=256,
                            seed=2)
    cli = invoke(["query", "counting", "--input", "Bvvzccvczvvvzvcvc|v:8E", "--site", "a1.0",
                  "--position", ":", "--candidates", "256", "--seed", "2", "--json"])
    record, expected = result.to_record(), json.loads(cli.stdout)
    for key in ("samples", "histogram", "attribute_agreement"):
        assert record[key] == expected[key]
    assert repr(result).startswith("<PreimageResult a1.0 at : of 'Bvvzccvczvvvzvcvc|v:8E': 256 "
                                   "candidates")


def test_a_result_renders_as_the_html_export_and_as_a_dataframe(counting):
    result = counting.query(candidates=128, shown=20)
    fragment = result._repr_html_()
    assert fragment.startswith("<div class='inversionview'>") and "<html" not in fragment
    assert fragment in result.to_html()  # the page's body is the notebook's view
    assert "Attribute agreement" in fragment and "https://" not in fragment
    frame = result.to_dataframe()
    assert len(frame) == len(result.samples) > 0
    assert list(frame["distance"]) == sorted(frame["distance"])
    assert list(frame["text"]) == [s.text for s in result.samples]
    assert "attr_count" in frame.columns
    assert str(frame["attr_count"].dtype) == "Int64"
    assert [None if value is pandas.NA else value for value in frame["attr_count"]] \
        == [s.attributes.get("count") for s in result.samples]
    assert str(result).splitlines()[0] == str(result).splitlines()[0].rstrip()  # terminal view
    assert "ε = 0.1" in str(result)


def test_grid_verify_and_sites(counting):
    assert counting.sites[0] == "x0.pre" and "a1.0" in counting.sites
    grid = counting.grid(candidates=32)
    assert list(grid.index) == counting.sites
    assert ((grid["in_epsilon_rate"] >= 0) & (grid["in_epsilon_rate"] <= 1)).all()
    report = counting.verify(counting.query(candidates=64), per_side=2)
    assert len(report["inside"]) <= 2 and "outside" in report


def test_a_language_model_from_a_directory(tiny_lm):
    iv, directory, _ = tiny_lm
    tokens = iv.tokens(TEXT)
    assert tokens[0] == "<|endoftext|>" and "".join(tokens[1:]) == TEXT
    assert iv.position(TEXT, "last") == len(tokens) - 1
    assert iv.activations(TEXT, "a1.2").shape == (len(tokens), 32)
    assert iv.attention(TEXT, 0).shape == (4, len(tokens), len(tokens))
    result = iv.query(TEXT, site="m1", position=-1, candidates=64, shown=8, seed=1)
    assert result.query.tokens == tokens and result.position == len(tokens) - 1
    columns = list(result.to_dataframe().columns)
    assert columns[-1] == "continuations" and not [c for c in columns if c.startswith("attr_")]  # no attributes on free text
    frame = result.to_dataframe()
    assert list(frame["evidence"]) == ["".join(s.tokens[: s.best_position + 1]) for s in result.samples]
    assert "Attribute agreement" not in result._repr_html_()
    again = iv.query(TEXT, site="m1", position=-1, candidates=64, shown=8, seed=1)
    assert again.to_record()["samples"] == result.to_record()["samples"]  # seeded
    assert len(iv.sample(3, seed=0)) == 3  # drawn from the corpus
    report = iv.patch({"original": TEXT, "contrast": TEXT.replace(", Bob", ", Alice"),
                       "answer": " the", "contrast_answer": " a"}, "a1.0@last,x0.pre@1")
    assert [step.components for step in report.steps] == [["a1.0@last"], ["x0.pre@1"],
                                                          ["a1.0@last", "x0.pre@1"]]
    assert report.steps[1].effect == 0.0  # the first token is the same in both


def test_mistakes_are_one_line_user_errors(counting, tiny_lm):
    iv, directory, _ = tiny_lm
    for call, message in [
        (lambda: counting.query(site="a9.9"), "a9.9"),
        (lambda: counting.query("Bab!|a:1E"), "not in the counting vocabulary"),
        (lambda: counting.query(candidates=0), "candidates"),
        (lambda: iv.query(TEXT, position='" Zed"'), "no token"),
        (lambda: iv.patch([{"original": TEXT, "contrast": TEXT}], "a0.0@last"), "answer"),
        (lambda: iv.patch("pairs", "a0.0@last"), "list of dicts"),
        (lambda: InversionView("no-such-model"), "no-such-model"),
        (lambda: InversionView(directory), "no bundled decoder"),
        (lambda: InversionView("counting", corpus=directory / "config.json"), "draws its own"),
    ]:
        with pytest.raises(UserError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


def test_summarize_in_a_notebook(counting):
    summary = counting.summarize(["a1.0"], [":"], queries=2, candidates=32)
    assert [(c.site, c.position) for c in summary.cells] == [("a1.0", ":")]
    assert "a1.0" in str(summary) and "kept" in str(summary)
    html = summary._repr_html_()
    assert html.startswith("<h1>") and "<table>" in html
    assert summary.to_record() == counting.summarize(["a1.0"], [":"], queries=2,
                                                     candidates=32).to_record()
