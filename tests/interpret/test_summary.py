"""Per-site summaries: the features on constructed samples where the answer is known, the
pooling over queries, the views, and a real run on a tiny model."""

import json
import math

import pytest

from inversionview.decoder.train import build_decoder
from inversionview.interpret.features import task_features
from inversionview.interpret.summary import (KEPT_CONTRAST, KEPT_INSIDE, Cell, FeatureRow, Summary,
                                             cell_from_results, html_table, markdown_table,
                                             plot_summary, query_texts, summarize,
                                             summary_config, terminal_table)
from inversionview.preimage.result import QueryInput, Sample
from inversionview.probed import build_probed
from inversionview.tasks import get_task as make_task


def sample(task, text, in_epsilon, found_by="decoder", best=None):
    tokens = task.text_tokens(text)
    return Sample(text=text, tokens=tokens, distance=0.01 if in_epsilon else 1.0,
                  best_position=len(tokens) - 3 if best is None else best, best_position_label="",
                  in_epsilon=in_epsilon, valid=True, correct=True, reason="",
                  attributes=task.attributes(text), multiplicity=1, position_distances=[],
                  found_by=found_by)


class Result:
    """The fields of a PreimageResult that a summary reads."""

    def __init__(self, task, text, position, samples, token_reading=()):
        self.query = QueryInput(text, task.text_tokens(text), task.attributes(text), True, "")
        self.position, self.samples = position, samples
        self.token_reading = list(token_reading)


def by_name(cell):
    return {row.name: row for row in cell.rows}


def test_counting_cell_keeps_the_count_and_not_the_letter():
    task = make_task("counting")
    query = "Baabbc|a:2E"
    # In ε: the same count of another letter; out: other counts. The letter varies on both sides.
    inside = ["Bccddb|c:2E", "Baaddb|a:2E", "Beeffg|e:2E", "Bhhiij|h:2E"]
    outside = ["Baaabc|a:3E", "Bccccb|c:4E", "Bbbcdd|c:1E", "Bffffg|f:4E"]
    samples = [sample(task, t, True) for t in inside] + [sample(task, t, False) for t in outside]
    # The search's finds never count (the summary reads the decoder's draws, as the paper).
    samples.append(sample(task, "Bzzyyx|x:1E", True, found_by="search 1"))
    cell = cell_from_results("a1.0", ":", [Result(task, query, 8, samples)], task_features(task))
    rows = by_name(cell)
    assert rows["count"].inside == 1.0 and rows["count"].outside == 0.0 and rows["count"].kept
    assert rows["query_letter"].inside == 0.25 and rows["query_letter"].outside == 0.25
    assert not rows["query_letter"].kept
    assert rows["count ±1"].inside == 1.0 and rows["count ±1"].outside == 0.5  # 3 and 1 are close
    assert cell.kept[0].name == "count"  # the strongest first
    assert cell.in_epsilon == 4 and cell.queries == cell.queries_with_both == 1
    assert not any(row.kind == "token" for row in cell.rows)  # a toy task's attributes say it


def test_addition_derived_features_read_commutativity_and_fuzzy_sums():
    task = make_task("addition")
    query = "B615+861=1476E"
    inside = ["B812+666=1478E", "B615+899=1514E", "B873+612=1485E"]  # {F1,S1} = {6,8}, order varies
    outside = ["B115+261=376E", "B515+431=946E"]
    samples = [sample(task, t, True) for t in inside] + [sample(task, t, False) for t in outside]
    rows = by_name(cell_from_results("x0.mid", "=", [Result(task, query, 8, samples)],
                                     task_features(task)))
    assert rows["{F1,S1}"].inside == 1.0 and rows["{F1,S1}"].outside == 0.0
    assert rows["F1"].inside == pytest.approx(1 / 3)  # in order only where F1 = 6
    assert rows["F1+S1"].inside == 1.0
    # F2+S2 of the query is 1+6 = 7; inside 1+6, 1+9, 7+1: exactly 1/3, within one 2/3.
    assert rows["F2+S2"].inside == pytest.approx(1 / 3)
    assert rows["F2+S2 ±1"].inside == pytest.approx(2 / 3)


def test_pooling_weighs_each_query_the_same_and_skips_one_sided_queries():
    task = make_task("counting")
    first = Result(task, "Baabbc|a:2E", 8, [sample(task, "Bccddb|c:2E", True)] * 9
                   + [sample(task, "Baaabc|a:3E", False)])
    second = Result(task, "Baaabc|a:3E", 8, [sample(task, "Baabbc|a:2E", True),
                                             sample(task, "Bcccdd|c:3E", False)])
    only_inside = Result(task, "Baabbc|a:2E", 8, [sample(task, "Bccddb|c:2E", True)])
    cell = cell_from_results("a1.0", ":", [first, second, only_inside], task_features(task))
    count = by_name(cell)["count"]
    assert count.queries == 2 and cell.queries == 3 and cell.queries_with_both == 2
    assert cell.all_inside == 1 and cell.none_inside == 0
    assert count.inside == pytest.approx(0.5)  # (1.0 + 0.0) / 2, not 9 / 10
    assert count.outside == pytest.approx(0.5)
    assert not count.kept and count.contrast == pytest.approx(0.0)


def test_mined_token_features_on_free_text(tmp_path):
    from inversionview.tasks.text import TextTask
    from inversionview.text.bpe import train_bpe
    from inversionview.text.tokenizer import HFTokenizer

    train_bpe(["the cat sat on the mat", "a dog sat on a log"] * 20, 300, tmp_path)
    task = TextTask(HFTokenizer.from_directory(tmp_path, 10**6), context=16)
    features = task_features(task)
    assert features and {f.kind for f in features} == {"token"}
    query = "the cat sat"
    tokens = task.text_tokens(query)
    position = len(tokens) - 1
    inside = [sample(task, "a dog sat", True, best=len(task.text_tokens("a dog sat")) - 1),
              sample(task, "the mat sat", True, best=len(task.text_tokens("the mat sat")) - 1)]
    outside = [sample(task, "on a log", False, best=len(task.text_tokens("on a log")) - 1)]
    cell = cell_from_results("a0.0", "last", [Result(task, query, position, inside + outside)],
                             features, mined=True)
    rows = by_name(cell)
    assert rows["token@0"].inside == 1.0 and rows["token@0"].outside == 0.0  # " sat" kept
    assert rows["token@0 anywhere"].inside == 1.0
    shared = {row["token"]: row for row in cell.shared_tokens}
    assert shared[" sat"]["inside"] == 1.0 and shared[" sat"]["outside"] == 0.0
    # the token reading's substitutions: the share staying inside ε, averaged per offset over
    # the queries that tried any there
    readings = [[{"offset": 0, "stays": 0.0}, {"offset": -1, "stays": 1.0}],
                [{"offset": 0, "stays": 0.5}, {"offset": -1, "stays": None}]]
    cell = cell_from_results("a0.0", "last", [Result(task, query, position, inside + outside, r)
                                              for r in readings], features, mined=True)
    assert cell.substitutions_stay == {"token@0": 0.25, "token@-1": 1.0}


@pytest.fixture(scope="module")
def tiny():
    model = build_probed("counting", seed=0, n_embd=16, n_head=1, n_inner=32)
    decoder = build_decoder(model, seed=1, d_model=32, n_heads=2, d_mlp=64,
                            n_condition_blocks=2).eval()
    return model, decoder


def test_summarize_runs_every_cell_and_is_seeded(tiny, tmp_path):
    model, decoder = tiny
    config = summary_config(candidates=32, epsilon=0.5)
    first = summarize(model, decoder, ["a0.0", "x0.post"], [":", "query"], 2, 3, config)
    again = summarize(model, decoder, ["a0.0", "x0.post"], [":", "query"], 2, 3, config)
    assert [(c.site, c.position) for c in first.cells] == [
        ("a0.0", ":"), ("x0.post", ":"), ("a0.0", "query"), ("x0.post", "query")]
    assert json.dumps(first.to_record()) == json.dumps(again.to_record())
    record = first.to_record()
    assert record["kept_rule"] == {"inside_at_least": KEPT_INSIDE,
                                   "contrast_at_least": KEPT_CONTRAST}
    for cell in record["cells"]:
        assert cell["queries"] == 2
        for row in cell["rows"]:
            assert row["inside"] is None or 0 <= row["inside"] <= 1
    table = terminal_table(first)
    assert "a0.0" in table and "x0.post" in table and "kept" in table
    picture = plot_summary(first, tmp_path / "map.png")
    assert picture.read_bytes()[:4] == b"\x89PNG"
    assert json.dumps(Summary.from_record(record).to_record()) == json.dumps(record)
    table = markdown_table(first).splitlines()
    assert table[0] == "| site | `:` | `query` |" and len(table) == 2 + 2
    page = html_table(first, "map.png")
    assert "<table>" in page and "http" not in page.replace("http-equiv", "")


def test_a_cells_queries_do_not_depend_on_the_other_sites_and_positions_asked(tiny):
    """Issue 31: `--positions query,:` and `--positions :,query` read the cell a0.0@: alike,
    and so does asking it alone."""
    model, decoder = tiny
    config = summary_config(candidates=16, epsilon=0.5)
    cells = [{(c.site, c.position): json.dumps(c.to_dict()) for c in summary.cells}
             for summary in (summarize(model, decoder, ["a0.0"], ["query", ":"], 2, 3, config),
                             summarize(model, decoder, ["x0.post", "a0.0"], [":", "query"], 2, 3, config),
                             summarize(model, decoder, ["a0.0"], [":"], 2, 3, config))]
    assert cells[0][("a0.0", ":")] == cells[1][("a0.0", ":")] == cells[2][("a0.0", ":")]
    assert cells[0][("a0.0", "query")] == cells[1][("a0.0", "query")]


def test_summarize_refuses_unknown_sites_and_positions(tiny):
    from inversionview.errors import UserError

    model, decoder = tiny
    with pytest.raises(UserError, match="does not read site 'a7.0'.*x0.pre"):
        summarize(model, decoder, ["a7.0"], [":"], 1)
    with pytest.raises(UserError, match="unknown position 'A1'.*query"):
        summarize(model, decoder, ["a0.0"], ["A1"], 1)


def test_query_texts_only_where_the_position_exists():
    task = make_task("addition")
    texts = query_texts(task, "A4", 5, seed=0)
    assert len(texts) == 5 and all(len(task.attributes(t)) and task.attributes(t)["A4"] is not None
                                   for t in texts)
    assert query_texts(task, "A4", 5, seed=0) == texts
    assert not math.isnan(len(query_texts(task, "F1", 3, seed=1)))


def test_summarize_command_on_free_text_mines_tokens(tmp_path):
    from cli_runner import invoke
    from tiny_lms import make_tiny_text_model

    model, corpus, decoder = make_tiny_text_model(tmp_path / "lm")
    args = ["summarize", str(model), "--decoder", str(decoder), "--sites", "a0.0,m1",
            "--queries", "2", "--candidates", "16", "--epsilon", "0.5"]
    missing = invoke(args)
    assert missing.exit_code == 2 and "--corpus" in missing.stderr
    result = invoke([*args, "--corpus", str(corpus), "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["mined"] and record["positions"] == ["last"]
    assert {row["kind"] for cell in record["cells"] for row in cell["rows"]} == {"token"}
    assert (tmp_path / "out" / "summary.md").read_text().startswith("| site | `last` |")


def _summary_of(rows_per_cell: int, sites: int = 1) -> Summary:
    rows = [FeatureRow(f"feature{i}", "attribute", 0.9, 0.1 + 0.01 * i, 5) for i in range(rows_per_cell)]
    cells = [Cell(f"a{s}.0", ":", 5, 5, 40, rows) for s in range(sites)]
    return Summary("counting", "decoder-counting", "counting", [c.site for c in cells], [":"], 5,
                   0, {"candidates": 64, "epsilon": 0.1, "metric": "euclidean", "search": 0,
                       "constrain": True}, False, cells)


def test_the_markdown_table_says_how_many_more_are_kept():
    """Issue 31: summary.md showed two kept features and dropped the "+1 more" the terminal
    table gives."""
    table = markdown_table(_summary_of(3), per_cell=2)
    assert "+1 more" in table and "+1 more" in terminal_table(_summary_of(4), per_cell=3)
    assert "more" not in markdown_table(_summary_of(2), per_cell=2)


@pytest.mark.parametrize("sites", [1, 2, 9])
def test_the_heat_map_shows_its_colour_bar_label_whole(sites, tmp_path):
    """Issue 31: the colour bar's label was clipped on a short figure."""
    from matplotlib.text import Text

    from inversionview.interpret.summary import summary_figure

    figure = summary_figure(_summary_of(2, sites))
    figure.tight_layout()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    label = [t for t in figure.findobj(Text) if "strongest contrast" in t.get_text()]
    assert label
    box, frame = label[0].get_window_extent(renderer), figure.bbox
    assert frame.y0 <= box.y0 and box.y1 <= frame.y1 and frame.x0 <= box.x0 and box.x1 <= frame.x1
