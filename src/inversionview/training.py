"""The one training loop of the three trainers: a decoder (``decoder.train``), a toy-task
model (``probed.train``) and a small language model (``probed.train_lm``).

The loop owns what the three share: the budget (steps, or minutes of the loop's wall time:
training, evaluations and checkpoints, so that a user waits about that long; loading before
the loop and the final evaluation and save after it are outside), the learning rate (linear
warm-up, ended by 10 % of the budget at the latest, then cosine decay over the budget), when
to evaluate and when to checkpoint, the optimizer step with its clipped gradients, the
progress bar, and the run's bookkeeping in ``checkpoint.RunLog`` (the step,
the training time, metrics.jsonl, the commands). A trainer supplies only what is its own, as
a ``Trainer``: its model and optimizer, the loss of a step's batch, an evaluation, what a
checkpoint holds and the figures its progress bar shows. Holding its run directory
(``checkpoint.claim_run_directory``: one run at a time in a directory), it builds all of
that, starts or resumes its ``RunLog``, calls ``run_training`` and saves its result with the
manifest's shared fields (``run_manifest``)::

    with claim_run_directory(out, resume):  # another run there: refused at once
        run = RunLog(out, generators)       # run.resume(optimizer), or run.start(dropout_seed)
        run_training(run, Trainer(...), LoopSettings.of(config, config.steps), show_progress)
        manifest = {**run_manifest(run, seed, commit, steps=run.step, ...), ...}

Resume is exact because the loop keeps no state of its own beyond the ``RunLog``: each
iteration depends only on the step, the training time and the history, which a checkpoint
stores, and on the trainer's data and random generators, which its ``checkpoint`` stores.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm import tqdm

from inversionview import provenance
from inversionview.checkpoint import CheckpointSchedule, RunLog
from inversionview.distributed import World
from inversionview.schedule import budget_progress, warmup_cosine


@dataclass(frozen=True)
class LoopSettings:
    """The settings the loop reads, which every training config spells the same way."""

    steps: int | None  # the budget in optimizer steps (None: a budget of minutes)
    minutes: float | None  # the budget in minutes of the loop's wall time (None: of steps)
    lr: float  # the peak learning rate
    warmup_steps: int  # steps of linear warm-up to the peak
    min_lr_fraction: float  # the fraction of the peak the cosine decays to at the budget's end
    grad_clip: float  # the largest gradient norm of a step
    eval_every_seconds: float  # wall-clock seconds between evaluations
    # When to checkpoint (see checkpoint.CheckpointSchedule): every checkpoint_every_seconds,
    # the first time after first_checkpoint_seconds or first_checkpoint_steps.
    checkpoint_every_seconds: float
    first_checkpoint_seconds: float
    first_checkpoint_steps: int

    @classmethod
    def of(cls, config: Any, steps: int | None) -> "LoopSettings":
        """The loop settings of a training config (a dataclass with the fields above, bar
        ``steps``: its budget in steps, which each config counts in its own way)."""
        names = [item.name for item in dataclasses.fields(cls) if item.name != "steps"]
        return cls(steps=steps, **{name: getattr(config, name) for name in names})

    def progress(self, step: int, elapsed_seconds: float) -> float:
        """How much of the budget is spent: 1.0 and more is all of it."""
        return budget_progress(step, elapsed_seconds, self.steps, self.minutes)

    def learning_rate(self, step: int, progress: float) -> float:
        return warmup_cosine(self.lr, step, progress, self.warmup_steps, self.min_lr_fraction)


@dataclass
class Trainer:
    """What a trainer supplies to ``run_training``: the parts of a run that are its own."""

    name: str  # the progress bar's label
    model: torch.nn.Module  # the module trained: put in training mode, its gradients clipped
    optimizer: torch.optim.Optimizer
    # step -> (the loss of the step's batch, how many examples or tokens it trains on: the
    # rate on the progress bar). The loop backpropagates it and steps the optimizer.
    batch_loss: Callable[[int], tuple[torch.Tensor, int]]
    evaluate: Callable[[], Any]  # evaluates and logs one line of metrics (``RunLog.log``)
    checkpoint: Callable[[], Any]  # writes the checkpoint (``RunLog.checkpoint``)
    # (loss of the last step, examples or tokens per second, learning rate) -> the figures
    # the progress bar shows after the step.
    postfix: Callable[[torch.Tensor, float, float], dict[str, str]]
    # The evaluation after the last step, where it differs from ``evaluate`` (the decoder's
    # in-loop evaluation also rebalances the sites it trains on, pointless after the last).
    final_evaluation: Callable[[], Any] | None = None
    progress_every: int = 10  # steps between updates of the progress bar


def run_training(run: RunLog, trainer: Trainer, settings: LoopSettings,
                 show_progress: bool = True, world: World | None = None) -> None:
    """Train from ``run``'s step (0, or the step its checkpoint holds) until the budget is
    spent, then make sure the last step has an evaluation and a checkpoint. Under torchrun
    (``world``) rank 0 decides for every rank when to stop, the learning rate, and when to
    evaluate and checkpoint; it alone shows progress and makes the final evaluation."""
    world = world or World()
    lead = world.rank == 0
    in_steps = settings.steps is not None
    total = settings.steps if in_steps else int(settings.minutes * 60)

    def spent() -> int:  # the progress bar's position: steps, or seconds of the budget
        return min(run.step if in_steps else int(run.elapsed), total)

    shown = show_progress and lead
    bar = (tqdm(total=total, initial=spent(), disable=not shown, unit="step", dynamic_ncols=True,
                desc=trainer.name) if in_steps else
           _TimeBar(total=total, initial=spent(), disable=not shown, dynamic_ncols=True,
                    desc=trainer.name))
    start = time.perf_counter() - run.elapsed
    last_eval = time.perf_counter()
    checkpoints = CheckpointSchedule(settings.checkpoint_every_seconds,
                                     settings.first_checkpoint_seconds,
                                     settings.first_checkpoint_steps)
    checkpoints.begin(run.step)
    window_start, window_count = time.perf_counter(), 0  # for the rate on the bar
    trainer.model.train()
    while True:
        # Rank 0 decides: the budget spent (for the stop and the lr), evaluate?, checkpoint?
        # An evaluation needs a step trained since the last one (a resumed run has made its
        # checkpoint's). Both come before the next step: once the budget is spent, the
        # final ones after the loop take their place.
        now = time.perf_counter()
        run.elapsed = now - start
        progress, evaluate, checkpoint = world.broadcast_floats([
            settings.progress(run.step, run.elapsed),
            float(run.step > 0 and now - last_eval >= settings.eval_every_seconds
                  and run.last_evaluation_at_this_step() is None),
            float(checkpoints.due(run.step, now))])
        if progress >= 1.0:
            break
        if evaluate:
            trainer.evaluate()
            last_eval = time.perf_counter()
        if checkpoint:
            trainer.checkpoint()
            checkpoints.written()

        lr = settings.learning_rate(run.step, progress)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        loss, count = trainer.batch_loss(run.step)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), settings.grad_clip)
        trainer.optimizer.step()
        run.step += 1

        window_count += count
        if run.step % trainer.progress_every == 0 and lead:
            now = time.perf_counter()
            rate = window_count / max(now - window_start, 1e-9)
            window_start, window_count = now, 0
            bar.set_postfix(**trainer.postfix(loss, rate, lr), refresh=False)
            bar.n = spent()
            bar.refresh()
    bar.close()
    # A run resumed from its final checkpoint keeps the final evaluation it already made.
    if lead and run.last_evaluation_at_this_step() is None:
        (trainer.final_evaluation or trainer.evaluate)()
    trainer.checkpoint()  # the final state, so that a kill while the result is saved resumes


class _TimeBar(tqdm):
    """The bar of a budget of minutes, in time: ``decoder ioi:  95%|███▌| 01:54 of 02:00,
    loss=...`` (tqdm's own units would read ``114/120 [03:28<00:10, 1.83s/s]``)."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {spent} of {budget}{postfix}"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, bar_format=self.FORMAT, **kwargs)

    @property
    def format_dict(self) -> dict[str, Any]:
        values = super().format_dict
        return {**values, "spent": self.format_interval(values["n"]),
                "budget": self.format_interval(values["total"] or 0)}


def evaluation_entry(run: RunLog, **figures: Any) -> dict[str, Any]:
    """A line of metrics.jsonl: the step, the seconds of the loop so far, then ``figures``."""
    return {"step": run.step, "seconds": round(run.elapsed, 1), **figures}


def run_manifest(run: RunLog, seed: int, commit: str, **trained: Any) -> dict[str, Any]:
    """The fields every trainer's manifest opens with, in this order: the command that
    started the run and every resume, the seed, the commit the run started at (``commit``:
    ``provenance.commit()`` before it trains), the machine, then ``trained`` (what the run
    trained on: steps, examples or tokens, and where) and the seconds of training."""
    return {**run.manifest_commands(), "seed": seed, "commit": commit,
            "machine": provenance.machine(), **trained, "wall_seconds": round(run.elapsed, 1)}
