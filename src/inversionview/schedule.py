"""Learning-rate schedule and training budgets shared by the training loops."""

from __future__ import annotations

import math


def budget_progress(step: int, elapsed_seconds: float, steps: int | None,
                    minutes: float | None) -> float:
    """Fraction of the budget used, counted in steps or in wall-clock minutes."""
    if steps is not None:
        return step / steps
    if minutes is None:
        raise ValueError("a budget needs steps or minutes")
    return elapsed_seconds / (minutes * 60.0)


def warmup_cosine(peak: float, step: int, progress: float, warmup_steps: int,
                  min_fraction: float) -> float:
    """Linear warmup over ``warmup_steps``, then cosine decay to ``min_fraction`` x peak at
    the end of the budget (``progress`` 1.0)."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return peak * (min_fraction + (1.0 - min_fraction) * cosine)
