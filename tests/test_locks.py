"""One process at a time in a run directory (issue 31): a directory held by another process is
refused at once by every command that writes a run or a report there, with one line naming the
directory and the process; nothing in it is touched; a lock whose process died blocks nothing.

"Another process" is a descriptor opened here and flocked apart from the hold (a flock belongs
to an open file, so it conflicts with this process's own holds as another process's would);
tests/test_training_kill.py does the same with real training processes.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from cli_runner import invoke

from inversionview.errors import OptionError
from inversionview.locks import LOCK_FILE, DirectoryInUseError, hold_directory

HOLDER = {"pid": 4242, "command": "inversionview train-lm --out run --steps 9",
          "started": "2026-01-02T03:04:05+00:00"}


@contextmanager
def held_elsewhere(directory: Path, record: dict | None = HOLDER):
    """``directory`` locked as another process holding it would, its lock file saying
    ``record``; closing the descriptor is that process dying."""
    directory.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if record is not None:
        os.write(descriptor, json.dumps(record).encode())
    try:
        yield
    finally:
        os.close(descriptor)


def test_a_held_directory_is_refused_naming_the_process(tmp_path):
    with held_elsewhere(tmp_path / "run"):
        with pytest.raises(DirectoryInUseError) as error:
            with hold_directory(tmp_path / "run"):
                pass
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'run'} is in use by process 4242 (inversionview "
                              f"train-lm --out run --steps 9, started 2026-01-02T03:04:05")
    assert "another --out" in message and "\n" not in message


def test_a_holder_that_has_not_said_who_it_is_is_another_process(tmp_path):
    with held_elsewhere(tmp_path, record=None):
        with pytest.raises(DirectoryInUseError, match="is in use by another process"):
            with hold_directory(tmp_path):
                pass


def test_a_hold_names_this_process_nests_and_is_gone_after(tmp_path):
    with hold_directory(tmp_path / "new" / "run") as directory:
        record = json.loads((directory / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["command"]
        with hold_directory(directory):  # the command holds it, then the trainer it calls
            pass
        assert (directory / LOCK_FILE).exists()  # still held after the inner hold
        other = os.open(directory / LOCK_FILE, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
    assert not (tmp_path / "new" / "run" / LOCK_FILE).exists()


def test_the_lock_of_a_dead_process_blocks_nothing(tmp_path):
    with held_elsewhere(tmp_path):
        pass  # the holder died: its lock file stays behind, unlocked
    assert (tmp_path / LOCK_FILE).exists()
    with hold_directory(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


# ----- every command that writes a run or a report in --out -----------------------------------


def _corpus(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i} of the corpus" for i in range(50)) + "\n")
    return corpus


@pytest.mark.parametrize("argv", [
    ["train-probed", "counting", "--steps", "2"],
    ["train-probed", "counting", "--resume"],
    ["train-decoder", "counting", "--examples", "4"],
    ["train-decoder", "counting", "--resume"],
    ["train-lm", "--corpus", "CORPUS", "--steps", "2"],
    ["train-lm", "--corpus", "CORPUS", "--steps", "2", "--force"],
    ["train-lm", "--corpus", "CORPUS", "--resume"],
    ["reproduce", "--studies", "counting", "--quick", "--force"],
], ids=" ".join)
def test_every_command_refuses_a_directory_in_use_and_touches_nothing(tmp_path, argv):
    run = tmp_path / "run"
    run.mkdir()
    kept = {"metrics.jsonl": '{"step": 1}\n', "config.json": "{}", "report.json": "{}"}
    for name, text in kept.items():
        (run / name).write_text(text)
    corpus = _corpus(tmp_path)
    if "--resume" in argv:  # a run to resume: its checkpoint, as the running process wrote it
        config = {"train-probed": {"task": "counting", "steps": 9},
                  "train-decoder": {"examples": 9},
                  "train-lm": {"corpus": str(corpus), "steps": 9}}[argv[0]]
        state = run / "checkpoint" / "state.json"
        state.parent.mkdir()
        state.write_text(json.dumps({"step": 1, "config": config}))
    argv = [str(corpus) if arg == "CORPUS" else arg for arg in argv]
    with held_elsewhere(run):
        result = invoke([*argv, "--out", run])
    assert result.exit_code == 2, result.output
    line = result.stderr.rstrip("\n")
    assert "\n" not in line and "Traceback" not in result.output
    assert line.startswith(f"error: {run} is in use by process 4242 (inversionview train-lm"), line
    for name, text in kept.items():
        assert (run / name).read_text() == text
    assert sorted(path.name for path in run.iterdir()) == sorted(
        [*kept, LOCK_FILE, *(["checkpoint"] if "--resume" in argv else [])])


def test_a_trainer_called_from_python_refuses_a_directory_in_use(tmp_path):
    from inversionview.probed.train import ProbedTrainingConfig, train_probed

    config = ProbedTrainingConfig(task="counting", out=tmp_path / "run", steps=2)
    with held_elsewhere(tmp_path / "run"):
        with pytest.raises(DirectoryInUseError, match="process 4242"):
            train_probed(config, show_progress=False)
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == [LOCK_FILE]


def test_directories_a_hold_made_go_if_left_empty(tmp_path):
    with hold_directory(tmp_path / "a" / "b"):
        pass
    assert not (tmp_path / "a").exists()
    with hold_directory(tmp_path / "a" / "b") as directory:
        (directory / "model.safetensors").write_bytes(b"")
    assert sorted(path.name for path in directory.iterdir()) == ["model.safetensors"]
    (tmp_path / "kept").mkdir()
    with hold_directory(tmp_path / "kept"):
        pass
    assert (tmp_path / "kept").is_dir()  # there before: stays, empty or not


def test_a_directory_that_cannot_be_written_is_a_one_line_error(tmp_path):
    (tmp_path / "afile").write_text("a file")
    with pytest.raises(OptionError, match="afile/run: cannot create it"):
        with hold_directory(tmp_path / "afile" / "run"):
            pass
    with pytest.raises(OptionError, match="--out /proc/self: cannot write in it"):
        with hold_directory(Path("/proc/self")):
            pass
