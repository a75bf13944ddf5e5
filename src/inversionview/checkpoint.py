"""Training checkpoints in safe formats: safetensors for tensors, JSON for the rest.

A checkpoint is a directory, ``OUT/checkpoint``. It is written whole into
``checkpoint.tmp`` (every file and the directory fsynced), then swapped in with two renames:
``checkpoint`` -> ``checkpoint.old``, ``checkpoint.tmp`` -> ``checkpoint``. Whatever moment a
run is killed at, one complete checkpoint is left to resume from:

    killed while writing checkpoint.tmp      checkpoint (the previous one) is intact
    killed between the two renames           checkpoint.old is; ``existing_checkpoint``
                                             resumes from it, and the next save first
                                             renames it back before anything is deleted
    killed while checkpoint.old is removed   checkpoint (the new one) is complete

A checkpoint is complete when its ``state.json`` exists: it is written last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from inversionview import provenance
from inversionview.distributed import is_lead_process
from inversionview.errors import OptionError, UserError
from inversionview.files import read_json_object, read_safetensors
from inversionview.locks import hold_directory
from inversionview.options import check_output_directory

RECORD = "state.json"  # written last: its presence marks a complete checkpoint


class CheckpointError(UserError):
    """A checkpoint whose files cannot be read (the message names the file)."""


class NoCheckpointError(UserError, FileNotFoundError):
    """``--resume`` where there is no checkpoint to resume from."""


class RunExistsError(UserError, FileExistsError):
    """A new run started in a directory that already holds another run's checkpoint."""


# ----- optimizer state as tensors + JSON -------------------------------------------------


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state dict into flat tensors and JSON-able metadata."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, values in meta["scalars"].items():
        state.setdefault(int(param_id), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ----- writing and reading ---------------------------------------------------------------


def _sibling(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def _complete(directory: Path) -> bool:
    return (directory / RECORD).is_file()


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries (new names, renames), to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(directory: Path, model_state: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator],
                    record: dict[str, Any]) -> None:
    """Write model weights, optimizer state, RNG states and ``record`` to ``directory``,
    crash-safely (see the module docstring)."""
    tmp, old = _sibling(directory, ".tmp"), _sibling(directory, ".old")
    directory.parent.mkdir(parents=True, exist_ok=True)
    if not _complete(directory) and _complete(old):
        # The last save was killed between its renames: put the complete one back first.
        shutil.rmtree(directory, ignore_errors=True)
        old.rename(directory)
        _fsync(directory.parent)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()},
              str(tmp / "model.safetensors"))
    tensors, meta = optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file({name: g.get_state() for name, g in generators.items()}, str(tmp / "rng.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / RECORD).write_text(json.dumps(record, indent=2))
    for path in tmp.iterdir():
        _fsync(path)
    _fsync(tmp)
    shutil.rmtree(old, ignore_errors=True)  # safe: ``directory`` is complete, or absent
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    _fsync(directory.parent)
    shutil.rmtree(old, ignore_errors=True)


def existing_checkpoint(directory: Path) -> Path:
    """``directory``, or its ``.old`` twin when a run was killed between the two renames."""
    if _complete(directory):
        return directory
    old = _sibling(directory, ".old")
    if _complete(old):
        return old
    raise NoCheckpointError(f"no checkpoint to resume from in {directory} (start the run "
                            f"without --resume)")


def has_checkpoint(directory: Path) -> bool:
    return _complete(directory) or _complete(_sibling(directory, ".old"))


def load_checkpoint(directory: Path, optimizer: torch.optim.Optimizer,
                    generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore optimizer and RNG states in place; return (model state, record)."""
    directory = existing_checkpoint(directory)
    model_state = _tensors(directory / "model.safetensors")
    restore_optimizer(optimizer, _tensors(directory / "optimizer.safetensors"),
                      _record(directory / "optimizer.json"))
    rng = _tensors(directory / "rng.safetensors")
    for name, generator in generators.items():
        generator.set_state(rng[name])
    return model_state, _record(directory / RECORD)


def checkpoint_record(directory: Path) -> dict[str, Any]:
    """The JSON record (step, elapsed, config, ...) of the checkpoint in ``directory``."""
    return _record(existing_checkpoint(directory) / RECORD)


_DAMAGED = ("the checkpoint is damaged: start the run again in another --out (or remove "
            "this one)")


def _record(path: Path) -> dict[str, Any]:
    return read_json_object(path, CheckpointError, f"a checkpoint record; {_DAMAGED}")


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_safetensors(path, CheckpointError, f"checkpoint tensors; {_DAMAGED}")


def check_run_directory(out: Path, resume: bool) -> None:
    """A run may resume only from a checkpoint, and a new run may not overwrite one."""
    checkpoint = Path(out) / "checkpoint"
    if resume:
        existing_checkpoint(checkpoint)
    elif has_checkpoint(checkpoint):
        step = checkpoint_record(checkpoint).get("step")
        raise RunExistsError(
            f"{out} already holds a training run (checkpoint at step {step}); continue it "
            f"with --resume, or give another --out (delete {checkpoint} to start over)")


@contextlib.contextmanager
def claim_run_directory(out: Path, resume: bool) -> Iterator[None]:
    """Hold ``out`` for this run until the block ends (``locks.hold_directory``; under
    torchrun rank 0 holds it for every rank), once it is checked: a path that can be a
    directory, then, held, a checkpoint to resume from or none to overwrite
    (``check_run_directory``). Every trainer runs inside it, so two runs never write in
    one directory: the second is refused at once, naming the first."""
    out = check_output_directory(Path(out), "--out")
    if resume:
        existing_checkpoint(out / "checkpoint")  # nothing to resume: said before OUT is made
    with hold_directory(out) if is_lead_process() else contextlib.nullcontext():
        check_run_directory(out, resume)
        yield


#: The command that trains with each config, for messages.
_COMMANDS = {"DecoderTrainingConfig": "train-decoder", "ProbedTrainingConfig": "train-probed",
             "LMTrainingConfig": "train-lm"}


def resumed_config(config_class: type, out: Path, budget: dict[str, Any],
                   changes: dict[str, Any] | None = None,
                   fixed: dict[str, tuple[str, Any]] | None = None) -> Any:
    """The training config (a ``config_class`` dataclass) to continue the run in ``out``:
    the one stored in its checkpoint, with

    - ``budget`` (e.g. ``{"minutes": None, "examples": 2048}``): a value given replaces the
      stored budget, which is otherwise kept; budgets count the whole run, not the resumed
      part (resuming a 30-minute run after 20 minutes trains 10 more);
    - ``changes``: settings that do not change what is trained (the checkpoint interval,
      the device), replaced where not None;
    - ``fixed``: label -> (attribute path, value) of settings given again, which must equal
      the run's (a dotted path reaches into a dict or property of the config), else an
      OptionError: a resumed run keeps its seed, model and optimizer settings.
    """
    checkpoint = Path(out) / "checkpoint"
    saved = checkpoint_record(checkpoint).get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{existing_checkpoint(checkpoint) / RECORD} has no training "
                              f"config; {_DAMAGED}")
    saved = dict(saved)
    given = {name: value for name, value in budget.items() if value is not None}
    if len(given) > 1:
        raise OptionError(f"give at most one of {' or '.join(budget)}: it replaces the budget "
                          f"of the resumed run")
    if given:
        saved.update({name: None for name in budget}, **given)
    saved.update({name: value for name, value in (changes or {}).items() if value is not None})
    saved["out"] = Path(out)
    known = {item.name for item in dataclasses.fields(config_class)}
    required = {item.name for item in dataclasses.fields(config_class)
                if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING}
    foreign = sorted(set(saved) - known)
    if foreign or required - set(saved):
        command = _COMMANDS.get(config_class.__name__, "this command")
        raise OptionError(
            f"the run in {out} was started by another command (its checkpoint holds settings "
            f"such as {', '.join(foreign[:3]) or 'others'} that {command} does not take); "
            f"resume it with the command that started it")
    config = config_class(**{name: value for name, value in saved.items() if name in known})
    for label, (path, value) in (fixed or {}).items():
        stored = _lookup(config, path)
        if stored != value:
            raise OptionError(
                f"{label} {value} differs from the {stored} the run in {out} was started with; "
                f"a resumed run keeps its settings (only the budget, the checkpoint interval, "
                f"the device and the threads may change)")
    return config


def _lookup(record: Any, path: str) -> Any:
    for key in path.split("."):
        record = record.get(key) if isinstance(record, dict) else getattr(record, key, None)
    return record


# ----- when to checkpoint ----------------------------------------------------------------


class CheckpointSchedule:
    """When a training loop writes a checkpoint: every ``every_seconds`` of wall-clock time,
    and the first time early, after ``min(first_seconds, every_seconds)`` seconds or
    ``first_steps`` steps of this process, whichever comes first, so that a run killed in
    its first minute (or killed again soon after a resume) still leaves progress behind."""

    def __init__(self, every_seconds: float, first_seconds: float, first_steps: int):
        self.every_seconds, self.first_seconds, self.first_steps = (
            every_seconds, first_seconds, first_steps)
        self.begin(0)

    def begin(self, step: int, now: float | None = None) -> None:
        """Start counting at ``step`` (0, or the step a run resumed from) and time ``now``
        (``time.perf_counter()`` by default, as for ``due`` and ``written``)."""
        self._last = time.perf_counter() if now is None else now
        self._start_step, self._first_pending = step, True

    def due(self, step: int, now: float) -> bool:
        if step <= self._start_step:
            return False
        waited = now - self._last
        if self._first_pending:
            return (waited >= min(self.first_seconds, self.every_seconds)
                    or step - self._start_step >= self.first_steps)
        return waited >= self.every_seconds

    def written(self, now: float | None = None) -> None:
        self._last = time.perf_counter() if now is None else now
        self._first_pending = False


# ----- a run's bookkeeping ---------------------------------------------------------------


class RunLog:
    """A training run's bookkeeping in its directory: the step counter, elapsed seconds and
    metrics history (``metrics.jsonl``, one line per evaluation), the command history (the
    command that started the run and every resume), and checkpoints that also carry the
    named generators and the global torch RNG (which dropout draws from)."""

    def __init__(self, out: Path, generators: dict[str, torch.Generator]):
        self.checkpoint_dir = out / "checkpoint"
        self.metrics_path = out / "metrics.jsonl"
        self.generators = generators
        self.step, self.elapsed, self.history = 0, 0.0, []
        self.commands: list[dict[str, Any]] = []

    def start(self, dropout_seed: int) -> None:
        check_run_directory(self.checkpoint_dir.parent, resume=False)
        self.metrics_path.unlink(missing_ok=True)
        torch.manual_seed(dropout_seed)
        self.commands = [provenance.command_entry(resumed_from_step=None)]

    def resume(self, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
        """Restore optimizer, generators and counters; return (model state, record)."""
        state, record = load_checkpoint(self.checkpoint_dir, optimizer, self.generators)
        self.step, self.elapsed, self.history = record["step"], record["elapsed"], record["history"]
        torch.set_rng_state(torch.tensor(record["torch_rng"], dtype=torch.uint8))
        # Checkpoints from before the command history recorded no commands.
        self.commands = [*record.get("commands", []),
                         provenance.command_entry(resumed_from_step=self.step)]
        # Metrics logged after the checkpoint belong to steps that will be redone.
        self.metrics_path.write_text("".join(json.dumps(e) + "\n" for e in self.history))
        return state, record

    def log(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def last_evaluation_at_this_step(self) -> dict[str, Any] | None:
        """The evaluation logged at the current step, if any (a run resumed from its final
        checkpoint reuses its final evaluation instead of drawing new samples)."""
        if self.history and self.history[-1]["step"] == self.step:
            return self.history[-1]
        return None

    def manifest_commands(self) -> dict[str, Any]:
        """The manifest's provenance of the command(s): ``command`` (the one that started the
        run, as before) and ``commands`` (that one and every resume, in order)."""
        return {"command": self.commands[0]["command"] if self.commands else None,
                "commands": self.commands}

    def checkpoint(self, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                   **extra: Any) -> None:
        save_checkpoint(self.checkpoint_dir, weights, optimizer, self.generators, {
            "step": self.step, "elapsed": self.elapsed, "history": self.history,
            "torch_rng": torch.get_rng_state().tolist(), "commands": self.commands, **extra})
