"""What the pairwise losses read, reshaped from per-token quantities: LD-DPO and WPO (TRL's ``ld_alpha`` and
``use_weighting``).

Both are pure functions of tensors, applied by the pairwise objective around any registered pairwise
loss: LD-DPO changes the log-probs a loss sees, WPO multiplies each pair's loss by a weight. They read
what a per-sequence sum cannot give: LD-DPO the per-token log-probs, WPO a per-token statistic of the
whole next-token distribution (log Σ_v p_v², computed inside the chunked output layer, so no
full-vocabulary logits are kept). Checked against TRL 1.16's own code in tests/losses/test_trl_parity.py.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ld_logps(
    chosen_tokens: Tensor,
    rejected_tokens: Tensor,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    *,
    ld_alpha: float,
) -> tuple[Tensor, Tensor]:
    """LD-DPO's length-desensitised sequence log-probs (Liu et al. 2024, "Length Desensitization in Direct
    Preference Optimization"): tokens past the shorter completion's length count with weight α.

        l_p = min(|y_w|, |y_l|)                              (the pair's shared length)
        log π̃(y|x) = Σ_{t ≤ l_p} log π(y_t|x, y_<t) + α Σ_{t > l_p} log π(y_t|x, y_<t)

    t counts completion tokens only. The excess of the longer answer is what DPO's margin over-rewards
    (a verbosity bias); α = ``ld_alpha`` ∈ [0, 1]: 1 is plain DPO, 0 drops the excess. Apply it to π_θ and
    π_ref alike (TRL does, in training and when it precomputes the reference), then use the result as
    the sequence log-probs of any pairwise loss.

    ``*_tokens``: per-token log-probs [B, T], any value where the mask is False; ``*_mask``: bool [B, T],
    True at completion positions (the two may have different T). Returns (chosen, rejected) [B], summed in
    float64 and returned in the tokens' dtype; differentiable in the tokens.
    """
    shared = torch.minimum(chosen_mask.sum(1), rejected_mask.sum(1)).unsqueeze(1)

    def weighted(tokens: Tensor, mask: Tensor) -> Tensor:
        position = mask.long().cumsum(1)            # 1 at the first completion token
        weight = torch.where(position <= shared, 1.0, ld_alpha).to(torch.float64) * mask
        return (tokens.to(torch.float64) * weight).sum(1).to(tokens.dtype)

    return weighted(chosen_tokens, chosen_mask), weighted(rejected_tokens, rejected_mask)


def wpo_weights(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    chosen_log_sum_sq: Tensor,
    rejected_log_sum_sq: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
) -> Tensor:
    """WPO's per-pair weight (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference
    Optimization", the length-normalised weight with the alignment adjustment, as TRL 1.16 computes it).

        w(y) = exp( (1/|y|) Σ_t [ log π_θ(y_t|x, y_<t) − log Σ_v π_θ(v|x, y_<t)² ] )
        weight of the pair = w(y_w) · w(y_l)

    Each pair's loss is multiplied by its weight, so pairs the current policy would itself be likely to
    produce count more: off-policy data is re-weighted towards on-policy. The divisor Σ_v p_v² = E_{v∼π}[p_v]
    is the probability of a typical token the policy itself samples, so a token as likely as that gets
    ratio 1 whether the distribution is sharp or flat: the weight does not merely track entropy.

    ``*_logps``: Σ_t log π_θ(y_t|…) over the completion (the plain sums, not LD-weighted), ``*_log_sum_sq``:
    Σ_t log Σ_v π_θ(v|…)² over the same positions, ``*_lengths``: completion token counts (values below 1
    count as 1). All (B,); returns (B,), detached: the weight is a constant factor, never differentiated.
    """
    def weight(logps: Tensor, log_sum_sq: Tensor, lengths: Tensor) -> Tensor:
        return torch.exp((logps.detach() - log_sum_sq.detach()) / lengths.to(logps.dtype).clamp(min=1.0))

    return weight(chosen_logps, chosen_log_sum_sq, chosen_lengths) * weight(
        rejected_logps, rejected_log_sum_sq, rejected_lengths)
