"""Reductions over the tokens a boolean mask keeps, shared by every RL loss, advantage and metric.

Token-level tensors are (B, T) with a mask (B, T), True on the tokens that count (completion tokens).
Masked-out entries are replaced with ``torch.where`` rather than multiplied by 0, so NaN or ±inf there
(padding garbage, −inf log-probs) reaches neither a value nor a gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_bool_mask(x: Tensor, mask: Tensor) -> Tensor:
    """``mask`` as bool (nonzero = True), after checking it has the shape of ``x``: a mismatched mask
    would broadcast silently and count the wrong tokens."""
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != tensor shape {tuple(x.shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ of x over entries where ``mask`` is True (over all of them, or along ``dim``).

    Masked-out entries are replaced by 0 with ``torch.where`` rather than multiplied by 0, so NaN or
    ±inf there (padding garbage) changes neither the value nor the gradient.
    """
    m = as_bool_mask(x, mask)
    kept = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over entries where ``mask`` is True (over all of them, or along ``dim``).

    An empty mask gives 0, not NaN (the count is clamped at 1, as losses.preference does for empty
    completions): one empty row must not poison a batch, and checking would cost a host sync.
    """
    m = as_bool_mask(x, mask)
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(x, m, dim) / count.clamp_min(1).to(x.dtype)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x − μ) / √(σ² + eps) with μ, σ² the mean and (population) variance over masked entries only.

    ``shift_mean=False`` adds μ back: the spread is normalised but the mean kept (for rewards, whose
    sign carries meaning). A constant input has σ² = 0 and gives 0 (or μ), not NaN: eps keeps the
    division finite. Masked-out positions of the result are 0. Any shape; statistics over the whole
    tensor (batch-level whitening, as PPO does for advantages).
    """
    m = as_bool_mask(x, mask)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    # Zeroed first, not just at the end: a NaN off the mask would reach the gradient of μ and σ² as
    # 0 · NaN through (x − μ) even though where() discards its value.
    x = torch.where(m, x, zero)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    white = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        white = white + mean
    return torch.where(m, white, zero)
