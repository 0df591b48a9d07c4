"""AOT: distributional preference alignment by optimal transport (TRL's "aot" and "aot_unpaired").

Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport". Instead of
asking each pair to be ranked right, AOT asks the distribution of chosen rewards to dominate that of
rejected rewards (first-order stochastic dominance). In one dimension the optimal transport plan
between two empirical distributions matches them quantile by quantile, i.e. after sorting each over the
batch, so the i-th loss compares the i-th smallest values.

Consequence for callers: these losses couple the whole batch. Entry i of the returned losses belongs to
the i-th quantile, not to pair i, and only their mean (or sum) is meaningful; with B = 1 they reduce to
per-pair losses. Same signature and conventions as :mod:`preftune.losses.preference` otherwise;
the rewards are per pair, in input order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from preftune.losses.preference import LossOutput, implicit_rewards


def _smoothed_logistic(delta: Tensor, beta: float, label_smoothing: float) -> Tensor:
    """cDPO-style −(1 − ε) log σ(βΔ) − ε log σ(−βΔ), applied per quantile."""
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)


def aot(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """AOT for paired data: the policy's distribution of log π_θ(y_w)/π_θ(y_l) must dominate the
    reference's distribution of log π_ref(y_w)/π_ref(y_l).

        ρ = sort_B(log π_θ(y_w|x) − log π_θ(y_l|x)),   ρ_ref = sort_B(log π_ref(y_w|x) − log π_ref(y_l|x))
        Δ_i = ρ_i − ρ_ref,i,   L_i = −(1 − ε) log σ(β Δ_i) − ε log σ(−β Δ_i)

    ε = ``label_smoothing``. Entry i is the i-th quantile's loss (see module docstring); with B = 1
    this is :func:`~preftune.losses.preference.sigmoid`. Shapes: (B,) → (B,).
    """
    # Sorting the two differences separately (not their difference) is the quantile coupling.
    policy_sorted, _ = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0)
    ref_sorted, _ = torch.sort(ref_chosen_logps - ref_rejected_logps, dim=0)
    losses = _smoothed_logistic(policy_sorted - ref_sorted, beta, label_smoothing)
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def aot_unpaired(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """AOT for unpaired data: the distribution of chosen log-ratios must dominate that of rejected
    log-ratios; chosen and rejected need not come from the same prompt.

        u = sort_B(log π_θ(y_w|x)/π_ref(y_w|x)),   v = sort_B(log π_θ(y_l|x)/π_ref(y_l|x))
        Δ_i = u_i − v_i,   L_i = −(1 − ε) log σ(β Δ_i) − ε log σ(−β Δ_i)

    ε = ``label_smoothing``. Entry i is the i-th quantile's loss (see module docstring); with B = 1
    this is :func:`~preftune.losses.preference.sigmoid`. Shapes: (B,) → (B,).
    """
    chosen_sorted, _ = torch.sort(policy_chosen_logps - ref_chosen_logps, dim=0)
    rejected_sorted, _ = torch.sort(policy_rejected_logps - ref_rejected_logps, dim=0)
    losses = _smoothed_logistic(chosen_sorted - rejected_sorted, beta, label_smoothing)
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))
