"""Optimizers and the learning-rate schedule.

The schedule is a pure function of the step rather than a scheduler object: resuming needs only the
step, and a skipped (non-finite) step cannot put scheduler and optimizer out of step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from preftune.config import TrainingConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainingConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                 eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.learning_rate, eps=cfg.adam_epsilon,
                                   weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def warmup_steps(cfg: TrainingConfig, total: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else int(round(cfg.warmup_ratio * total))


def lr_at(step: int, *, peak: float, warmup: int, total: int, kind: str) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up to ``peak`` over ``warmup``
    steps, then constant or linear decay reaching 0 after ``total`` steps."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if kind == "constant":
        return peak
    remaining = max(total - warmup, 1)
    return peak * max(0.0, (total - step) / remaining)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
