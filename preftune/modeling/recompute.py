"""Activations that are cheap to recompute are not kept for backward.

Autograd keeps every tensor a backward formula needs. In a Llama-style decoder layer three of them are
elementwise functions of tensors that are kept anyway:

* the output of each RMSNorm, kept as the input of the projections that follow it (q/k/v after the
  first norm, gate/up after the second), is ``w · x · r`` where the norm itself keeps x and r;
* the attention output handed to ``o_proj`` is the SDPA output (kept by SDPA's own backward)
  transposed to [tokens, heads·dim] and made contiguous: the same numbers in another order.

Each is one hidden-size vector per token and layer (for SmolLM2-135M, 3 × 576 of the ~7,000 floats a
lean layer keeps per token). Inside :func:`keep_less`, a tensor declared with :func:`recomputable`
is stored by autograd as its recipe instead of its values (``torch.autograd.graph.saved_tensors_hooks``),
and the first backward formula that needs it recomputes it, from the same inputs with the same
elementwise operations, so the gradients are bitwise the ones of keeping it. The recomputed tensor lives
until the last formula that needs it has run (the q, k and v projections share one), then goes: at
most one layer's worth exists at a time in backward.

A saved tensor is matched to its recipe by storage (a projection keeps a 2-D view of the 3-D output),
and only while the declared tensor is alive, so a freed and reused address never matches.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator

import torch
from torch import Tensor


class _Recipe:
    __slots__ = ("compute", "value")

    def __init__(self, compute: Callable[[], Tensor]) -> None:
        self.compute = compute
        self.value: Tensor | None = None

    def get(self) -> Tensor:
        if self.value is None:
            with torch.no_grad():
                self.value = self.compute()
        return self.value


_RECIPES: dict[int, tuple[weakref.ref, _Recipe]] = {}
_DEPTH = 0


def recomputable(out: Tensor, compute: Callable[[], Tensor]) -> Tensor:
    """Declare that ``compute()`` returns ``out`` again, bitwise (same shape, strides, dtype); returns
    ``out``. Outside :func:`keep_less`, or without autograd, it does nothing."""
    if _DEPTH == 0 or not out.requires_grad or out.storage_offset() != 0 or not out.is_contiguous():
        return out
    ptr = out.untyped_storage().data_ptr()

    def forget(ref: weakref.ref, ptr: int = ptr) -> None:
        entry = _RECIPES.get(ptr)
        if entry is not None and entry[0] is ref:
            del _RECIPES[ptr]

    _RECIPES[ptr] = (weakref.ref(out, forget), _Recipe(compute))
    return out


def _pack(t: Tensor):
    entry = _RECIPES.get(t.untyped_storage().data_ptr()) if t.layout == torch.strided else None
    if entry is not None:
        ref, recipe = entry
        base = ref()
        if base is not None and t.dtype == base.dtype:
            return recipe, tuple(t.shape), t.stride(), t.storage_offset()
    return t


def _unpack(packed):
    if isinstance(packed, tuple):
        recipe, shape, stride, offset = packed
        return recipe.get().as_strided(shape, stride, offset)
    return packed


@contextlib.contextmanager
def keep_less() -> Iterator[None]:
    """Within this block, tensors declared :func:`recomputable` are kept by autograd as recipes."""
    global _DEPTH
    if not torch.is_grad_enabled():
        yield
        return
    _DEPTH += 1
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
            yield
    finally:
        _DEPTH -= 1
        if _DEPTH == 0:
            _RECIPES.clear()   # the declared tensors' own weak references end them too; this keeps no stale entry


def heads_last(outputs: list[Tensor]) -> Tensor:
    """SDPA outputs [B, H, T_i, D], concatenated over T, as the [B, T, H, D] that ``o_proj`` reads; declared
    recomputable from them (SDPA's backward keeps them, ``o_proj`` would keep this copy of the same numbers)."""
    def compute() -> Tensor:
        return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)).transpose(1, 2).contiguous()
    return recomputable(compute(), compute)
