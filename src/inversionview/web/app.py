"""The HTTP layer: a FastAPI app over a QueryService, and the single-page UI's static files.

    inversionview serve counting addition      # http://127.0.0.1:8000, API docs at /docs

Every error a user can cause answers 4xx with ``{"detail": "<one readable sentence>"}``,
which the page shows as it is.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from inversionview.web.schemas import (AttentionRequest, AttentionResult, ErrorMessage, Example,
                                       GridRequest, GridResult, JobStatus, ModelInfo,
                                       QueryRequest, QueryResult, VerifyResult)
from inversionview.web.service import QueryService, RequestError

STATIC = Path(__file__).parent / "static"
ERRORS = {400: {"model": ErrorMessage}, 404: {"model": ErrorMessage},
          409: {"model": ErrorMessage}, 422: {"model": ErrorMessage}}


def create_app(service: QueryService) -> FastAPI:
    app = FastAPI(title="inversionview", version="0.1.0",
                  description="Sample and read the ε-preimage of a model's activations, live.")
    app.state.service = service

    @app.exception_handler(RequestError)
    async def request_error(_: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(error)}, status_code=422)

    @app.get("/api/models", response_model=list[ModelInfo])
    def models() -> list[ModelInfo]:
        """The loaded models, with their sites, named positions and attributes."""
        return [model.info() for model in service.models.values()]

    @app.get("/api/models/{name}/example", response_model=Example, responses=ERRORS)
    def example(name: str, seed: int = 0) -> Example:
        """A random input from the model's task distribution (the same seed, the same input)."""
        if seed < 0:
            raise RequestError(422, f"seed must be >= 0, got {seed}")
        task = service.model(name).probed.task
        return Example(model=name, input=task.sample(1, seed=seed)[0], seed=seed)

    @app.post("/api/query", response_model=QueryResult, responses=ERRORS)
    def query(request: QueryRequest) -> dict:
        """Run one query and return its record (the same as `inversionview query --json`)."""
        return service.run(service.submit_query(request))

    @app.post("/api/query/html", response_class=HTMLResponse, responses=ERRORS)
    def query_html(request: QueryRequest) -> HTMLResponse:
        """The query's view as one self-contained HTML page (as `query --html`)."""
        from inversionview.preimage.result import PreimageResult
        from inversionview.views.html import render_html

        record = dict(service.run(service.submit_query(request)))
        record.pop("attention", None)
        name = f"inversionview-{record['task']}-{record['site']}-{record['position']}.html"
        return HTMLResponse(render_html(PreimageResult.from_record(record)),
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.post("/api/verify", response_model=VerifyResult, responses=ERRORS)
    def verify(request: QueryRequest) -> dict:
        """Patch the query's activation with the nearest in-ε and out-of-ε samples' (at their
        best positions) and measure how much the model's output changes."""
        return service.run(service.submit_verify(request))

    @app.post("/api/grid", response_model=GridResult, responses=ERRORS)
    def grid(request: GridRequest) -> dict:
        """Every site at one input and position: in-ε rate and the most agreeing attribute."""
        return service.run(service.submit_grid(request))

    @app.post("/api/attention", response_model=AttentionResult, responses=ERRORS)
    def attention(request: AttentionRequest) -> dict:
        """The full attention pattern of every head of one layer for one input."""
        return service.run(service.submit_attention(request))

    @app.post("/api/jobs/query", response_model=JobStatus, status_code=202, responses=ERRORS)
    def start_query(request: QueryRequest) -> dict:
        """Start a query in the background; poll GET /api/jobs/{id} for progress and result."""
        return service.submit_query(request).status()

    @app.post("/api/jobs/grid", response_model=JobStatus, status_code=202, responses=ERRORS)
    def start_grid(request: GridRequest) -> dict:
        """Start an all-sites grid in the background."""
        return service.submit_grid(request).status()

    @app.get("/api/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
    def job_status(job_id: str) -> dict:
        """A job's state, stage and progress (0..1); its result once done, its error if failed."""
        return service.job(job_id).status()

    @app.delete("/api/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
    def cancel_job(job_id: str) -> dict:
        """Ask a job to stop; it ends as 'cancelled' at its next progress step."""
        return service.cancel(job_id).status()

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _validation_message(error: RequestValidationError) -> str:
    """pydantic's errors as one sentence: 'candidates: Input should be less than or equal to
    8192; site: ...'."""
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path"))
        parts.append(f"{where}: {item.get('msg', 'invalid')}" if where else item.get("msg", "invalid"))
    return "; ".join(parts) or "invalid request"
