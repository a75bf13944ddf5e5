"""The contract between the server and the page: every request and response of the JSON API.

A query's response is the same record as ``inversionview query --json``
(``PreimageResult.to_record()``); ``QueryResult`` describes it field for field, and a test
validates real records against it so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, create_model, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from inversionview.options import (BAN_COUNT, SERVER_SEARCH_EVALUATIONS, EPSILON, GRID_CANDIDATES,
                                   LAYERS, NOISE, SEED, SERVER_CANDIDATES, SHOWN, TEMPERATURE,
                                   Range)

MAX_INPUT_CHARACTERS = 512  # the task's own n_ctx check gives the exact limit below this

# strict: a JSON value of another type is refused (no "5" for 5, no true for 1), so the
# OpenAPI schema's types are exactly what is accepted (an integral 5.0 is an integer, below).
REQUEST_CONFIG = ConfigDict(extra="forbid", strict=True)
Position = Annotated[str, Field(min_length=1)] | Annotated[int, Field(ge=0)] | None


class _Request(BaseModel):
    """What every request shares: an integral number is an integer (JSON Schema counts 15.0
    as one, and a JavaScript client may send it), and an empty ``input``, ``site`` or
    ``position`` is refused (null or absent means the default): "" is more likely a form left
    blank by mistake than a request for the default."""

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: int(value) if isinstance(value, float) and value.is_integer() else value
                    for key, value in data.items()}
        return data

    @field_validator("input", "site", "position", mode="before", check_fields=False)
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value:
            raise PydanticCustomError("empty", "must not be empty; leave it out (or null) for "
                                               "the default")
        return value


Cosine = Annotated[float, Field(ge=0, le=1)]


class QueryRequest(_Request):
    """The query command's parameters; what is left out takes the command's default."""

    model_config = REQUEST_CONFIG

    model: str = Field(description="A model name from GET /api/models.")
    input: str | None = Field(None, min_length=1, max_length=MAX_INPUT_CHARACTERS,
                              description="The query input (default: the task's example).")
    site: str | None = Field(None, min_length=1, description="Short (a1.0, x0.mid) or hook "
                             "name (default: the task's default query).")
    position: Position = Field(None, description="Named position or index (0 = BOS; "
                               "default: the task's default query).")
    candidates: int = Field(1024, **SERVER_CANDIDATES.bounds)
    temperature: float | None = Field(None, **TEMPERATURE.bounds, description="One "
                                      "temperature for every round (replaces the paper's "
                                      "schedule).")
    noise: float | None = Field(None, **NOISE.bounds, description="One noise level for every "
                                "round.")
    seed: int = Field(0, **SEED.bounds)
    epsilon: float = Field(0.1, **EPSILON.bounds)
    metric: Literal["euclidean", "cosine"] = "euclidean"
    fixed_position: bool = Field(False, description="D at the query's position in each "
                                 "candidate instead of the minimum over positions.")
    shown: int = Field(100, **SHOWN.bounds, description="Samples shown.")
    all: bool = Field(False, description="Show every distinct candidate (at most `candidates`).")
    search: int | None = Field(None, **SERVER_SEARCH_EVALUATIONS.bounds,
                               description="Inputs the local search may score beyond the decoder's "
                                           "candidates (0: decoder-only sampling, as in the paper; "
                                           "default: 16,384 on the toy tasks, 4,096 on free text).")
    noise_cosine: list[Cosine] | None = Field(
        None, min_length=2, max_length=2, description="[low, high]: condition each candidate on a vector of the query's norm "
        "at a cosine drawn from [low, high] to it (the paper's factual-recall noise, e.g. "
        "[0.75, 0.9]); replaces noise.")
    constrain: bool = Field(True, description="Draw only tokens that can lead to an input of "
                            "the task, where it has a grammar (counting, addition); false: the "
                            "paper's free sampling.")
    ban_rare: int | None = Field(None, **BAN_COUNT.bounds, description="Never sample tokens "
                                 "seen fewer than this many times in the language model's "
                                 "training corpus (its stored token counts; the paper's "
                                 "factual-recall recipe).")


class GridRequest(_Request):
    """Every site of the model at one input and position."""

    model_config = REQUEST_CONFIG

    model: str
    input: str | None = Field(None, min_length=1, max_length=MAX_INPUT_CHARACTERS)
    position: Position = None
    candidates: int = Field(256, **GRID_CANDIDATES.bounds,
                            description="Candidates per site (fewer than a query's 1,024: "
                                        "the grid is an overview).")
    seed: int = Field(0, **SEED.bounds)
    epsilon: float = Field(0.1, **EPSILON.bounds)
    metric: Literal["euclidean", "cosine"] = "euclidean"


class AttentionRequest(_Request):
    model_config = REQUEST_CONFIG

    model: str
    input: str | None = Field(None, min_length=1, max_length=MAX_INPUT_CHARACTERS)
    layer: int = Field(0, ge=0, le=int(LAYERS.high) - 1)


class TokensRequest(_Request):
    """An input to cut into the model's tokens (the page's position picker)."""

    model_config = REQUEST_CONFIG

    model: str = Field(description="A model name from GET /api/models.")
    input: str | None = Field(None, min_length=1, max_length=MAX_INPUT_CHARACTERS,
                              description="Default: the model's example.")


def served_requests(model_names: list[str], n_layers: int, candidates: Range = SERVER_CANDIDATES,
                    grid_candidates: Range = GRID_CANDIDATES
                    ) -> tuple[type[QueryRequest], type[GridRequest], type[AttentionRequest]]:
    """The request schemas of one server: its model names as the ``model`` enum (another name
    answers 404), its candidate limits, and layers below its deepest model's ``n_layers`` (a
    layer a shallower model lacks answers 400)."""
    model = (str, Field(description="A model name from GET /api/models.",
                        json_schema_extra={"enum": list(model_names)}))

    def candidates_field(limits: Range, default: int, description: str | None = None):
        return (int, Field(min(default, int(limits.high)), **limits.bounds, description=description))

    query = create_model("QueryRequest", __base__=QueryRequest, __doc__=QueryRequest.__doc__,
                         model=model, candidates=candidates_field(candidates, 1024))
    grid = create_model("GridRequest", __base__=GridRequest, __doc__=GridRequest.__doc__,
                        model=model, candidates=candidates_field(
                            grid_candidates, 256, GridRequest.model_fields["candidates"].description))
    attention = create_model("AttentionRequest", __base__=AttentionRequest, model=model,
                             layer=(int, Field(0, ge=0, le=n_layers - 1)))
    return query, grid, attention


# ----- responses ------------------------------------------------------------------------


class ModelInfo(BaseModel):
    name: str
    task: str
    source: str = Field(description="The bundled artifact's or the directory's name (never "
                                    "a path on the server).")
    decoder: str = Field(description="The decoder's artifact or directory name.")
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
    found_by: str = "decoder"
    continuations: int = Field(1, description="Distinct scored inputs sharing this sample's cut "
                               "prefix (its tokens up to best_position, its only evidence).")
    ids: list[int] = Field(default_factory=list, description="The token ids of tokens.")


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
    seconds_search: float = 0.0
    distinct_inputs: int = Field(0, description="Distinct inputs drawn (raw: continuations counted).")
    in_epsilon_inputs: int = Field(0, description="Distinct drawn inputs inside ε (raw: the query's "
                                   "context included).")
    query_context: int = Field(0, description="Draws whose cut prefix is the query's own.")


class CompletenessRecord(BaseModel):
    """How much of the ε-preimage the query has seen (``PreimageResult.completeness``)."""

    found: int = Field(description="Distinct members (cut prefixes of inputs of the task's space, the "
                                   "query's own left out) found inside ε.")
    found_by_decoder: int
    found_by_search: int
    estimate: float | None = Field(description="Importance-sampling estimate of the preimage's "
                                               "size from the decoder's noise-free draws.")
    estimate_stderr: float | None
    estimate_draws: int
    estimated_size: float | None = Field(description="max(found, estimate).")
    coverage: float | None = Field(description="found / estimated_size.")
    search: dict[str, Any] | None = Field(description="The local search: evaluations, budget, "
                                                      "rounds, stop, members_wanted.")
    not_estimable: str | None = Field(None, description="Why the estimate says nothing about "
                                      "the size here (null: usable).")
    description: str = Field(description="One line for people.")


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
    completeness: CompletenessRecord | None = None
    constrained: bool = Field(False, description="The decoder drew only tokens that can lead "
                              "to an input of the task (its grammar); false: the paper's free "
                              "sampling.")
    noise_cosine: list[float] | None = Field(None, description="The cosine noise's range, if any.")
    banned_tokens: int = Field(0, description="Token ids the sampler never drew.")
    query_context: dict[str, int] | None = Field(
        None, description="Scored inputs whose cut prefix is the query's own: draws and "
                          "distinct continuations (left out of every reading and rate).")
    epsilon_profile: dict[str, Any] | None = Field(
        None, description="Distinct members within several radii (radii, members) and the "
                          "nearest members (tokens, distance, found_by).")
    token_reading: list[dict[str, Any]] = Field(
        default_factory=list, description="Per token of the query's prefix: shares of members and "
        "outside inputs keeping it (aligned back from the best position, and anywhere), and of "
        "its substitutions staying inside ε.")


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


class TokensResult(BaseModel):
    model: str
    input: str
    tokens: list[str] = Field(description="The input as the model reads it, one string per "
                              "token (index 0 = BOS).")
    positions: dict[str, int] = Field(description="The model's named positions in this input "
                                      "and their indices.")


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
    kind: Literal["query", "grid", "verify", "attention"]
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    stage: str
    progress: float = Field(ge=0, le=1)
    result: QueryResult | GridResult | VerifyResult | AttentionResult | None = None
    error: str | None = None
    status_code: int | None = Field(None, description="The HTTP status the error would have had.")


class ErrorMessage(BaseModel):
    detail: str


QueryResult.model_rebuild()
