"""Every site at one input and position: the grid, one query per site (an overview).

    grid = run_grid(model, decoder, "Bvvzccvczvvvzvcvc|v:8E", ":")
    grid.rows[0]   # GridRow(site='x0.pre', in_epsilon_rate=0.81, ..., top_attribute='length', ...)

The one implementation behind ``POST /api/grid`` and ``InversionView.grid``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from inversionview.decoder.model import Decoder
from inversionview.preimage.config import GRID_CONFIG, QueryConfig
from inversionview.preimage.query import Progress, run_query
from inversionview.probed.subject import Subject

if TYPE_CHECKING:
    import pandas


@dataclass
class GridRow:
    """One site's query, read in one line."""

    site: str
    in_epsilon_rate: float
    in_epsilon_distinct: int
    valid_rate: float
    # The attribute with the highest contrast (inside minus outside agreement); None when no
    # attribute has a contrast (nothing, or everything, fell inside ε).
    top_attribute: str | None
    inside: float | None  # that attribute's agreement inside ε ...
    outside: float | None  # ... and outside
    contrast: float | None


@dataclass
class Grid:
    """Every site's row at one input and position, and what was asked."""

    model: str
    input: str  # normalised (leading BOS)
    position: int
    position_label: str
    candidates: int  # per site
    epsilon: float
    metric: str
    seed: int
    rows: list[GridRow]
    seconds: float

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    def to_dataframe(self) -> "pandas.DataFrame":
        """One row per site (the index), one column per ``GridRow`` field."""
        import pandas

        return pandas.DataFrame([asdict(row) for row in self.rows]).set_index("site")


def run_grid(model: Subject, decoder: Decoder, text: str, position: str | int,
             config: QueryConfig = GRID_CONFIG, seed: int = 0, sites: list[str] | None = None,
             decoder_name: str = "<memory>",
             progress: Progress | None = None) -> Grid:
    """Query every site (default: the model's, in the decoder's order) at ``position`` of
    ``text`` with ``config`` (default ``GRID_CONFIG``: 256 candidates, the decoder's draws
    only) and the same ``seed``, one ``GridRow`` each. ``progress`` hears
    ``"SITE: stage"`` and the share of the whole grid done."""
    started = time.perf_counter()
    sites = [site.short for site in model.sites] if sites is None else list(sites)
    rows, result = [], None
    for index, site in enumerate(sites):
        def site_progress(stage: str, fraction: float, index: int = index) -> None:
            if progress is not None:
                progress(f"{sites[index]}: {stage}", (index + fraction) / len(sites))

        result = run_query(model, decoder, text, site, position, config, seed=seed,
                           decoder_name=decoder_name, progress=site_progress)
        top = result.attribute_agreement[0] if result.attribute_agreement else None
        rows.append(GridRow(
            site=site, in_epsilon_rate=result.stats.in_epsilon_rate,
            in_epsilon_distinct=result.stats.in_epsilon_distinct,
            valid_rate=result.stats.valid_rate,
            # rows are sorted by contrast, those without one last: a first row without one
            # means no attribute tells inside from outside
            top_attribute=top["attribute"] if top and top["contrast"] is not None else None,
            inside=top["inside"] if top else None, outside=top["outside"] if top else None,
            contrast=top["contrast"] if top else None))
    if result is None:
        raise ValueError("a grid needs at least one site")
    return Grid(model=result.model, input=result.query.text, position=result.position,
                position_label=result.position_label, candidates=config.candidates,
                epsilon=config.epsilon, metric=config.metric, seed=seed, rows=rows,
                seconds=round(time.perf_counter() - started, 3))
