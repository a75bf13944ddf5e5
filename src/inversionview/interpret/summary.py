"""Per-site summaries, the paper's Table 3 in form: for each site and position, what the
in-ε samples of many queries keep of their query and the out-of-ε ones do not.

    summary = summarize(model, decoder, sites=["a1.0"], positions=[":"], queries=20)
    summary.cells[0].kept      # [FeatureRow(name="count", inside=0.99, outside=0.05, ...)]

Every query runs the decoder alone (no local search: the samples are the decoder's draws, as
the paper's agreement tables) with every distinct candidate kept; each feature
(``interpret/features.py``) is scored per query as the fraction of the in-ε samples that keep
it and the fraction of the out-of-ε ones, then averaged over the queries that have samples on
both sides, so that each query weighs the same. A feature is *kept* at a cell when its inside
rate is at least ``KEPT_INSIDE`` (most samples) and exceeds the outside rate by at least ``KEPT_CONTRAST``;
the cell names its kept features, the strongest first, with the number of queries behind it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from inversionview.errors import UserError
from inversionview.interpret.features import TOKEN_OFFSETS, Feature, task_features
from inversionview.tasks.base import TaskInputError

#: A feature is kept at a cell when most in-ε samples keep it (a rate of at least this) ...
KEPT_INSIDE = 0.5
#: ... and at least this much above its out-of-ε rate.
KEPT_CONTRAST = 0.2


@dataclass
class FeatureRow:
    name: str
    kind: str
    inside: float | None  # mean over queries of the in-ε samples' rate of keeping it
    outside: float | None  # the same for the out-of-ε samples
    queries: int  # queries where it applied to samples on both sides

    @property
    def contrast(self) -> float | None:
        if self.inside is None or self.outside is None:
            return None
        return self.inside - self.outside

    @property
    def kept(self) -> bool:
        return (self.inside is not None and self.contrast is not None
                and self.inside >= KEPT_INSIDE and self.contrast >= KEPT_CONTRAST)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "contrast": self.contrast, "kept": self.kept}


@dataclass
class Cell:
    site: str
    position: str
    queries: int  # queries run at this cell
    queries_with_both: int  # queries with samples both in and out of ε
    in_epsilon: int  # distinct in-ε samples, all queries together
    rows: list[FeatureRow] = field(default_factory=list)
    # Free text: the query tokens the in-ε samples most often contain, across the queries.
    shared_tokens: list[dict[str, Any]] = field(default_factory=list)
    all_inside: int = 0  # queries whose every draw was in ε (nothing to contrast)
    none_inside: int = 0  # queries with no draw in ε
    # Free text: per offset from the query position, the mean over queries of the share of
    # substitutions of the query's token there that stay inside ε (the tokens it ignores)
    substitutions_stay: dict[str, float] = field(default_factory=dict)

    @property
    def kept(self) -> list[FeatureRow]:
        return sorted((row for row in self.rows if row.kept), key=lambda row: -row.contrast)

    @property
    def strongest(self) -> float | None:
        contrasts = [row.contrast for row in self.rows if row.contrast is not None]
        return max(contrasts) if contrasts else None

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "position": self.position, "queries": self.queries,
                "queries_with_both": self.queries_with_both, "in_epsilon": self.in_epsilon,
                "all_inside": self.all_inside, "none_inside": self.none_inside,
                "kept": [row.name for row in self.kept],
                "rows": [row.to_dict() for row in self.rows],
                "shared_tokens": self.shared_tokens,
                "substitutions_stay": self.substitutions_stay}


@dataclass
class Summary:
    model: str
    decoder: str
    task: str
    sites: list[str]
    positions: list[str]
    queries: int  # asked per cell
    seed: int
    settings: dict[str, Any]
    mined: bool  # the task has no attributes: every feature was mined from the tokens
    cells: list[Cell]

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Summary":
        """A summary back from its ``to_record`` JSON (to render it again)."""
        cells = [Cell(c["site"], c["position"], c["queries"], c["queries_with_both"],
                      c["in_epsilon"],
                      [FeatureRow(r["name"], r["kind"], r["inside"], r["outside"], r["queries"])
                       for r in c["rows"]], c.get("shared_tokens", []),
                      c.get("all_inside", 0), c.get("none_inside", 0),
                      c.get("substitutions_stay", {}))
                 for c in record["cells"]]
        return cls(record["model"], record["decoder"], record["task"], record["sites"],
                   record["positions"], record["queries"], record["seed"], record["settings"],
                   record["mined"], cells)

    def __str__(self) -> str:
        return terminal_table(self)

    def _repr_html_(self) -> str:  # a notebook shows the table
        page = html_table(self)
        return page[page.index("<h1>"):page.index("</body>")]

    def cell(self, site: str, position: str) -> Cell | None:
        return next((c for c in self.cells if c.site == site and c.position == position), None)

    def to_record(self) -> dict[str, Any]:
        return {"model": self.model, "decoder": self.decoder, "task": self.task,
                "sites": self.sites, "positions": self.positions, "queries": self.queries,
                "seed": self.seed, "settings": self.settings, "mined": self.mined,
                "kept_rule": {"inside_at_least": KEPT_INSIDE,
                              "contrast_at_least": KEPT_CONTRAST},
                "cells": [cell.to_dict() for cell in self.cells]}


def summary_config(candidates: int = 256, epsilon: float = 0.1, metric: str = "euclidean"):
    """The query settings of a summary: the decoder's draws only (no local search), every
    distinct candidate kept."""
    from inversionview.preimage.query import QueryConfig

    return QueryConfig(candidates=candidates, epsilon=epsilon, metric=metric, search=0,
                       all_samples=True)


def query_texts(task, position: str, n: int, seed: int) -> list[str]:
    """``n`` inputs of the task where ``position`` exists (a 3-digit sum has no A4), drawn
    with ``seed``; fewer when the task rarely has the position."""
    texts: list[str] = []
    draw = 0
    while len(texts) < n and draw < 8:
        for text in task.sample(max(4 * n, 16), seed=seed + 7919 * draw):
            try:
                task.resolve_position(text, position)
            except TaskInputError:
                continue
            texts.append(text)
            if len(texts) == n:
                break
        draw += 1
    return texts


def summarize_cell(model, decoder, site: str, position: str, texts: Sequence[str], config,
                   features: list[Feature], seed: int = 0, mined: bool = False) -> Cell:
    """Run a query per text (seeds ``seed``, ``seed + 1``, ...) and summarize them."""
    from inversionview.preimage.query import run_query

    results = [run_query(model, decoder, text, site, position, config, seed=seed + number)
               for number, text in enumerate(texts)]
    return cell_from_results(site, position, results, features, mined)


def cell_from_results(site: str, position: str, results: Sequence, features: list[Feature],
                      mined: bool = False) -> Cell:
    """The summary of queries already run (PreimageResults with every distinct candidate:
    ``summary_config``); only the decoder's draws count."""
    sums: dict[str, list[float]] = {f.name: [0.0, 0.0, 0] for f in features}
    token_in: dict[str, list[int]] = {}
    in_epsilon = with_both = all_inside = none_inside = 0
    for result in results:
        draws = [s for s in result.samples if s.found_by == "decoder"]
        inside = sum(s.in_epsilon for s in draws)
        in_epsilon += inside
        all_inside += bool(draws) and inside == len(draws)
        none_inside += inside == 0
        query_tokens, query_position = result.query.tokens, result.position
        query_attributes = result.query.attributes
        both = False
        for feature in features:
            sides: dict[bool, list[bool]] = {True: [], False: []}
            for sample in draws:
                kept = feature.keeps(query_attributes, query_tokens, query_position, sample)
                if kept is not None:
                    sides[sample.in_epsilon].append(kept)
            if sides[True] and sides[False]:
                total = sums[feature.name]
                total[0] += sum(sides[True]) / len(sides[True])
                total[1] += sum(sides[False]) / len(sides[False])
                total[2] += 1
                both = True
        with_both += both
        if mined:
            _count_shared_tokens(token_in, query_tokens, draws)
    rows = [FeatureRow(f.name, f.kind, *_means(sums[f.name])) for f in features]
    shared, stays = [], {}
    if mined:
        staying: dict[int, list[float]] = {}
        for result in results:
            for row in result.token_reading:
                if row["stays"] is not None and row["offset"] in TOKEN_OFFSETS:
                    staying.setdefault(row["offset"], []).append(row["stays"])
        stays = {f"token@{offset:+d}" if offset else "token@0": round(sum(v) / len(v), 6)
                 for offset, v in sorted(staying.items(), reverse=True)}
        for token, (inside, outside, n_in, n_out) in token_in.items():
            if n_in and n_out:
                shared.append({"token": token, "inside": inside / n_in, "outside": outside / n_out,
                               "contrast": inside / n_in - outside / n_out})
        shared = sorted(shared, key=lambda row: -row["contrast"])[:10]
    return Cell(site, position, len(results), with_both, in_epsilon, rows, shared, all_inside,
                none_inside, stays)


def _means(total: list[float]) -> tuple[float | None, float | None, int]:
    if not total[2]:
        return None, None, 0
    return total[0] / total[2], total[1] / total[2], int(total[2])


def _count_shared_tokens(table: dict[str, list[int]], query_tokens: list[str], draws) -> None:
    for token in set(query_tokens[1:]):
        row = table.setdefault(token, [0, 0, 0, 0])
        for sample in draws:
            present = token in sample.tokens[1:sample.best_position + 1]  # the cut prefix
            if sample.in_epsilon:
                row[0] += present
                row[2] += 1
            else:
                row[1] += present
                row[3] += 1


def summarize(model, decoder, sites: Sequence[str] | None = None,
              positions: Sequence[str] | None = None, queries: int = 10, seed: int = 0,
              config=None, model_name: str = "<memory>", decoder_name: str = "<memory>",
              progress: Callable[[int, int, str], None] | None = None) -> Summary:
    """The summary over ``sites`` x ``positions`` (default: every site of the decoder and
    every named position of the task), ``queries`` inputs per cell: the inputs at the task's
    k-th named position are drawn with ``seed + 1000 k`` and shared by its sites, and query i
    runs with ``seed + i``. A cell's queries depend on its site, position and seed alone, not on
    which other sites and positions are asked or in what order."""
    from inversionview import options

    task = model.task
    queries = options.SUMMARY_QUERIES.check(queries)
    seed = options.SEED.check(seed)
    config = config or summary_config()
    site_names = list(sites) if sites else list(decoder.site_names)
    unknown = [s for s in site_names if s not in decoder.site_names]
    if unknown:
        raise UserError(f"the decoder does not read site {unknown[0]!r}; its sites: "
                        f"{', '.join(decoder.site_names)}")
    position_names = list(positions) if positions else list(task.position_names)
    unknown = [p for p in position_names if p not in task.position_names]
    if unknown:
        raise UserError(f"unknown position {unknown[0]!r} for the {task.name} task; its named "
                        f"positions: {', '.join(task.position_names)}")
    features = task_features(task)
    mined = not task.attribute_names
    cells = []
    total = len(site_names) * len(position_names)
    for position in position_names:
        texts = query_texts(task, position, queries,
                            seed + 1000 * task.position_names.index(position))
        for site in site_names:
            if progress:
                progress(len(cells), total, f"{site}@{position}")
            cells.append(summarize_cell(model, decoder, site, position, texts, config,
                                        features, seed, mined))
    settings = {"candidates": config.candidates, "epsilon": config.epsilon,
                "metric": config.metric, "search": config.search,
                "constrain": config.constrain}
    return Summary(model_name, decoder_name, task.name, site_names, position_names, queries,
                   seed, settings, mined, cells)


# ----- views ------------------------------------------------------------------------------


def terminal_table(summary: Summary, per_cell: int = 3) -> str:
    """One line per (site, position): the kept features, strongest first, with their inside
    and outside rates and the queries behind the cell."""
    lines = [f"{summary.model} ({summary.task}), decoder {summary.decoder}: "
             f"{summary.queries} queries per cell, seed {summary.seed}, eps {summary.settings['epsilon']:g} "
             f"({summary.settings['metric']}), {summary.settings['candidates']} draws each",
             f"kept = in-eps rate >= {KEPT_INSIDE:g} and >= {KEPT_CONTRAST:g} above the out-of-eps rate"
             + ("; features mined from the tokens (the task has no attributes)" if summary.mined
                else ""),
             f"{'site':<8} {'position':<8} {'queries':>7}  kept (in/out)"]
    for cell in summary.cells:
        kept = cell.kept
        text = ", ".join(f"{row.name} {row.inside:.2f}/{row.outside:.2f}" for row in kept[:per_cell])
        if len(kept) > per_cell:
            text += f", +{len(kept) - per_cell} more"
        if not kept:
            best = max((r for r in cell.rows if r.contrast is not None),
                       key=lambda r: r.contrast, default=None)
            text = "nothing kept" + ("" if best is None else
                                     f" (closest: {best.name} {best.inside:.2f}/{best.outside:.2f})")
            if cell.queries_with_both == 0:
                text = "no query had samples on both sides of eps" + _one_sided(cell)
        if cell.substitutions_stay:
            text += "; substitutions staying in eps: " + ", ".join(
                f"{name.removeprefix('token')} {share:.2f}" for name, share in cell.substitutions_stay.items())
        lines.append(f"{cell.site:<8} {cell.position:<8} {cell.queries_with_both:>3}/{cell.queries:<3}  {text}")
    return "\n".join(lines)


def markdown_table(summary: Summary, per_cell: int = 2) -> str:
    """Sites down, positions across; each cell its strongest kept features (in/out) and, in
    parentheses, the queries behind it (the paper's Table 3 in form)."""
    lines = ["| site | " + " | ".join(f"`{p}`".replace("|", "\\|") for p in summary.positions)
             + " |",
             "|---|" + "---|" * len(summary.positions)]
    for site in summary.sites:
        cells = []
        for position in summary.positions:
            cell = summary.cell(site, position)
            kept = ", ".join(f"{r.name} {r.inside:.2f}/{r.outside:.2f}"
                             for r in cell.kept[:per_cell]) or "-"
            if not cell.queries_with_both:
                kept = ("every draw in ε" if cell.all_inside == cell.queries else
                        "no draw in ε" if cell.none_inside == cell.queries else "-")
            if cell.queries_with_both and len(cell.kept) > per_cell:
                kept += f", +{len(cell.kept) - per_cell} more"
            cells.append(f"{kept} ({cell.queries_with_both})".replace("|", "\\|"))
        lines.append(f"| {site} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _one_sided(cell: Cell) -> str:
    parts = []
    if cell.all_inside:
        parts.append(f"every draw in eps in {cell.all_inside}")
    if cell.none_inside:
        parts.append(f"none in eps in {cell.none_inside}")
    return f" ({', '.join(parts)})" if parts else ""


def plot_summary(summary: Summary, path: Path) -> Path:
    """``summary_figure`` written to ``path``."""
    from inversionview.figures import save_figure

    return save_figure(summary_figure(summary), path, dpi=130)


def summary_figure(summary: Summary):
    """A heat map: sites down, positions across, each cell coloured by its strongest
    contrast (in-ε minus out-of-ε keeping) and labelled with its top kept features and the
    number of queries behind it."""
    import textwrap

    import numpy as np

    from inversionview.figures import pyplot

    plt = pyplot()
    grid = np.full((len(summary.sites), len(summary.positions)), np.nan)
    width = max(6.0, 1.35 * len(summary.positions) + 1.5)
    figure, axis = plt.subplots(figsize=(width, 0.62 * len(summary.sites) + 1.6))
    for cell in summary.cells:
        row, col = summary.sites.index(cell.site), summary.positions.index(cell.position)
        if cell.strongest is not None:
            grid[row, col] = cell.strongest
    image = axis.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for cell in summary.cells:
        row, col = summary.sites.index(cell.site), summary.positions.index(cell.position)
        names = [r.name for r in cell.kept[:2]]
        label = "\n".join(names) if names else "-"
        value = grid[row, col]
        colour = "black" if not math.isnan(value) and value > 0.6 else "white"
        axis.text(col, row, f"{label}\n(n={cell.queries_with_both})", ha="center",
                  va="center", fontsize=6, color=colour)
    axis.set_xticks(range(len(summary.positions)), summary.positions)
    axis.set_yticks(range(len(summary.sites)), summary.sites)
    axis.set_xlabel("query position")
    title = (f"{summary.model} (decoder {summary.decoder}): what the in-ε samples keep, "
             f"{summary.queries} queries per cell")
    axis.set_title(textwrap.fill(title, int(12 * width)), fontsize=8)
    # two short lines: one long line was clipped on a summary of one or two sites (issue 31)
    figure.colorbar(image, ax=axis, label="strongest contrast\n(in-ε − out-of-ε)")
    return figure


def html_table(summary: Summary, image: str | None = None) -> str:
    """A self-contained HTML page (inline style; ``image`` an optional data: URL or file
    name of the heat map)."""
    from html import escape

    rows = []
    for cell in summary.cells:
        kept = "; ".join(f"<b>{escape(r.name)}</b> {r.inside:.2f}/{r.outside:.2f}"
                         for r in cell.kept) or "<i>nothing kept</i>"
        shared = ""
        if cell.shared_tokens:
            shared = "<br><small>shared tokens: " + ", ".join(
                f"{escape(repr(t['token']))} {t['inside']:.2f}/{t['outside']:.2f}"
                for t in cell.shared_tokens[:5]) + "</small>"
        rows.append(f"<tr><td>{escape(cell.site)}</td><td>{escape(cell.position)}</td>"
                    f"<td>{cell.queries_with_both}/{cell.queries}</td><td>{cell.in_epsilon}</td>"
                    f"<td>{kept}{shared}</td></tr>")
    picture = f'<p><img src="{escape(image)}" alt="heat map" style="max-width:100%"></p>' if image else ""
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Per-site summary: {escape(summary.model)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:72em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}}</style></head><body>
<h1>What each site keeps: {escape(summary.model)}</h1>
<p>Task {escape(summary.task)}, decoder {escape(summary.decoder)}; {summary.queries} queries per
cell (seed {summary.seed}), {summary.settings['candidates']} decoder draws each, ε
{summary.settings['epsilon']:g} ({escape(summary.settings['metric'])}). A feature is kept when the
in-ε samples keep it at a rate of at least {KEPT_INSIDE:g} and at least {KEPT_CONTRAST:g} above
the out-of-ε samples (rates shown in/out, averaged over the queries with samples on both sides).
{'Features are mined from the tokens: the task has no attributes.' if summary.mined else ''}</p>
{picture}
<table><tr><th>site</th><th>position</th><th>queries</th><th>in-ε samples</th><th>kept (in/out)</th></tr>
{''.join(rows)}</table></body></html>"""


__all__ = ["Cell", "FeatureRow", "cell_from_results", "KEPT_CONTRAST", "KEPT_INSIDE", "Summary",
           "html_table", "markdown_table", "plot_summary", "query_texts", "summarize", "summarize_cell", "summary_config",
           "terminal_table"]
