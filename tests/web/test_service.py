"""The service without HTTP (model loading, cache) and the `serve` command as a user starts it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from inversionview.web.schemas import QueryRequest
from inversionview.web.service import QueryService, bundled_model_names, load_model
from tests.conftest import authors_model_dir


def test_bundled_models_are_the_probed_artifacts():
    assert set(bundled_model_names()) == {"counting", "addition"}  # not the decoders


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


def test_serve_command_starts_the_server_on_localhost():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "inversionview.cli", "serve", "counting",
                                "--port", str(port), "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
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
        assert [m["name"] for m in models] == ["counting", "addition"]
        record = httpx.post(f"http://127.0.0.1:{port}/api/query", timeout=60,
                            json={"model": "counting", "candidates": 32}).json()
        assert record["site"] == "a1.0"
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]
    assert f"serving counting, addition at http://127.0.0.1:{port}" in output


@pytest.mark.parametrize("arguments, message", [
    (["/no/such/model"], "does not exist"),
    (["--decoder", "counting"], "MODEL=DIR"),
    (["--decoder", "gpt=/tmp"], "not among the served models"),
])
def test_serve_refuses_bad_arguments(arguments, message):
    result = subprocess.run([sys.executable, "-m", "inversionview.cli", "serve", *arguments],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr
