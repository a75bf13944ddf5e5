"""The bundled models behind one QueryService, a TestClient over it, and a live server."""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient

from inversionview.web.app import create_app
from inversionview.web.service import QueryService, load_model


@functools.cache
def bundled_models() -> tuple:
    """The bundled models, loaded once per process (test_fuzz_api needs them at import)."""
    return (load_model("counting"), load_model("addition"))


@pytest.fixture(scope="session")
def loaded_models():
    return list(bundled_models())


@pytest.fixture(scope="session")
def service(loaded_models):
    service = QueryService(loaded_models)
    yield service
    service.close()


@pytest.fixture(scope="session")
def client(service):
    return TestClient(create_app(service))


@contextlib.contextmanager
def serving(service: QueryService):
    """``http://127.0.0.1:PORT`` of a real uvicorn server over ``service``, in a thread."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start in 30 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        service.close()


@pytest.fixture(scope="session")
def live_server(loaded_models):
    """A live server over its own service with the default limits."""
    with serving(QueryService(loaded_models)) as url:
        yield url


@pytest.fixture(scope="session")
def text_model(tmp_path_factory):
    """A tiny random GPT-2 with its own BPE tokenizer and a decoder trained a few steps on a
    corpus (tests/tiny_lms.py), served as "tiny-lm"."""
    import dataclasses

    from tiny_lms import make_tiny_text_model

    directory, _, decoder = make_tiny_text_model(tmp_path_factory.mktemp("text-model"))
    return dataclasses.replace(load_model(str(directory), decoder=decoder), name="tiny-lm")


@pytest.fixture(scope="session")
def text_client(text_model, loaded_models):
    service = QueryService([text_model, loaded_models[0]])
    yield TestClient(create_app(service))
    service.close()


@pytest.fixture(scope="session")
def text_live_server(text_model, loaded_models):
    with serving(QueryService([text_model, loaded_models[0]])) as url:
        yield url
