"""What the web server does, without HTTP: one worker thread that runs
every computation on the loaded models (``web.models``) in turn, so concurrent requests
never share a model mid-forward, with progress, cancellation, a bounded queue and a bounded
cache of finished results.

    service = QueryService([load_model("counting"), load_model("addition")])
    record = service.run(service.submit_query(QueryRequest(model="counting")))

Errors a user can act on are ``errors.UserError`` with their HTTP status (404 unknown model
or job, 409 a cancelled job, 422 a limit of this server, 429 the queue is full, 400 the rest);
anything else a computation raises is a bug, reported on the job as a 500 "internal error".
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from inversionview.errors import UserError, echo
from inversionview.options import GRID_CANDIDATES, SERVER_CANDIDATES, Range
from inversionview.preimage.config import GRID_CONFIG, QueryConfig
from inversionview.preimage.grid import run_grid
from inversionview.preimage.query import QueryCancelled, run_query
from inversionview.probed.subject import Subject
from inversionview.web.models import (LoadedModel, bundled_model_names, load_model,
                                      with_unique_names)
from inversionview.tasks.base import TaskInputError
from inversionview.web.schemas import (AttentionRequest, GridRequest, QueryRequest, TokensRequest,
                                      settings_of)

__all__ = ["QueryService", "Job", "ServerBusy", "InternalError", "LoadedModel", "load_model",
           "bundled_model_names"]

log = logging.getLogger("inversionview.web")

MAX_JOBS = 32  # queued or running; one query of 8,192 candidates takes 20-90 s on 2 cores
RETRY_AFTER_SECONDS = 10
# Results are kept by count and by the samples they hold: a record of 8,192 samples
# (`all`) takes about 22 MB of Python objects, so 100,000 samples are about 300 MB.
MAX_HELD_SAMPLES = 100_000


class ServerBusy(UserError):
    """The job queue is full: 429, with a Retry-After header."""

    status_code = 429
    retry_after = RETRY_AFTER_SECONDS


class InternalError(RuntimeError):
    """A computation failed with an error that is not a UserError: a bug (500)."""


# ----- jobs ----------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    kind: str  # "query", "grid", "verify" or "attention"
    key: str  # the request, canonical: equal keys give equal results
    compute: Callable[[Callable[[str, float], None]], dict[str, Any]]
    state: str = "queued"
    stage: str = "queued"
    progress: float = 0.0
    result: dict[str, Any] | None = None
    error: str | None = None
    status_code: int | None = None  # of the error: 4xx a user's, 409 cancelled, 500 a bug
    created: float = field(default_factory=time.monotonic)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def report(self, stage: str, fraction: float) -> None:
        """The progress callback the computation calls; it stops a cancelled job."""
        if self.cancel_requested.is_set():
            raise QueryCancelled()
        self.stage, self.progress = stage, round(min(max(fraction, 0.0), 1.0), 4)

    def status(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "state": self.state, "stage": self.stage,
                "progress": self.progress, "result": self.result,
                "error": self.error, "status_code": self.status_code}

    def fail(self, state: str, message: str, status_code: int) -> None:
        self.state, self.stage, self.error, self.status_code = state, state, message, status_code


class QueryService:
    """Runs queries, grids and attention patterns on one worker thread, in arrival order.

    At most ``max_jobs`` jobs are queued or running at once (a new one beyond is ServerBusy,
    429). Up to ``cache_size`` finished results are kept by request and ``kept_jobs`` finished
    jobs by id, each holding at most ``held_samples`` samples in all (the oldest go first; the
    newest is always kept; unfinished jobs are bounded by ``max_jobs``). ``candidates`` and
    ``grid_candidates`` are this server's limits per request."""

    def __init__(self, models: list[LoadedModel], cache_size: int = 128, kept_jobs: int = 256,
                 max_jobs: int = MAX_JOBS, held_samples: int = MAX_HELD_SAMPLES,
                 candidates: Range = SERVER_CANDIDATES, grid_candidates: Range = GRID_CANDIDATES):
        if not models:
            raise ValueError("the server needs at least one model")
        if min(cache_size, kept_jobs, max_jobs) < 1:
            raise ValueError("cache_size, kept_jobs and max_jobs must be at least 1")
        self.models = {model.name: model for model in with_unique_names(models)}
        self.max_jobs, self.candidates, self.grid_candidates = max_jobs, candidates, grid_candidates
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_samples = 0  # samples held by the cached results
        self._held_samples = held_samples
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._kept_jobs = kept_jobs
        self._pending = 0  # jobs queued or running
        self._closed = False
        self._lock = threading.Lock()  # guards _jobs, _cache, _pending (worker and request threads)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="inversionview-worker", daemon=True)
        self._worker.start()

    # ----- requests ------------------------------------------------------------------

    def model(self, name: str) -> LoadedModel:
        if name not in self.models:
            raise UserError(f"unknown model {echo(name)}; this server has: "
                            f"{', '.join(self.models)}", 404)
        return self.models[name]

    def submit_query(self, request: QueryRequest) -> Job:
        loaded = self.model(request.model)
        _within(self.candidates, request.candidates)
        return self._submit("query", request.model_dump_json(),
                            lambda report: self._query(loaded, request, report))

    def submit_grid(self, request: GridRequest) -> Job:
        loaded = self.model(request.model)
        _within(self.grid_candidates, request.candidates)
        return self._submit("grid", request.model_dump_json(),
                            lambda report: self._grid(loaded, request, report))

    def submit_verify(self, request: QueryRequest) -> Job:
        loaded = self.model(request.model)
        _within(self.candidates, request.candidates)
        return self._submit("verify", request.model_dump_json(),
                            lambda report: self._verify(loaded, request, report))

    def submit_attention(self, request: AttentionRequest) -> Job:
        loaded = self.model(request.model)
        return self._submit("attention", request.model_dump_json(),
                            lambda report: self._attention(loaded, request))

    def tokens(self, request: TokensRequest) -> dict[str, Any]:
        """The input as the model reads it (cheap: answered at once, not queued)."""
        task = self.model(request.model).probed.task
        text = task.normalize(request.input if request.input is not None else task.example)
        tokens = task.text_tokens(text)  # a character outside the vocabulary: a clear error
        positions = {}
        for name in task.position_names:
            try:
                positions[name] = task.resolve_position(text, name)
            except TaskInputError:  # a name this input lacks (an unfinished addition, say)
                pass
        return {"model": request.model, "input": text, "tokens": tokens, "positions": positions}

    def run(self, job: Job) -> dict[str, Any]:
        """Wait for ``job`` and return its result; its error raises UserError (4xx) or
        InternalError (a bug)."""
        job.finished.wait()
        if job.error is not None:
            assert job.status_code is not None
            if job.status_code >= 500:
                raise InternalError(job.error)
            raise UserError(job.error, job.status_code)
        assert job.result is not None
        return job.result

    def job(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise UserError(f"no job {echo(job_id)} (finished jobs are kept for a while, "
                                f"then forgotten)", 404)
            return self._jobs[job_id]

    def cancel(self, job_id: str) -> Job:
        job = self.job(job_id)
        job.cancel_requested.set()
        return job

    def pending(self) -> int:
        """Jobs queued or running now."""
        with self._lock:
            return self._pending

    def close(self) -> None:
        """Cancel every unfinished job and stop the worker once it has seen them."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                job.cancel_requested.set()
        self._queue.put(None)

    # ----- the worker ----------------------------------------------------------------

    def _submit(self, kind: str, request_key: str, compute) -> Job:
        key = _cache_key(kind, request_key)
        job = Job(uuid.uuid4().hex[:16], kind, key, compute)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                job.result, job.state, job.stage, job.progress = cached, "done", "done", 1.0
                job.finished.set()
            elif self._closed:
                raise UserError("the server is shutting down", 503)
            elif self._pending >= self.max_jobs:
                raise ServerBusy(f"the server is busy: {self._pending} jobs are queued or "
                                 f"running, at most {self.max_jobs}; try again in "
                                 f"{RETRY_AFTER_SECONDS} s")
            else:
                self._pending += 1
            self._jobs[job.id] = job
            self._forget_old_jobs()
        if cached is None:
            self._queue.put(job)
        return job

    def _forget_old_jobs(self) -> None:
        """Drop the oldest finished jobs beyond ``kept_jobs`` or ``held_samples`` (unfinished
        ones stay: there are at most ``max_jobs`` of them). Called with the lock held."""
        finished = [job for job in self._jobs.values() if job.finished.is_set()]
        excess = len(self._jobs) - self._kept_jobs
        held = sum(_samples(job.result) for job in finished)
        for job in finished[:-1]:  # the newest stays
            if excess <= 0 and held <= self._held_samples:
                break
            del self._jobs[job.id]
            excess, held = excess - 1, held - _samples(job.result)

    def _remember(self, key: str, result: dict[str, Any]) -> None:
        """Cache ``result``; drop the least recently used beyond ``cache_size`` or
        ``held_samples``. Called with the lock held."""
        if key in self._cache:
            self._cache_samples -= _samples(self._cache[key])
        self._cache[key] = result
        self._cache.move_to_end(key)
        self._cache_samples += _samples(result)
        while len(self._cache) > 1 and (len(self._cache) > self._cache_size
                                        or self._cache_samples > self._held_samples):
            _, dropped = self._cache.popitem(last=False)
            self._cache_samples -= _samples(dropped)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._run_one(job)
            finally:
                with self._lock:
                    self._pending -= 1
                    self._forget_old_jobs()

    def _run_one(self, job: Job) -> None:
        with self._lock:
            cached = self._cache.get(job.key)  # an identical request may have finished meanwhile
        try:
            if job.cancel_requested.is_set():
                raise QueryCancelled()
            job.state = "running"
            result = cached if cached is not None else job.compute(job.report)
            job.result, job.state, job.stage, job.progress = result, "done", "done", 1.0
            with self._lock:
                self._remember(job.key, result)
        except QueryCancelled:
            job.fail("cancelled", f"the {job.kind} was cancelled", 409)
        except UserError as error:
            job.fail("failed", str(error), error.status_code)
        except Exception as error:  # a bug: report it on the job instead of killing the worker
            log.exception("job %s (%s) failed", job.id, job.key[:200])
            job.fail("failed", f"internal error ({type(error).__name__}): this is a bug in the "
                               f"server; its log has the traceback", 500)
        finally:
            job.finished.set()

    # ----- the computations ----------------------------------------------------------

    @staticmethod
    def _query(loaded: LoadedModel, request: QueryRequest, report) -> dict[str, Any]:
        task = loaded.probed.task
        default_site, default_position = task.default_query
        text = request.input if request.input is not None else task.example
        site = request.site if request.site is not None else default_site
        position = request.position if request.position is not None else default_position
        banned: tuple[int, ...] = ()
        if request.ban_rare is not None:
            from inversionview.text.counts import stored_rare_tokens

            if not task.free_text:
                raise UserError("ban_rare is for language models; a toy task's vocabulary has "
                                "no rare tokens")
            banned = stored_rare_tokens(loaded.probed.source, task.vocab, request.ban_rare,
                                        option="ban_rare")
        config = QueryConfig(**settings_of(request), banned=banned)
        result = run_query(loaded.probed, loaded.decoder, text, site, position, config,
                           seed=request.seed, decoder_name=loaded.decoder_name, progress=report)
        record = result.to_record()
        record["model"] = loaded.name
        record["attention"] = _head_attention(loaded.probed, result.query.text, result.site,
                                              result.position)
        return record

    def _verify(self, loaded: LoadedModel, request: QueryRequest, report) -> dict[str, Any]:
        from inversionview.preimage.result import PreimageResult
        from inversionview.verify.readout import verify_readout

        with self._lock:  # the page verifies the query it has just shown: reuse that result
            cached = self._cache.get(_cache_key("query", request.model_dump_json()))
        record = dict(cached if cached is not None else self._query(loaded, request, report))
        record.pop("attention")
        return verify_readout(loaded.probed, PreimageResult.from_record(record))

    @staticmethod
    def _grid(loaded: LoadedModel, request: GridRequest, report) -> dict[str, Any]:
        task = loaded.probed.task
        text = request.input if request.input is not None else task.example
        position = request.position if request.position is not None else task.default_query[1]
        config = replace(GRID_CONFIG, **settings_of(request))  # the decoder's draws only
        grid = run_grid(loaded.probed, loaded.decoder, text, position, config, seed=request.seed,
                        decoder_name=loaded.decoder_name, progress=report)
        grid.model = loaded.name
        return grid.to_record()

    @staticmethod
    def _attention(loaded: LoadedModel, request: AttentionRequest) -> dict[str, Any]:
        task = loaded.probed.task
        text = task.normalize(request.input if request.input is not None else task.example)
        pattern = loaded.probed.attention_pattern(text, request.layer)
        return {"model": loaded.name, "input": text, "tokens": task.text_tokens(text),
                "layer": request.layer,
                "n_heads": pattern.shape[0], "patterns": _rounded(pattern.tolist())}


def _within(limits: Range, value: int) -> None:
    """This server's limit (the HTTP schema states it too; this is for library callers)."""
    problem = limits.problem(value)
    if problem is not None:
        raise UserError(f"{limits.name} {problem} on this server", 422)


def _samples(result: dict[str, Any] | None) -> int:
    """How many samples (or grid rows) a result holds: what its size grows with."""
    if result is None:
        return 0
    return 1 + len(result.get("samples", ())) + len(result.get("rows", ()))


def _cache_key(kind: str, request_json: str) -> str:
    """Equal keys, equal results: the kind of job and its request, canonical JSON."""
    return f"{kind}:{request_json}"


def _head_attention(probed: Subject, text: str, site_name: str, position: int
                    ) -> list[float] | None:
    """A head site's attention weights from ``position`` over ``text`` (None for other sites)."""
    site = probed.site(site_name)
    if site.head is None:
        return None
    pattern = probed.attention_pattern(text, site.layer)
    return _rounded(pattern[site.head, position, : position + 1].tolist())


def _rounded(values):
    if isinstance(values, list):
        return [_rounded(v) for v in values]
    return round(values, 5)
