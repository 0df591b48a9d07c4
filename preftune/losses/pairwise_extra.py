"""Margin losses from TRL's DPO family: functions of the log-ratio margin h (or its f-DPO form).

Same signature and conventions as :mod:`preftune.losses.preference` (inputs and outputs (B,), summed
completion log-probs, rewards β log π/π_ref detached). Each loss here depends on the pair only through

    h = f'(π_θ(y_w|x)/π_ref(y_w|x)) − f'(π_θ(y_l|x)/π_ref(y_l|x))      (f'(u) = log u by default)

so, as in TRL, each takes ``f_divergence_type`` / ``f_alpha_divergence_coef``
(see :func:`preftune.losses.preference.f_divergence_scores`). The formulas and hyperparameter names
are TRL's (``DPOConfig.loss_type``), checked against TRL 1.16 in tests/losses/test_trl_parity.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from preftune.losses.preference import LossOutput, f_margin, f_scores, implicit_rewards, per_token_mean


def hinge(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
) -> LossOutput:
    """SLiC hinge loss on the DPO margin (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration
    with Human Feedback", calibration loss, with the reference log-ratio in place of raw log-probs, as in TRL).

        L = max(0, 1 − β h)

    1/β is the margin the pair must clear; past it the pair contributes neither loss nor gradient.
    Shapes: (B,) → (B,).
    """
    h = f_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                  f_divergence_type, f_alpha_divergence_coef)
    losses = torch.relu(1.0 - beta * h)
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def robust(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
) -> LossOutput:
    """Robust DPO (Chowdhury, Kini & Natarajan 2024, "Provably Robust DPO: Aligning Language Models
    with Noisy Feedback"): an unbiased estimate of the clean DPO loss when each label is flipped
    with known probability ε = ``label_smoothing`` ∈ [0, 0.5).

        L = [ −(1 − ε) log σ(β h) + ε log σ(−β h) ] / (1 − 2ε)

    Unlike cDPO's smoothing (:func:`~preftune.losses.preference.sigmoid`) the flipped term enters with
    a minus sign, which is what removes the noise bias in expectation. ε = 0 is plain DPO.
    Shapes: (B,) → (B,).
    """
    if not 0.0 <= label_smoothing < 0.5:
        # 1 − 2ε vanishes at 0.5 and flips sign beyond: the estimator is undefined there.
        raise ValueError(f"robust needs label_smoothing in [0, 0.5), got {label_smoothing}")
    h = f_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                  f_divergence_type, f_alpha_divergence_coef)
    clean = -(1.0 - label_smoothing) * F.logsigmoid(beta * h)
    flipped = -label_smoothing * F.logsigmoid(-beta * h)
    losses = (clean - flipped) / (1.0 - 2.0 * label_smoothing)
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def exo_pair(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
) -> LossOutput:
    """EXO for pairs (Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model
    Alignment", eq. 16 with K = 2): the reverse KL from the policy's pair distribution
    q = (σ(βh), σ(−βh)) to the label distribution p = (1 − ε, ε), ε = ``label_smoothing``.

        L = q_w (log q_w − log(1 − ε)) + q_l (log q_l − log ε)

    Minimising KL(q ‖ p) is mode-seeking, where DPO's cross-entropy is mean-seeking. ε must be > 0
    (log ε is −∞ at 0; TRL rejects it too; the EXO paper uses 1e-3). Shapes: (B,) → (B,).
    """
    if not 0.0 < label_smoothing < 1.0:
        raise ValueError(f"exo_pair needs label_smoothing in (0, 1) (log ε and log(1 − ε) must be finite), "
                         f"got {label_smoothing}")
    h = f_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                  f_divergence_type, f_alpha_divergence_coef)
    # log σ(±βh) computed directly rather than log(q): exact where q underflows.
    log_qw, log_ql = F.logsigmoid(beta * h), F.logsigmoid(-beta * h)
    log_pw = torch.log1p(torch.tensor(-label_smoothing, dtype=h.dtype, device=h.device))
    log_pl = torch.log(torch.tensor(label_smoothing, dtype=h.dtype, device=h.device))
    losses = log_qw.exp() * (log_qw - log_pw) + log_ql.exp() * (log_ql - log_pl)
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def discopop(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    discopop_tau: float = 0.05,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
) -> LossOutput:
    """DiscoPOP, the log-ratio modulated loss found by LLM-driven search (Lu et al. 2024, "Discovering
    Preference Optimization Algorithms with and for Large Language Models", eq. 5).

        ρ = β h,   m = σ(ρ / τ)
        L = (1 − m) · (−log σ(ρ)) + m · exp(−ρ)

    τ = ``discopop_tau`` (paper and TRL default 0.05) sets how sharply the blend switches from the
    logistic (DPO) loss for badly ranked pairs to the exponential loss for well ranked ones.
    Shapes: (B,) → (B,).
    """
    rho = beta * f_margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                           f_divergence_type, f_alpha_divergence_coef)
    m = torch.sigmoid(rho / discopop_tau)
    losses = (1.0 - m) * -F.logsigmoid(rho) + m * torch.exp(-rho)
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))


def sigmoid_norm(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    f_divergence_type: str = "reverse_kl",
    f_alpha_divergence_coef: float = 0.5,
) -> LossOutput:
    """Length-normalised DPO, TRL's ``loss_type="sigmoid_norm"``: DPO (Rafailov et al. 2023, eq. 7)
    on per-token average log-ratios, so a long completion cannot win the margin by length alone.
    (No paper of its own; the length bias it removes is discussed in Meng et al. 2024, SimPO.)

        h_norm = f'(u_w) / |y_w| − f'(u_l) / |y_l|,   L = −log σ(β h_norm)

    ``chosen_lengths`` / ``rejected_lengths``: completion token counts (B,), values below 1 count as 1.
    The reported rewards are the unnormalised β log π/π_ref, as for every loss. Shapes: (B,) → (B,).
    """
    chosen, rejected = f_scores(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                               f_divergence_type, f_alpha_divergence_coef)
    h_norm = per_token_mean(chosen, chosen_lengths) - per_token_mean(rejected, rejected_lengths)
    losses = -F.logsigmoid(beta * h_norm)
    return (losses, *implicit_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta))
