"""How the GRPO family reduces per-token losses to one number: each ``loss_type``'s normaliser.

With ℓ_it the per-token loss of completion i, token t, m_it the completion mask and |y_i| = Σ_t m_it:

    sequence_mean    (grpo, sapo)  1/B Σ_i 1/|y_i| Σ_t ℓ_it      Shao et al. 2024 (DeepSeekMath) eq. 3
    batch_token_mean (bnpo)        Σ_it ℓ_it / Σ_it m_it, per micro-batch, then averaged over them
    constant         (dr_grpo)     1/(B·L) Σ_it ℓ_it,  L = max_completion_length
                                   Liu et al. 2025 ("Understanding R1-Zero-Like Training", Dr. GRPO)
    token_mean       (dapo, cispo) Σ_it ℓ_it / Σ_it m_it over the *whole optimizer step*
                                   Yu et al. 2025 ("DAPO") eq. 12, token-level policy gradient loss
    sequence_sum     (luspo)       1/B Σ_i Σ_t ℓ_it  (each sequence weighted by its length)

Every function returns ``(total, units)``, and the optimizer step's loss is

    Σ total / Σ units,     both sums over every micro-batch of the step on every rank.

That is how a normaliser becomes global across gradient accumulation and ranks: ``units`` depends on
the mask only, so it can be counted for the whole step before any forward pass (TRL counts
``num_items_in_batch`` at generation time), or all-reduced with the loop's other sums afterwards.
Two ways to use it:

* preftune's loop (``train/loop.py``): per micro-batch ``loss = total / units`` with ``count = units``;
  the loop back-propagates loss·count and divides the summed gradient by the all-reduced count.
* a trainer that sums micro-batch gradients and averages them over ranks (DDP): back-propagate
  :func:`step_share` = total · num_processes / step_units, with ``step_units`` the step's global Σ units.

``batch_token_mean`` has units = 1 per micro-batch (TRL's bnpo normalises by the *local* token count,
so its step loss is a mean of micro-batch means); every other aggregation's step loss is independent of
how the step is split into micro-batches and ranks, provided the sequence-level ones see equal-sized
micro-batches of sequences (they weight every sequence equally in any case).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Aggregation = Callable[..., tuple[Tensor, Tensor]]


def _masked(per_token_loss: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The loss broadcast to the mask's (B, T) (a sequence-level (B, 1) loss counts once per token, as in
    TRL) and zeroed off the mask with where(), so garbage there reaches neither value nor gradient."""
    m = mask if mask.dtype == torch.bool else mask != 0
    if per_token_loss.dim() != 2 or per_token_loss.shape[0] != m.shape[0] or per_token_loss.shape[1] not in (1, m.shape[1]):
        raise ValueError(f"per-token loss shape {tuple(per_token_loss.shape)} does not fit mask {tuple(m.shape)}")
    loss = per_token_loss.expand(m.shape)
    return torch.where(m, loss, torch.zeros((), dtype=loss.dtype, device=loss.device)), m


def sequence_mean(per_token_loss: Tensor, mask: Tensor, **_: object) -> tuple[Tensor, Tensor]:
    """Σ_i (Σ_t ℓ_it / |y_i|), units = B. A completion with no token (e.g. masked as truncated) adds 0 but
    still counts in B, as in TRL."""
    loss, m = _masked(per_token_loss, mask)
    lengths = m.sum(-1).clamp_min(1).to(loss.dtype)
    return (loss.sum(-1) / lengths).sum(), torch.tensor(float(m.shape[0]), dtype=loss.dtype, device=loss.device)


def batch_token_mean(per_token_loss: Tensor, mask: Tensor, **_: object) -> tuple[Tensor, Tensor]:
    """(Σ_it ℓ_it / Σ_it m_it) of this micro-batch, units = 1 (TRL's bnpo: the local token count)."""
    loss, m = _masked(per_token_loss, mask)
    return loss.sum() / m.sum().clamp_min(1).to(loss.dtype), torch.ones((), dtype=loss.dtype, device=loss.device)


def constant(per_token_loss: Tensor, mask: Tensor, *, max_completion_length: int | None = None,
             **_: object) -> tuple[Tensor, Tensor]:
    """Σ_it ℓ_it / L, units = B: Dr. GRPO's constant normaliser L = ``max_completion_length`` (required)."""
    if max_completion_length is None or max_completion_length < 1:
        raise ValueError("the dr_grpo aggregation needs max_completion_length >= 1 (its constant normaliser), "
                         f"got {max_completion_length!r}")
    loss, m = _masked(per_token_loss, mask)
    return loss.sum() / max_completion_length, torch.tensor(float(m.shape[0]), dtype=loss.dtype, device=loss.device)


def token_mean(per_token_loss: Tensor, mask: Tensor, **_: object) -> tuple[Tensor, Tensor]:
    """Σ_it ℓ_it, units = Σ_it m_it: the token-level mean over the whole step once both are summed."""
    loss, m = _masked(per_token_loss, mask)
    return loss.sum(), m.sum().to(loss.dtype)


def sequence_sum(per_token_loss: Tensor, mask: Tensor, **_: object) -> tuple[Tensor, Tensor]:
    """Σ_it ℓ_it, units = B: per-sequence sums, averaged over sequences (LUSPO)."""
    loss, m = _masked(per_token_loss, mask)
    return loss.sum(), torch.tensor(float(m.shape[0]), dtype=loss.dtype, device=loss.device)


AGGREGATIONS: dict[str, Aggregation] = {
    "sequence_mean": sequence_mean,
    "batch_token_mean": batch_token_mean,
    "constant": constant,
    "token_mean": token_mean,
    "sequence_sum": sequence_sum,
}


def step_share(total: Tensor, step_units: Tensor | float, num_processes: int = 1) -> Tensor:
    """This micro-batch's share of the step loss for a trainer that *sums* gradients over micro-batches
    and *averages* them over ``num_processes`` ranks: total · num_processes / step_units, with
    ``step_units`` = Σ units over every micro-batch of the step on every rank. Summed and averaged so, the
    shares give exactly ∇(Σ total / Σ units). A step with no units gives 0, not NaN."""
    units = torch.as_tensor(step_units, dtype=total.dtype, device=total.device)
    return total * num_processes / units.clamp_min(1)
