"""The human view of a query result in a terminal: a coloured table of samples sorted by
distance, a rule at ε, and the attribute agreement table.

Token backgrounds show ΔP (blue: the query activation made the token more likely than the
uninformative z_BOS did; red: less likely; intensity |ΔP|). The colours are ANSI escapes,
which click strips when the output is not a terminal.
"""

from __future__ import annotations

import math
from typing import Any

from typing import TYPE_CHECKING


if TYPE_CHECKING:  # the record's types only: a result renders itself with these views
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


#: Tokens of a sample's continuation (after its cut prefix) shown, dimmed, before "…".
CONTINUATION_SHOWN = 12
DIM = "\x1b[2m"


def shown_tokens(tokens: list[str], cut: int) -> tuple[list[str], list[str], bool]:
    """A sample's evidence (``tokens[:cut + 1]``, all of them when ``cut`` < 0), the shown
    part of its continuation, and whether more of it was left out."""
    if cut < 0:
        return tokens, [], False
    rest = tokens[cut + 1:]
    return tokens[: cut + 1], rest[:CONTINUATION_SHOWN], len(rest) > CONTINUATION_SHOWN


def on_background(text: str, rgb: tuple[int, int, int] | None) -> str:
    """``text`` in black on the background ``rgb`` (as it is when ``rgb`` is None)."""
    if rgb is None:
        return text
    return f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m\x1b[38;2;0;0;0m{text}{RESET}"


def _coloured_tokens(tokens: list[str], changes: list[float | None] | None, width: int,
                     cut: int = -1) -> str:
    """The tokens with ΔP backgrounds; what follows the cut (best position) dimmed and cut
    short; padded to ``width`` characters."""
    evidence, continuation, more = shown_tokens(tokens, cut)
    pieces = []
    for index, token in enumerate(evidence):
        rgb = delta_p_rgb(changes[index]) if changes and index < len(changes) else None
        pieces.append(on_background(token, rgb))
    tail = "".join(continuation) + ("…" if more else "")
    if tail:
        pieces.append(f"{DIM}{tail}{RESET}")
    length = len("".join(evidence)) + len(tail)
    return "".join(pieces) + " " * max(width - length, 0)


def _shown_length(tokens: list[str], cut: int) -> int:
    evidence, continuation, more = shown_tokens(tokens, cut)
    return len("".join(evidence)) + len("".join(continuation)) + more


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


#: The widest an attribute cell grows (a longer value ends in "…"): "Republic of the Congo"
#: fits, a template sentence does not.
MAX_CELL = 22


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in "…" where it was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell_widths(attributes: list[str], rows: list[dict[str, Any]]) -> list[int]:
    """Each attribute column as wide as its name or its widest value, up to ``MAX_CELL``."""
    return [min(MAX_CELL, max([len(name), 5] + [len(format_value(row.get(name))) for row in rows]))
            for name in attributes]


def _fraction(value: float | None) -> str:
    return "   -" if value is None else f"{value:4.2f}"


#: How the views say that the decoder drew only the task's inputs (QueryConfig.constrain).
CONSTRAINED = " (drawn within the task's grammar)"


#: A token whose substitutions stay inside ε at least this often is read as ignored.
IGNORED_SHARE = 0.5


def token_shade(row: dict) -> tuple[float, bool]:
    """How a token of the query is coloured under it: how much more often the members keep it
    anywhere than the inputs outside ε do (0 to 1; 0 when one side is empty), and whether the
    activation ignores it (its substitutions mostly stay inside ε)."""
    inside, outside = row.get("anywhere_inside"), row.get("anywhere_outside")
    kept = max(0.0, inside - outside) if inside is not None and outside is not None else 0.0
    ignored = row.get("stays") is not None and row["stays"] >= IGNORED_SHARE
    return kept, ignored


def context_line(record: dict[str, int] | None) -> str:
    """The query's context (``PreimageResult.query_context``) in one line for people (""
    when nothing had the query's prefix)."""
    if not record or not record.get("continuations"):
        return ""
    return (f"the query's own prefix, with other continuations: {record['continuations']:,} "
            f"distinct ({record['draws']:,} draws), left out of every reading and rate")


def render_result(result: PreimageResult) -> str:
    """The whole terminal view of ``result``."""
    stats = result.stats
    attributes = result.attribute_names[:MAX_ATTRIBUTE_COLUMNS]
    query = result.query
    width = max([len(query.text)] + [_shown_length(s.tokens, s.best_position) for s in result.samples])
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
        *([f"left out: {context}"] if (context := context_line(result.query_context)) else []),
        *profile_lines(result),
        "",
    ]
    widths = _cell_widths(attributes, [query.attributes] + [s.attributes for s in result.samples])
    header = (f"{'distance':<{BAR_WIDTH + 7}} {'input':<{width}} {'(best)':<8} "
              + " ".join(f"{name:>{w}}" for name, w in zip(attributes, widths)) + "  ×")
    lines.append(header)
    query_cells = " ".join(f"{fit(format_value(query.attributes.get(n)), w):>{w}}"
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
        names = max([14] + [len(row["attribute"]) for row in result.attribute_agreement])
        values = max(10, _cell_widths(["query"], [{"query": row["query_value"]}
                                                  for row in result.attribute_agreement])[0])
        lines += ["", "attribute agreement with the query (the decoder's distinct well-formed samples):",
                  f"{'attribute':<{names}} {'query':>{values}} {'inside':>7} {'outside':>8} {'contrast':>9}"]
    for row in result.attribute_agreement:
        contrast = f"{'-':>9}" if row["contrast"] is None else f"{row['contrast']:+9.2f}"
        lines.append(f"{row['attribute']:<{names}} {fit(format_value(row['query_value']), values):>{values}} "
                     f"{_fraction(row['inside']):>7} {_fraction(row['outside']):>8} {contrast}")
    if not result.attribute_agreement and result.token_reading:
        lines += ["", *token_reading_lines(result)]
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
        text = f"{fit(format_value(sample.attributes.get(name)), w):>{w}}"
        same = name in sample.attributes and sample.attributes.get(name) == query_attributes.get(name)
        cells.append(f"\x1b[1m{text}{RESET}" if same else text)
    flag = "" if sample.valid else f"  invalid: {sample.reason}"
    count = f"  {sample.multiplicity}" if sample.multiplicity > 1 else ""
    count += "  (search)" if sample.found_by != "decoder" else ""
    return (f"{_bar(sample.distance, scale)} {distance:>6} "
            f"{_coloured_tokens(sample.tokens, sample.delta_p, width, sample.best_position)} "
            f"{'(' + sample.best_position_label + ')':<8} " + " ".join(cells) + count + flag)


def profile_lines(result: PreimageResult) -> list[str]:
    """The ε profile: distinct members within each radius, and the nearest ones when none is
    inside ε."""
    profile = result.epsilon_profile
    if not profile:
        return []
    counts = ", ".join(f"{radius:g}: {count:,}" for radius, count in zip(profile["radii"], profile["members"]))
    lines = [f"ε profile (distinct members within each distance, everything scored): {counts}"]
    inside = dict(zip(profile["radii"], profile["members"])).get(result.epsilon, 0)
    if not inside and profile["nearest"]:
        lines.append("nothing in ε; the nearest members:")
        lines += [f"  {near['distance']:.3f} {''.join(near['tokens'])!r} ({near['found_by']})"
                  for near in profile["nearest"]]
    return lines


def reading_rgb(kept: float) -> tuple[int, int, int] | None:
    """Background of a query token kept ``kept`` (0 to 1) more often inside ε than outside:
    white to green (None below 0.05)."""
    if kept < 0.05:
        return None
    fade = round(255 * (1 - 0.7 * min(kept, 1.0)))
    return (fade, 255, fade)


def coloured_reading(rows: list[dict]) -> str:
    """The query's prefix, each token on its reading's colour (``token_shade``)."""
    pieces = []
    for row in rows:
        kept, ignored = token_shade(row)
        text = on_background(row["token"], reading_rgb(kept))
        pieces.append(f"{DIM}{text}{RESET}" if ignored else text)
    return "".join(pieces)


def token_reading_lines(result: PreimageResult) -> list[str]:
    """The token reading: per token of the query's prefix, how often members keep it (at the
    same place back from their best position, and anywhere) against inputs outside ε, and the
    share of its substitutions that stay inside ε."""
    rows = result.token_reading
    inside, outside = rows[0]["n_inside"], rows[0]["n_outside"]
    width = max(len(repr(row["token"])) for row in rows) + 1
    lines = [f"token reading ({inside:,} members inside ε, {outside:,} inputs outside; kept at "
             f"the same place back from the best position / anywhere; substitutions that stay "
             f"inside ε):",
             "the query as read (green: kept by members more than by inputs outside; dimmed: "
             "substitutions stay inside ε): " + coloured_reading(rows),
             f"{'token':<{width}} {'kept in':>8} {'out':>5} {'anywhere in':>12} {'out':>5} "
             f"{'stays':>6}"]
    for row in rows:
        stays = "     -" if row["stays"] is None else f"{row['stays']:6.2f}"
        lines.append(f"{row['token']!r:<{width}} {_fraction(row['kept_inside']):>8} "
                     f"{_fraction(row['kept_outside']):>5} {_fraction(row['anywhere_inside']):>12} "
                     f"{_fraction(row['anywhere_outside']):>5} {stays}")
    return lines
