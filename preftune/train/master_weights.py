"""bf16 (or fp16) weights, float32 optimizer: the optimizer updates float32 copies of the trained weights.

A model loaded with ``dtype=bfloat16`` halves its weights' memory, but an optimizer stepping the bf16
weights themselves keeps its state in bf16 and loses every update smaller than half a bf16 step (8
mantissa bits: at a weight of 1.0 any update under 2⁻⁹ ≈ 0.002 rounds away, which is most updates at
fine-tuning learning rates). :class:`Float32Master` keeps a float32 master copy of each low-precision
trained weight; the wrapped optimizer (its state float32 too) updates the masters from the float32-cast
gradients, and each step the weights the model computes with are the masters rounded to their dtype.
Float32 weights are stepped directly (no copy). Memory: 4 bytes more per low-precision trained weight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


class Float32Master:
    """An optimizer over float32 masters of ``params`` (tensors, or parameter groups: dicts with "params"),
    built by ``make_optimizer`` from the same groups holding the masters; it has the methods the training
    loop and checkpoints use (``step``, ``zero_grad``, ``param_groups``, ``state_dict``, ``load_state_dict``)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], make_optimizer: Callable[[Any], torch.optim.Optimizer]
                 ) -> None:
        groups = list(params)
        grouped = bool(groups) and isinstance(groups[0], dict)
        if not grouped:
            groups = [{"params": groups}]
        self.params = [p for g in groups for p in g["params"]]
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().requires_grad_() for p in self.params]
        master_of = {id(p): m for p, m in zip(self.params, self.masters)}
        master_groups = [{**g, "params": [master_of[id(p)] for p in g["params"]]} for g in groups]
        self.optimizer = make_optimizer(master_groups if grouped else master_groups[0]["params"])

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> dict:
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        for p, master in zip(self.params, self.masters):
            if master is not p:
                master.grad = None if p.grad is None else p.grad.float()
        self.optimizer.step()
        for p, master in zip(self.params, self.masters):
            if master is not p:
                p.copy_(master)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state and the masters (a resumed run continues from the exact float32
        values, not from their bf16 rounding)."""
        return {"optimizer": self.optimizer.state_dict(),
                "masters": [m.detach().clone() for m, p in zip(self.masters, self.params) if m is not p]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        kept = [m for m, p in zip(self.masters, self.params) if m is not p]
        if len(kept) != len(state["masters"]):
            raise ValueError(f"the checkpoint holds {len(state['masters'])} float32 master weights, this run "
                             f"{len(kept)}")
        with torch.no_grad():
            for master, saved in zip(kept, state["masters"]):
                master.copy_(saved)
            for p, master in zip(self.params, self.masters):
                if master is not p:
                    p.copy_(master)
