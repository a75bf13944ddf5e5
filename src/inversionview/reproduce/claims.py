"""A finding of the paper as a checkable claim: a statement, a criterion stated before the
measurement, the measured figures, pass or fail.

Each claim's verdict is a pure function of its figures (``judge_*`` in the study modules), so
the criteria are tested on constructed figures where the answer is known; the measurement is
the toolkit's own (summaries, patching, exact preimages, the case studies' readings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, NOT_MEASURED = "pass", "fail", "not measured"


@dataclass
class Claim:
    id: str  # e.g. "counting.mlp-amplifies-count"
    study: str  # counting, addition, ioi, factual
    statement: str  # the paper's finding, in a sentence
    criterion: str  # how this run decides it, thresholds included
    model: str  # the model it ran on, as the report names it
    decoder: str | None = None
    status: str = NOT_MEASURED
    figure: str = ""  # the measured figure, one line
    measured: dict[str, Any] = field(default_factory=dict)
    plot: str | None = None  # a file beside the report
    seconds: float = 0.0
    reason: str = ""  # why it was not measured

    def decide(self, passed: bool | None, figure: str, measured: dict[str, Any]) -> "Claim":
        """``passed`` None: too little evidence to decide (the figure says why)."""
        self.status = NOT_MEASURED if passed is None else PASS if passed else FAIL
        self.figure, self.measured = figure, measured
        if passed is None:
            self.reason = figure
        return self

    def skip(self, reason: str) -> "Claim":
        self.status, self.reason = NOT_MEASURED, reason
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fraction(part: float, whole: float) -> float | None:
    """``part / whole`` (None when the whole effect is nil: nothing to carry)."""
    return None if abs(whole) < 1e-9 else part / whole


def row(summary_cell, name: str) -> dict[str, float | None]:
    """A summary cell's inside/outside/contrast for one feature (None where absent)."""
    found = next((r for r in summary_cell.rows if r.name == name), None) if summary_cell else None
    if found is None:
        return {"inside": None, "outside": None, "contrast": None, "queries": 0}
    return {"inside": found.inside, "outside": found.outside, "contrast": found.contrast,
            "queries": found.queries}


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


__all__ = ["Claim", "FAIL", "NOT_MEASURED", "PASS", "fmt", "fraction", "row"]
