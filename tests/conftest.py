"""Shared fixtures: tiny probed models built in the test, and the authors' checkpoints."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from inversionview.probed import build_probed

AUTHORS_MODELS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "authors-probed-models"


def authors_model_dir(task: str) -> Path:
    directory = AUTHORS_MODELS / task
    if not (directory / "config.json").exists():
        pytest.skip(f"the authors' {task} checkpoint is not at {directory} (../shared is absent)")
    return directory


@pytest.fixture
def no_network(monkeypatch):
    """Refuse and record every attempt to open a connection or resolve a name: loading must
    work offline, and must not even try."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is blocked in this test")

    for owner, name in [(socket.socket, "connect"), (socket.socket, "connect_ex"),
                        (socket, "create_connection"), (socket, "getaddrinfo")]:
        monkeypatch.setattr(owner, name, refuse)
    return attempts


@pytest.fixture(params=["counting", "addition"])
def tiny_model(request):
    """A small random probed model of each task (2 layers, several heads, dropout off)."""
    return build_probed(request.param, seed=1, n_embd=16, n_head=4, n_inner=32,
                        resid_pdrop=0.0, embd_pdrop=0.0)


@pytest.fixture(scope="session")
def ioi_lm_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 whose BPE keeps every IOI name whole (manifest task ioi)."""
    from tiny_lms import make_ioi_lm

    return make_ioi_lm(tmp_path_factory.mktemp("ioi-lm"))


@pytest.fixture(scope="session")
def factual_lm_dir(tmp_path_factory) -> Path:
    """A tiny random GPT-2 whose BPE was trained on the fact sentences (manifest task factual)."""
    from tiny_lms import make_factual_lm

    return make_factual_lm(tmp_path_factory.mktemp("factual-lm"))


@pytest.fixture(scope="session")
def ioi_tokenizer(ioi_lm_dir):
    from inversionview.text.tokenizer import HFTokenizer

    return HFTokenizer.from_directory(ioi_lm_dir, 10**6)


def pytest_terminal_summary(terminalreporter):
    """The number of generated fuzz cases this run tried (tests/fuzz_counter.py)."""
    from fuzz_counter import CASES

    if CASES:
        parts = [f"{suite} {count:,}" for suite, count in sorted(CASES.items())]
        total = sum(count for suite, count in CASES.items() if " exit " not in suite)
        terminalreporter.write_line(f"fuzz cases: {', '.join(parts)}; total {total:,}")
