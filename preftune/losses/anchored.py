"""Anchored pairwise losses from TRL's DPO family: each completion's own implicit reward matters,
not only the margin between the two.

Same signature and conventions as :mod:`preftune.losses.preference`: inputs and outputs (B,), summed
completion log-probs, r_w = β log π_θ(y_w|x)/π_ref(y_w|x), r_l likewise, rewards returned detached.
DPO only sees r_w − r_l, so it can lower both likelihoods as long as y_l falls faster; these losses pin
each reward against an absolute anchor (0, a running mean, ±1/(2β)). For that reason they take no
f-divergence option: the β log Z(x) term of the f-DPO reparameterisation cancels only in a difference
(TRL refuses the combination as well). Formulas and names are TRL's ``DPOConfig.loss_type`` values,
checked against TRL 1.16 in tests/losses/test_trl_parity.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from preftune.losses.preference import LossOutput, implicit_rewards


def _rewards_with_grad(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    """(r_w, r_l) still attached to the graph: here the loss is a function of each reward."""
    return beta * (policy_chosen_logps - ref_chosen_logps), beta * (policy_rejected_logps - ref_rejected_logps)


def nca_pair(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """NCA for pairs (Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit
    Rewards", the pairwise NCA loss as in TRL).

        L = −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l)

    Each reward is classified against the anchor 0 (is it better than a sample of π_ref?) instead of
    against the other completion, so the chosen likelihood is driven up, not merely above y_l's.
    Shapes: (B,) → (B,).
    """
    r_w, r_l = _rewards_with_grad(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                  beta)
    losses = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def bco_pair(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    bco_delta: float = 0.0,
) -> LossOutput:
    """BCO on pairs (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model
    Alignment"): a binary classifier with logit r − δ calls y_w desirable and y_l undesirable.

        L = −log σ(r_w − δ) − log σ(−(r_l − δ))

    δ = ``bco_delta`` is the paper's reward shift, a running mean of the rewards (chosen and rejected,
    detached) over training. A pure function cannot keep that state: the caller tracks the mean and
    passes it (TRL ≤ 0.x kept it inside the trainer; TRL 1.x dropped it, i.e. δ = 0, the default).
    Shapes: (B,) → (B,).
    """
    r_w, r_l = _rewards_with_grad(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                  beta)
    losses = -F.logsigmoid(r_w - bco_delta) - F.logsigmoid(-(r_l - bco_delta))
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def sppo_hard(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """SPPO with hard win probabilities (Wu et al. 2024, "Self-Play Preference Optimization for Language
    Model Alignment", eq. 4.7 with P(y_w ≻ π) = 1 and P(y_l ≻ π) = 0, as in TRL).

        L = (log π_θ/π_ref(y_w) − 1/(2β))² + (log π_θ/π_ref(y_l) + 1/(2β))²

    The paper regresses each log-ratio to η(P − ½) (η its step size); β = 1/η, so the targets are
    ±1/(2β). Each completion is pinned separately, where IPO pins only their difference.
    Shapes: (B,) → (B,).
    """
    target = 0.5 / beta
    losses = ((policy_chosen_logps - ref_chosen_logps) - target) ** 2 \
        + ((policy_rejected_logps - ref_rejected_logps) + target) ** 2
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def apo_zero(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions: Addressing Underspecification in Alignment", eq. 7).

        L = (1 − σ(r_w)) + σ(r_l)

    For data whose chosen answers beat the model's own: push r_w up and r_l down, each from the anchor
    0 (= the reference's likelihood). Shapes: (B,) → (B,).
    """
    r_w, r_l = _rewards_with_grad(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                  beta)
    losses = (1.0 - torch.sigmoid(r_w)) + torch.sigmoid(r_l)
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def apo_down(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> LossOutput:
    """APO-down (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive
    Revisions: Addressing Underspecification in Alignment", eq. 8).

        L = σ(r_w) + (1 − σ(r_w − r_l))

    For data whose chosen answers are worse than the model's own: lower r_w, and lower r_l further so
    the pair stays ranked. Shapes: (B,) → (B,).
    """
    r_w, r_l = _rewards_with_grad(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                                  beta)
    losses = torch.sigmoid(r_w) + (1.0 - torch.sigmoid(r_w - r_l))
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))
