"""Learning-rate schedule, training budgets and the ranges of the training settings, shared by
the training loop (``training``) and the training configs (``probed.train``,
``probed.train_lm``, ``decoder.train``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from inversionview.options import CHECKPOINT_SECONDS, Range

# Settings the CLI does not expose; the ones it does live in ``inversionview.options``.
WARMUP_STEPS = Range("warmup_steps", 0, 10**12)
MIN_LR_FRACTION = Range("min_lr_fraction", 0, 1, integer=False)
WEIGHT_DECAY = Range("weight_decay", 0, 100, integer=False)
GRAD_CLIP = Range("grad_clip", 0, 1e9, integer=False, low_open=True)
EVAL_SECONDS = Range("eval_every_seconds", 0, 1e12, integer=False)  # 1e12: never
FIRST_CHECKPOINT_SECONDS = dataclasses.replace(CHECKPOINT_SECONDS, name="first_checkpoint_seconds")
FIRST_CHECKPOINT_STEPS = Range("first_checkpoint_steps", 1, 10**12)


def count(name: str) -> Range:
    """The range of a count of at least one (evaluation queries, batches in a pool, ...)."""
    return Range(name, 1, 10_000_000)


def check_settings(config: Any, ranges: dict[str, Range]) -> None:
    """Check each named field of ``config`` (a dataclass) against its range, in place (None
    means "not set" and passes); an OptionError names the first one out of range."""
    for name, spec in ranges.items():
        value = getattr(config, name)
        if value is not None:
            setattr(config, name, spec.check(value))


def budget_progress(step: int, elapsed_seconds: float, steps: int | None,
                    minutes: float | None) -> float:
    """Fraction of the budget used, counted in steps or in wall-clock minutes."""
    if steps is not None:
        return step / steps
    if minutes is None:
        raise ValueError("a budget needs steps or minutes")
    return elapsed_seconds / (minutes * 60.0)


#: The warm-up ends by this share of the budget at the latest, so that a short budget (two
#: minutes of a 400-step warm-up at one step a second) is not spent warming up.
WARMUP_SHARE = 0.1


def warmup_cosine(peak: float, step: int, progress: float, warmup_steps: int,
                  min_fraction: float) -> float:
    """Linear warm-up over ``warmup_steps`` or over the first ``WARMUP_SHARE`` of the budget,
    whichever ends first, then cosine decay to ``min_fraction`` x peak at the end of the
    budget (``progress`` 1.0)."""
    if step < warmup_steps and progress < WARMUP_SHARE:
        return peak * max((step + 1) / warmup_steps, progress / WARMUP_SHARE)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return peak * (min_fraction + (1.0 - min_fraction) * cosine)
