"""When to log, evaluate and save: transformers' strategies (``no`` / ``steps`` / ``epoch``) as a plan.

The same decisions as the Trainer's default flow: ``steps`` every N optimizer steps (N a count, or a
fraction of the total rounded up), ``epoch`` at every epoch's last step, evaluation and saving also at
the last step whenever their strategy is not ``no``, ``eval_delay`` holding evaluation back, and
``logging_first_step``. One deliberate addition: the last step is always logged (when logging at all),
so a curve ends where training ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def interval(value: float | None, total: int) -> int | None:
    """A step interval: a count, or a fraction of ``total`` rounded up (never below 1)."""
    if value is None:
        return None
    return int(value) if value >= 1 else max(1, math.ceil(total * value))


@dataclass(frozen=True)
class Cadence:
    total: int
    steps_per_epoch: int
    log_strategy: str = "steps"
    log_every: int | None = 10
    log_first: bool = False
    eval_strategy: str = "no"
    eval_every: int | None = None
    eval_delay: float = 0
    save_strategy: str = "no"
    save_every: int | None = None

    @classmethod
    def of(cls, cfg: Any, total: int, steps_per_epoch: int) -> Cadence:
        log_every = interval(cfg.logging_steps, total)
        eval_steps = getattr(cfg, "eval_steps", None)
        return cls(total=total, steps_per_epoch=steps_per_epoch, log_strategy=cfg.logging_strategy,
                   log_every=log_every, log_first=cfg.logging_first_step, eval_strategy=cfg.eval_strategy,
                   eval_every=interval(eval_steps, total) if eval_steps is not None else log_every,
                   eval_delay=cfg.eval_delay, save_strategy=cfg.save_strategy,
                   save_every=interval(cfg.save_steps, total))

    def _epoch_end(self, step: int) -> bool:
        return step % self.steps_per_epoch == 0 or step == self.total

    def log(self, step: int) -> bool:
        """Log the train metrics after optimizer step ``step`` (1-based)?"""
        if self.log_strategy == "no":
            return False
        if step == self.total or (self.log_first and step == 1):
            return True
        return step % self.log_every == 0 if self.log_strategy == "steps" else self._epoch_end(step)

    def evaluate(self, step: int) -> bool:
        """Evaluate on held-out data after step ``step`` (the last step included)?"""
        if self.eval_strategy == "steps":
            return step >= self.eval_delay and (step % self.eval_every == 0 or step == self.total)
        if self.eval_strategy == "epoch":
            return self._epoch_end(step) and step / self.steps_per_epoch >= self.eval_delay
        return False

    def save(self, step: int) -> bool:
        """Save a resumable checkpoint after step ``step`` (the last step included)?"""
        if self.save_strategy == "steps":
            return step % self.save_every == 0 or step == self.total
        if self.save_strategy == "epoch":
            return self._epoch_end(step)
        return False
