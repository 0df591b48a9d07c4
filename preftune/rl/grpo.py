"""The GRPO family's policy losses: importance weights, clipped / CISPO / SAPO surrogates, the KL as a
loss term, and ``loss_type`` choosing surrogate and aggregation (names and defaults of TRL 1.16's
``GRPOConfig``).

Token-level tensors are (B, T): ``logprobs`` log π_θ(y_t|x, y_<t) of the sampled tokens (with gradient),
``old_logprobs`` the same under the policy that sampled the batch (π_old, detached here),
``ref_logprobs`` under π_ref, and a boolean ``mask`` (B, T) of the tokens that count. Advantages are
(B,) per completion (GRPO) or (B, T) per token (REINFORCE++); they are detached here. Everything is
zeroed off the mask with ``torch.where`` *before* any exp, so padding garbage (−inf log-probs) reaches
neither the loss nor its gradient.

    ℓ_t = surrogate_t + β · kl_t        per token
    L   = aggregation(ℓ, mask)          (:mod:`preftune.rl.aggregation`), one per loss_type

The GRPO objective (Shao et al. 2024, "DeepSeekMath", eq. 3) is the PPO clipped surrogate per token with
group-relative advantages (:func:`preftune.rl.advantages.group_advantages`), a per-token KL term and a
per-sequence mean; its successors change one piece each (see :data:`LOSS_TYPES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from preftune.rl.aggregation import AGGREGATIONS
from preftune.rl.kl import kl_penalty
from preftune.rl.masked import as_bool_mask

IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


def _zero_off(x: Tensor, m: Tensor) -> Tensor:
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))


def importance_log_weights(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """log of the importance weight of each token (TRL's ``importance_sampling_level``):

        "token"     log ρ_t = log π_θ(y_t|·) − log π_old(y_t|·)                       (B, T)   PPO, GRPO
        "sequence"  log s   = 1/|y| Σ_t log ρ_t,  s = (π_θ(y|x)/π_old(y|x))^{1/|y|}   (B, 1)   GSPO

    GSPO: Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 7; the length-normalised sequence
    ratio keeps the clip range comparable across lengths, and ∇s = s · 1/|y| Σ_t ∇log π_θ(y_t|·).
    ``old_logprobs`` is detached; the log-ratio is 0 off the mask. A row with no token gets log s = 0.
    """
    if level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}, got {level!r}")
    m = as_bool_mask(logprobs, mask)
    if old_logprobs.shape != logprobs.shape:
        raise ValueError(f"old_logprobs shape {tuple(old_logprobs.shape)} != logprobs shape {tuple(logprobs.shape)}")
    log_ratio = _zero_off(logprobs - old_logprobs.detach(), m)
    if level == "token":
        return log_ratio
    return (log_ratio.sum(-1) / m.sum(-1).clamp_min(1).to(log_ratio.dtype)).unsqueeze(-1)


def clipped_surrogate(log_weights: Tensor, advantages: Tensor, *, epsilon_low: float, epsilon_high: float,
                      delta: float | None = None) -> Tensor:
    """PPO's clipped surrogate as a per-token loss (Schulman et al. 2017, eq. 7), asymmetric and optionally
    two-sided, with ρ = exp(``log_weights``):

        ℓ = −min( min(ρ, δ) · A,  clip(ρ, 1 − ε_low, 1 + ε_high) · A )

    ε_high > ε_low is DAPO's clip-higher (Yu et al. 2025, §3.1: it lets low-probability tokens with
    A > 0 grow; DAPO uses 0.2 / 0.28). δ (None = off) caps the unclipped ratio too, which only bites for
    A < 0, where the pessimistic min otherwise lets ρA grow without bound (INTELLECT-2, Prime
    Intellect 2025, §3.3; δ > 1 + ε_high). ``log_weights`` (B, T) or (B, 1), ``advantages`` broadcastable
    to it; returns their broadcast shape.
    """
    ratio = torch.exp(log_weights)
    clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high)
    if delta is not None:
        ratio = ratio.clamp(max=delta)
    adv = advantages.detach()
    return -torch.minimum(ratio * adv, clipped * adv)


def cispo_surrogate(logprobs: Tensor, log_weights: Tensor, advantages: Tensor, *, epsilon_high: float) -> Tensor:
    """CISPO (MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention",
    eq. 4): REINFORCE with a clipped, stop-gradient importance weight,

        ℓ_t = −sg( min(ρ_t, ε_max) ) · A · log π_θ(y_t|·)

    so every token keeps a gradient (PPO's clip zeroes it outside the band), only its weight is capped.
    As in TRL 1.16, ε_max = ``epsilon_high`` is the absolute cap (ScaleRL's ε_max, recommended 5.0; the
    paper writes 1 + ε_high^IS) and there is no lower bound (the paper sets ε_low^IS large). Note that
    TRL's default ``epsilon_high`` = ``epsilon`` = 0.2 then caps even an on-policy ρ = 1 at 0.2.
    ``logprobs`` (B, T), ``log_weights`` (B, T) or (B, 1); returns (B, T).
    """
    weight = torch.exp(log_weights).clamp(max=epsilon_high).detach()
    return -weight * advantages.detach() * logprobs


def sapo_surrogate(log_weights: Tensor, advantages: Tensor, *, temperature_pos: float = 1.0,
                   temperature_neg: float = 1.05) -> Tensor:
    """SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization"): a smooth gate instead of the clip,

        ℓ = −(4/τ) σ(τ (ρ − 1)) · A,     τ = τ_pos if A > 0 else τ_neg

    whose gradient at ρ = 1 is exactly −A∇ρ (σ'(0) = 1/4) and decays smoothly as ρ leaves 1.
    """
    adv = advantages.detach()
    tau = torch.where(adv > 0, torch.as_tensor(temperature_pos, dtype=adv.dtype, device=adv.device),
                      torch.as_tensor(temperature_neg, dtype=adv.dtype, device=adv.device))
    return -torch.sigmoid(tau * (torch.exp(log_weights) - 1.0)) * 4.0 / tau * adv


def kl_loss_term(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, *, estimator: str = "k3",
                 log_weights: Tensor | None = None) -> Tensor:
    """The KL to π_ref as a per-token loss term, kl_t (:func:`preftune.rl.kl.kl_penalty`; DeepSeekMath's
    GRPO uses k3, eq. 4), optionally times the importance weight ρ = exp(``log_weights``) (TRL's
    ``use_bias_correction_kl``, DeepSeek-AI 2025, "DeepSeek-V3.2", eq. 8).

    The estimator decides what the *gradient* optimises, on samples from π_θ (derivations in
    docs/theory): ∇k1 has expectation 0 (no regularisation at all); ∇k2 and ∇(ρ·k3) have expectation
    ∇KL(π_θ‖π_ref) of each token's conditional; ∇k3 alone has expectation ∇KL(π_ref‖π_θ), the *forward*
    KL. None of them is the gradient of the sequence-level KL the objective of RLHF has (that one is
    k1 in the reward, :func:`preftune.rl.advantages.kl_penalised_scores`). Returns (B, T), 0 off the mask.
    """
    m = as_bool_mask(logprobs, mask)
    kl = kl_penalty(_zero_off(logprobs, m), _zero_off(ref_logprobs.detach(), m), estimator)
    if log_weights is not None:
        kl = kl * torch.exp(log_weights)
    return _zero_off(kl, m)


def off_policy_sequence_mask(advantages: Tensor, logprobs: Tensor, sampling_logprobs: Tensor, mask: Tensor,
                             threshold: float) -> Tensor:
    """DeepSeek-V3.2's off-policy sequence masking (DeepSeek-AI 2025, eq. 9; TRL's
    ``off_policy_mask_threshold``): drop a completion when A < 0 *and* its mean per-token
    log π_sampling − log π_θ exceeds δ = ``threshold`` (a negative sample the policy has already moved
    far from). ``advantages`` (B,), (B, 1) or (B, T); returns a (B, 1) (or (B, T)) float keep-mask, detached."""
    m = as_bool_mask(logprobs, mask)
    diff = _zero_off(torch.nan_to_num(sampling_logprobs.detach() - logprobs.detach(), nan=0.0), m)
    mean_kl = diff.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1).to(diff.dtype)
    adv = advantages.detach().reshape(-1, 1) if advantages.dim() == 1 else advantages.detach()
    return ((adv >= 0) | (mean_kl <= threshold)).to(logprobs.dtype)


@dataclass(frozen=True)
class LossType:
    """What a ``loss_type`` name means: a per-token surrogate and an aggregation."""

    surrogate: str  # "clip" | "cispo" | "sapo"
    aggregation: str  # a key of preftune.rl.aggregation.AGGREGATIONS


LOSS_TYPES: dict[str, LossType] = {
    "grpo": LossType("clip", "sequence_mean"),  # DeepSeekMath (Shao et al. 2024)
    "bnpo": LossType("clip", "batch_token_mean"),
    "dr_grpo": LossType("clip", "constant"),  # Liu et al. 2025
    "dapo": LossType("clip", "token_mean"),  # Yu et al. 2025; TRL's default
    "cispo": LossType("cispo", "token_mean"),  # MiniMax-M1
    "sapo": LossType("sapo", "sequence_mean"),  # Gao et al. 2025
    "luspo": LossType("clip", "sequence_sum"),  # length-unbiased GSPO
}


@dataclass(frozen=True)
class PolicyLoss:
    """``total`` and ``units`` (the step's loss is Σ total / Σ units over every micro-batch and rank,
    :mod:`preftune.rl.aggregation`), and detached stats: sums over masked tokens plus ``tokens``."""

    total: Tensor
    units: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> Tensor:
        """This micro-batch alone: total / units (0 when it has no units)."""
        return self.total / self.units.clamp_min(1)


def grpo_loss(logprobs: Tensor, advantages: Tensor, mask: Tensor, *, old_logprobs: Tensor | None = None,
              ref_logprobs: Tensor | None = None, loss_type: str = "dapo", beta: float = 0.0,
              epsilon: float = 0.2, epsilon_high: float | None = None, delta: float | None = None,
              importance_sampling_level: str = "token", kl_estimator: str = "k3",
              use_bias_correction_kl: bool = True, max_completion_length: int | None = None,
              sapo_temperature_pos: float = 1.0, sapo_temperature_neg: float = 1.05,
              importance_sampling_ratio: Tensor | None = None, sampling_logprobs: Tensor | None = None,
              off_policy_mask_threshold: float | None = None) -> PolicyLoss:
    """The policy loss of every GRPO-family ``loss_type`` (:data:`LOSS_TYPES`), TRL 1.16's names and defaults.

        log w = importance_log_weights(logprobs, old_logprobs, importance_sampling_level)
        ℓ_t   = surrogate(log w, A)  [× off-policy keep-mask] [× sampler importance ratio] + β · kl_t
        kl_t  = kl_loss_term(logprobs, ref_logprobs, kl_estimator) [× exp(log w) if use_bias_correction_kl]
        (total, units) = aggregation(ℓ, mask)

    ``old_logprobs`` None means on-policy (π_old = π_θ detached: ρ = 1 with ∇ρ = ∇log π_θ), as TRL when
    a generation batch is used once. ``epsilon_high`` None means ``epsilon``. ``beta`` > 0 needs
    ``ref_logprobs``; ``max_completion_length`` is dr_grpo's constant. ``importance_sampling_ratio``
    ((B, T) or (B, 1)) multiplies the per-token surrogate: the truncated/masked correction for a sampler
    (e.g. vLLM) whose log-probs differ from the trainer's. ``off_policy_mask_threshold`` needs
    ``sampling_logprobs`` (else ``old_logprobs`` stand in, as in TRL). Returns a :class:`PolicyLoss`.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; known: {', '.join(LOSS_TYPES)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta != 0 and ref_logprobs is None:
        raise ValueError("beta != 0 puts the KL to π_ref in the loss: ref_logprobs is required")
    kind = LOSS_TYPES[loss_type]
    m = as_bool_mask(logprobs, mask)
    lp = _zero_off(logprobs, m)
    old = lp.detach() if old_logprobs is None else _zero_off(old_logprobs.detach(), m)
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    if adv.shape[0] != lp.shape[0] or adv.shape[1] not in (1, lp.shape[1]):
        raise ValueError(f"advantages shape {tuple(advantages.shape)} does not fit logprobs {tuple(lp.shape)}")
    if adv.shape[1] != 1:
        adv = _zero_off(adv, m)
    eps_low, eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high

    log_w = importance_log_weights(lp, old, m, importance_sampling_level)
    if kind.surrogate == "clip":
        per_token = clipped_surrogate(log_w, adv, epsilon_low=eps_low, epsilon_high=eps_high, delta=delta)
    elif kind.surrogate == "cispo":
        per_token = cispo_surrogate(lp, log_w, adv, epsilon_high=eps_high)
    else:
        per_token = sapo_surrogate(log_w, adv, temperature_pos=sapo_temperature_pos,
                                   temperature_neg=sapo_temperature_neg)
    if off_policy_mask_threshold is not None:
        sampling = old if sampling_logprobs is None else sampling_logprobs
        per_token = per_token * off_policy_sequence_mask(adv, lp, sampling, m, off_policy_mask_threshold)
    if importance_sampling_ratio is not None:
        per_token = per_token * importance_sampling_ratio.detach()
    kl = None
    if beta != 0:
        kl = kl_loss_term(lp, ref_logprobs, m, estimator=kl_estimator,
                          log_weights=log_w if use_bias_correction_kl else None)
        per_token = per_token + beta * kl
    total, units = AGGREGATIONS[kind.aggregation](per_token, m, max_completion_length=max_completion_length)
    return PolicyLoss(total, units, _stats(kind, log_w, adv, m, kl, eps_low, eps_high))


def _stats(kind: LossType, log_w: Tensor, adv: Tensor, m: Tensor, kl: Tensor | None, eps_low: float,
           eps_high: float) -> dict[str, Tensor]:
    """Token sums (sequence-level weights count once per token) and the token count; divide to log."""
    with torch.no_grad():
        ratio = torch.exp(log_w).expand(m.shape)
        a = adv.expand(m.shape)

        def tsum(flag: Tensor) -> Tensor:
            return _zero_off(flag.to(log_w.dtype), m).sum()
        stats = {"tokens": m.sum().to(log_w.dtype)}
        if kind.surrogate == "clip":
            low, high = (ratio < 1 - eps_low) & (a < 0), (ratio > 1 + eps_high) & (a > 0)
            stats.update({"clip_ratio/low": tsum(low), "clip_ratio/high": tsum(high),
                          "clip_ratio/region": tsum(low | high)})
        elif kind.surrogate == "cispo":
            stats["cispo_clip_ratio"] = tsum((ratio > eps_high) & (a > 0))
        if kl is not None:
            stats["kl"] = _zero_off(kl.detach().expand(m.shape), m).sum()
    return stats
