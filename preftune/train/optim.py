"""The optimizer and the learning-rate schedule, as transformers' Trainer builds them.

``optim`` names transformers' optimizers; weight decay applies to every weight except biases and
normalisation weights (the Trainer's rule). The schedule is a pure function of the step rather than a
scheduler object: resuming needs only the step, and a skipped (non-finite) step cannot put schedule
and optimizer out of step.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Iterable

import torch
from torch import nn

from preftune.config.optim import ADAM, optim_arguments
from preftune.config.schedule import lr_factors, warmup_steps

# Parameter names the Trainer never decays (biases, LayerNorm / RMSNorm weights), besides nn.LayerNorm's.
_NO_DECAY = re.compile(r"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)")


def decays(name: str) -> bool:
    return not _NO_DECAY.search(name.lower())


def parameter_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float, layer_norm_params: set[int]
                     ) -> list[dict]:
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (decay if decays(name) and id(p) not in layer_norm_params else no_decay).append(p)
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]


def build_optimizer(model: nn.Module, cfg, log: Callable[[str], None] = print) -> torch.optim.Optimizer:
    """``cfg.optim`` over ``model``'s trainable parameters."""
    in_layer_norm = {id(p) for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    groups = parameter_groups(model.named_parameters(), cfg.weight_decay, in_layer_norm)
    if not groups:
        raise ValueError("no trainable parameters")
    make = lambda parameter_groups: _optimizer(parameter_groups, cfg, log)  # noqa: E731
    if getattr(cfg, "fp32_master_weights", False):   # 16-bit weights, float32 optimizer (master_weights.py)
        from preftune.train.master_weights import Float32Master

        return Float32Master(groups, make)
    return make(groups)


def _optimizer(groups: list[dict], cfg, log: Callable[[str], None]) -> torch.optim.Optimizer:
    lr, name = cfg.learning_rate, cfg.optim
    adam = {"lr": lr, "betas": (cfg.adam_beta1, cfg.adam_beta2), "eps": cfg.adam_epsilon}
    if name == "paged_adamw_32bit":
        on_cuda = all(p.is_cuda for g in groups for p in g["params"])
        if on_cuda and importlib.util.find_spec("bitsandbytes") is not None:
            import bitsandbytes as bnb

            return bnb.optim.PagedAdamW32bit(groups, **adam)
        log("optim paged_adamw_32bit: paging needs bitsandbytes on CUDA; torch's AdamW takes the same 32-bit steps")
    if name in ADAM:
        return torch.optim.AdamW(groups, **adam, fused=True if name == "adamw_torch_fused" else None)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False)
    cls = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}[name]
    return cls(groups, lr=lr, **optim_arguments(name, cfg.optim_args))


def lr_schedule(cfg, total: int) -> Callable[[int], float]:
    """The learning rate of optimizer step ``s`` (0-based) of a ``total``-step run: ``learning_rate`` ×
    transformers' schedule factor at ``s`` (warm-up starts at lr 0, as in the Trainer)."""
    warmup = warmup_steps(cfg.warmup_steps, cfg.warmup_ratio, total)
    factor = lr_factors(cfg.lr_scheduler_type, cfg.learning_rate, warmup, total, cfg.lr_scheduler_kwargs)
    peak = cfg.learning_rate
    return lambda step: peak * factor(step)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
