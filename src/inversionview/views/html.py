"""A query result as one self-contained HTML page: inline CSS and SVG, the result record
embedded as JSON, nothing fetched at view time (no external URL anywhere in the page)."""

from __future__ import annotations

import html
import json
import math
from typing import TYPE_CHECKING

from inversionview.views.terminal import (CONSTRAINED, context_line, delta_p_rgb, format_value,
                                          profile_lines, reading_rgb, shown_tokens, token_shade)

if TYPE_CHECKING:  # the record's types only: a result renders itself with these views
    from inversionview.preimage.result import PreimageResult, Sample

# Every rule is scoped to the view's own box, so that the view sits in a notebook cell
# without restyling the notebook (the page and the notebook show the same markup).
SCOPE = "inversionview"
STYLE = f"""
.{SCOPE} {{ font: 14px/1.4 system-ui, sans-serif; color: #222; }}
.{SCOPE} h1 {{ font-size: 1.3em; margin: 0 0 .3em; }}
.{SCOPE} h2 {{ font-size: 1.1em; }}
.{SCOPE} .meta {{ color: #555; margin: .2em 0; }}
.{SCOPE} table {{ border-collapse: collapse; margin: .8em 0; }}
.{SCOPE} td, .{SCOPE} th {{ padding: 1px 8px; text-align: right; white-space: nowrap; }}
.{SCOPE} th {{ border-bottom: 1px solid #999; font-weight: 600; }}
.{SCOPE} td.input {{ text-align: left; font-family: ui-monospace, monospace; letter-spacing: .05em; }}
.{SCOPE} td.input span {{ padding: 0 1px; border-radius: 2px; white-space: pre; }}
.{SCOPE} td.input span.query-pos {{ outline: 2px solid #335; }}
.{SCOPE} tr.query td {{ font-weight: 600; background: #f3f3f3; }}
.{SCOPE} tr.rule td {{ border-top: 2px solid #c33; color: #c33; font-size: .85em; text-align: left; }}
.{SCOPE} tr.invalid td.input {{ text-decoration: underline wavy #c90; }}
.{SCOPE} .bar {{ display: inline-block; height: .7em; background: #889; vertical-align: middle; }}
.{SCOPE} .same {{ font-weight: 700; }}
.{SCOPE} .legend span {{ padding: 0 4px; margin-right: .5em; }}
.{SCOPE} td.input span.continuation {{ color: #aaa; }}
.{SCOPE} p.reading {{ font-family: monospace; white-space: pre; }}
.{SCOPE} p.reading span.ignored {{ color: #aaa; text-decoration: line-through; }}
"""


def render_html(result: PreimageResult) -> str:
    """The view as one self-contained page, the result record embedded as JSON."""
    title = _title(result)
    return "\n".join([
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body {{ margin: 1.5em; }}</style></head><body>",
        render_fragment(result),
        "<script type='application/json' id='result'>",
        json.dumps(result.to_record()).replace("<", "\\u003c"),
        "</script></body></html>",
    ])


def render_fragment(result: PreimageResult) -> str:
    """The view's markup with its scoped style: the page's body, and a notebook's output."""
    stats = result.stats
    attributes = result.attribute_names[:8]
    parts = [
        f"<div class='{SCOPE}'><style>{STYLE}</style>",
        f"<h1>{html.escape(_title(result))}</h1>",
        f"<p class='meta'>model {html.escape(result.model)} · decoder {html.escape(result.decoder)}"
        f" · site {html.escape(result.site)} ({html.escape(result.hook)}) · position "
        f"{html.escape(result.position_label)} (index {result.position}) · {result.metric} "
        f"distance{', at the query position' if result.fixed_position else ', min over positions'}"
        f" · ε {result.epsilon:g} · seed {result.seed}</p>",
        f"<p class='meta'>{stats.candidates} candidates, {stats.distinct} distinct, "
        f"{stats.in_epsilon} in ε ({stats.in_epsilon_rate:.1%}), {stats.in_epsilon_distinct} "
        f"distinct in ε, {stats.valid_rate:.0%} valid"
        f"{html.escape(CONSTRAINED) if result.constrained else ''}; {stats.seconds:.2f} s. Showing "
        f"{stats.shown} ({stats.shown_in_epsilon} in ε).</p>",
        *([f"<p class='meta completeness'>Completeness: "
           f"{html.escape(result.completeness.describe())}.</p>"] if result.completeness else []),
        "<p class='legend'>token colour = ΔP: <span style='background:rgb(64,64,255)'>raised"
        "</span><span style='background:rgb(255,64,64)'>lowered</span> by the query activation "
        "(against z<sub>BOS</sub>)</p>",
        *_reading_html(result),
        _samples_table(result, attributes),
        *(["<h2>Attribute agreement with the query</h2>", _agreement_table(result)]
          if result.attribute_agreement else []),
        "<h2>Distance histogram (all candidates)</h2>",
        _histogram_svg(result),
        "</div>",
    ]
    return "\n".join(parts)


def _title(result: PreimageResult) -> str:
    return f"{result.task} {result.site} at {result.position_label!r}: {result.query.text}"


def _tokens_html(sample_tokens: list[str], changes: list[float | None] | None,
                 marked: int | None = None, cut: int = -1) -> str:
    """Token spans with ΔP backgrounds; after ``cut`` (a sample's best position) the
    continuation, which is no evidence, dimmed and cut short."""
    evidence, continuation, more = shown_tokens(sample_tokens, cut)
    spans = []
    for index, token in enumerate(evidence):
        change = changes[index] if changes and index < len(changes) else None
        rgb = delta_p_rgb(change)
        style = f" style='background:rgb{rgb}'" if rgb else ""
        tip = f" title='ΔP {change:+.3f}'" if change is not None else ""
        mark = " class='query-pos'" if index == marked else ""
        spans.append(f"<span{mark}{style}{tip}>{html.escape(token)}</span>")
    if continuation:
        text = "".join(continuation) + ("…" if more else "")
        spans.append(f"<span class='continuation' title='after the best position: not evidence'>"
                     f"{html.escape(text)}</span>")
    return "".join(spans)


def _reading_html(result: PreimageResult) -> list[str]:
    """The query-context line, the ε profile and (without attributes) the token reading."""
    parts = []
    context = context_line(result.query_context)
    if context:
        parts.append(f"<p class='meta query-context'>Left out: {html.escape(context)}.</p>")
    parts += [f"<p class='meta epsilon-profile'>{html.escape(line)}</p>" for line in profile_lines(result)]
    if result.token_reading and not result.attribute_agreement:
        def fraction(value):
            return "-" if value is None else f"{value:.2f}"
        spans = []
        for row in result.token_reading:
            kept, ignored = token_shade(row)
            rgb = reading_rgb(kept)
            style = f" style='background:rgb{rgb}'" if rgb else ""
            mark = " class='ignored'" if ignored else ""
            tip = (f"kept by {fraction(row['anywhere_inside'])} of members, {fraction(row['anywhere_outside'])} "
                   f"of inputs outside; substitutions staying inside: {fraction(row['stays'])}")
            spans.append(f"<span{mark}{style} title='{html.escape(tip)}'>{html.escape(row['token'])}</span>")
        rows = ["<h2>Token reading</h2>",
                "<p class='meta'>The query as read (green: members keep the token more often than "
                "inputs outside ε do; struck through: its substitutions stay inside ε):</p>",
                f"<p class='input reading'>{''.join(spans)}</p>",
                "<table class='token-reading'><tr><th>token</th><th>kept inside ε</th><th>outside</th>"
                "<th>anywhere inside</th><th>outside</th><th>substitutions staying inside</th></tr>"]
        for row in result.token_reading:
            rows.append(f"<tr><td class='input'><span>{html.escape(row['token'])}</span></td>"
                        f"<td>{fraction(row['kept_inside'])}</td><td>{fraction(row['kept_outside'])}</td>"
                        f"<td>{fraction(row['anywhere_inside'])}</td><td>{fraction(row['anywhere_outside'])}</td>"
                        f"<td>{fraction(row['stays'])} ({row['substitutions']})</td></tr>")
        rows.append("</table>")
        parts.append("\n".join(rows))
    return parts


def _samples_table(result: PreimageResult, attributes: list[str]) -> str:
    query = result.query
    finite = [s.distance for s in result.samples if math.isfinite(s.distance)]
    scale = max(finite + [2 * result.epsilon])
    head = "".join(f"<th>{html.escape(a)}</th>" for a in attributes)
    rows = [f"<table><tr><th>distance</th><th></th><th>input</th><th>best</th>{head}<th>×</th></tr>",
            f"<tr class='query'><td>query</td><td></td><td class='input'>"
            f"{_tokens_html(query.tokens, None, result.position)}</td><td>({html.escape(result.position_label)})</td>"
            + "".join(f"<td>{html.escape(format_value(query.attributes.get(a)))}</td>"
                      for a in attributes) + "<td></td></tr>"]
    rule_drawn = False
    for sample in result.samples:
        if not rule_drawn and sample.distance > result.epsilon:
            rows.append(f"<tr class='rule'><td colspan='{5 + len(attributes)}'>ε = "
                        f"{result.epsilon:g}</td></tr>")
            rule_drawn = True
        rows.append(_sample_row(sample, attributes, scale, query.attributes))
    rows.append("</table>")
    return "\n".join(rows)


def _sample_row(sample: Sample, attributes: list[str], scale: float, query_attributes: dict) -> str:
    finite = math.isfinite(sample.distance)
    width = min(sample.distance / scale, 1.0) * 120 if finite else 0
    cells = []
    for name in attributes:
        same = name in sample.attributes and sample.attributes[name] == query_attributes.get(name)
        value = html.escape(format_value(sample.attributes.get(name)))
        cells.append(f"<td class='same'>{value}</td>" if same else f"<td>{value}</td>")
    invalid = "" if sample.valid else f" class='invalid' title='{html.escape(sample.reason)}'"
    distance = f"{sample.distance:.3f}" if finite else "inf"
    return (f"<tr{invalid}><td>{distance}</td><td><span class='bar' style='width:{width:.0f}px'>"
            f"</span></td><td class='input'>{_tokens_html(sample.tokens, sample.delta_p, cut=sample.best_position)}</td>"
            f"<td>({html.escape(sample.best_position_label)})</td>{''.join(cells)}"
            f"<td>{sample.multiplicity if sample.multiplicity > 1 else ''}</td></tr>")


def _agreement_table(result: PreimageResult) -> str:
    def fraction(value):
        return "-" if value is None else f"{value:.2f}"

    rows = ["<table><tr><th>attribute</th><th>query</th><th>inside ε</th><th>outside ε</th>"
            "<th>contrast</th><th>n inside</th><th>n outside</th></tr>"]
    for row in result.attribute_agreement:
        contrast = "-" if row["contrast"] is None else f"{row['contrast']:+.2f}"
        rows.append(f"<tr><td>{html.escape(row['attribute'])}</td>"
                    f"<td>{html.escape(format_value(row['query_value']))}</td>"
                    f"<td>{fraction(row['inside'])}</td><td>{fraction(row['outside'])}</td>"
                    f"<td>{contrast}</td><td>{row['n_inside']}</td><td>{row['n_outside']}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _histogram_svg(result: PreimageResult) -> str:
    counts = result.histogram["counts"]
    edges = result.histogram["edges"]
    peak = max(counts + [1])
    bar, height = 22, 120
    bars = []
    for index, count in enumerate(counts):
        h = count / peak * height
        inside = edges[index + 1] is not None and edges[index + 1] <= result.epsilon + 1e-9
        colour = "#46a" if inside else "#aaa"
        label = f"≥ {edges[index]}" if edges[index + 1] is None else f"{edges[index]}–{edges[index + 1]}"
        bars.append(f"<rect x='{index * bar}' y='{height - h:.1f}' width='{bar - 2}' "
                    f"height='{h:.1f}' fill='{colour}'><title>{label}: {count}</title></rect>")
    width = bar * len(counts)
    return (f"<svg role='img' width='{width}' height='{height + 16}'>{''.join(bars)}"
            f"<text x='0' y='{height + 13}' font-size='11'>0</text>"
            f"<text x='{width - 30}' y='{height + 13}' font-size='11'>{edges[-2]}+</text></svg>")
