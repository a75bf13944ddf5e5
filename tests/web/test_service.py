"""The service without HTTP (model loading, cache) and the `serve` command as a user starts it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from inversionview.cli import run
from inversionview.errors import UserError
from inversionview.options import Range
from inversionview.web.app import is_loopback
from inversionview.web.schemas import QueryRequest
from inversionview.web.service import QueryService, bundled_model_names, load_model
from tests.conftest import authors_model_dir


def test_bundled_models_are_the_probed_artifacts():
    # not the decoders
    assert set(bundled_model_names()) == {"counting", "addition", "lm-factual", "lm-ioi", "lm-kjv"}


def test_authors_model_loads_with_its_task_inferred_and_its_decoder_found():
    directory = authors_model_dir("counting")
    loaded = load_model(str(directory))
    assert loaded.probed.task.name == "counting"
    assert loaded.decoder_name.endswith("decoder-counting-authors")


def test_a_model_without_a_decoder_is_refused_with_the_way_out(tmp_path):
    from inversionview.decoder.store import DecoderLoadError
    from inversionview.probed import build_probed

    build_probed("counting", seed=3, n_embd=16, n_head=1).save(tmp_path / "tiny")
    with pytest.raises(DecoderLoadError, match="train-decoder"):
        load_model(str(tmp_path / "tiny"))


def test_repeated_request_is_answered_from_the_cache(service):
    request = QueryRequest(model="counting", candidates=48, seed=9)
    first = service.run(service.submit_query(request))
    job = service.submit_query(request)
    assert job.state == "done"  # answered at submission, without the worker
    assert service.run(job) is first


def test_a_service_needs_a_model():
    with pytest.raises(ValueError, match="at least one model"):
        QueryService([])


def test_serve_command_starts_the_server_on_localhost(tmp_path):
    # a bundled model without a bundled decoder (another artifact root holds it) is skipped
    from inversionview.probed import build_probed

    build_probed("counting", seed=5, n_embd=16, n_head=1, n_inner=32).save(
        tmp_path / "artifacts" / "orphan-counting", {"kind": "probed-model", "task": "counting"})
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "inversionview.cli", "serve", "counting",
                                "--port", str(port), "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1",
                                    "INVERSIONVIEW_ARTIFACTS": str(tmp_path / "artifacts")})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/api/models", timeout=2).json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "the server did not answer in 60 s"
                time.sleep(0.2)
        assert [m["name"] for m in models] == ["counting", "addition", "lm-factual", "lm-ioi",
                                               "lm-kjv"]
        record = httpx.post(f"http://127.0.0.1:{port}/api/query", timeout=60,
                            json={"model": "counting", "candidates": 32}).json()
        assert record["site"] == "a1.0"
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert (f"serving counting, addition, lm-factual, lm-ioi, lm-kjv at http://127.0.0.1:{port}"
            in output)
    # a bundled model without a bundled decoder is skipped with the reason
    assert "skipping bundled model orphan-counting: no bundled decoder" in output


@pytest.mark.parametrize("arguments, message", [
    (["/no/such/model"], "does not exist"),
    (["--decoder", "counting"], "MODEL=DIR"),
    (["--decoder", "gpt=/tmp"], "not among the served models"),
])
def test_serve_refuses_bad_arguments(arguments, message):
    with socket.socket() as probe:  # a free port: 8000 may be taken on this machine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "inversionview.cli", "serve", *arguments,
                             "--port", str(port)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr


# ----- served names: never a path --------------------------------------------------------


def test_a_model_from_a_directory_is_served_by_its_base_name(loaded_models):
    directory = authors_model_dir("counting")
    authors = load_model(str(directory))
    assert (authors.name, authors.decoder_name) == ("counting", "decoder-counting-authors")
    assert authors.info().source == "counting"
    service = QueryService([authors, *loaded_models])  # as `serve DIR` lists them
    try:
        assert list(service.models) == ["counting", "counting-2", "addition"]
        assert service.models["counting-2"].probed is loaded_models[0].probed
    finally:
        service.close()


# ----- bounds: the queue, the kept jobs, the cache ---------------------------------------


def long_request(seed: int) -> QueryRequest:
    """A query that keeps the worker busy for many seconds (cancelled by the tests)."""
    return QueryRequest(model="counting", candidates=8192, seed=seed)


def wait_running(job, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while job.state != "running":
        assert time.monotonic() < deadline, f"the job did not start: {job.status()}"
        time.sleep(0.01)


def test_the_queue_is_bounded_and_frees_when_jobs_end(loaded_models):
    service = QueryService(loaded_models, max_jobs=3)
    try:
        jobs = [service.submit_query(long_request(seed)) for seed in range(3)]
        assert service.pending() == 3
        with pytest.raises(UserError, match="busy.*at most 3") as refused:
            service.submit_query(QueryRequest(model="counting", candidates=4))
        assert refused.value.status_code == 429
        for job in jobs:
            service.cancel(job.id)
        for job in jobs:
            job.finished.wait(120)
            assert job.state == "cancelled" and job.status_code == 409
        deadline = time.monotonic() + 30
        while service.pending():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert service.run(service.submit_query(QueryRequest(model="counting", candidates=4)))
    finally:
        service.close()


def test_kept_jobs_are_bounded_even_behind_an_unfinished_one(loaded_models):
    service = QueryService(loaded_models, kept_jobs=4, max_jobs=2)
    small = QueryRequest(model="counting", candidates=4, seed=1)
    try:
        first = service.submit_query(small)
        service.run(first)
        running = service.submit_query(long_request(5))
        wait_running(running)
        answered = [service.submit_query(small) for _ in range(10)]  # from the cache
        assert all(job.state == "done" for job in answered)
        assert len(service._jobs) <= 4  # before: every job after the running one was kept
        assert service.job(running.id) is running and service.job(answered[-1].id) is answered[-1]
        for forgotten in (first, *answered[:7]):
            with pytest.raises(UserError, match="no job") as error:
                service.job(forgotten.id)
            assert error.value.status_code == 404
        service.cancel(running.id)
    finally:
        service.close()


def test_the_cache_holds_a_bounded_number_of_samples(loaded_models):
    # every record holds more than 5 samples: with room for 5, only the newest is kept
    service = QueryService(loaded_models, held_samples=5)
    try:
        requests = [QueryRequest(model="counting", candidates=64, shown=32, seed=seed)
                    for seed in range(3)]
        for request in requests:
            assert len(service.run(service.submit_query(request))["samples"]) > 5
        assert len(service._cache) == 1 and service._cache_samples > 5
        assert service.submit_query(requests[-1]).state == "done"  # from the cache
        again = service.submit_query(requests[0])  # dropped: computed again
        assert again.state in ("queued", "running")
        service.run(again)
    finally:
        service.close()


def test_close_cancels_what_is_queued(loaded_models):
    service = QueryService(loaded_models)
    running = service.submit_query(long_request(11))
    queued = service.submit_query(QueryRequest(model="counting", candidates=4, seed=12))
    service.close()
    for job in (running, queued):
        assert job.finished.wait(120) and job.state == "cancelled"
    with pytest.raises(UserError, match="shutting down"):
        service.submit_query(QueryRequest(model="counting", candidates=4, seed=13))


# ----- errors: a user's with its status, anything else a 500 ------------------------------


def test_a_user_error_keeps_its_status_and_a_bug_is_a_500(loaded_models, monkeypatch):
    from fastapi.testclient import TestClient

    from inversionview.web.app import create_app

    service = QueryService(loaded_models)
    try:
        client = TestClient(create_app(service))

        def bug(loaded, request):
            raise KeyError("/secret/path")

        monkeypatch.setattr(QueryService, "_attention", staticmethod(bug))
        response = client.post("/api/attention", json={"model": "counting"})
        assert response.status_code == 500
        assert response.json() == {"detail": "internal error (KeyError): this is a bug in the "
                                             "server; its log has the traceback"}

        def refused(loaded, request):
            raise UserError("not today", 418)

        monkeypatch.setattr(QueryService, "_attention", staticmethod(refused))
        response = client.post("/api/attention", json={"model": "counting", "layer": 1})
        assert (response.status_code, response.json()) == (418, {"detail": "not today"})
        monkeypatch.undo()
        assert client.post("/api/attention", json={"model": "counting"}).status_code == 200
    finally:
        service.close()


def test_a_library_caller_gets_the_servers_limits(loaded_models):
    service = QueryService(loaded_models, candidates=Range("candidates", 1, 16))
    try:
        with pytest.raises(UserError, match="candidates must be an integer from 1 to 16") as error:
            service.submit_query(QueryRequest(model="counting", candidates=17))
        assert error.value.status_code == 422
    finally:
        service.close()


# ----- `serve`: port, threads, where it listens ---------------------------------------------


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
    ("example.org", False),
])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_serve_warns_when_not_on_loopback(capsys, monkeypatch):
    """The warning comes once the address is known to be usable, just before serving (the
    server itself is not started: uvicorn.run records its arguments instead)."""
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(kwargs))
    with socket.socket() as probe:  # a port that is free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert run(["serve", "counting", "--host", "0.0.0.0", "--port", str(port)]) == 0
    err = capsys.readouterr().err
    assert "warning: serving on '0.0.0.0', not loopback" in err and "no authentication" in err
    assert started and started[0]["host"] == "0.0.0.0"
    assert run(["serve", "counting", "--host", "127.0.0.1", "--port", str(port)]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("arguments, message", [
    (["--port", "0"], "port must be an integer from 1 to 65,535"),
    (["--port", "70000"], "port must be an integer from 1 to 65,535"),
    (["--threads", "0"], "threads must be an integer from 1"),
])
def test_serve_checks_port_and_threads(capsys, arguments, message):
    assert run(["serve", *arguments]) == 2
    assert message.split(" must ")[1] in capsys.readouterr().err


def test_serve_on_a_busy_port_is_one_clear_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"cannot listen on 127.0.0.1:{port}" in err
