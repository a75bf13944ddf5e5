"""The human view of a query result in a terminal: a coloured table of samples sorted by
distance, a rule at ε, and the attribute agreement table.

Token backgrounds show ΔP (blue: the query activation made the token more likely than the
uninformative z_BOS did; red: less likely; intensity |ΔP|). The colours are ANSI escapes,
which click strips when the output is not a terminal.
"""

from __future__ import annotations

import math
from typing import Any

from inversionview.preimage.result import PreimageResult, Sample

BAR_WIDTH = 10
MAX_ATTRIBUTE_COLUMNS = 6
RESET = "\x1b[0m"


def delta_p_rgb(change: float | None) -> tuple[int, int, int] | None:
    """Background colour of a token with ΔP ``change``: white-to-blue for a rise,
    white-to-red for a fall (None: no colour, e.g. BOS)."""
    if change is None or abs(change) < 0.02:
        return None
    strength = min(abs(change), 1.0)
    fade = round(255 * (1 - 0.75 * strength))
    return (fade, fade, 255) if change > 0 else (255, fade, fade)


def _coloured_tokens(tokens: list[str], changes: list[float | None] | None, width: int) -> str:
    pieces = []
    for index, token in enumerate(tokens):
        rgb = delta_p_rgb(changes[index]) if changes and index < len(changes) else None
        if rgb is None:
            pieces.append(token)
        else:
            pieces.append(f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m\x1b[38;2;0;0;0m{token}{RESET}")
    return "".join(pieces) + " " * max(width - len(tokens), 0)


def _bar(distance: float, scale: float) -> str:
    if not math.isfinite(distance):
        return " " * BAR_WIDTH
    eighths = min(round(distance / scale * BAR_WIDTH * 8), BAR_WIDTH * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")).ljust(BAR_WIDTH)


def format_value(value: Any) -> str:
    """Compact text of an attribute value (a dict of counts reads ``c5 v8 z3``)."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return " ".join(f"{key}{count}" for key, count in value.items())
    return str(value)


def _fraction(value: float | None) -> str:
    return "   -" if value is None else f"{value:4.2f}"


#: How the views say that the decoder drew only the task's inputs (QueryConfig.constrain).
CONSTRAINED = " (drawn within the task's grammar)"


def render_result(result: PreimageResult) -> str:
    """The whole terminal view of ``result``."""
    stats = result.stats
    attributes = result.attribute_names[:MAX_ATTRIBUTE_COLUMNS]
    query = result.query
    width = max([len(query.tokens)] + [len(s.tokens) for s in result.samples])
    finite = [s.distance for s in result.samples if math.isfinite(s.distance)]
    scale = max(finite + [2 * result.epsilon])
    metric = "normalised Euclidean" if result.metric == "euclidean" else "1 - cos"
    where = "at the query's position" if result.fixed_position else "min over positions"
    lines = [
        f"{result.task} model {result.model}",
        f"site {result.site} ({result.hook}), position {result.position_label!r} (index "
        f"{result.position}); {metric} distance, {where}, ε {result.epsilon:g}",
        f"{stats.candidates} candidates, {stats.distinct} distinct, {stats.in_epsilon} in ε "
        f"({stats.in_epsilon_rate:.1%}), {stats.in_epsilon_distinct} distinct in ε, "
        f"{stats.valid_rate:.0%} valid{CONSTRAINED if result.constrained else ''}; "
        f"{stats.seconds:.2f} s",
        *([f"completeness: {result.completeness.describe()}"] if result.completeness else []),
        "",
    ]
    widths = [max(len(name), 5) for name in attributes]
    header = (f"{'distance':<{BAR_WIDTH + 7}} {'input':<{width}} {'(best)':<8} "
              + " ".join(f"{name:>{w}}" for name, w in zip(attributes, widths)) + "  ×")
    lines.append(header)
    query_cells = " ".join(f"{format_value(query.attributes.get(n)):>{w}}"
                           for n, w in zip(attributes, widths))
    lines.append(f"{'query':<{BAR_WIDTH + 7}} {query.text:<{width}} "
                 f"{'(' + result.position_label + ')':<8} {query_cells}")
    rule_drawn = False
    for sample in result.samples:
        if not rule_drawn and sample.distance > result.epsilon:
            lines.append(f"{'─' * (BAR_WIDTH + 7)} ε = {result.epsilon:g} " + "─" * max(width - 2, 0))
            rule_drawn = True
        lines.append(_sample_row(sample, attributes, widths, width, scale, query.attributes))
    if not rule_drawn:
        lines.append(f"{'─' * (BAR_WIDTH + 7)} ε = {result.epsilon:g}")
    lines.append(f"showing {stats.shown} of {stats.distinct} distinct "
                 f"({stats.shown_in_epsilon} in ε); colours: ΔP (blue up, red down)")
    if result.attribute_agreement:
        lines += ["", "attribute agreement with the query (the decoder's distinct well-formed samples):",
                  f"{'attribute':<14} {'query':>10} {'inside':>7} {'outside':>8} {'contrast':>9}"]
    for row in result.attribute_agreement:
        contrast = "      -" if row["contrast"] is None else f"{row['contrast']:+9.2f}"
        lines.append(f"{row['attribute']:<14} {format_value(row['query_value'])[:10]:>10} "
                     f"{_fraction(row['inside']):>7} {_fraction(row['outside']):>8} {contrast}")
    if result.verification:
        lines += ["", "the query's activation replaced by a sample's (patching), output change:"]
        for side in ("inside", "outside"):
            mean = result.verification.get(f"{side}_mean")
            if mean:
                lines.append(f"  {side} ε ({len(result.verification[side])} samples): KL max "
                             f"{mean['kl_max']:.4f}, top prediction changed "
                             f"{mean['top_prediction_changed']:.0%}")
    return "\n".join(lines)


def _sample_row(sample: Sample, attributes: list[str], widths: list[int], width: int,
                scale: float, query_attributes: dict[str, Any]) -> str:
    distance = "  inf" if not math.isfinite(sample.distance) else f"{sample.distance:5.3f}"
    cells = []
    for name, w in zip(attributes, widths):
        text = f"{format_value(sample.attributes.get(name)):>{w}}"
        same = name in sample.attributes and sample.attributes.get(name) == query_attributes.get(name)
        cells.append(f"\x1b[1m{text}{RESET}" if same else text)
    flag = "" if sample.valid else f"  invalid: {sample.reason}"
    count = f"  {sample.multiplicity}" if sample.multiplicity > 1 else ""
    count += "  (search)" if sample.found_by != "decoder" else ""
    return (f"{_bar(sample.distance, scale)} {distance:>6} "
            f"{_coloured_tokens(sample.tokens, sample.delta_p, width)} "
            f"{'(' + sample.best_position_label + ')':<8} " + " ".join(cells) + count + flag)
