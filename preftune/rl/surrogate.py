"""Losses of the RL stage of RLHF (docs/maths.md §rl): PPO's clipped surrogate and value loss, the sequence-level
policy gradient of REINFORCE / RLOO.

Token-level tensors are (B, T) log-probs of the sampled tokens with a boolean ``mask`` (B, T), True on
completion tokens; token means are over masked tokens of the whole batch (:func:`masked_mean`).
Quantities fixed during an update (old log-probs, old values, advantages, returns) are detached here,
so only the current policy / value head receive gradients. Stats are detached 0-d tensors: reading
them (``.item()``) is the caller's choice, since each read is a host sync.
"""

from __future__ import annotations

import torch
from torch import Tensor

from preftune.rl.kl import kl_penalty
from preftune.rl.masked import as_bool_mask, masked_mean


def _same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes differ: {shapes}")


def ppo_policy_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                    clip_range: float) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7),
    as a loss, per token with ρ_t = π_θ(y_t|·) / π_old(y_t|·) and ε = ``clip_range``:

        ℓ_t = max( −A_t ρ_t,  −A_t clip(ρ_t, 1−ε, 1+ε) )        (= −min(ρA, clip(ρ)A), docs/maths.md §rl.ppo)
        L   = masked mean of ℓ_t over completion tokens

    The max is pessimistic: moving ρ past the band in the direction A favours earns nothing (zero
    gradient there), moving it the other way is charged in full. At ρ = 1 the value is −mean(A) and the
    gradient −mean(A ∇log π), the vanilla policy gradient.

    Stats: ``clipfrac`` = fraction of masked tokens where the clipped term is strictly larger (its
    gradient is 0 there); ``approx_kl`` = masked mean of k3 (:func:`kl_penalty`) with π_old as the
    sampling policy, an unbiased estimate of KL(π_old ‖ π_θ); ``ratio_mean`` = masked mean of ρ.
    Shapes: all (B, T); returns (0-d loss, stats of 0-d detached tensors).
    """
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    _same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    m = as_bool_mask(logprobs, mask)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    # Log-ratio forced to 0 off the mask *before* exp: garbage there (e.g. −inf log-probs of padding)
    # would give inf·0 = NaN gradients through the masked mean's where otherwise.
    log_ratio = torch.where(m, logprobs - old_logprobs.detach(), zero)
    adv = torch.where(m, advantages.detach(), zero)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(logprobs.dtype), m),
            # k3 with π_old as the sampling policy and π_θ in the reference's place: r = π_θ/π_old = ρ.
            # Only the (sanitised) log-ratio matters, so pass it against zeros.
            "approx_kl": masked_mean(kl_penalty(torch.zeros_like(log_ratio), log_ratio, "k3"), m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, stats


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
               clip_range_value: float | None) -> tuple[Tensor, dict[str, Tensor]]:
    """Squared-error value loss, optionally clipped around the rollout's values:

        unclipped   ½ (V − R)²
        clipped     ½ max( (V − R)², (V_old + clip(V − V_old, −ε, ε) − R)² ),   ε = ``clip_range_value``

    The clipped form is not in the PPO paper; it comes from OpenAI's reference PPO implementation
    (discussed in Engstrom et al. 2020, "Implementation Matters in Deep Policy Gradients: A Case Study
    on PPO and TRPO"). Like the policy clip it is pessimistic: it can only raise the loss, and removes
    the gradient when V has already moved more than ε past V_old toward R. ``None`` disables it.
    Masked mean over completion tokens. Stats: ``vf_clipfrac`` = fraction of masked tokens where the
    clipped term is strictly larger (0 when not clipping). Shapes: all (B, T).
    """
    if clip_range_value is not None and not clip_range_value > 0:
        raise ValueError(f"clip_range_value must be > 0 or None, got {clip_range_value}")
    _same_shape(values=values, old_values=old_values, returns=returns)
    m = as_bool_mask(values, mask)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    v = torch.where(m, values, zero)
    v_old = torch.where(m, old_values.detach(), zero)
    target = torch.where(m, returns.detach(), zero)
    unclipped = (v - target) ** 2
    if clip_range_value is None:
        per_token = unclipped
        clip_active = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        v_clipped = v_old + (v - v_old).clamp(-clip_range_value, clip_range_value)
        clipped = (v_clipped - target) ** 2
        per_token = torch.maximum(unclipped, clipped)
        clip_active = clipped > unclipped
    loss = 0.5 * masked_mean(per_token, m)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean(clip_active.to(values.dtype), m)}
    return loss, stats


def sequence_policy_gradient_loss(seq_logprobs: Tensor, advantages: Tensor) -> Tensor:
    """REINFORCE / RLOO loss on whole completions (Williams 1992; Ahmadian et al. 2024, who treat the
    completion as one action):

        L = −mean_i( A_i · log π_θ(y_i|x_i) ),   A detached

    so ∇L = −mean_i A_i ∇log π_θ(y_i|x_i), the score-function estimate of −∇E[r] when A is the score
    minus a baseline independent of sample i (:func:`preftune.rl.advantages.rloo_advantages`). The
    KL penalty (docs/maths.md §rl.reward) belongs in the scores (r − β log π/π_ref of the completion).
    ``seq_logprobs`` (N,) are sums of token log-probs (docs/maths.md §notation); ``advantages`` (N,). Returns a 0-d loss.
    """
    if seq_logprobs.dim() != 1:
        raise ValueError(f"seq_logprobs must be 1-D (one entry per completion), got {tuple(seq_logprobs.shape)}")
    _same_shape(seq_logprobs=seq_logprobs, advantages=advantages)
    return -(advantages.detach() * seq_logprobs).mean()

