"""``inversionview factual ...``: the factual-recall case study's commands (issue 16)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from inversionview import options
from inversionview.cli.app import app
from inversionview.cli.common import (CandidatesOpt, DecoderOpt, ForceOpt, JsonOpt, ModelArg,
                                      SeedOpt, ThreadsOpt, _apply_threads, _emit, _head_names,
                                      _heads_of, _load)
from inversionview.options import Range

factual_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                          help="The factual-recall case study: facts that install offline, the "
                               "training mixture, accuracy per relation.")

LINES = Range("lines", 1, 10_000_000)
SHARE = Range("threshold", 0.0, 1.0, integer=False, low_open=True)
KEEP = Range("keep", 1, 10_000)


@factual_app.command("corpus")
def corpus_command(
    out: Annotated[Path, typer.Option("--out", help="The .txt file to write (one text "
                                      "per line, for `inversionview train-lm --corpus`).")],
    lines: Annotated[int, typer.Option("--lines", help="Texts to write.",
                                       callback=LINES.callback)] = 400_000,
    text: Annotated[Optional[Path], typer.Option(
        "--text", help="General text mixed in (a .txt file, one text per line; default: "
        "none, its share goes to facts).")] = None,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the bundled factual model's training mixture: facts of the train templates,
    profiles of several facts about one subject, general text."""
    from inversionview.factual.corpus import MIXTURE, mixture_lines
    from inversionview.files import atomic_path
    from inversionview.text.sources import read_texts

    options.check_output_file(out, "--out", (".txt",), force)
    text_lines = read_texts(text, what="--text") if text is not None else []
    written = mixture_lines(lines, seed, text_lines)
    with atomic_path(out) as temporary:
        temporary.write_text("\n".join(written) + "\n", encoding="utf-8")
    _emit({"out": str(out), "lines": len(written), "seed": seed,
           "text": None if text is None else str(text), "mixture": MIXTURE}, as_json,
          f"wrote {len(written):,} texts to {out} (seed {seed})")


@factual_app.command("eval")
def eval_command(
    model: ModelArg,
    split: Annotated[str, typer.Option("--split", help="Templates: eval (held out from "
                                       "training), train or all.")] = "eval",
    relation: Annotated[Optional[list[str]], typer.Option(
        "--relation", help="Only this relation (repeatable; default: all).")] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Top-1 accuracy of the answer's first token on every prompt of the split's
    templates, per relation, kind of subject and template."""
    from inversionview.factual.evaluate import evaluate_factual
    from inversionview.factual.knowledge import check_relations, check_split

    check_split(split)
    check_relations(relation)
    _apply_threads(threads)
    probed = _load(model, "factual")
    report = evaluate_factual(probed, split, relation)
    lines = [f"factual recall on {report['n']:,} prompts of the {split} templates: top-1 "
             f"accuracy {report['top1_accuracy']:.3f}, answer probability "
             f"{report['answer_probability']:.3f}", "",
             f"{'relation/subjects':17} {'n':>5} {'top-1':>6} {'p':>6} {'rank':>5}"]
    for name, row in [*report["by_relation"].items(),
                      *(({"city": "cities", "country": "countries"}.get(kind, kind), row)
                        for kind, row in report["by_kind"].items())]:
        lines.append(f"{name:17} {row['n']:>5} {row['top1_accuracy']:>6.3f} "
                     f"{row['answer_probability']:>6.3f} {row['median_rank']:>5.0f}")
    _emit({"model": model, **report}, as_json, "\n".join(lines))


@factual_app.command("heads")
def heads_command(
    model: ModelArg,
    split: Annotated[str, typer.Option("--split", help="Prompts of these templates: eval, "
                                       "train or all.")] = "eval",
    relation: Annotated[Optional[list[str]], typer.Option(
        "--relation", help="Only this relation (repeatable; default: all).")] = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="A head is active on a prompt when its norm is at least this "
        "share of the upper layers' summed norms at END.", callback=SHARE.callback)] = 0.05,
    keep: Annotated[int, typer.Option("--keep", help="Heads kept: the most often active.",
                                      callback=KEEP.callback)] = 25,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Write the maps of mean share and active rate to this PNG.")] = None,
    threads: ThreadsOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Find the heads that write most at the last token of factual prompts (the paper's
    norm-based attribution over the upper half of the layers)."""
    from inversionview.factual.heads import attribution_heads, plot_attribution
    from inversionview.factual.knowledge import check_relations, check_split

    check_split(split)
    check_relations(relation)
    if plot is not None:
        options.check_output_file(plot, "--plot", (".png",), force)
    _apply_threads(threads)
    probed = _load(model, "factual")
    prompts = probed.task.knowledge.prompts(split, relation)
    table = attribution_heads(probed, prompts, threshold, keep)
    if plot is not None:
        options.write_output(plot, "--plot", lambda path: plot_attribution(table, path, model))
    lines = [f"attribution at END over {table['prompts']:,} prompts, layers "
             f"{table['layers'][0]}-{table['layers'][-1]}, threshold {threshold:g}: kept "
             f"{', '.join(table['kept']) or 'none'}", "",
             f"{'head':6} {'share':>6} {'active':>7}  active by relation"]
    for head in table["heads"][:max(keep, 10)]:
        by = " ".join(f"{r} {v:.2f}" for r, v in head["by_relation"].items())
        lines.append(f"{head['name']:6} {head['mean_share']:>6.3f} {head['active_rate']:>7.2f}  {by}")
    _emit({"model": model, **table}, as_json, "\n".join(lines))


@factual_app.command("read")
def read_command(
    model: ModelArg,
    decoder: DecoderOpt = None,
    heads: Annotated[Optional[str], typer.Option(
        "--heads", help="Heads to read, comma separated (e.g. a3.1,a2.5; default: the "
        "heads `factual heads` keeps with --threshold and --keep).")] = None,
    relation: Annotated[Optional[list[str]], typer.Option(
        "--relation", help="Relations asked (repeatable; default: all).")] = None,
    queries: Annotated[int, typer.Option("--queries", help="Held-out prompts per head, "
                                         "position and relation.",
                                         callback=options.PAIRS.callback)] = 10,
    candidates: CandidatesOpt = 256,
    threshold: Annotated[float, typer.Option("--threshold", callback=SHARE.callback,
                                             help="Attribution threshold (without --heads).")] = 0.05,
    keep: Annotated[int, typer.Option("--keep", callback=KEEP.callback,
                                      help="Heads kept (without --heads).")] = 8,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Read heads at SUBJ and END per relation asked: how often the in-epsilon samples keep
    the query's subject and each of its attributes (the paper's recipe: cosine epsilon
    0.25, noise at a cosine of 0.75-0.9 to the query)."""
    from inversionview.decoder.store import decoder_for
    from inversionview.factual.heads import attribution_heads
    from inversionview.factual.knowledge import FactError, check_relations
    from inversionview.factual.readings import READ_ATTRIBUTES, read_factual

    check_relations(relation)
    named = None if heads is None else _head_names(heads)
    _apply_threads(threads)
    probed = _load(model, "factual")
    trained, _ = decoder_for(probed, model, decoder)
    if named is None:
        names = attribution_heads(probed, probed.task.knowledge.prompts("eval"), threshold,
                                  keep)["kept"]
        if not names:
            raise FactError(f"no heads to read: no head's attribution reaches --threshold "
                            f"{threshold}; give --heads, or lower --threshold")
    else:
        names = _heads_of(probed, named)
    rows = read_factual(probed, trained, names, relations=relation, queries=queries,
                        seed=seed, candidates=candidates)
    lines = ["fraction of in-epsilon samples keeping the query's attribute (out of epsilon "
             "in parentheses)", "",
             f"{'head@position':14} {'asked':9} {'in-eps':>6} " + " ".join(
                 f"{name:>13}" for name in READ_ATTRIBUTES)]
    for row in rows:
        cells = []
        for name in READ_ATTRIBUTES:
            values = row["attributes"][name]
            inside = "-" if values["inside"] is None else f"{values['inside']:.2f}"
            outside = "-" if values["outside"] is None else f"{values['outside']:.2f}"
            cells.append(f"{inside + ' (' + outside + ')':>13}")
        lines.append(f"{row['site'] + '@' + row['position']:14} {row['relation']:9} "
                     f"{row['distinct_in_epsilon']:>6} " + " ".join(cells))
    _emit({"model": model, "heads": names, "readings": rows}, as_json, "\n".join(lines))

app.add_typer(factual_app, name="factual")
