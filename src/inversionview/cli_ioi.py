"""``inversionview ioi ...``: the IOI case study's commands (issue 15)."""


from pathlib import Path
from typing import Annotated, Optional

import typer

ioi_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                      help="The indirect-object-identification case study: prompts, the "
                           "training mixture, the circuit's heads and their readings.")


def register(app: typer.Typer) -> None:
    """Add the ``ioi`` command group to ``app``."""
    from inversionview import options
    from inversionview.cli import (ForceOpt, JsonOpt, ModelArg, SeedOpt, ThreadsOpt,
                                   _apply_threads, _emit, _load)
    from inversionview.options import Range

    IOI_LINES = Range("lines", 1, 100_000_000)

    @ioi_app.command("corpus")
    def corpus_command(
        out: Annotated[Path, typer.Option("--out", help="The .txt file to write (one text "
                                          "per line, for `inversionview train-lm --corpus`).")],
        lines: Annotated[int, typer.Option("--lines", help="Texts to write.",
                                           callback=IOI_LINES.callback)] = 400_000,
        text: Annotated[Optional[Path], typer.Option(
            "--text", help="General text mixed in (a .txt file, one text per line; "
            "default: none, its share goes to repeated runs of words).")] = None,
        seed: SeedOpt = 0,
        force: ForceOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Write the bundled IOI model's training mixture: IOI prompts of the train templates
        with their answers, controls (ABC, give-back), repeated runs of words, general text."""
        from inversionview.files import atomic_path
        from inversionview.ioi.corpus import MIXTURE, mixture_lines
        from inversionview.text.sources import read_texts

        options.check_output_file(out, "--out", (".txt",), force)
        text_lines = read_texts(text) if text is not None else []
        written = mixture_lines(lines, seed, text_lines)
        with atomic_path(out) as temporary:
            temporary.write_text("\n".join(written) + "\n", encoding="utf-8")
        _emit({"out": str(out), "lines": len(written), "seed": seed,
               "text": None if text is None else str(text), "mixture": MIXTURE}, as_json,
              f"wrote {len(written):,} texts to {out} (seed {seed})")

    @ioi_app.command("eval")
    def eval_command(
        model: ModelArg,
        n: Annotated[int, typer.Option("--n", help="Prompts.", callback=options.PAIRS.callback)] = 500,
        split: Annotated[str, typer.Option("--split", help="Templates: eval (held out from "
                                           "training), train or all.")] = "eval",
        seed: SeedOpt = 0,
        threads: ThreadsOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """IOI accuracy (IO is the top prediction; IO beats S) and the logit difference IO - S,
        per template and order."""
        from inversionview.ioi.circuit import evaluate_ioi
        from inversionview.ioi.prompts import SPLITS, IOIError

        if split not in SPLITS:
            raise IOIError(f"unknown --split {split!r}; use one of {', '.join(SPLITS)}")
        _apply_threads(threads)
        probed = _load(model, "ioi")
        report = evaluate_ioi(probed, n, seed, split)
        lines = [f"IOI on {n} prompts of the {split} templates (seed {seed}): top-1 accuracy "
                 f"{report['top1_accuracy']:.3f}, IO over S {report['io_over_s']:.3f}, logit "
                 f"difference IO - S {report['logit_difference']:.2f} "
                 f"(sd {report['logit_difference_std']:.2f})", "",
                 f"{'template/order':16} {'n':>4} {'top-1':>6} {'IO>S':>6} {'LD':>6}"]
        for name, row in [*report["by_template"].items(), *report["by_order"].items()]:
            lines.append(f"{name:16} {row['n']:>4} {row['top1_accuracy']:>6.3f} "
                         f"{row['io_over_s']:>6.3f} {row['logit_difference']:>6.2f}")
        _emit({"model": model, **report}, as_json, "\n".join(lines))

    @ioi_app.command("heads")
    def heads_command(
        model: ModelArg,
        n: Annotated[int, typer.Option("--n", help="Prompts (and repeated runs) to average "
                                       "over.", callback=options.PAIRS.callback)] = 200,
        seed: SeedOpt = 0,
        plot: Annotated[Optional[Path], typer.Option(
            "--plot", help="Write the per-head map (patching effect, attention, copying) to "
            "this PNG.")] = None,
        patching: Annotated[str, typer.Option(
            "--patching", help="activation (exact: a patched run per head) or attribution "
            "(a first-order estimate from one backward pass; for GPT-2-sized models on a "
            "CPU).")] = "activation",
        threads: ThreadsOpt = None,
        force: ForceOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Find the IOI circuit: every head's attention (END to IO/S, S2 to S1/S1+1), duplicate
        / induction / previous-token scores, copying score and ABC patching effect, and the
        heads classified by role."""
        from inversionview.ioi.circuit import PATCHING_METHODS, ROLE_RULES, classify, head_scores
        from inversionview.ioi.prompts import IOIError

        if patching not in PATCHING_METHODS:
            raise IOIError(f"unknown --patching {patching!r}; use one of "
                           f"{', '.join(PATCHING_METHODS)}")
        if plot is not None:
            options.check_output_file(plot, "--plot", (".png",), force)
        _apply_threads(threads)
        probed = _load(model, "ioi")
        scores = head_scores(probed, n, seed, patching=patching)
        roles = classify(scores["heads"])
        if plot is not None:
            from inversionview.ioi.plot import plot_heads

            options.write_output(plot, "--plot", lambda path: plot_heads(scores, path, model))
        record = {"model": model, **{k: v for k, v in scores.items() if k != "heads"},
                  "heads": [h.to_dict() for h in scores["heads"]], "roles": roles,
                  "rules": ROLE_RULES}
        _emit(record, as_json, format_heads(scores, roles))

    app.add_typer(ioi_app, name="ioi")


def format_heads(scores, roles) -> str:
    """The head table (a row per head, heads in any role first) and the roles."""
    def number(value) -> str:
        return "     -" if value is None else f"{value:>6.2f}"

    lines = [f"ABC {scores['patching']} patching on {scores['n']} prompts: logit difference {scores['clean_logit_difference']:.2f}"
             f" -> {scores['abc_logit_difference']:.2f} with S2 replaced by a third name "
             f"(patch = change of LD as a fraction of that drop's negative; -1: all of it)", "",
             f"{'head':6} {'END>IO':>6} {'END>S2':>6} {'S2>S1':>6} {'dup':>6} {'induct':>6} "
             f"{'prev':>6} {'copy':>6} {'-copy':>6} {'patch':>6} {'@END':>6}  roles"]
    role_of = {}
    for role, names in roles.items():
        for name in names:
            role_of.setdefault(name, []).append(role)
    ordered = sorted(scores["heads"], key=lambda h: (h.name not in role_of, h.patch_all))
    for head in ordered:
        lines.append(f"{head.name:6} {number(head.attn_end_io)} {number(head.attn_end_s2)} "
                     f"{number(head.attn_s2_s1)} {number(head.duplicate)} "
                     f"{number(head.induction)} {number(head.previous)} {number(head.copying)} "
                     f"{number(head.negative_copying)} {number(head.patch_all)} "
                     f"{number(head.patch_end)}  {', '.join(role_of.get(head.name, []))}")
    lines.append("")
    lines.extend(f"{role}: {', '.join(names) or '(none)'}" for role, names in roles.items())
    return "\n".join(lines)
