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
    # "decoder" (drawn by the decoder) or "search N" (an edit scored in round N of the local
    # search; multiplicity 0). The query itself is never a sample: its cut prefix is its own.
    found_by: str = "decoder"
    # Distinct scored inputs that share this sample's cut prefix (its tokens up to
    # ``best_position``, its only evidence in a causal model); ``text`` is the first of them
    # and what follows the cut is free (preimage/members.py).
    continuations: int = 1
    ids: list[int] = field(default_factory=list)  # the token ids of ``tokens`` (PAD left out)

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
    """Counts over the decoder's draws. A member is a cut prefix (preimage/members.py):
    ``distinct`` and ``in_epsilon_distinct`` count distinct cut prefixes, and every figure
    but the raw ``*_inputs`` and ``query_context`` ones leaves out the draws whose cut prefix
    is the query's own."""

    candidates: int  # drawn, with repeats
    distinct: int  # distinct cut prefixes drawn (a draw without a scorable position counts alone)
    in_epsilon: int  # drawn candidates inside ε (with repeats), the query's context left out
    in_epsilon_rate: float  # in_epsilon / candidates
    in_epsilon_distinct: int  # distinct cut prefixes inside ε, the query's own left out
    valid_rate: float  # fraction of drawn candidates that are valid task inputs
    shown: int
    shown_in_epsilon: int
    seconds: float
    seconds_sampling: float
    seconds_scoring: float
    seconds_colouring: float
    seconds_search: float = 0.0
    # Raw figures beside them: distinct inputs drawn and inside ε (every continuation counted,
    # the query's context included), and the draws whose cut prefix is the query's own.
    distinct_inputs: int = 0
    in_epsilon_inputs: int = 0
    query_context: int = 0


@dataclass
class Completeness:
    """How much of the ε-preimage a query has seen (issue 14). Members are distinct cut
    prefixes (preimage/members.py) of the task's space (what its sampler could draw) inside
    ε, the query's own left out; for free text, any text."""

    found: int  # distinct members found (decoder + search)
    found_by_decoder: int
    found_by_search: int  # the search's finds the decoder did not draw
    # Importance-sampling estimate of the preimage's size in whole inputs from the decoder's
    # noise-free draws (preimage/estimate.py), its standard error, and the draws it rests on:
    # the raw figures, kept even where they are not usable (``not_estimable``)
    estimate: float | None
    estimate_stderr: float | None
    estimate_draws: int
    estimated_size: float | None  # max(found, estimate) where usable: at least ``found``
    coverage: float | None  # found / estimated_size
    search: dict[str, Any] | None = None  # evaluations, budget, rounds, stop, members_wanted
    # Why the estimate says nothing about the size here (None: it is usable)
    not_estimable: str | None = None

    @classmethod
    def of(cls, found_by_decoder: int, found_by_search: int, estimate, search=None,
           not_estimable: str | None = None) -> "Completeness":
        found = found_by_decoder + found_by_search
        size = None
        if not_estimable is None and estimate.size is not None:
            size = max(float(found), estimate.size)
        return cls(found=found, found_by_decoder=found_by_decoder, found_by_search=found_by_search,
                   estimate=_rounded(estimate.size), estimate_stderr=_rounded(estimate.stderr),
                   estimate_draws=estimate.draws, estimated_size=_rounded(size),
                   coverage=None if not size else round(found / size, 6), search=search,
                   not_estimable=not_estimable)

    @property
    def saturated(self) -> bool:
        """The search stopped because no edit of a member found a new one."""
        return bool(self.search) and self.search.get("stop") == "saturated"

    def describe(self) -> str:
        """One line for people: found, the estimate, how the search ended."""
        parts = [f"{self.found:,} distinct members found in ε"]
        if self.search is not None:
            parts[0] += f" ({self.found_by_decoder:,} drawn by the decoder, {self.found_by_search:,} by the search)"
        if self.not_estimable is not None:
            parts.append(f"preimage size not estimable: {self.not_estimable}")
        elif self.estimated_size is not None:
            parts.append(f"estimated preimage {_approximate(self.estimated_size)} "
                         f"(± {_approximate(self.estimate_stderr)}), coverage {_percent(self.coverage)}")
        if self.search is not None:
            stop = {"saturated": "no edit of a member found a new one",
                    "members": "enough members found", "evaluations": "search budget spent",
                    "no-closer": "nothing inside ε and no edit got closer",
                    }.get(self.search["stop"], self.search["stop"])
            parts.append(f"search: {self.search['evaluations']:,} inputs scored in "
                         f"{self.search['rounds']} round{'s' * (self.search['rounds'] != 1)}, "
                         f"stopped: {stop}")
        return "; ".join(parts)


def _rounded(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def _approximate(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e6:
        return f"{value:,.0f}"
    return f"{value:.2g}"


def _percent(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 0.001:
        return f"{value:.1%}"
    return f"{value:.1e}"


@dataclass
class PreimageResult:
    """Everything one query produced. ``samples`` holds the shown samples (the display
    selection, or every distinct candidate with ``all_samples``), sorted by distance;
    ``histogram`` and ``attribute_agreement`` are over the decoder's draws (as the paper);
    ``completeness`` counts the search's finds too."""

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
    completeness: Completeness | None = None
    # The draws were constrained to the task's grammar (QueryConfig.constrain, and the task
    # has one); False: the paper's free sampling.
    constrained: bool = False
    noise_cosine: list[float] | None = None  # [low, high] of the cosine noise, if any
    banned_tokens: int = 0  # how many token ids the sampler never drew (rare tokens)
    # The scored inputs whose cut prefix is the query's own: {"draws", "continuations"}
    # (preimage/members.py); they are in no sample, reading or rate.
    query_context: dict[str, int] | None = None
    # Distinct members within several radii and the nearest ones, from everything scored
    # (preimage/reading.py): {"radii", "members", "nearest": [{"tokens", "distance", "found_by"}]}
    epsilon_profile: dict[str, Any] | None = None
    # Per token of the query's prefix: kept by members vs outside inputs, and the share of its
    # substitutions that stay inside ε (preimage/reading.py)
    token_reading: list[dict[str, Any]] = field(default_factory=list)

    def to_record(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in fields(self)}
        record["query"] = asdict(self.query)
        record["stats"] = asdict(self.stats)
        record["completeness"] = None if self.completeness is None else {
            **asdict(self.completeness), "description": self.completeness.describe()}
        record["samples"] = [sample.to_dict() for sample in self.samples]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "PreimageResult":
        values = dict(record)
        values["query"] = QueryInput(**record["query"])
        values["stats"] = QueryStats(**record["stats"])
        if record.get("completeness") is not None:
            values["completeness"] = Completeness(**{
                k: v for k, v in record["completeness"].items() if k != "description"})
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
        """The shown samples, one row each, sorted by distance: text, its evidence (the cut
        prefix: the tokens up to the best position), distance, in ε, validity, best position,
        times drawn, the decoder's log-probability, who found it, how many inputs shared its
        cut prefix, and one column per attribute of the task (prefixed ``attr_``)."""
        import pandas

        rows = []
        for sample in self.samples:
            cut = sample.best_position + 1 if sample.best_position >= 0 else len(sample.tokens)
            row = {"text": sample.text, "evidence": "".join(sample.tokens[:cut]),
                   "distance": sample.distance,
                   "in_epsilon": sample.in_epsilon, "valid": sample.valid,
                   "correct": sample.correct, "best_position": sample.best_position,
                   "best_position_label": sample.best_position_label,
                   "multiplicity": sample.multiplicity,
                   "log_probability": sample.log_probability, "tokens": sample.tokens,
                   "reason": sample.reason, "found_by": sample.found_by,
                   "continuations": sample.continuations}
            row.update({f"attr_{name}": sample.attributes.get(name)
                        for name in self.attribute_names})
            rows.append(row)
        columns = (["text", "evidence", "distance", "in_epsilon", "valid", "correct", "best_position",
                    "best_position_label", "multiplicity", "log_probability", "tokens", "reason",
                    "found_by", "continuations"]
                   + [f"attr_{name}" for name in self.attribute_names])
        # nullable dtypes: an attribute a malformed sample lacks is <NA>, its count stays an int
        return pandas.DataFrame(rows, columns=columns).convert_dtypes()

    @property
    def attribute_names(self) -> list[str]:
        """Attributes in the order of the agreement table (most telling first)."""
        return [row["attribute"] for row in self.attribute_agreement]
