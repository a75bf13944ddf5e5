"""What the web server does, without HTTP: the loaded models, and one worker thread that runs
every computation on them in turn (so concurrent requests never share a model mid-forward),
with progress, cancellation and a cache of finished results.

    service = QueryService(load_models(["counting", "addition"]))
    record = service.run(service.submit_query(QueryRequest(model="counting")))
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inversionview.decoder.model import Decoder
from inversionview.preimage.query import QueryCancelled, query_config, run_query
from inversionview.probed.model import ModelLoadError, ProbedModel
from inversionview.probed.sites import SiteError
from inversionview.tasks import TaskInputError
from inversionview.web.schemas import (AttentionRequest, GridRequest, ModelInfo, QueryRequest)


class RequestError(Exception):
    """A request the server cannot answer: ``status_code`` (4xx) and a message for the page."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code
        self.message = message


# ----- models --------------------------------------------------------------------------


@dataclass
class LoadedModel:
    name: str
    probed: ProbedModel
    decoder: Decoder
    decoder_name: str

    def info(self) -> ModelInfo:
        task = self.probed.task
        site, position = task.default_query
        return ModelInfo(
            name=self.name, task=task.name, source=self.probed.source, decoder=self.decoder_name,
            n_layers=self.probed.n_layers, n_heads=self.probed.n_heads,
            sites=[s.short for s in self.probed.sites], position_names=list(task.position_names),
            attribute_names=list(task.attribute_names), example=task.example,
            default_site=site, default_position=position,
            vocabulary=task.describe_vocabulary(), max_length=task.n_ctx)


def bundled_model_names() -> list[str]:
    """The bundled probed models (artifacts with a probed-model manifest)."""
    from inversionview.artifacts import list_artifacts
    from inversionview.probed.model import MANIFEST

    return [name for name, (directory, _) in list_artifacts().items()
            if (directory / MANIFEST).is_file()]


def load_model(model: str, task: str | None = None, decoder: Path | None = None) -> LoadedModel:
    """Load a probed model and its decoder (``decoder``, or the bundled one trained on its
    weights). A plain HuggingFace directory needs ``task``; without one, the task whose
    vocabulary and context fit is taken when exactly one does."""
    from inversionview.decoder.store import decoder_for
    from inversionview.probed import load_probed

    try:
        probed = load_probed(model)
    except ModelLoadError as error:
        if "--task" not in str(error):
            raise
        probed = load_probed(model, task or _fitting_task(model, error))
    the_decoder, directory = decoder_for(probed, model, decoder)
    return LoadedModel(model, probed, the_decoder, str(directory))


def _fitting_task(model: str, error: ModelLoadError) -> str:
    from inversionview.probed import load_probed
    from inversionview.tasks import TASKS

    fitting = []
    for name in TASKS:
        try:
            load_probed(model, name)
            fitting.append(name)
        except ModelLoadError:
            continue
    if len(fitting) != 1:
        raise error
    return fitting[0]


# ----- jobs ----------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    kind: str  # "query", "grid" or "attention"
    key: str  # the request, canonical: equal keys give equal results
    compute: Callable[[Callable[[str, float], None]], dict[str, Any]]
    state: str = "queued"
    stage: str = "queued"
    progress: float = 0.0
    result: dict[str, Any] | None = None
    error: RequestError | None = None
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
                "error": self.error.message if self.error else None,
                "status_code": self.error.status_code if self.error else None}


class QueryService:
    """Runs queries, grids and attention patterns on one worker thread, in arrival order."""

    def __init__(self, models: list[LoadedModel], cache_size: int = 128, kept_jobs: int = 256):
        if not models:
            raise ValueError("the server needs at least one model")
        self.models = {model.name: model for model in models}
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._kept_jobs = kept_jobs
        self._lock = threading.Lock()  # guards _jobs and _cache (the worker and request threads)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="inversionview-worker", daemon=True)
        self._worker.start()

    # ----- requests ------------------------------------------------------------------

    def model(self, name: str) -> LoadedModel:
        if name not in self.models:
            raise RequestError(404, f"unknown model {name!r}; this server has: "
                                    f"{', '.join(self.models)}")
        return self.models[name]

    def submit_query(self, request: QueryRequest) -> Job:
        loaded = self.model(request.model)
        return self._submit("query", request.model_dump_json(),
                            lambda report: self._query(loaded, request, report))

    def submit_grid(self, request: GridRequest) -> Job:
        loaded = self.model(request.model)
        return self._submit("grid", request.model_dump_json(),
                            lambda report: self._grid(loaded, request, report))

    def submit_verify(self, request: QueryRequest) -> Job:
        loaded = self.model(request.model)
        return self._submit("verify", request.model_dump_json(),
                            lambda report: self._verify(loaded, request, report))

    def submit_attention(self, request: AttentionRequest) -> Job:
        loaded = self.model(request.model)
        return self._submit("attention", request.model_dump_json(),
                            lambda report: self._attention(loaded, request))

    def run(self, job: Job) -> dict[str, Any]:
        """Wait for ``job`` and return its result; its error raises RequestError."""
        job.finished.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def job(self, job_id: str) -> Job:
        with self._lock:
            if job_id not in self._jobs:
                raise RequestError(404, f"no job {job_id!r} (finished jobs are kept for a while, "
                                        f"then forgotten)")
            return self._jobs[job_id]

    def cancel(self, job_id: str) -> Job:
        job = self.job(job_id)
        job.cancel_requested.set()
        return job

    def close(self) -> None:
        self._queue.put(None)

    # ----- the worker ----------------------------------------------------------------

    def _submit(self, kind: str, request_key: str, compute) -> Job:
        key = _cache_key(kind, request_key)
        job = Job(uuid.uuid4().hex[:16], kind, key, compute)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self._kept_jobs:
                oldest = next(iter(self._jobs.values()))
                if not oldest.finished.is_set():
                    break
                self._jobs.popitem(last=False)
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None:
            job.result, job.state, job.stage, job.progress = cached, "done", "done", 1.0
            job.finished.set()
        else:
            self._queue.put(job)
        return job

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            self._run_one(job)

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
                self._cache[job.key] = result
                self._cache.move_to_end(job.key)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        except QueryCancelled:
            job.state, job.stage, job.error = "cancelled", "cancelled", RequestError(409, "the query was cancelled")
        except (TaskInputError, SiteError, ValueError) as error:
            job.state, job.stage, job.error = "failed", "failed", RequestError(400, str(error))
        except Exception as error:  # a bug: report it on the job instead of killing the worker
            job.state, job.stage = "failed", "failed"
            job.error = RequestError(500, f"internal error: {type(error).__name__}: {error}")
        finally:
            job.finished.set()

    # ----- the computations ----------------------------------------------------------

    @staticmethod
    def _query(loaded: LoadedModel, request: QueryRequest, report) -> dict[str, Any]:
        task = loaded.probed.task
        default_site, default_position = task.default_query
        text = request.input if request.input is not None else task.example
        site = request.site or default_site
        position = request.position if request.position not in (None, "") else default_position
        config = query_config(request.candidates, request.epsilon, request.metric,
                              request.fixed_position, request.temperature, request.noise,
                              request.all, request.shown)
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
        started = time.perf_counter()
        task = loaded.probed.task
        text = request.input if request.input is not None else task.example
        position = request.position if request.position not in (None, "") else task.default_query[1]
        config = query_config(request.candidates, request.epsilon, request.metric, shown=1)
        sites = [site.short for site in loaded.probed.sites]
        rows, result = [], None
        for index, site in enumerate(sites):
            def site_report(stage: str, fraction: float, index: int = index) -> None:
                report(f"{sites[index]}: {stage}", (index + fraction) / len(sites))

            result = run_query(loaded.probed, loaded.decoder, text, site, position, config,
                               seed=request.seed, decoder_name=loaded.decoder_name,
                               progress=site_report)
            top = result.attribute_agreement[0] if result.attribute_agreement else None
            rows.append({"site": site, "in_epsilon_rate": result.stats.in_epsilon_rate,
                         "in_epsilon_distinct": result.stats.in_epsilon_distinct,
                         "valid_rate": result.stats.valid_rate,
                         "top_attribute": top["attribute"] if top and top["contrast"] is not None else None,
                         "inside": top["inside"] if top else None,
                         "outside": top["outside"] if top else None,
                         "contrast": top["contrast"] if top else None})
        assert result is not None
        return {"model": loaded.name, "input": result.query.text, "position": result.position,
                "position_label": result.position_label, "candidates": request.candidates,
                "epsilon": request.epsilon, "metric": request.metric, "seed": request.seed,
                "rows": rows, "seconds": round(time.perf_counter() - started, 3)}

    @staticmethod
    def _attention(loaded: LoadedModel, request: AttentionRequest) -> dict[str, Any]:
        task = loaded.probed.task
        text = task.normalize(request.input if request.input is not None else task.example)
        task.encode(text)  # a character outside the vocabulary, or too long: a clear error
        pattern = loaded.probed.attention_pattern(text, request.layer)
        return {"model": loaded.name, "input": text, "tokens": list(text), "layer": request.layer,
                "n_heads": pattern.shape[0], "patterns": _rounded(pattern.tolist())}


def _cache_key(kind: str, request_json: str) -> str:
    """Equal keys, equal results: the kind of job and its request, canonical JSON."""
    return f"{kind}:{request_json}"


def _head_attention(probed: ProbedModel, text: str, site_name: str, position: int
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
