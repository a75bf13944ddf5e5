"""The contract between the server and the page: every request and response of the JSON API.

Nothing here repeats a declaration of the library; it is derived from it:

- a query's settings (``QueryRequest``, ``GridRequest``) are ``preimage.config.QueryConfig``'s
  fields (``_setting_fields``): their names (``all`` for ``all_samples``), types, defaults,
  ranges and help; only this server's tighter limits (candidates, search) are its own;
- a query's response is the record of ``inversionview query --json``
  (``PreimageResult.to_record()``) and a grid's is ``Grid.to_record()``; their schemas
  (``QueryResult``, ``GridResult`` and the records inside) are built from those dataclasses
  (``_record_model``), with the JSON forms of what the dataclass keeps in another form (an
  infinite distance is null, a dict's shape) and the descriptions of the API's document.
"""

from __future__ import annotations

import types
from dataclasses import MISSING, fields
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import (BaseModel, ConfigDict, Field, create_model, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

from inversionview.options import (BAN_COUNT, GRID_CANDIDATES, LAYERS, SEED, SERVER_CANDIDATES,
                                   SERVER_SEARCH_EVALUATIONS, Choice, Range)
from inversionview.preimage import grid as _grid, result as _result
from inversionview.preimage.config import (GRID_CONFIG, GRID_HELP, GRID_SETTINGS, SETTINGS,
                                           QueryConfig)

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

    model_config = REQUEST_CONFIG

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


# ----- a query's settings, from QueryConfig -------------------------------------------------

#: The JSON names of the settings the API names otherwise (the CLI's flag is ``--all``).
JSON_NAMES = {"all_samples": "all"}
#: This server's limits where they are tighter than the library's: one request must not
#: hold a shared server (options.SERVER_*).
SERVER_LIMITS = {"candidates": SERVER_CANDIDATES, "search": SERVER_SEARCH_EVALUATIONS}
#: The query settings a request cannot give: token ids to ban are chosen from the model's
#: stored token counts (``ban_rare``), not sent.
NOT_REQUESTED = ("banned",)


def _setting_fields(names: tuple[str, ...], defaults: QueryConfig, limits: dict[str, Range],
                    about: dict[str, str] | None = None) -> dict[str, Any]:
    """``create_model`` definitions of the query settings ``names`` as QueryConfig declares
    them (type, allowed values, help), with ``defaults``' values, ``limits`` where this
    server allows less and ``about`` where a setting means more here than its help says.
    A tuple is a JSON array of its length (a strict model refuses a list for a tuple, and
    JSON has only lists)."""
    hints = get_type_hints(QueryConfig)
    definitions: dict[str, Any] = {}
    for name in names:
        declared = SETTINGS[name]
        allowed = limits.get(name, declared.metadata["allowed"])
        kind, bounds = hints[name], allowed.bounds if isinstance(allowed, Range) else {}
        optional = type(None) in get_args(kind)
        if isinstance(allowed, Choice):
            kind = Literal[allowed.allowed]
        if declared.metadata["each"]:  # the bounds hold for each item of a fixed-size tuple
            items = get_args(_not_none(kind) if optional else kind)
            kind = list[Annotated[items[0], Field(**bounds)]]
            bounds = {"min_length": len(items), "max_length": len(items)}
        if optional and type(None) not in get_args(kind):
            kind = kind | None
        description = (about or {}).get(name, declared.metadata["help"])
        definitions[JSON_NAMES.get(name, name)] = (
            kind, Field(getattr(defaults, name), description=description, **bounds))
    return definitions


def _not_none(kind: Any) -> Any:
    """``X`` of ``X | None``."""
    (inner,) = [arg for arg in get_args(kind) if arg is not type(None)]
    return inner


def settings_of(request: BaseModel) -> dict[str, Any]:
    """The QueryConfig settings ``request`` gives, under their library names."""
    settings = {}
    for name, declared in SETTINGS.items():
        json_name = JSON_NAMES.get(name, name)
        if json_name in type(request).model_fields:
            value = getattr(request, json_name)
            settings[name] = tuple(value) if declared.metadata["each"] and value is not None else value
    return settings


class _Query(_Request):
    """What a query reads: model, input, site, position; and its seed."""

    model: str = Field(description="A model name from GET /api/models.")
    input: str | None = Field(None, min_length=1, max_length=MAX_INPUT_CHARACTERS,
                              description="The query input (default: the task's example).")
    site: str | None = Field(None, min_length=1, description="Short (a1.0, x0.mid) or hook "
                             "name (default: the task's default query).")
    position: Position = Field(None, description="Named position or index (0 = BOS; "
                               "default: the task's default query).")
    seed: int = Field(0, **SEED.bounds)


QueryRequest = create_model(
    "QueryRequest", __base__=_Query,
    __doc__="The query command's parameters; what is left out takes the command's default.",
    **_setting_fields(tuple(name for name in SETTINGS if name not in NOT_REQUESTED),
                      QueryConfig(), SERVER_LIMITS),
    ban_rare=(int | None, Field(None, **BAN_COUNT.bounds, description="Never sample tokens "
                                "seen fewer than this many times in the language model's "
                                "training corpus (its stored token counts; the paper's "
                                "factual-recall recipe).")))


class _GridAt(_Request):
    model: str
    input: str | None = Field(None, min_length=1, max_length=MAX_INPUT_CHARACTERS)
    position: Position = None
    seed: int = Field(0, **SEED.bounds)


GridRequest = create_model(
    "GridRequest", __base__=_GridAt, __doc__="Every site of the model at one input and position.",
    **_setting_fields(GRID_SETTINGS, GRID_CONFIG, {"candidates": GRID_CANDIDATES}, GRID_HELP))


class AttentionRequest(_Request):
    model: str
    input: str | None = Field(None, min_length=1, max_length=MAX_INPUT_CHARACTERS)
    layer: int = Field(0, ge=0, le=int(LAYERS.high) - 1)


class TokensRequest(_Request):
    """An input to cut into the model's tokens (the page's position picker)."""

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

    def candidates_field(request: type[BaseModel], limits: Range):
        declared = request.model_fields["candidates"]
        return (int, Field(min(declared.default, int(limits.high)), **limits.bounds,
                           description=declared.description))

    query = create_model("QueryRequest", __base__=QueryRequest, __doc__=QueryRequest.__doc__,
                         model=model, candidates=candidates_field(QueryRequest, candidates))
    grid = create_model("GridRequest", __base__=GridRequest, __doc__=GridRequest.__doc__,
                        model=model, candidates=candidates_field(GridRequest, grid_candidates))
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


# ----- results, from the library's dataclasses ---------------------------------------------

#: The records send every field, so the response schemas say so (a field with a default in
#: the dataclass is still always there).
RECORD_CONFIG = ConfigDict(json_schema_serialization_defaults_required=True)
_RECORDS: dict[type, type[BaseModel]] = {}  # dataclass -> its record's model, as built


def _record_model(source: type, name: str, doc: str | None = None, *,
                  json_types: dict[str, Any] | None = None, about: dict[str, str] | None = None,
                  extra: dict[str, Any] | None = None, after: str | None = None
                  ) -> type[BaseModel]:
    """The schema of ``source``'s record (a result dataclass): its fields in its order, with
    its types and defaults; a dataclass type inside (``list[Sample]``) is its record's model.
    ``json_types`` are the JSON forms that differ from the dataclass's, ``about`` the fields'
    descriptions, ``extra`` fields the record adds (after the field ``after``, else at the
    end). A name that is not a field of ``source`` is an error here, at import, so a field
    renamed in the dataclass cannot leave a stale description or type behind."""
    json_types, about, extra = json_types or {}, about or {}, extra or {}
    names = [f.name for f in fields(source)]
    stale = (set(json_types) | set(about)) - set(names)
    if stale or (after is not None and after not in names):
        raise TypeError(f"{source.__name__} has no field {', '.join(sorted(stale)) or after}")
    hints = get_type_hints(source)
    definitions: dict[str, Any] = {}
    for declared in fields(source):
        if declared.default is not MISSING:
            default = Field(declared.default, description=about.get(declared.name))
        elif declared.default_factory is not MISSING:
            default = Field(default_factory=declared.default_factory,
                            description=about.get(declared.name))
        else:
            default = Field(description=about.get(declared.name))
        definitions[declared.name] = (json_types.get(declared.name, _as_record(hints[declared.name])),
                                      default)
        if declared.name == after:
            definitions.update(extra)
    if after is None:
        definitions.update(extra)
    model = create_model(name, __config__=RECORD_CONFIG, __doc__=doc, **definitions)
    _RECORDS[source] = model
    return model


def _as_record(kind: Any) -> Any:
    """``kind`` with every result dataclass in it replaced by its record's model."""
    if kind in _RECORDS:
        return _RECORDS[kind]
    arguments = get_args(kind)
    if not arguments or get_origin(kind) is Literal:
        return kind
    replaced = tuple(_as_record(argument) for argument in arguments)
    if get_origin(kind) in (Union, types.UnionType):
        return Union[replaced]
    return get_origin(kind)[replaced]


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


SampleRecord = _record_model(
    _result.Sample, "SampleRecord",
    json_types={"distance": float | None},  # inf (nothing scored) is null in JSON
    about={"distance": "null when no position could be scored.",
           "continuations": "Distinct scored inputs sharing this sample's cut prefix (its tokens "
                            "up to best_position, its only evidence).",
           "ids": "The token ids of tokens."})
QueryInputRecord = _record_model(_result.QueryInput, "QueryInputRecord")
QueryStatsRecord = _record_model(_result.QueryStats, "QueryStatsRecord", about={
    "distinct_inputs": "Distinct inputs drawn (raw: continuations counted).",
    "in_epsilon_inputs": "Distinct drawn inputs inside ε (raw: the query's context included).",
    "query_context": "Draws whose cut prefix is the query's own."})
CompletenessRecord = _record_model(
    _result.Completeness, "CompletenessRecord",
    "How much of the ε-preimage the query has seen (``PreimageResult.completeness``).",
    about={"found": "Distinct members (cut prefixes of inputs of the task's space, the query's "
                    "own left out) found inside ε.",
           "estimate": "Importance-sampling estimate of the preimage's size from the decoder's "
                       "noise-free draws.",
           "estimated_size": "max(found, estimate).",
           "coverage": "found / estimated_size.",
           "search": "The local search: evaluations, budget, rounds, stop, members_wanted.",
           "not_estimable": "Why the estimate says nothing about the size here (null: usable)."},
    extra={"description": (str, Field(description="One line for people."))})
QueryResult = _record_model(
    _result.PreimageResult, "QueryResult",
    "``inversionview query --json``, plus ``attention`` for head sites.",
    # the shapes of what the dataclass keeps as plain dicts
    json_types={"schedule": list[ScheduleRound], "histogram": Histogram,
           "attribute_agreement": list[AgreementRow], "verification": VerifyResult | None},
    about={"verification": "Set by `query --verify`.",
           "constrained": "The decoder drew only tokens that can lead to an input of the task "
                          "(its grammar); false: the paper's free sampling.",
           "noise_cosine": "The cosine noise's range, if any.",
           "banned_tokens": "Token ids the sampler never drew.",
           "query_context": "Scored inputs whose cut prefix is the query's own: draws and "
                            "distinct continuations (left out of every reading and rate).",
           "epsilon_profile": "Distinct members within several radii (radii, members) and the "
                              "nearest members (tokens, distance, found_by).",
           "token_reading": "Per token of the query's prefix: shares of members and outside "
                            "inputs keeping it (aligned back from the best position, and "
                            "anywhere), and of its substitutions staying inside ε."},
    extra={"attention": (list[float] | None, Field(
        None, description="For a head site: the head's attention weights from the query "
                          "position over the query's tokens (web UI only)."))},
    after="all_samples")
GridRow = _record_model(_grid.GridRow, "GridRow", about={
    "top_attribute": "The attribute with the highest contrast."})
GridResult = _record_model(_grid.Grid, "GridResult")


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

