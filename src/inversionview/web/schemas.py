"""The contract between the server and the page: every request and response of the JSON API.

A query's response is the same record as ``inversionview query --json``
(``PreimageResult.to_record()``); ``QueryResult`` describes it field for field, and a test
validates real records against it so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Limits that keep one request from occupying the server for minutes.
MAX_CANDIDATES = 8192
MAX_SHOWN = 1000
MAX_INPUT_CHARACTERS = 512  # the task's own n_ctx check gives the exact limit below this
MAX_GRID_CANDIDATES = 2048


class QueryRequest(BaseModel):
    """The query command's parameters; what is left out takes the command's default."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A model name from GET /api/models.")
    input: str | None = Field(None, max_length=MAX_INPUT_CHARACTERS,
                              description="The query input (default: the task's example).")
    site: str | None = Field(None, description="Short (a1.0, x0.mid) or hook name "
                                               "(default: the task's default query).")
    position: str | int | None = Field(None, description="Named position or index (0 = BOS).")
    candidates: int = Field(1024, ge=1, le=MAX_CANDIDATES)
    temperature: float | None = Field(None, gt=0, le=100, description="One temperature for "
                                      "every round (replaces the paper's schedule).")
    noise: float | None = Field(None, ge=0, le=100, description="One noise level for every round.")
    seed: int = Field(0, ge=0, le=2**63 - 1)
    epsilon: float = Field(0.1, gt=0, le=100)
    metric: Literal["euclidean", "cosine"] = "euclidean"
    fixed_position: bool = Field(False, description="D at the query's position in each "
                                 "candidate instead of the minimum over positions.")
    shown: int = Field(100, ge=1, le=MAX_SHOWN, description="Samples shown.")
    all: bool = Field(False, description="Show every distinct candidate (at most `candidates`).")


class GridRequest(BaseModel):
    """Every site of the model at one input and position."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | None = Field(None, max_length=MAX_INPUT_CHARACTERS)
    position: str | int | None = None
    candidates: int = Field(256, ge=1, le=MAX_GRID_CANDIDATES,
                            description="Candidates per site (fewer than a query's 1,024: "
                                        "the grid is an overview).")
    seed: int = Field(0, ge=0, le=2**63 - 1)
    epsilon: float = Field(0.1, gt=0, le=100)
    metric: Literal["euclidean", "cosine"] = "euclidean"


class AttentionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: str | None = Field(None, max_length=MAX_INPUT_CHARACTERS)
    layer: int = Field(0, ge=0)


# ----- responses ------------------------------------------------------------------------


class ModelInfo(BaseModel):
    name: str
    task: str
    source: str
    decoder: str
    n_layers: int
    n_heads: int
    sites: list[str] = Field(description="Short names, in the decoder's site order.")
    position_names: list[str]
    attribute_names: list[str]
    example: str
    default_site: str
    default_position: str
    vocabulary: str
    max_length: int = Field(description="The longest input, BOS included.")


class Example(BaseModel):
    model: str
    input: str
    seed: int


class SampleRecord(BaseModel):
    text: str
    tokens: list[str]
    distance: float | None = Field(description="null when no position could be scored.")
    best_position: int
    best_position_label: str
    in_epsilon: bool
    valid: bool
    correct: bool | None
    reason: str
    attributes: dict[str, Any]
    multiplicity: int
    position_distances: list[float | None]
    delta_p: list[float | None] | None
    log_probability: float | None


class QueryInputRecord(BaseModel):
    text: str
    tokens: list[str]
    attributes: dict[str, Any]
    valid: bool
    reason: str


class QueryStatsRecord(BaseModel):
    candidates: int
    distinct: int
    in_epsilon: int
    in_epsilon_rate: float
    in_epsilon_distinct: int
    valid_rate: float
    shown: int
    shown_in_epsilon: int
    seconds: float
    seconds_sampling: float
    seconds_scoring: float
    seconds_colouring: float


class AgreementRow(BaseModel):
    attribute: str
    query_value: Any
    inside: float | None
    outside: float | None
    contrast: float | None
    n_inside: int
    n_outside: int


class Histogram(BaseModel):
    edges: list[float | None] = Field(description="Bin edges; the last (null) is infinity.")
    counts: list[int]


class ScheduleRound(BaseModel):
    temperature: float
    noise: float
    candidates: int


class QueryResult(BaseModel):
    """``inversionview query --json``, plus ``attention`` for head sites."""

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
    schedule: list[ScheduleRound]
    query: QueryInputRecord
    stats: QueryStatsRecord
    histogram: Histogram
    attribute_agreement: list[AgreementRow]
    samples: list[SampleRecord]
    all_samples: bool
    attention: list[float] | None = Field(
        None, description="For a head site: the head's attention weights from the query "
                          "position over the query's tokens (web UI only).")
    verification: "VerifyResult | None" = Field(None, description="Set by `query --verify`.")


class GridRow(BaseModel):
    site: str
    in_epsilon_rate: float
    in_epsilon_distinct: int
    valid_rate: float
    top_attribute: str | None = Field(description="The attribute with the highest contrast.")
    inside: float | None
    outside: float | None
    contrast: float | None


class GridResult(BaseModel):
    model: str
    input: str
    position: int
    position_label: str
    candidates: int
    epsilon: float
    metric: str
    seed: int
    rows: list[GridRow]
    seconds: float


class AttentionResult(BaseModel):
    model: str
    input: str
    tokens: list[str]
    layer: int
    n_heads: int
    patterns: list[list[list[float]]] = Field(description="[head][query position][key position]")


class OutputChange(BaseModel):
    text: str
    distance: float
    kl_max: float
    kl_mean: float
    top_prediction_changed: float


class OutputChangeMean(BaseModel):
    kl_max: float
    kl_mean: float
    top_prediction_changed: float


class VerifyResult(BaseModel):
    """The query's activation replaced by in-ε and out-of-ε samples' (``inversionview verify``)."""

    site: str
    position: int
    query: str
    epsilon: float
    inside: list[OutputChange]
    outside: list[OutputChange]
    inside_mean: OutputChangeMean | None
    outside_mean: OutputChangeMean | None


class JobStatus(BaseModel):
    id: str
    kind: Literal["query", "grid"]
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    stage: str
    progress: float = Field(ge=0, le=1)
    result: QueryResult | GridResult | None = None
    error: str | None = None
    status_code: int | None = Field(None, description="The HTTP status the error would have had.")


class ErrorMessage(BaseModel):
    detail: str


QueryResult.model_rebuild()
