"""The bundled models behind one QueryService, a TestClient over it, and a live server."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient

from inversionview.web.app import create_app
from inversionview.web.service import QueryService, load_model


@pytest.fixture(scope="session")
def loaded_models():
    return [load_model("counting"), load_model("addition")]


@pytest.fixture(scope="session")
def service(loaded_models):
    service = QueryService(loaded_models)
    yield service
    service.close()


@pytest.fixture(scope="session")
def client(service):
    return TestClient(create_app(service))


@pytest.fixture(scope="session")
def live_server(loaded_models):
    """``http://127.0.0.1:PORT`` of a real uvicorn server in a thread (its own service)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = QueryService(loaded_models)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start in 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
    service.close()
