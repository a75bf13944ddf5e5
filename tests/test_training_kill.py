"""A real training process, SIGKILLed at seeded random moments and once while it writes a
checkpoint, continued each time with ``--resume`` and no budget, ends with the same weights,
bit for bit, as a run that was never interrupted.

The processes are ``python -m inversionview.cli train-probed`` on a tiny model (one layer,
width 16) with a step budget, one thread and a checkpoint every 0.2 s; the uninterrupted
reference runs in this process with the same settings. The decoder's loop shares the
checkpoint code (``checkpoint.RunLog``); tests/test_checkpoint.py kills a save at each of its
file operations and tests/decoder/test_train.py resumes a decoder killed while it is saved.

A running process holds its run directory: a second command there is refused, and a killed
process's hold does not outlive it (tests/test_locks.py tests the lock itself).
"""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inversionview.probed.train import ProbedTrainingConfig, train_probed

STEPS, SEED = 300, 3
NEW_RUN = ["train-probed", "addition", "--out", "run", "--steps", str(STEPS), "--seed", str(SEED),
           "--batch-size", "16", "--d-model", "16", "--n-heads", "2", "--n-layers", "1",
           "--checkpoint-every", "0.2", "--threads", "1", "--json"]
RESUME = ["train-probed", "addition", "--out", "run", "--resume", "--threads", "1", "--json"]
TIMEOUT = 120.0  # seconds for any one process


def _start(directory: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "inversionview.cli", *args], cwd=directory,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _checkpoint_step(run: Path) -> int | None:
    try:
        return json.loads((run / "checkpoint" / "state.json").read_text())["step"]
    except (OSError, ValueError):  # not there yet, or being swapped
        return None


def _kill(process: subprocess.Popen) -> bool:
    """SIGKILL; True when the process was still running (not finished on its own)."""
    process.kill()
    process.wait(timeout=TIMEOUT)
    return process.returncode == -9


def _kill_while_checkpointing(process: subprocess.Popen, run: Path) -> bool:
    """Wait for a checkpoint to exist, then for the next one to be written into
    checkpoint.tmp, and kill at once. True when the kill cut a write short (the process died
    with checkpoint.tmp still there)."""
    deadline = time.monotonic() + TIMEOUT
    tmp, complete = run / "checkpoint.tmp", run / "checkpoint" / "state.json"
    while process.poll() is None and time.monotonic() < deadline:
        if complete.exists() and tmp.exists():
            return _kill(process) and tmp.exists()
    return False


def _kill_at_random(process: subprocess.Popen, run: Path, delay: float) -> bool:
    """Wait until the process has trained and checkpointed past where it started, then
    ``delay`` seconds more, and kill it."""
    deadline, start_step = time.monotonic() + TIMEOUT, _checkpoint_step(run)
    while process.poll() is None and time.monotonic() < deadline:
        step = _checkpoint_step(run)
        if step is not None and step != start_step:
            time.sleep(delay)
            return _kill(process)
        time.sleep(0.005)
    return False


def _reference(directory: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_probed(ProbedTrainingConfig(
            task="addition", out=directory, steps=STEPS, seed=SEED, batch_size=16,
            model_overrides=dict(n_embd=16, n_inner=64, n_head=2, n_layer=1),
            checkpoint_every_seconds=0.2), show_progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(tmp_path):
    rng = random.Random(20261122)
    run = tmp_path / "run"
    kills, cut_writes, processes = 0, 0, 0

    # 1. Kill while a checkpoint is being written (retried if the write finished first).
    process, processes = _start(tmp_path, NEW_RUN), 1
    if _kill_while_checkpointing(process, run):
        cut_writes += 1
    kills += process.returncode == -9
    while cut_writes == 0 and process.returncode == -9 and processes < 4:
        process, processes = _start(tmp_path, RESUME), processes + 1
        cut_writes += _kill_while_checkpointing(process, run)
        kills += process.returncode == -9
    assert cut_writes == 1, "no kill landed inside a checkpoint write"

    # 2. Kill at seeded random moments (in a step, an evaluation, a checkpoint or the end).
    for _ in range(2):
        process, processes = _start(tmp_path, RESUME), processes + 1
        kills += _kill_at_random(process, run, rng.uniform(0.0, 0.8))
        if process.returncode == 0:
            break

    # 3. Resume, with no budget, until it finishes.
    while process.returncode != 0:
        process, processes = _start(tmp_path, RESUME), processes + 1
        _, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err
        assert processes < 10
    assert kills >= 2

    _reference(tmp_path / "reference")
    resumed = load_file(str(run / "model.safetensors"))
    reference = load_file(str(tmp_path / "reference" / "model.safetensors"))
    assert resumed.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(resumed[name], value), name

    manifest = json.loads((run / "inversionview.json").read_text())
    expected = json.loads((tmp_path / "reference" / "inversionview.json").read_text())
    assert manifest["steps"] == STEPS and manifest["accuracy"] == expected["accuracy"]
    without_time = [{k: v for k, v in e.items() if k != "seconds"} for e in manifest["history"]]
    assert without_time == [{k: v for k, v in e.items() if k != "seconds"}
                            for e in expected["history"]]
    commands = manifest["commands"]
    assert manifest["command"] == commands[0]["command"] and commands[0]["resumed_from_step"] is None
    assert "--steps 300" in commands[0]["command"] and "--resume" not in commands[0]["command"]
    resumes = commands[1:]
    assert resumes and all("--resume" in c["command"] and "--steps" not in c["command"]
                           for c in resumes)
    steps = [c["resumed_from_step"] for c in resumes]
    assert steps == sorted(steps) and all(0 < step <= STEPS for step in steps)
    for leftover in ("checkpoint.tmp", "checkpoint.old"):
        assert not (run / leftover).exists()


# ----- one run at a time in a directory (issue 31) ------------------------------------------

LONG_RUN = [*NEW_RUN[:NEW_RUN.index("--steps")], "--minutes", "0.3",
            *NEW_RUN[NEW_RUN.index("--steps") + 2:]]  # 18 s of training


def _wait_for_checkpoint(process: subprocess.Popen, run: Path) -> int:
    """The step of the first checkpoint ``process`` writes in ``run`` (something to resume)."""
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        step = _checkpoint_step(run)
        if step is not None:
            return step
        time.sleep(0.05)
    raise AssertionError(f"the run wrote no checkpoint in {run}: {process.communicate()}")


@pytest.mark.slow
def test_a_second_run_in_a_running_directory_is_refused_and_the_first_finishes_intact(tmp_path):
    """Two runs on one --out both said "saved" and the manifest held the second's result;
    now every command that would write there is refused at once, naming the running process,
    and the first run ends as if alone."""
    from cli_runner import invoke

    import inversionview.decoder.train  # noqa: F401  loaded before the clock runs
    import inversionview.probed.train_lm  # noqa: F401

    run, corpus = tmp_path / "run", tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i} of a corpus" for i in range(50)) + "\n")
    first = _start(tmp_path, LONG_RUN)
    try:
        _wait_for_checkpoint(first, run)
        same_out = [str(run) if arg == "run" else arg for arg in NEW_RUN]
        for argv in [[*RESUME[:3], str(run), *RESUME[4:]], same_out,
                     ["train-lm", "--corpus", corpus, "--out", run, "--steps", "2", "--force"],
                     ["train-decoder", "counting", "--out", run, "--examples", "4"]]:
            result = invoke(argv)
            assert result.exit_code == 2, result.output
            assert result.stderr.startswith(f"error: {run} is in use by process {first.pid} "
                                            f"(inversionview train-probed addition --out run")
            assert result.stderr.count("\n") == 1
        assert first.poll() is None, "the first run ended before the others were tried"
        out, err = first.communicate(timeout=TIMEOUT)
    finally:
        first.kill()
    assert first.returncode == 0, err
    manifest = json.loads((run / "inversionview.json").read_text())
    assert json.loads(out)["steps"] == manifest["steps"] > 0
    assert [c["command"] for c in manifest["commands"]] == [shlex.join(["inversionview", *LONG_RUN])]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics == manifest["history"] and metrics[-1]["step"] == manifest["steps"]
    assert sorted(path.name for path in run.iterdir()) == [
        "checkpoint", "config.json", "inversionview.json", "metrics.jsonl", "model.safetensors"]


@pytest.mark.slow
def test_a_killed_runs_lock_does_not_block_its_resume(tmp_path):
    """A run killed while it holds its directory leaves its lock file behind; the lock died
    with the process, so --resume goes on."""
    from cli_runner import invoke

    from inversionview.locks import LOCK_FILE

    run = tmp_path / "run"
    process = _start(tmp_path, [*NEW_RUN[:NEW_RUN.index("--steps") + 1], "1000000",
                                *NEW_RUN[NEW_RUN.index("--steps") + 2:]])
    _wait_for_checkpoint(process, run)
    assert _kill(process)
    step = _checkpoint_step(run)
    assert (run / LOCK_FILE).exists()  # left behind, its lock gone with its process
    resumed = invoke([*RESUME[:3], str(run), *RESUME[4:], "--steps", str(step + 3)])
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads((run / "inversionview.json").read_text())
    assert manifest["steps"] == step + 3 and len(manifest["commands"]) == 2
    assert not (run / LOCK_FILE).exists()
