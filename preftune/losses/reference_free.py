"""Reference-free losses: SimPO and ORPO (beyond TRL's DPOTrainer: TRL has them in its CPO/ORPO trainers,
with other hyperparameter names), and TRL's ``sft`` term.

Same signature as :mod:`preftune.losses.preference`, so they mix with the DPO family in one run, but
the loss never reads ``ref_chosen_logps`` / ``ref_rejected_logps``: the reference enters only the
reported rewards, which stay the DPO implicit rewards β log π_θ/π_ref (detached) so that metrics are
comparable across losses. A caller may pass zeros as reference log-probs to skip the reference model;
the rewards then report β log π_θ.

All three work on per-token means, so they take the completion lengths: keyword tensors
``chosen_lengths`` / ``rejected_lengths`` (B,), token counts; values below 1 count as 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from preftune.losses.preference import LossOutput, implicit_rewards, per_token_mean


def simpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    simpo_gamma: float = 0.5,
) -> LossOutput:
    """SimPO (Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", eq. 6).

        L = −log σ( β/|y_w| · log π_θ(y_w|x) − β/|y_l| · log π_θ(y_l|x) − γ )

    The implicit reward is the length-normalised log-likelihood itself (no π_ref), which is also what
    generation ranks by; γ = ``simpo_gamma`` > 0 is a target reward margin (0.5 is TRL's CPOConfig
    default; the paper tunes γ/β). γ = 0 with equal lengths is DPO on mean log-probs with π_ref ≡ 1.
    Shapes: (B,) → (B,).
    """
    margin = per_token_mean(policy_chosen_logps, chosen_lengths) - per_token_mean(policy_rejected_logps, rejected_lengths)
    losses = -F.logsigmoid(beta * margin - simpo_gamma)
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def _log_odds(mean_logps: Tensor) -> Tensor:
    """log(P / (1 − P)) for P = exp(mean log-prob) < 1.

    log(1 − P) is computed as log(−expm1(m)): 1 − exp(m) cancels catastrophically when P is near 1.
    """
    return mean_logps - torch.log(-torch.expm1(mean_logps))


def orpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    orpo_alpha: float = 0.1,
) -> LossOutput:
    """ORPO (Hong, Lee & Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference
    Model", eqs. 6-7): SFT on the chosen completion plus an odds-ratio penalty, in one stage.

        m(y) = log π_θ(y|x) / |y|                       (per-token mean log-prob; P(y|x) = exp m(y))
        odds(y) = P / (1 − P)
        L = −m(y_w) − λ log σ( log odds(y_w) − log odds(y_l) )

    λ = ``orpo_alpha`` (the paper's λ, 0.1 in its experiments; TRL's ORPOConfig calls it ``beta``).
    β is not in the loss: it scales only the reported rewards. Every m(y) must be < 0 (P < 1), as any
    real completion's is. Shapes: (B,) → (B,).
    """
    m_w = per_token_mean(policy_chosen_logps, chosen_lengths)
    m_l = per_token_mean(policy_rejected_logps, rejected_lengths)
    losses = -m_w - orpo_alpha * F.logsigmoid(_log_odds(m_w) - _log_odds(m_l))
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def sft(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
) -> LossOutput:
    """Negative log-likelihood of the chosen completions, TRL 1.16's ``loss_type="sft"``: the mean over every
    chosen completion token of the batch (not a mean of per-sequence means), the same number in each entry.

        L_i = −Σ_j log π_θ(y_w,j|x_j) / Σ_j |y_w,j|      for every pair i of the batch

    Alone it is supervised fine-tuning on the preferred answers; summed with a preference loss
    (``loss_type=[sigmoid, sft]``, ``loss_weights=[1, α]``, or ``rpo_alpha=α``) it is RPO (Pang et al.
    2024, "Iterative Reasoning Preference Optimization", the DPO + NLL loss; here with TRL's token-level
    normalisation, where the paper divides each sequence's NLL by its own length), which keeps the chosen
    likelihood from falling while the margin grows. Entry i depends on the whole
    batch (as AOT's do): only the batch mean is meaningful. ``policy_chosen_logps`` must be the plain
    sums (LD-DPO's weighting does not apply; the pairwise objective passes them). β and the reference
    enter only the reported rewards. Shapes: (B,) → (B,).
    """
    tokens = chosen_lengths.to(policy_chosen_logps.dtype).sum().clamp(min=1.0)
    nll = -policy_chosen_logps.sum() / tokens
    losses = nll.expand(policy_chosen_logps.shape[0])
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))
