"""``inversionview`` patch, verify, dla, ablate: activation patching, the readout checked by
patching, direct logit attribution and mean ablation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from inversionview import options
from inversionview.cli.app import app
from inversionview.cli.common import (CandidatesOpt, DecoderOpt, EpsilonOpt, FixedOpt, ForceOpt,
                                      InputOpt, JsonOpt, Metric, MetricOpt, ModelArg, NoiseOpt,
                                      PositionOpt, RawOpt, SeedOpt, SiteOpt, TaskOpt,
                                      TemperatureOpt, ThreadsOpt, _apply_threads, _emit, _flag,
                                      _load, _query_setup)
from inversionview.errors import UserError, echo


def _one_component(probed, spec: str):
    from inversionview.verify.patching import parse_components

    components = parse_components(probed, spec)
    if len(components) != 1:
        raise UserError(f"give one SITE@POSITION, got {len(components)}: {echo(spec)}")
    return components[0]


def _contrast_option(contrast: str) -> tuple[str, tuple[str, ...]]:
    """``flip`` / ``random`` / ``resample:F1,S1`` -> (kind, places)."""
    kind, _, places = contrast.partition(":")
    return kind, tuple(p.strip() for p in places.split(",") if p.strip())


@app.command()
def patch(
    model: ModelArg,
    components: Annotated[str, typer.Option("--components", help="SITE@POSITION, comma "
                                            "separated, in order (e.g. a0.0@query,a1.0@:).")],
    task: TaskOpt = None, raw: RawOpt = False,
    contrast: Annotated[Optional[str], typer.Option(
        "--contrast", help="flip (counting), resample:F1,S1 (addition), or random (the "
        "default).")] = None,
    pairs_file: Annotated[Optional[Path], typer.Option("--pairs", help="Your own pairs "
                          "instead (a language model needs them): JSON Lines with original, "
                          "contrast, answer and contrast_answer per line; the first --n are "
                          "used.")] = None,
    filter_expression: Annotated[Optional[str], typer.Option("--filter", help="Keep originals "
                                 "whose attributes match, e.g. 'A1==1'.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="The answer token "
                      "(counting: count; addition: A1..A4); default: the task's first.")] = None,
    n: Annotated[int, typer.Option("--n", help="Pairs in the test set (with --pairs: the "
                                   "file's first N).", callback=options.PAIRS.callback)] = 500,
    cumulative: Annotated[bool, _flag("--cumulative", "Add components one at a time, left to "
                                      "right and right to left.")] = False,
    seed: SeedOpt = 0,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the Fig. 4a-style plot "
                                                 "(.png, .pdf or .svg).")] = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Activation patching: LD of the original answer against the contrast's, patched."""
    from inversionview.verify.patching import (PatchingExperiment, contrast_pairs, given_pairs,
                                               parse_components, read_pair_lines)

    if pairs_file is not None:
        drawing = [name for name, value in (("--contrast", contrast), ("--filter",
                   filter_expression), ("--target", target)) if value is not None]
        if drawing:
            raise UserError(f"{' and '.join(drawing)} {'say' if len(drawing) > 1 else 'says'} "
                            f"how pairs are drawn; --pairs gives them (each line its contrast "
                            f"and answers): give one or the other")
    if plot is not None:
        options.check_output_file(plot, "--plot", options.PLOT_SUFFIXES, force)
    _apply_threads(threads)
    probed = _load(model, task, raw)
    parsed = parse_components(probed, components)
    rows, lines = read_pair_lines(pairs_file) if pairs_file is not None else ([], [])
    if pairs_file is not None:
        pairs = given_pairs(probed.task, rows[:n], pairs_file.name, lines[:n])
        contrast = pairs_file.name
    else:
        contrast = contrast if contrast is not None else "random"
        kind, places = _contrast_option(contrast)
        pairs = contrast_pairs(probed.task, n, kind, target, seed, places, filter_expression)
    experiment = PatchingExperiment(probed, pairs)
    report = experiment.cumulative(parsed) if cumulative else experiment.each(parsed)
    record = report.to_record()
    if pairs_file is not None:
        record["pairs_in_file"] = len(rows)
    if plot is not None:
        from inversionview.verify.plot import plot_patching

        options.write_output(plot, "--plot", lambda path: plot_patching(
            report, path, title=f"{probed.task.name}: {components} ({contrast})"))
    used = (f"{report.n} pairs" if report.n == len(rows) else
            f"the first {report.n} of the {len(rows):,} pairs (--n {n})")
    drawn = (f"{used} from {pairs_file}" if pairs_file is not None else
             f"{report.n} pairs ({contrast}, target {report.target}; {report.skipped} without a "
             f"contrast, {report.filtered_out} filtered out)")
    lines = [drawn,
             f"LD original {report.original_ld:+.3f}   contrast run {report.contrast_ld:+.3f}"]
    for title, steps in (("left to right" if cumulative else "patched", report.steps),
                         ("right to left", report.steps_right_to_left)):
        if steps is None:
            continue
        lines.append(f"{title}:")
        lines += [f"  {' + '.join(step.components):40s} LD {step.patched_ld:+8.3f}   effect "
                  f"{step.effect:+8.3f}" for step in steps]
    _emit(record, as_json, "\n".join(lines) + (f"\nwrote {plot}" if plot else ""))


@app.command()
def verify(
    model: Annotated[str, typer.Argument(help="Model (default: the bundled counting model).")] = "counting",
    task: TaskOpt = None, raw: RawOpt = False, decoder: DecoderOpt = None, input_text: InputOpt = None,
    site: SiteOpt = None, position: PositionOpt = None, candidates: CandidatesOpt = 1024,
    temperature: TemperatureOpt = None, noise: NoiseOpt = None,
    seed: SeedOpt = 0, epsilon: EpsilonOpt = 0.1, metric: MetricOpt = Metric.euclidean,
    fixed_position: FixedOpt = False,
    per_side: Annotated[int, typer.Option("--per-side", help="Samples patched on each side of ε.",
                                          callback=options.PER_SIDE.callback)] = 5,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Patch the query's activation with in-ε and out-of-ε samples' and show the output change."""
    from inversionview.preimage.query import query_config, run_query
    from inversionview.verify.readout import verify_readout

    _apply_threads(threads)
    config = query_config(candidates, epsilon, metric.value, fixed_position, temperature, noise)
    probed, the_decoder, name, text, site, position = _query_setup(
        model, task, raw, decoder, input_text, site, position)
    result = run_query(probed, the_decoder, text, site, position, config, seed=seed,
                       decoder_name=name)
    report = verify_readout(probed, result, per_side)
    lines = [f"{report['query']}  site {report['site']}  position {result.position_label} "
             f"(index {report['position']}); the query's activation replaced by a sample's "
             f"(at its best position); output change from the query position on:"]
    for side in ("inside", "outside"):
        lines.append(f"{side} ε:")
        for row in report[side]:
            lines.append(f"  {row['text']:34s} D {row['distance']:.3f}  KL max {row['kl_max']:.4f}"
                         f"  mean {row['kl_mean']:.4f}  top prediction changed "
                         f"{row['top_prediction_changed']:.0%}")
        mean = report[f"{side}_mean"]
        if mean:
            lines.append(f"  mean: KL max {mean['kl_max']:.4f}, top prediction changed "
                         f"{mean['top_prediction_changed']:.0%}")
    _emit(report, as_json, "\n".join(lines))


@app.command()
def dla(
    model: ModelArg,
    component: Annotated[str, typer.Option("--component", help="HEAD@POSITION, e.g. a1.0@:.")],
    task: TaskOpt = None, raw: RawOpt = False,
    input_text: InputOpt = None,
    k: Annotated[int, typer.Option("--k", help="Top tokens shown / counted (at most the "
                                   "vocabulary).", callback=options.TOP_K.callback)] = 5,
    n: Annotated[int, typer.Option("--n", help="Inputs sampled for the top-k statistic (0: one "
                                   "input).", callback=options.DLA_SAMPLES.callback)] = 0,
    target: Annotated[Optional[str], typer.Option("--target", help="With --n: the answer "
                      "token expected among the head's top k (default: the task's first).")] = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Direct logit attribution of a head: top promoted and suppressed tokens; with --n, how
    often the expected answer token is among the top k (the paper's Table 4 statistic)."""
    from inversionview.verify.dla import sampled_expected_rates, top_tokens

    probed = _load(model, task, raw)
    parsed = _one_component(probed, component)
    if n > 0:
        record = sampled_expected_rates(probed, parsed, n, k, target, seed)
        human = (f"{record['component']}: expected {record['target']} token among the top {k} "
                 f"promoted in {record['top_k_promoted_rate']:.1%} of {n} inputs, top "
                 f"{k} suppressed in {record['top_k_suppressed_rate']:.1%}, the most "
                 f"promoted in {record['most_promoted_rate']:.1%}")
    else:
        text = probed.task.normalize(probed.task.example if input_text is None else input_text)
        record = {"component": parsed.name, "input": text, **top_tokens(probed, text, parsed, k)}
        human = (f"{text}  {parsed.name}\n  promoted:   "
                 + "  ".join(f"{t!r} {v:+.2f}" for t, v in record["promoted"])
                 + "\n  suppressed: " + "  ".join(f"{t!r} {v:+.2f}" for t, v in record["suppressed"]))
    _emit(record, as_json, human)


@app.command()
def ablate(
    model: ModelArg,
    component: Annotated[str, typer.Option("--component", help="SITE@POSITION, e.g. x0.post@+.")],
    task: TaskOpt = None, raw: RawOpt = False,
    n: Annotated[int, typer.Option("--n", help="Inputs measured (and as many for the mean).",
                                   callback=options.PAIRS.callback)] = 1000,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mean ablation: replace a component by its mean over other inputs; KL and logit drop at
    every answer token the task has."""
    from inversionview.verify.patching import sampled_mean_ablation

    _apply_threads(threads)
    probed = _load(model, task, raw)
    parsed = _one_component(probed, component)
    rows = sampled_mean_ablation(probed, parsed, n, seed)
    lines = [f"mean ablation of {parsed.name} ({n} inputs; mean over {n} others)",
             "target      n      KL   logit drop  drop rate  accuracy -> ablated"]
    lines += [f"{r['target']:6s} {r['n']:6d} {r['kl']:7.4f} {r['logit_drop']:+11.4f} "
              f"{r['logit_decrement_rate']:9.1%}  {r['accuracy']:7.1%} -> {r['ablated_accuracy']:.1%}"
              for r in rows]
    _emit({"component": parsed.name, "n": n, "rows": rows}, as_json, "\n".join(lines))
