"""Learning-rate schedules: transformers' own, read as a pure function of the optimizer step.

``lr_factors`` builds the schedule transformers' ``get_scheduler`` would build (same name, warm-up,
total steps and ``lr_scheduler_kwargs``) on a one-parameter probe optimizer and returns its multiplier:
the lr of optimizer step ``s`` (0-based) is ``learning_rate × factor(s)``, exactly what the Trainer's
``LambdaLR`` applies at that step. A function of the step, not a scheduler object, so resuming needs
only the step, and a skipped (non-finite) step cannot put schedule and optimizer out of step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch


def warmup_steps(warmup: float, warmup_ratio: float, total: int) -> int:
    """Warm-up steps as transformers counts them: an integer is a count, a fraction of ``total`` is
    rounded up; ``warmup_ratio`` (transformers 4's key) is the same fraction."""
    if warmup >= 1:
        return int(warmup)
    return math.ceil(total * (warmup if warmup > 0 else warmup_ratio))


def lr_factors(name: str, learning_rate: float, warmup: int, total: int, kwargs: dict[str, Any] | None
               ) -> Callable[[int], float]:
    from transformers import get_scheduler

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=learning_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = get_scheduler(name, probe, num_warmup_steps=warmup, num_training_steps=total,
                                  scheduler_specific_kwargs=dict(kwargs or {}))
    return scheduler.lr_lambdas[0]


def probe_schedule(name: str, learning_rate: float, kwargs: dict[str, Any] | None) -> str | None:
    """What is wrong with these schedule settings (a missing or unknown kwarg, lr_end above the lr, ...),
    found by building the schedule for a 100-step run; None when it builds."""
    try:
        factor = lr_factors(name, learning_rate, 10, 100, kwargs)
        [factor(s) for s in (0, 10, 99)]
    except (TypeError, ValueError, ZeroDivisionError) as e:
        return str(e)
    return None
