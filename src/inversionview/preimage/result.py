"""The result record of a query: one plain, JSON-serialisable object that carries a query's
result from the sampler to the terminal table, the HTML page, the web UI and the tests."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas


def _finite_or_none(values: list[float]) -> list[float | None]:
    """JSON has no inf/NaN: excluded positions (PAD, EOS, BOS of ΔP) become null."""
    return [None if not math.isfinite(v) else round(v, 6) for v in values]


@dataclass
class Sample:
    """One distinct candidate input and its score."""

    text: str
    tokens: list[str]
    distance: float  # min over positions (or the value at the fixed position); inf if none
    best_position: int  # argmin index (or the fixed position's index; -1 if absent)
    best_position_label: str
    in_epsilon: bool
    valid: bool  # well formed and in the task's input distribution
    correct: bool | None  # the input's answer is right (None when malformed)
    reason: str  # why it is not valid ("" when valid)
    attributes: dict[str, Any]
    multiplicity: int  # how many of the drawn candidates were this input
    position_distances: list[float | None]
    delta_p: list[float | None] | None = None  # computed for the shown samples
    log_probability: float | None = None  # decoder log P(input | z_q), shown samples

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["distance"] = None if not math.isfinite(self.distance) else round(self.distance, 6)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Sample":
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in names}
        values["distance"] = math.inf if values["distance"] is None else values["distance"]
        return cls(**values)


@dataclass
class QueryInput:
    text: str
    tokens: list[str]
    attributes: dict[str, Any]
    valid: bool
    reason: str


@dataclass
class QueryStats:
    candidates: int  # drawn, with repeats
    distinct: int
    in_epsilon: int  # drawn candidates inside ε (with repeats)
    in_epsilon_rate: float
    in_epsilon_distinct: int
    valid_rate: float  # fraction of drawn candidates that are valid task inputs
    shown: int
    shown_in_epsilon: int
    seconds: float
    seconds_sampling: float
    seconds_scoring: float
    seconds_colouring: float


@dataclass
class PreimageResult:
    """Everything one query produced. ``samples`` holds the shown samples (the display
    selection, or every distinct candidate with ``all_samples``), sorted by distance;
    ``histogram`` and ``attribute_agreement`` are over every distinct candidate."""

    model: str
    task: str
    decoder: str
    site: str
    hook: str
    position: int
    position_label: str
    metric: str
    epsilon: float
    fixed_position: bool
    seed: int
    schedule: list[dict[str, float]]
    query: QueryInput
    stats: QueryStats
    histogram: dict[str, list]  # {"edges": [...], "counts": [...]}, counts with repeats
    attribute_agreement: list[dict[str, Any]]
    samples: list[Sample] = field(default_factory=list)
    all_samples: bool = False
    # The readout checked by patching (verify/readout.py), when asked for (query --verify).
    verification: dict[str, Any] | None = None

    def to_record(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["query"] = asdict(self.query)
        record["stats"] = asdict(self.stats)
        record["samples"] = [sample.to_dict() for sample in self.samples]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "PreimageResult":
        values = dict(record)
        values["query"] = QueryInput(**record["query"])
        values["stats"] = QueryStats(**record["stats"])
        values["samples"] = [Sample.from_dict(s) for s in record["samples"]]
        return cls(**values)

    def __repr__(self) -> str:
        stats = self.stats
        return (f"<PreimageResult {self.site} at {self.position_label} of {self.query.text!r}: "
                f"{stats.candidates} candidates, {stats.in_epsilon_rate:.1%} in ε "
                f"({stats.in_epsilon_distinct} distinct), {len(self.samples)} shown>")

    def __str__(self) -> str:
        """The terminal view (as ``inversionview query`` prints it)."""
        from inversionview.views.terminal import render_result

        return render_result(self)

    def _repr_html_(self) -> str:
        """Jupyter's view: the HTML export's (its markup and scoped style)."""
        from inversionview.views.html import render_fragment

        return render_fragment(self)

    def to_html(self) -> str:
        """The self-contained page ``query --html`` writes."""
        from inversionview.views.html import render_html

        return render_html(self)

    def to_dataframe(self) -> "pandas.DataFrame":
        """The shown samples, one row each, sorted by distance: text, distance, in ε,
        validity, best position, times drawn, the decoder's log-probability, and one column
        per attribute of the task (prefixed ``attr_``)."""
        import pandas

        rows = []
        for sample in self.samples:
            row = {"text": sample.text, "distance": sample.distance,
                   "in_epsilon": sample.in_epsilon, "valid": sample.valid,
                   "correct": sample.correct, "best_position": sample.best_position,
                   "best_position_label": sample.best_position_label,
                   "multiplicity": sample.multiplicity,
                   "log_probability": sample.log_probability, "tokens": sample.tokens,
                   "reason": sample.reason}
            row.update({f"attr_{name}": sample.attributes.get(name)
                        for name in self.attribute_names})
            rows.append(row)
        columns = (["text", "distance", "in_epsilon", "valid", "correct", "best_position",
                    "best_position_label", "multiplicity", "log_probability", "tokens", "reason"]
                   + [f"attr_{name}" for name in self.attribute_names])
        # nullable dtypes: an attribute a malformed sample lacks is <NA>, its count stays an int
        return pandas.DataFrame(rows, columns=columns).convert_dtypes()

    @property
    def attribute_names(self) -> list[str]:
        """Attributes in the order of the agreement table (most telling first)."""
        return [row["attribute"] for row in self.attribute_agreement]
