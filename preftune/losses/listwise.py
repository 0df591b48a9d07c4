"""Listwise DPO under the Plackett–Luce model (docs/maths.md §preference.pl, §loss.plackett_luce): K ranked completions per prompt.

Rafailov et al. 2023, Appendix A.3: substituting the implicit reward r̂ = β log π_θ/π_ref into
the Plackett–Luce likelihood (Plackett 1975, "The Analysis of Permutations"; Luce 1959, "Individual
Choice Behavior") gives a DPO loss over rankings; the partition function Z(x) cancels inside each
softmax exactly as it does in the pairwise case. With K = 2 the loss is DPO's.

Inputs are (B, K) rather than (B,) pairs, so :func:`plackett_luce` is exported and listed in
``preftune.losses.LISTWISE``, not in the pairwise registry.
"""

from __future__ import annotations

import torch
from torch import Tensor


def plackett_luce_nll(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """−log of the Plackett–Luce probability of the ranking column 0 ≻ column 1 ≻ … , per row.

        L = −Σ_k [ s_k − log Σ_{j ≥ k} exp(s_j) ]          (k, j over unmasked columns only)

    ``scores`` (B, K); ``mask`` (B, K) bool, True = a real entry (None = all real). Padded columns are
    dropped from both the outer sum and every denominator, so a row with K' real entries gets the
    K'-item loss whatever the padding holds. Returns (B,).
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    mask = mask.to(torch.bool)
    # A finite stand-in for −∞: exp underflows to exactly 0 so padding leaves the sums unchanged, while
    # keeping every intermediate finite; true −∞ would give NaN gradients (∞ − ∞) in rows whose tail
    # is all padding, even though those terms are multiplied by zero afterwards.
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    # log Σ_{j ≥ k} exp(s_j) for every k: a cumulative logsumexp taken from the right.
    tail_lse = torch.logcumsumexp(filled.flip(-1), dim=-1).flip(-1)
    terms = (filled - tail_lse) * mask.to(scores.dtype)
    return -terms.sum(dim=-1)


def plackett_luce(
    policy_logps: Tensor,
    ref_logps: Tensor,
    *,
    beta: float,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Plackett–Luce DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model
    is Secretly a Reward Model", Appendix A.3).

        r̂_k = β (log π_θ(y_k|x) − log π_ref(y_k|x))
        L = −Σ_{k=1}^{K} log [ exp(r̂_k) / Σ_{j ≥ k} exp(r̂_j) ]

    Shapes: ``policy_logps``, ``ref_logps`` (B, K): summed completion log-probs, column 0 the best
    ranked completion, column K − 1 the worst. ``mask`` (B, K) bool for ragged lists (True = real
    completion; padding anywhere is skipped, the order of the real ones is the ranking). The last
    term of the sum is always log 1 = 0. Returns (losses (B,), rewards (B, K) = r̂ detached, 0 at
    padded entries).
    """
    rewards = beta * (policy_logps - ref_logps)
    losses = plackett_luce_nll(rewards, mask)
    reported = rewards.detach() if mask is None else rewards.detach().masked_fill(~mask.to(torch.bool), 0.0)
    return losses, reported
