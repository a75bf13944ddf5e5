"""The HTTP layer: a FastAPI app over a QueryService, and the single-page UI's static files.

    inversionview serve counting addition      # http://127.0.0.1:8000, API docs at /docs

Every error a user can cause answers 4xx with ``{"detail": "<one readable sentence>"}``,
which the page shows as it is: a ``UserError`` with its status, or 422 for a request the
schema refuses. Each route declares every status it can answer in its ``responses``, and the
request schemas state this server's limits (its model names, candidates, layers), so the
OpenAPI document says exactly what is accepted.

There is no authentication: ``serve`` binds to 127.0.0.1 and warns when told otherwise.
"""

# No ``from __future__ import annotations``: the routes' request types are built per server
# (``served_requests``) and FastAPI must see them as classes, not as names to look up.

import ipaddress
import json
import socket
import sys
from pathlib import Path
from typing import Annotated, Any, Iterator

from fastapi import FastAPI, Path as PathParameter, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.routing import Match

from inversionview.errors import UserError
from inversionview.options import SEED
from inversionview.web.schemas import (AttentionResult, ErrorMessage, Example, GridResult,
                                       JobStatus, ModelInfo, QueryResult, TokensRequest,
                                       TokensResult, VerifyResult, served_requests)
from inversionview.web.service import InternalError, QueryService, ServerBusy

STATIC = Path(__file__).parent / "static"


def _errors(**statuses: str) -> dict[int | str, dict]:
    """OpenAPI ``responses`` for error statuses: ``_errors(e404="unknown model")``. Errors are
    JSON on every route, the HTML export's too (FastAPI would say text/html there)."""
    responses: dict[int | str, dict] = {}
    for name, description in statuses.items():
        status = int(name[1:])
        responses[status] = {"description": description, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorMessage"}}}}
        if status == 429:
            responses[status]["headers"] = {"Retry-After": {
                "description": "Seconds to wait before trying again.",
                "schema": {"type": "integer"}}}
    return responses


UNKNOWN_MODEL = "Unknown model."
INVALID = "A malformed request or a value outside this server's limits."
BAD_INPUT = ("An input, site or position the model cannot take (a character outside the "
             "vocabulary, an unknown site or position, a layer the model lacks).")
CANCELLED = "The job was cancelled (DELETE /api/jobs/{id}, or the server is stopping)."
BUSY = "The job queue is full (at most max_jobs queued or running); retry after Retry-After s."
STOPPING = "The server is shutting down."
COMPUTE = _errors(e400=BAD_INPUT, e404=UNKNOWN_MODEL, e409=CANCELLED, e422=INVALID, e429=BUSY,
                  e503=STOPPING)
SUBMIT = _errors(e404=UNKNOWN_MODEL, e422=INVALID, e429=BUSY, e503=STOPPING)
JOB = _errors(e404="No such job (finished jobs are forgotten after a while).")


def create_app(service: QueryService) -> FastAPI:
    app = FastAPI(title="inversionview", version="0.1.0",
                  description="Sample and read the ε-preimage of a model's activations, live. "
                              "No authentication: serve it on loopback only.")
    app.state.service = service
    names = list(service.models)
    QueryRequest, GridRequest, AttentionRequest = served_requests(
        names, max(model.probed.n_layers for model in service.models.values()),
        service.candidates, service.grid_candidates)
    ModelName = Annotated[str, PathParameter(description="A model name from GET /api/models.",
                                             json_schema_extra={"enum": names})]

    fastapi_openapi = app.openapi

    def openapi() -> dict:
        """FastAPI's document, with the request schemas as pydantic writes them (FastAPI
        turns every bound into a float, and 2**63 - 1, the largest seed, is not one), and
        without FastAPI's own 422 where none can occur (a 422 here is an ErrorMessage)."""
        if app.openapi_schema is None:
            document = fastapi_openapi()
            schemas = document["components"]["schemas"]
            for model in (QueryRequest, GridRequest, AttentionRequest, ErrorMessage):
                schemas[model.__name__] = model.model_json_schema(
                    ref_template="#/components/schemas/{model}")
            for operation in (op for path in document["paths"].values() for op in path.values()):
                if "HTTPValidationError" in str(operation["responses"].get("422")):
                    del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(UserError)
    async def user_error(_: Request, error: UserError) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after)} if isinstance(error, ServerBusy) else None
        return JSONResponse({"detail": str(error)}, status_code=error.status_code,
                            headers=headers)

    @app.exception_handler(InternalError)
    async def internal_error(_: Request, error: InternalError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(error, request.scope.get("route"))},
                            status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        if error.status_code == 400:  # FastAPI could not read the body at all
            detail = _unreadable_body(await request.body(), request.scope.get("route"),
                                      error.__cause__)
            return JSONResponse({"detail": detail}, status_code=422)
        routes = [route for route in app.router.routes if isinstance(route, APIRoute)]
        path = next((route.path for route in routes
                     if route.matches(request.scope)[0] is not Match.NONE), None)
        if error.status_code == 405 and path is not None:
            # Allow: every method of the path (Starlette names only the first route's)
            allowed = sorted({method for route in routes if route.path == path
                              for method in route.methods})
            error = HTTPException(405, error.detail, headers={"Allow": ", ".join(allowed)})
        return await http_exception_handler(request, error)  # 404 no route, 405 method

    @app.get("/api/models", response_model=list[ModelInfo])
    def models() -> list[ModelInfo]:
        """The loaded models, with their sites, named positions and attributes."""
        return [model.info() for model in service.models.values()]

    @app.get("/api/models/{name}/example", response_model=Example,
             responses=_errors(e404=UNKNOWN_MODEL, e422=INVALID))
    def example(name: ModelName, seed: Annotated[int, Query(**SEED.bounds)] = 0) -> Example:
        """A random input from the model's task distribution (the same seed, the same input)."""
        task = service.model(name).probed.task
        return Example(model=name, input=task.sample(1, seed=seed)[0], seed=seed)

    @app.post("/api/tokens", response_model=TokensResult,
              responses=_errors(e400=BAD_INPUT, e404=UNKNOWN_MODEL, e422=INVALID))
    def tokens(request: TokensRequest) -> dict:
        """The input cut into the model's tokens, and where its named positions fall."""
        return service.tokens(request)

    @app.post("/api/query", response_model=QueryResult, responses=COMPUTE)
    def query(request: QueryRequest) -> dict:
        """Run one query and return its record (the same as `inversionview query --json`)."""
        return service.run(service.submit_query(request))

    @app.post("/api/query/html", response_class=HTMLResponse, responses=COMPUTE)
    def query_html(request: QueryRequest) -> HTMLResponse:
        """The query's view as one self-contained HTML page (as `query --html`)."""
        from inversionview.preimage.result import PreimageResult
        from inversionview.views.html import render_html

        record = dict(service.run(service.submit_query(request)))
        record.pop("attention", None)
        name = f"inversionview-{record['task']}-{record['site']}-{record['position']}.html"
        return HTMLResponse(render_html(PreimageResult.from_record(record)),
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.post("/api/verify", response_model=VerifyResult, responses=COMPUTE)
    def verify(request: QueryRequest) -> dict:
        """Patch the query's activation with the nearest in-ε and out-of-ε samples' (at their
        best positions) and measure how much the model's output changes."""
        return service.run(service.submit_verify(request))

    @app.post("/api/grid", response_model=GridResult, responses=COMPUTE)
    def grid(request: GridRequest) -> dict:
        """Every site at one input and position: in-ε rate and the most agreeing attribute."""
        return service.run(service.submit_grid(request))

    @app.post("/api/attention", response_model=AttentionResult, responses=COMPUTE)
    def attention(request: AttentionRequest) -> dict:
        """The full attention pattern of every head of one layer for one input."""
        return service.run(service.submit_attention(request))

    @app.post("/api/jobs/query", response_model=JobStatus, status_code=202, responses=SUBMIT)
    def start_query(request: QueryRequest) -> dict:
        """Start a query in the background; poll GET /api/jobs/{id} for progress and result.
        Its input errors are reported on the job (state 'failed', status_code 400)."""
        return service.submit_query(request).status()

    @app.post("/api/jobs/grid", response_model=JobStatus, status_code=202, responses=SUBMIT)
    def start_grid(request: GridRequest) -> dict:
        """Start an all-sites grid in the background."""
        return service.submit_grid(request).status()

    @app.get("/api/jobs/{job_id}", response_model=JobStatus, responses=JOB)
    def job_status(job_id: str) -> dict:
        """A job's state, stage and progress (0..1); its result once done, its error if failed."""
        return service.job(job_id).status()

    @app.delete("/api/jobs/{job_id}", response_model=JobStatus, responses=JOB)
    def cancel_job(job_id: str) -> dict:
        """Ask a job to stop; it ends as 'cancelled' at its next progress step."""
        return service.cancel(job_id).status()

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class _LongNumber(str):
    """The digits of a JSON integer longer than Python converts (``int_max_str_digits``)."""


def _parse_int(text: str) -> int | str:
    limit = sys.get_int_max_str_digits()
    return _LongNumber(text) if limit and len(text.lstrip("-")) > limit else int(text)


def _long_numbers(value: Any, where: str = "") -> Iterator[tuple[str, _LongNumber]]:
    """(field path, digits) of each long number in a parsed body."""
    if isinstance(value, _LongNumber):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _long_numbers(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _long_numbers(item, f"{where}[{index}]")


def _field_range(route: Any, name: str) -> str:
    """"; NAME must be from LOW to HIGH" for a field of the route's request body or a query
    parameter, from its declared bounds ("" for a name the route does not take)."""
    body = getattr(route, "body_field", None)
    model = getattr(getattr(body, "field_info", None), "annotation", None)
    field = getattr(model, "model_fields", {}).get(name)
    parameters = getattr(getattr(route, "dependant", None), "query_params", [])
    parameter = next((p.field_info for p in parameters if p.name == name), None)
    metadata = field.metadata if field is not None else getattr(parameter, "metadata", [])
    bounds = {key: getattr(item, key) for item in metadata
              for key in ("ge", "gt", "le", "lt") if hasattr(item, key)}
    low = (f"from {bounds['ge']:,}" if "ge" in bounds else
           f"greater than {bounds['gt']:,}" if "gt" in bounds else None)
    high = (f"to {bounds['le']:,}" if "le" in bounds else
            f"below {bounds['lt']:,}" if "lt" in bounds else None)
    return f"; {name} must be " + " ".join(part for part in (low, high) if part) if low or high else ""


def _unreadable_body(body: bytes, route: Any, cause: BaseException | None) -> str:
    """Why FastAPI could not read a request body: it is not UTF-8 text, or it holds an integer
    of more digits than Python converts (4,300: json.loads raises a ValueError, not a JSON
    error), which is then named with the range of its field (a 5,000-digit seed: 'seed: a
    number of 5,000 digits; seed must be from 0 to 9,223,372,036,854,775,807')."""
    if isinstance(cause, ValueError) and not isinstance(cause, UnicodeDecodeError):
        try:
            found = next(_long_numbers(json.loads(body, parse_int=_parse_int)), None)
        except ValueError:
            found = None
        if found is not None:
            where, digits = found
            return (f"{where}: a number of {len(digits.lstrip('-')):,} digits, beyond any "
                    f"field's range{_field_range(route, where)}")
    return "the request body is not JSON text (UTF-8)"


def _validation_message(error: RequestValidationError, route: Any = None) -> str:
    """pydantic's errors as one sentence: 'candidates: Input should be less than or equal to
    8192; site: ...' (the alternatives of a union field joined by 'or'); a number too long
    to read is given its field's range."""
    messages: dict[str, list[str]] = {}
    for item in error.errors():
        location = [str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path")]
        message = item.get("msg", "invalid")
        if item.get("type") == "int_parsing_size" and location:
            message = ("a number of more digits than can be read, beyond any field's range"
                       + _field_range(route, location[0]))
        alternatives = messages.setdefault(location[0] if location else "", [])
        if message not in alternatives:
            alternatives.append(message)
    parts = [f"{where}: {' or '.join(found)}" if where else " or ".join(found)
             for where, found in messages.items()]
    return "; ".join(parts) or "invalid request"


# ----- where the server listens (for `inversionview serve`) --------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only: localhost, 127.0.0.0/8, ::1."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: it may resolve to anything
        return False


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once and let go, so that a busy port or an unknown host is a clear
    UserError before the models load, not a log line from uvicorn after."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except (OSError, UnicodeError) as error:  # UnicodeError: a host name IDNA cannot encode
        reason = getattr(error, "strerror", None) or str(error)
        raise UserError(f"cannot listen on {host}:{port}: {reason}; choose another --port "
                        f"(or --host)") from None
