"""Checkpoints: a kill at any file operation of a save leaves one to resume from; the schedule;
a run directory is never overwritten; resumed configs; manifests without absolute paths."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from inversionview import checkpoint, provenance
from inversionview.checkpoint import (CheckpointSchedule, NoCheckpointError, RunExistsError,
                                      check_run_directory, existing_checkpoint, load_checkpoint,
                                      resumed_config, save_checkpoint)
from inversionview.errors import OptionError, UserError
from inversionview.probed.train import ProbedTrainingConfig


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no ``except Exception`` catches it."""


def _save(directory: Path, step: int) -> None:
    weights = {"w": torch.full((3,), float(step))}
    parameter = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([parameter])
    generator = torch.Generator().manual_seed(step)
    save_checkpoint(directory, weights, optimizer, {"data": generator}, {"step": step})


def _load_step(directory: Path) -> int:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))])
    state, record = load_checkpoint(directory, optimizer, {"data": torch.Generator()})
    assert torch.equal(state["w"], torch.full((3,), float(record["step"])))
    return record["step"]


class KillAt:
    """Counts the file operations of ``save_checkpoint`` and raises Killed at number ``at``
    (an rmtree is cut halfway: one file goes, then the kill). ``at`` None: count only."""

    def __init__(self, monkeypatch, at):
        self.at, self.count = at, 0
        real_save, real_fsync, real_rmtree = checkpoint.save_file, checkpoint._fsync, shutil.rmtree
        real_rename, real_mkdir, real_write = Path.rename, Path.mkdir, Path.write_text

        def step(operation, *args, partial=None, **kwargs):
            if self.count == self.at:
                self.count += 1
                if partial is not None:
                    partial()
                raise Killed
            self.count += 1
            return operation(*args, **kwargs)

        def rmtree(path, ignore_errors=False):
            def half():
                files = sorted(Path(path).rglob("*")) if Path(path).is_dir() else []
                if files:
                    os.remove(files[len(files) // 2])
            return step(real_rmtree, path, ignore_errors=ignore_errors, partial=half)

        monkeypatch.setattr(checkpoint, "save_file", lambda *a, **k: step(real_save, *a, **k))
        monkeypatch.setattr(checkpoint, "_fsync", lambda *a: step(real_fsync, *a))
        monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
        monkeypatch.setattr(Path, "rename", lambda *a: step(real_rename, *a))
        monkeypatch.setattr(Path, "mkdir", lambda *a, **k: step(real_mkdir, *a, **k))
        monkeypatch.setattr(Path, "write_text", lambda *a, **k: step(real_write, *a, **k))


def _operations(monkeypatch, tmp_path) -> int:
    with monkeypatch.context() as patch:
        counter = KillAt(patch, at=None)
        _save(tmp_path / "count" / "checkpoint", 1)
        _save(tmp_path / "count" / "checkpoint", 2)
        first = counter.count
        _save(tmp_path / "count" / "checkpoint", 3)
        return counter.count - first


def test_a_kill_at_any_operation_of_a_save_leaves_a_checkpoint(tmp_path, monkeypatch):
    """Checkpoint 1 and 2 are written; checkpoint 3 is killed at each of its file operations
    in turn; then checkpoint 4 is killed at each of its operations too. After every kill the
    directory resumes from a complete checkpoint no older than the last finished one, and a
    save that finishes cleans up after the kills."""
    # fsync still counts as an operation (a kill may come before or after it), but is not
    # paid for: over a thousand saves run here.
    monkeypatch.setattr(checkpoint, "_fsync", lambda path: None)
    operations = _operations(monkeypatch, tmp_path)
    assert operations >= 12  # mkdirs, 3 safetensors, 2 JSON, fsyncs, 2 renames, rmtrees
    for first_kill in range(operations):
        for second_kill in [None, *range(operations)]:
            directory = tmp_path / f"run-{first_kill}-{second_kill}" / "checkpoint"
            _save(directory, 1)
            _save(directory, 2)
            with monkeypatch.context() as patch:
                KillAt(patch, first_kill)
                with pytest.raises(Killed):
                    _save(directory, 3)
            assert _load_step(directory) in (2, 3)
            if second_kill is not None:
                with monkeypatch.context() as patch:
                    KillAt(patch, second_kill)
                    try:
                        _save(directory, 4)
                    except Killed:
                        pass
                assert _load_step(directory) in (2, 3, 4)
            _save(directory, 5)
            assert _load_step(directory) == 5
            assert sorted(p.name for p in directory.parent.iterdir()) == ["checkpoint"]


def test_existing_checkpoint_falls_back_to_old(tmp_path):
    directory = tmp_path / "checkpoint"
    _save(directory, 1)
    directory.rename(tmp_path / "checkpoint.old")  # killed between the two renames
    assert existing_checkpoint(directory) == tmp_path / "checkpoint.old"
    _save(directory, 2)  # puts checkpoint.old back first, then swaps as usual
    assert _load_step(directory) == 2 and not (tmp_path / "checkpoint.old").exists()
    shutil.rmtree(directory)
    with pytest.raises(NoCheckpointError, match="no checkpoint to resume from"):
        existing_checkpoint(directory)


def test_a_run_directory_is_not_overwritten(tmp_path):
    check_run_directory(tmp_path / "fresh", resume=False)
    with pytest.raises(NoCheckpointError) as missing:
        check_run_directory(tmp_path / "fresh", resume=True)
    assert isinstance(missing.value, (UserError, FileNotFoundError))
    _save(tmp_path / "run" / "checkpoint", 7)
    with pytest.raises(RunExistsError, match=r"checkpoint at step 7\); continue it with --resume"):
        check_run_directory(tmp_path / "run", resume=False)
    assert isinstance(RunExistsError("x"), UserError)
    check_run_directory(tmp_path / "run", resume=True)
    # a write killed before the first checkpoint finished leaves nothing to protect
    (tmp_path / "partial" / "checkpoint.tmp").mkdir(parents=True)
    check_run_directory(tmp_path / "partial", resume=False)


def test_checkpoint_schedule():
    schedule = CheckpointSchedule(every_seconds=60.0, first_seconds=10.0, first_steps=100)
    schedule.begin(step=40, now=1000.0)
    assert not schedule.due(40, 2000.0)  # no step trained since the start (or the resume)
    assert not schedule.due(41, 1009.9)
    assert schedule.due(41, 1010.0)  # the first: after 10 s ...
    assert schedule.due(140, 1000.1)  # ... or 100 steps
    schedule.written(now=1010.0)
    assert not schedule.due(500, 1069.9) and schedule.due(141, 1070.0)
    short = CheckpointSchedule(every_seconds=2.0, first_seconds=10.0, first_steps=100)
    short.begin(step=0, now=0.0)
    assert short.due(1, 2.0)  # an interval shorter than first_seconds comes first


def _probed_config(out, **changes):
    return ProbedTrainingConfig(**{**dict(task="addition", out=out, steps=50, seed=5,
                                          batch_size=8, model_overrides=dict(n_embd=16, n_head=2)),
                                   **changes})


def _stored_run(tmp_path, config):
    record = {"step": 3, "config": {**checkpoint_config(config)}}
    directory = tmp_path / "run" / "checkpoint"
    directory.mkdir(parents=True)
    (directory / "state.json").write_text(json.dumps(record))
    return tmp_path / "run"


def checkpoint_config(config):
    from inversionview.probed.train import _jsonable

    return _jsonable(config)


def test_resumed_config_keeps_or_replaces_the_budget(tmp_path):
    out = _stored_run(tmp_path, _probed_config(tmp_path / "run", checkpoint_every_seconds=5.0))
    kept = ProbedTrainingConfig.resumed(out)
    assert (kept.steps, kept.minutes, kept.seed, kept.batch_size) == (50, None, 5, 8)
    assert kept.out == out and kept.checkpoint_every_seconds == 5.0
    assert kept.model_overrides == dict(n_embd=16, n_head=2)
    more = ProbedTrainingConfig.resumed(out, steps=80, changes={"checkpoint_every_seconds": 2.0})
    assert (more.steps, more.minutes, more.checkpoint_every_seconds) == (80, None, 2.0)
    timed = ProbedTrainingConfig.resumed(out, minutes=1.5)
    assert (timed.steps, timed.minutes) == (None, 1.5)
    with pytest.raises(OptionError, match="at most one of minutes or steps"):
        ProbedTrainingConfig.resumed(out, minutes=1.0, steps=3)
    with pytest.raises(OptionError, match="steps must be an integer from 1"):
        ProbedTrainingConfig.resumed(out, steps=0)
    same = resumed_config(ProbedTrainingConfig, out, {"steps": None},
                          fixed={"--seed": ("seed", 5), "--d-model": ("model_settings.n_embd", 16)})
    assert same.seed == 5
    with pytest.raises(OptionError, match="--seed 6 differs from the 5 the run in .* was started with"):
        resumed_config(ProbedTrainingConfig, out, {"steps": None}, fixed={"--seed": ("seed", 6)})
    with pytest.raises(NoCheckpointError):
        ProbedTrainingConfig.resumed(tmp_path / "elsewhere")


def test_portable_paths(tmp_path, monkeypatch):
    from inversionview.artifacts import find_artifact

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    assert provenance.portable_path(tmp_path / "runs" / "a") == os.path.join("runs", "a")
    assert provenance.portable_path("runs/a") == os.path.join("runs", "a")
    assert provenance.portable_path("gpt2") == "gpt2"  # a hub name stays
    assert provenance.portable_path("<random init>") == "<random init>"
    elsewhere = tmp_path.parent / "elsewhere-for-portable-paths"
    elsewhere.mkdir(exist_ok=True)
    assert provenance.portable_path(elsewhere) == os.path.join("..", elsewhere.name)
    counting = find_artifact("counting")
    if counting is not None:
        assert provenance.portable_path(counting) == "counting"
        assert provenance.portable_path(str(counting.resolve())) == "counting"
    monkeypatch.setattr("sys.argv", ["/x/bin/inversionview", "train-decoder", str(counting or "gpt2"),
                                     f"--out={tmp_path / 'runs' / 'a'}", "--minutes", "1"])
    line = provenance.command_line()
    assert line.startswith("inversionview train-decoder ") and str(tmp_path) not in line
    assert "--out=runs/a --minutes 1" in line
    entry = provenance.command_entry(resumed_from_step=12)
    assert entry["command"] == line and entry["resumed_from_step"] == 12
    assert entry["started"].endswith("+00:00")


def test_a_run_of_another_trainer_is_refused_by_name(tmp_path):
    """Issue 31 (found by the run-directory work): `train-probed --resume` on a `train-lm` run
    was an internal error (TypeError: no task), `train-decoder --resume` on it asked for
    minutes or examples. Each trainer now says the run is another command's."""
    from inversionview.decoder.train import DecoderTrainingConfig
    from inversionview.probed.train_lm import LMTrainingConfig

    out = _stored_run(tmp_path, _probed_config(tmp_path / "run"))
    for config_class, command in ((LMTrainingConfig, "train-lm"),
                                  (DecoderTrainingConfig, "train-decoder")):
        with pytest.raises(OptionError, match=f"started by another command .* that {command} does not take"):
            config_class.resumed(out)
    assert ProbedTrainingConfig.resumed(out).seed == 5  # its own trainer goes on
