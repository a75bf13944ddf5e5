"""``inversionview ioi ...``: the IOI case study's commands (issue 15)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from inversionview import options
from inversionview.cli.app import app
from inversionview.cli.common import (CandidatesOpt, DecoderOpt, ForceOpt, JsonOpt, ModelArg,
                                      SeedOpt, ThreadsOpt, _apply_threads, _emit, _head_names,
                                      _heads_of, _load)
from inversionview.ioi.prompts import IOIError
from inversionview.options import Range

ioi_app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                      help="The indirect-object-identification case study: prompts, the "
                           "training mixture, the circuit's heads and their readings.")

IOI_LINES = Range("lines", 1, 10_000_000)


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
    text_lines = read_texts(text, what="--text") if text is not None else []
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
    kind: Annotated[str, typer.Option("--kind", help="ioi, or late: a third name just "
                                      "before the end (the answer is still IO; a model "
                                      "that avoids the most recent name fails).")] = "ioi",
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
    report = evaluate_ioi(probed, n, seed, split, kind)
    lines = [f"IOI on {n} {'late-name ' if kind == 'late' else ''}prompts of the {split} "
             f"templates (seed {seed}): top-1 accuracy "
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


@ioi_app.command("read")
def read_command(
    model: ModelArg,
    decoder: DecoderOpt = None,
    heads: Annotated[Optional[str], typer.Option(
        "--heads", help="Heads to read, comma separated (e.g. a3.1,a2.5; default: every "
        "head `ioi heads` puts in a role, found on --n prompts).")] = None,
    queries: Annotated[int, typer.Option("--queries", help="Queries per head and position.",
                                         callback=options.PAIRS.callback)] = 20,
    candidates: CandidatesOpt = 256,
    dla_n: Annotated[int, typer.Option("--dla-n", help="Prompts for the DLA baseline.",
                                       callback=options.PAIRS.callback)] = 1000,
    n: Annotated[int, typer.Option("--n", help="Prompts for classing the heads (also the roles shown for --heads).",
                                   callback=options.PAIRS.callback)] = 200,
    edit_n: Annotated[int, typer.Option(
        "--edit-n", help="Prompts for the one-attribute edits (no decoder).",
        callback=options.PAIRS.callback)] = 200,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Read the circuit's heads at S1+1, S2 and END with InversionView (which attributes
    of the query the in-epsilon samples keep) beside the DLA baseline (the paper's
    Table 4: is the expected name among the 30 tokens the head promotes or suppresses)
    and one-attribute edits (how far the head's output moves when one attribute of the
    prompt changes: what its epsilon-preimage must keep, measured without the decoder)."""
    from inversionview.decoder.store import decoder_for
    from inversionview.ioi.circuit import classify, head_scores
    from inversionview.ioi.readings import READ_POSITIONS, dla_table, edit_table, read_heads

    named = None if heads is None else _head_names(heads)
    _apply_threads(threads)
    probed = _load(model, "ioi")
    trained, _ = decoder_for(probed, model, decoder)
    # the heads' roles as `ioi heads` classes them, also for heads named in --heads
    classified: dict[str, list[str]] = {}
    for role, names in classify(head_scores(probed, n, seed)["heads"]).items():
        for name in names:
            classified.setdefault(name, []).append(role)
    roles: dict[str, list[str]] = {}
    if named is None:
        roles = classified
        if not roles:
            raise IOIError(f"no heads to read: no head was put in a role on --n {n} prompts; "
                           "give --heads, or more prompts with --n")
    else:
        roles = {head: classified.get(head, []) for head in _heads_of(probed, named)}
    targets = [(head, position) for head in roles for position in READ_POSITIONS]
    readings = read_heads(probed, trained, targets, queries, seed, candidates)
    dla = dla_table(probed, [(head, position, "io" if "name mover" in roles[head] else "s")
                             for head, position in targets], dla_n, seed)
    edits = edit_table(probed, targets, edit_n, seed)
    record = {"model": model, "roles": roles, "readings": readings, "dla": dla,
              "edits": edits}
    _emit(record, as_json, format_readings(record))

app.add_typer(ioi_app, name="ioi")


def format_readings(record) -> str:
    """Per head and position: the in-ε agreement of each attribute (outside in parentheses),
    then the DLA rates."""
    from inversionview.ioi.readings import READ_ATTRIBUTES

    def cell(values) -> str:
        inside, outside = values["inside"], values["outside"]
        text = "-" if inside is None else f"{inside:.2f}"
        return f"{text} ({'-' if outside is None else f'{outside:.2f}'})"

    lines = ["InversionView: fraction of in-epsilon samples keeping the query's attribute "
             "(out of epsilon in parentheses)", "",
             f"{'head@position':16} {'roles':22} {'in-eps':>7} " + " ".join(
                 f"{name:>13}" for name in READ_ATTRIBUTES)]
    for row in record["readings"]:
        roles = ", ".join(record["roles"].get(row["site"], [])) or "-"
        lines.append(f"{row['site'] + '@' + row['position']:16} {roles[:22]:22} "
                     f"{row['distinct_in_epsilon']:>7} " + " ".join(
                         f"{cell(row['attributes'][name]):>13}" for name in READ_ATTRIBUTES))
    lines += ["", "DLA (paper's Table 4): expected name among the head's top 30 promoted / "
              "suppressed tokens (and the first name there)", "",
              f"{'head@position':16} {'name':>4} {'promoted':>9} {'& first':>8} "
              f"{'suppressed':>10} {'& first':>8}"]
    for row in record["dla"]:
        lines.append(f"{row['site'] + '@' + row['position']:16} {row['expected']:>4} "
                     f"{row['top30_promoted']:>9.2f} {row['top30_promoted_first_name']:>8.2f} "
                     f"{row['top30_suppressed']:>10.2f} {row['top30_suppressed_first_name']:>8.2f}")
    if record.get("edits"):
        lines += ["", format_edits(record["edits"])]
    return "\n".join(lines)


def format_edits(rows) -> str:
    """Per head and position: each one-attribute edit's median distance (and the fraction
    of edits within epsilon in parentheses)."""
    from inversionview.ioi.readings import EDITS

    first = rows[0]
    lines = [f"One-attribute edits on {first['n']} prompts (no decoder): median normalised "
             f"distance of the edited prompt's activation (fraction within epsilon "
             f"{first['epsilon']:g} in parentheses); an edit that stays within epsilon does not "
             f"matter to the activation", "",
             f"{'head@position':16} " + " ".join(f"{kind:>13}" for kind in EDITS)]
    for row in rows:
        lines.append(f"{row['site'] + '@' + row['position']:16} " + " ".join(
            f"{row['edits'][kind]['median']:>6.2f} ({row['edits'][kind]['inside']:.2f})"
            for kind in EDITS))
    return "\n".join(lines)


def format_heads(scores, roles) -> str:
    """The head table (a row per head: heads in any role first, each group by the size of its
    patching effect) and the roles."""
    def number(value) -> str:
        return "     -" if value is None else f"{value:>6.2f}"

    lines = [f"ABC {scores['patching']} patching on {scores['n']} prompts: logit difference {scores['clean_logit_difference']:.2f}"
             f" -> {scores['abc_logit_difference']:.2f} with S2 replaced by a third name "
             f"(patch = change of LD as a fraction of that drop: 1, this head alone makes all of it; negative, it works against it)", "",
             f"{'head':6} {'END>IO':>6} {'END>S2':>6} {'S2>S1':>6} {'dup':>6} {'induct':>6} "
             f"{'prev':>6} {'copy':>6} {'-copy':>6} {'patch':>6} {'@END':>6}  roles"]
    role_of = {}
    for role, names in roles.items():
        for name in names:
            role_of.setdefault(name, []).append(role)
    # heads in a role first, then by the size of their patching effect, largest first
    ordered = sorted(scores["heads"], key=lambda h: (h.name not in role_of,
                                                     -abs(h.patch_all or 0.0), h.name))
    for head in ordered:
        lines.append(f"{head.name:6} {number(head.attn_end_io)} {number(head.attn_end_s2)} "
                     f"{number(head.attn_s2_s1)} {number(head.duplicate)} "
                     f"{number(head.induction)} {number(head.previous)} {number(head.copying)} "
                     f"{number(head.negative_copying)} {number(head.patch_all)} "
                     f"{number(head.patch_end)}  {', '.join(role_of.get(head.name, []))}")
    lines.append("")
    lines.extend(f"{role}: {', '.join(names) or '(none)'}" for role, names in roles.items())
    return "\n".join(lines)
