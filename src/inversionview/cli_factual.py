"""``inversionview factual ...``: the factual-recall case study's commands (issue 16)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

factual_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                          help="The factual-recall case study: facts that install offline, the "
                               "training mixture, accuracy per relation.")


def register(app: typer.Typer) -> None:
    """Add the ``factual`` command group to ``app``."""
    from inversionview import options
    from inversionview.cli import (ForceOpt, JsonOpt, ModelArg, SeedOpt, ThreadsOpt,
                                   _apply_threads, _emit, _load)
    from inversionview.options import Range

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
        text_lines = read_texts(text) if text is not None else []
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

    app.add_typer(factual_app, name="factual")
