"""KTO: alignment from unpaired desirable / undesirable examples (docs/maths.md §loss.kto).

Ethayarajh, Xu, Muennighoff, Jurafsky & Kiela 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization". Each example is one (x, y) with a binary label (desirable or not), not a pair, so the
functions here do not share the pairwise signature
``fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta)``; they are registered in
``preftune.losses.UNPAIRED`` rather than in the pairwise registry, which the DPO stage calls with
pairs.

The value of an output is measured against a reference point z_ref = KL(π_θ(y'|x) ‖ π_ref(y'|x)),
estimated by the caller (:mod:`preftune.objectives.kto`) from *mismatched* pairs: each prompt x_i
scored with another example's completion y_j under π_θ and π_ref; the mean log-ratio over those pairs,
clamped at 0 (a KL is never negative) and detached, stands in for the KL. This is the paper's
practical estimator (biased, by its own account): it needs no sampling from π_θ during training, and
z_ref only sets the point each reward is judged against, not the direction of the update.
"""

from __future__ import annotations

import torch
from torch import Tensor


def kto(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    *,
    beta: float,
    kl: Tensor,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """KTO loss (Ethayarajh et al. 2024, eq. 7), per example.

        r(x, y) = log π_θ(y|x) / π_ref(y|x),   z = ``kl`` (z_ref, module docstring)
        desirable   (label True):   L = λ_D (1 − σ(β (r − z)))
        undesirable (label False):  L = λ_U (1 − σ(β (z − r)))

    λ_D = ``desirable_weight``, λ_U = ``undesirable_weight``: the paper's loss aversion; it suggests
    λ_D n_D / (λ_U n_U) ∈ [1, 4/3] when the data have n_D desirable and n_U undesirable examples.
    σ saturates, so examples already far past the reference point stop pulling (prospect theory's
    diminishing sensitivity). ``kl`` is used detached whatever is passed, and clamped at 0 as in the
    paper. Shapes: ``policy_logps``, ``ref_logps`` (B,) float, summed completion log-probs; ``labels``
    (B,) bool; ``kl`` scalar tensor. Returns (losses (B,), rewards (B,) = β r, detached), in input order.
    """
    labels = labels.to(torch.bool)
    z = kl.detach().clamp(min=0.0)
    logratios = policy_logps - ref_logps
    # Desirable outputs are rewarded for rising above the reference point, undesirable ones for
    # falling below it: one sigmoid with the sign of (r − z) flipped by the label.
    sign = torch.where(labels, 1.0, -1.0).to(logratios.dtype)
    weights = torch.where(labels, desirable_weight, undesirable_weight).to(logratios.dtype)
    losses = weights * (1.0 - torch.sigmoid(beta * sign * (logratios - z)))
    return losses, beta * logratios.detach()
