"""A finding of the paper as a checkable claim: a statement, a criterion stated before the
measurement, what the claim is about, the measured figures over several seeds, and a
verdict: pass, fail, unsettled (the seeds disagree and the mean does not clear the criterion
by more than their spread) or not measured.

What a claim is about decides what it is measured against (method.md §7, "Controls"):

- ``model``: patching and routing; no decoder is involved, so there is no control.
- ``preimage``: what the ε-preimage holds, found by any means (the decoder's draws under the
  task's grammar, the search). It runs beside a control, a decoder of the same shape with
  random weights under the same sampling and search, and reports both figures: where the
  control reads the same, the reading rests on the sampling and the grammar, not on the
  decoder, and the report says so. The verdict is the trained decoder's.
- ``decoder``: what the decoder itself does (completeness). It passes only when the trained
  decoder meets the criterion and clearly beats its control: the control does not meet it,
  and the trained decoder's mean margin exceeds the control's by more than their spreads.

Each ``judge_*`` (in the study modules) is a pure function of one seed's figures and returns a
``Verdict``: passed (None: too little evidence), a one-line figure, and a margin, how far the
figures clear the criterion in its own units (the smallest of its conditions' ``value -
threshold``; negative when it fails), so seeds can be weighed against each other.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

PASS, FAIL, UNSETTLED, NOT_MEASURED = "pass", "fail", "unsettled", "not measured"
STATUSES = (PASS, FAIL, UNSETTLED, NOT_MEASURED)
ABOUT = ("model", "preimage", "decoder")
TRAINED, CONTROL = "trained", "control"


class Verdict(NamedTuple):
    passed: bool | None
    figure: str
    margin: float | None = None


def margin(*conditions: tuple[float, float]) -> float:
    """The smallest ``value - threshold`` of ``conditions`` (each met when >= 0)."""
    return min(value - threshold for value, threshold in conditions)


@dataclass
class Run:
    """One seed's measurement with one decoder (trained or control)."""

    decoder: str  # TRAINED or CONTROL
    seed: int
    status: str
    figure: str
    margin: float | None
    measured: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Settled:
    """The verdict over seeds of one decoder's runs."""

    status: str
    mean_margin: float | None
    spread: float | None  # the margins' standard deviation over the decided seeds
    seeds: int  # decided seeds
    why: str


def settle(runs: list[Run]) -> Settled:
    """Pass or fail when the decided seeds agree, or when their mean margin clears zero by
    more than their spread; otherwise unsettled. Not measured when no seed decided; a seed
    that decided nothing counts against agreement (it is not a vote either way)."""
    decided = [r for r in runs if r.status in (PASS, FAIL)]
    if not decided:
        return Settled(NOT_MEASURED, None, None, 0, runs[0].figure if runs else "no run")
    margins = [r.margin for r in decided if r.margin is not None]
    mean = statistics.fmean(margins) if margins else None
    spread = statistics.stdev(margins) if len(margins) > 1 else 0.0 if margins else None
    statuses = {r.status for r in decided}
    if len(statuses) == 1 and len(decided) == len(runs):
        return Settled(decided[0].status, mean, spread, len(decided),
                       f"all {len(runs)} seeds agree")
    if mean is not None and abs(mean) > spread and len(decided) > len(runs) / 2:
        status = PASS if mean > 0 else FAIL
        return Settled(status, mean, spread, len(decided),
                       f"the seeds disagree ({_tally(runs)}); the mean margin {mean:+.2f} "
                       f"clears the spread {spread:.2f}")
    return Settled(UNSETTLED, mean, spread, len(decided),
                   f"the seeds disagree ({_tally(runs)}) and the mean margin "
                   f"{_signed(mean)} is within the spread {_plain(spread)}")


def _tally(runs: list[Run]) -> str:
    return ", ".join(f"{sum(r.status == s for r in runs)} {s}" for s in STATUSES
                     if any(r.status == s for r in runs))


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def _plain(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def beats(trained: Settled, control: Settled) -> bool:
    """The trained decoder clearly beats its control: the control does not meet the
    criterion, and the mean margins differ by more than the two spreads together."""
    if trained.mean_margin is None:
        return False
    if control.status == PASS:
        return False
    if control.mean_margin is None:  # the control decided nothing: it found nothing to judge
        return True
    gap = trained.mean_margin - control.mean_margin
    return gap > (trained.spread or 0.0) + (control.spread or 0.0)


@dataclass
class Claim:
    id: str  # e.g. "counting.mlp-amplifies-count"
    study: str  # counting, addition, ioi, factual
    statement: str  # the paper's finding, in a sentence
    criterion: str  # how this run decides it, thresholds included
    model: str  # the model it ran on, as the report names it
    about: str = "preimage"  # model, preimage or decoder (ABOUT)
    decoder: str | None = None
    paper: str = ""  # the paper's sentence the criterion encodes
    why: str = ""  # why the constants are what they are
    status: str = NOT_MEASURED
    figure: str = ""  # the measured figure (the first decided seed's), one line
    measured: dict[str, Any] = field(default_factory=dict)  # the same seed's
    plot: str | None = None  # a file beside the report
    seconds: float = 0.0
    reason: str = ""  # why it was not measured, or how the seeds settled
    runs: list[Run] = field(default_factory=list)
    trained: Settled | None = None
    control: Settled | None = None
    control_figure: str = ""  # the control's first decided seed's figure

    def decide(self, verdict: Verdict | tuple, measured: dict[str, Any]) -> "Claim":
        """One measurement decides the claim (one seed, no control)."""
        verdict = Verdict(*verdict)
        return self.settle([self.run(TRAINED, 0, verdict, measured)])

    @staticmethod
    def run(decoder: str, seed: int, verdict: Verdict | tuple, measured: dict[str, Any],
            seconds: float = 0.0) -> Run:
        passed, figure, margin_ = Verdict(*verdict)
        status = NOT_MEASURED if passed is None else PASS if passed else FAIL
        return Run(decoder, seed, status, figure, margin_, measured, seconds)

    def settle(self, runs: list[Run]) -> "Claim":
        """The verdict of ``runs`` (every seed, with and without the control)."""
        if self.about not in ABOUT:
            raise ValueError(f"a claim is about one of {ABOUT}, not {self.about!r}")
        self.runs = runs
        own = [r for r in runs if r.decoder == TRAINED]
        control = [r for r in runs if r.decoder == CONTROL]
        self.trained = settle(own)
        shown = next((r for r in own if r.status in (PASS, FAIL)), own[0])
        self.figure, self.measured = shown.figure, shown.measured
        self.seconds = round(sum(r.seconds for r in runs), 1) or self.seconds
        self.status, self.reason = self.trained.status, self.trained.why
        if self.status == NOT_MEASURED:
            self.reason, self.figure = own[0].figure, ""
        if control:
            self.control = settle(control)
            self.control_figure = next((r for r in control if r.status in (PASS, FAIL)),
                                       control[0]).figure
            if self.about == "decoder" and self.status == PASS and not beats(self.trained,
                                                                            self.control):
                self.status = FAIL
                self.reason = (f"the trained decoder meets the criterion ({self.trained.why}) "
                               f"but does not clearly beat its control (control: "
                               f"{self.control.status}, mean margin "
                               f"{_signed(self.control.mean_margin)})")
        return self

    def skip(self, reason: str) -> "Claim":
        self.status, self.reason = NOT_MEASURED, reason
        return self

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

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


__all__ = ["ABOUT", "CONTROL", "Claim", "FAIL", "NOT_MEASURED", "PASS", "Run", "STATUSES",
           "Settled", "TRAINED", "UNSETTLED", "Verdict", "beats", "fmt", "fraction", "margin",
           "row", "settle"]
