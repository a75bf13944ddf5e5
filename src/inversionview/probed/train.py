"""Train a probed model on its task, on fresh samples every step, with checkpoints and resume.

The run directory is itself a model directory once training ends (config.json,
model.safetensors, inversionview.json with the manifest), plus ``metrics.jsonl`` and
``checkpoint/`` (weights, optimizer, RNG states, step and elapsed time) for ``--resume``:
every ``checkpoint_every_seconds`` (60 s), and the first one after 10 s or 100 steps,
whichever comes first (see ``checkpoint.CheckpointSchedule``); checkpoint time is not
counted in a budget of minutes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from inversionview import provenance
from inversionview.checkpoint import RunLog, claim_run_directory, resumed_config
from inversionview.errors import OptionError
from inversionview.options import (BATCH_SIZE, CHECKPOINT_SECONDS, HEADS, LAYERS, LEARNING_RATE,
                                   MINUTES, SEED, STEPS, WIDTH)
from inversionview.probed.evaluate import solved
from inversionview.probed.model import build_probed
from inversionview.probed.subject import Subject
from inversionview.schedule import (EVAL_SECONDS, FIRST_CHECKPOINT_SECONDS,
                                    FIRST_CHECKPOINT_STEPS, GRAD_CLIP, MIN_LR_FRACTION,
                                    WARMUP_STEPS, WEIGHT_DECAY, check_settings, count)
from inversionview.tasks import get_task
from inversionview.tasks.base import Task, next_token_targets
from inversionview.training import (LoopSettings, Trainer, evaluation_entry, run_manifest,
                                    run_training)


@dataclass
class ProbedTrainingConfig:
    task: str
    out: Path
    minutes: float | None = None
    steps: int | None = None
    seed: int = 0
    batch_size: int = 256
    # The authors trained with HuggingFace's Trainer at a constant 5e-4 for 100 epochs; on a
    # CPU budget of minutes, a higher peak with warmup and cosine decay learns faster.
    lr: float = 1e-3
    min_lr_fraction: float = 0.1
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every_seconds: float = 60.0
    eval_examples: int = 2_000
    final_eval_examples: int = 20_000
    # Wall-clock seconds between checkpoints: a killed run loses at most about this much.
    # The first checkpoint comes early: after first_checkpoint_seconds (or the interval, if
    # shorter) or first_checkpoint_steps steps of the process, whichever comes first.
    checkpoint_every_seconds: float = 60.0
    first_checkpoint_seconds: float = 10.0
    first_checkpoint_steps: int = 100
    model_overrides: dict[str, Any] = field(default_factory=dict)
    #: "lm": every non-PAD next token; "task": only the task's own loss positions (counting:
    #: the count digit, as method.md describes the authors' model). The authors'
    #: trainer_state.json ends at a loss of 1.59, which only full language modelling gives,
    #: and here count-digit-only training sat at chance for 15k steps where "lm" left it
    #: within 2 minutes, so "lm" is the default.
    objective: str = "lm"

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.objective not in ("task", "lm"):
            raise OptionError(f"objective must be 'task' or 'lm', not {self.objective!r}")
        if (self.minutes is None) == (self.steps is None):
            raise OptionError("give exactly one of minutes or steps")
        check_settings(self, {
            "minutes": MINUTES, "steps": STEPS, "seed": SEED, "batch_size": BATCH_SIZE,
            "lr": LEARNING_RATE, "min_lr_fraction": MIN_LR_FRACTION, "warmup_steps": WARMUP_STEPS,
            "weight_decay": WEIGHT_DECAY, "grad_clip": GRAD_CLIP,
            "eval_every_seconds": EVAL_SECONDS, "eval_examples": count("eval_examples"),
            "final_eval_examples": count("final_eval_examples"),
            "checkpoint_every_seconds": CHECKPOINT_SECONDS,
            "first_checkpoint_seconds": FIRST_CHECKPOINT_SECONDS,
            "first_checkpoint_steps": FIRST_CHECKPOINT_STEPS})
        self._check_shape()

    @property
    def model_settings(self) -> dict[str, Any]:
        """The GPT2Config keyword arguments of the model: the task's defaults, overridden."""
        return {**get_task(self.task).probed_config(), **self.model_overrides}

    def _check_shape(self) -> None:
        settings = self.model_settings
        for key, spec in (("n_embd", WIDTH), ("n_head", HEADS), ("n_layer", LAYERS)):
            spec.check(settings[key])
        if settings["n_embd"] % settings["n_head"]:
            raise OptionError(f"d-model {settings['n_embd']} is not divisible by n-heads "
                              f"{settings['n_head']}: each head gets d-model / n-heads "
                              f"dimensions")

    @classmethod
    def resumed(cls, out: Path, minutes: float | None = None, steps: int | None = None,
                changes: dict[str, Any] | None = None,
                fixed: dict[str, tuple[str, Any]] | None = None) -> "ProbedTrainingConfig":
        """The config to continue the run in ``out``: the one its checkpoint stores; a budget
        given here replaces the stored one (see ``checkpoint.resumed_config``)."""
        return resumed_config(cls, out, {"minutes": minutes, "steps": steps}, changes, fixed)


def loss_on(model: Subject, tokens: torch.Tensor, objective: str = "task") -> torch.Tensor:
    """Mean next-token cross-entropy over the task's trained positions (or all, for "lm")."""
    task = model.task
    logits = model.hf_forward(tokens)
    targets = next_token_targets(tokens, task.vocab.pad_id)
    mask = task.loss_mask(tokens) if objective == "task" else targets != task.vocab.pad_id
    return F.cross_entropy(logits[mask], targets[mask])


def train_probed(config: ProbedTrainingConfig, resume: bool = False,
                 show_progress: bool = True) -> Subject:
    """Train within ``config``'s budget of steps or minutes (checkpoint time not counted).
    ``resume`` continues the run in ``config.out`` from its checkpoint
    (``ProbedTrainingConfig.resumed`` gives the config it was started with); without it, a
    directory that holds a checkpoint is refused, and so is a directory another run is
    training in (``checkpoint.claim_run_directory``)."""
    task = get_task(config.task)
    with claim_run_directory(config.out, resume):
        return _train(task, config, resume, show_progress)


def _train(task: Task, config: ProbedTrainingConfig, resume: bool, show_progress: bool
           ) -> Subject:
    config.out.mkdir(parents=True, exist_ok=True)
    started_at_commit = provenance.commit()

    model = build_probed(task, seed=config.seed, **config.model_overrides)
    optimizer = torch.optim.AdamW(model.hf_model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    data_generator = torch.Generator().manual_seed(config.seed)
    eval_tokens = task.sample_tokens(config.eval_examples,
                                     torch.Generator().manual_seed(config.seed + 1_000_003))
    run = RunLog(config.out, {"data": data_generator})
    if resume:
        state, _ = run.resume(optimizer)
        model.hf_model.load_state_dict(state, strict=False)
        model.hf_model.tie_weights()
    else:
        run.start(dropout_seed=config.seed + 1)

    loss_value = float("nan")
    accuracy = run.history[-1]["accuracy"] if run.history else float("nan")

    def batch_loss(step: int) -> tuple[torch.Tensor, int]:
        nonlocal loss_value
        tokens = task.sample_tokens(config.batch_size, data_generator)
        loss = loss_on(model, tokens, config.objective)
        loss_value = loss.item()
        return loss, config.batch_size

    def evaluate_now() -> None:
        nonlocal accuracy
        model.hf_model.eval()
        accuracy = solved(model, eval_tokens).float().mean().item()
        model.hf_model.train()
        run.log(evaluation_entry(run, examples=run.step * config.batch_size, loss=loss_value,
                                 accuracy=accuracy))

    def checkpoint_now() -> None:
        run.checkpoint(model.weights(), optimizer, config=_jsonable(config))

    run_training(run, Trainer(
        name=f"train {task.name}", model=model.hf_model, optimizer=optimizer,
        batch_loss=batch_loss, evaluate=evaluate_now, checkpoint=checkpoint_now,
        postfix=lambda loss, rate, lr: dict(loss=f"{loss_value:.4f}", acc=f"{accuracy:.4f}",
                                            ex_s=f"{rate:.0f}"),
        progress_every=20),
        LoopSettings.of(config, steps=config.steps), show_progress)

    model.hf_model.eval()
    model.refresh()
    final_tokens = task.sample_tokens(config.final_eval_examples,
                                      torch.Generator().manual_seed(config.seed + 2_000_029))
    final_accuracy = solved(model, final_tokens).float().mean().item()
    manifest = {
        **run_manifest(run, config.seed, started_at_commit, steps=run.step,
                       examples=run.step * config.batch_size),
        "accuracy": final_accuracy,
        "accuracy_examples": config.final_eval_examples,
        "training": _jsonable(config),
        "history": run.history,
    }
    model.model.manifest = manifest
    # Without inversionview.json the directory is no model of this toolkit: a kill while
    # saving leaves no manifest that describes other weights; --resume saves again.
    (config.out / "inversionview.json").unlink(missing_ok=True)
    model.save(config.out, manifest)
    return model


def _jsonable(config: ProbedTrainingConfig) -> dict[str, Any]:
    record = asdict(config)
    record["out"] = provenance.portable_path(config.out)
    return record
