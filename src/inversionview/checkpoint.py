"""Training checkpoints in safe formats: safetensors for tensors, JSON for the rest.

A checkpoint is a directory; it is written beside its final place and swapped in with
renames, so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


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


def save_checkpoint(directory: Path, model_state: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, generators: dict[str, torch.Generator],
                    record: dict[str, Any]) -> None:
    """Write model weights, optimizer state, RNG states and ``record`` to ``directory``."""
    tmp = directory.with_name(directory.name + ".tmp")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()},
              str(tmp / "model.safetensors"))
    tensors, meta = optimizer_tensors(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    save_file({name: g.get_state() for name, g in generators.items()}, str(tmp / "rng.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    (tmp / "state.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(directory: Path, optimizer: torch.optim.Optimizer,
                    generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore optimizer and RNG states in place; return (model state, record)."""
    directory = existing_checkpoint(directory)
    model_state = load_file(str(directory / "model.safetensors"))
    restore_optimizer(optimizer, load_file(str(directory / "optimizer.safetensors")),
                      json.loads((directory / "optimizer.json").read_text()))
    rng = load_file(str(directory / "rng.safetensors"))
    for name, generator in generators.items():
        generator.set_state(rng[name])
    return model_state, json.loads((directory / "state.json").read_text())


def existing_checkpoint(directory: Path) -> Path:
    """``directory``, or its ``.old`` twin when a run was killed between the two renames."""
    if (directory / "state.json").exists():
        return directory
    old = directory.with_name(directory.name + ".old")
    if (old / "state.json").exists():
        return old
    raise FileNotFoundError(f"no checkpoint to resume from in {directory}")


def checkpoint_record(directory: Path) -> dict[str, Any]:
    """The JSON record (step, elapsed, config, ...) of the checkpoint in ``directory``."""
    return json.loads((existing_checkpoint(directory) / "state.json").read_text())


class RunLog:
    """A training run's bookkeeping in its directory: the step counter, elapsed seconds and
    metrics history (``metrics.jsonl``, one line per evaluation), and checkpoints that also
    carry the named generators and the global torch RNG (which dropout draws from)."""

    def __init__(self, out: Path, generators: dict[str, torch.Generator]):
        self.checkpoint_dir = out / "checkpoint"
        self.metrics_path = out / "metrics.jsonl"
        self.generators = generators
        self.step, self.elapsed, self.history = 0, 0.0, []

    def start(self, dropout_seed: int) -> None:
        self.metrics_path.unlink(missing_ok=True)
        torch.manual_seed(dropout_seed)

    def resume(self, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
        """Restore optimizer, generators and counters; return (model state, record)."""
        state, record = load_checkpoint(self.checkpoint_dir, optimizer, self.generators)
        self.step, self.elapsed, self.history = record["step"], record["elapsed"], record["history"]
        torch.set_rng_state(torch.tensor(record["torch_rng"], dtype=torch.uint8))
        # Metrics logged after the checkpoint belong to steps that will be redone.
        self.metrics_path.write_text("".join(json.dumps(e) + "\n" for e in self.history))
        return state, record

    def log(self, entry: dict[str, Any]) -> None:
        self.history.append(entry)
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def checkpoint(self, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                   **extra: Any) -> None:
        save_checkpoint(self.checkpoint_dir, weights, optimizer, self.generators, {
            "step": self.step, "elapsed": self.elapsed, "history": self.history,
            "torch_rng": torch.get_rng_state().tolist(), **extra})
