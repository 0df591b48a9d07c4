"""Rewards and advantages for the RL stage of RLHF (docs/maths.md §rl): the KL-shaped token rewards of PPO, GAE,
and the sequence-level baselines of REINFORCE / RLOO.

Shapes: token-level tensors are (B, T) with a boolean ``mask`` (B, T), True on completion tokens;
sequence-level ones are (N,). Every output is detached: rewards, advantages and returns are constants
in every policy-gradient loss (and regression targets for the value head), so a caller that forgot to
detach its rollout values would silently backpropagate through the targets.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor

from preftune.rl.masked import as_bool_mask


def token_level_rewards(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token reward of KL-penalised RLHF (Ziegler et al. 2019 §2.2; Ouyang et al. 2022 eq. 2):

        R_t = −β · kl_t                      on every completion token t
        R_t += r(x, y)                       on the completion's last token

    so that Σ_t R_t = r(x, y) − β Σ_t kl_t, the sampled objective of docs/maths.md §objective with a per-token KL
    estimate (:func:`preftune.rl.kl.kl_penalty`). ``scores`` (B,) is the sequence reward r(x, y),
    ``kl`` (B, T), ``mask`` (B, T) bool, β = ``kl_coef``. Rows may have different lengths; a row with
    no completion token has nowhere to put its score and raises ValueError (one host sync). Returns
    (B, T), 0 outside the mask.
    """
    m = as_bool_mask(kl, mask)
    if scores.dim() != 1 or scores.shape[0] != kl.shape[0]:
        raise ValueError(f"scores must have shape ({kl.shape[0]},), got {tuple(scores.shape)}")
    if not bool(m.any(-1).all()):
        empty = (~m.any(-1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} have no completion token to receive the sequence score")
    positions = torch.arange(m.shape[-1], device=m.device)
    # The last True of each row: the largest position among the masked ones.
    last = torch.where(m, positions, -1).amax(-1, keepdim=True)
    zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
    rewards = torch.where(m, -kl_coef * kl, zero)
    rewards = rewards + torch.where(positions == last, scores[:, None].to(kl.dtype), zero)
    return rewards.detach()


def _check_contiguous(m: Tensor) -> None:
    """Each row's True entries must form one run (prompt | completion | padding layouts)."""
    starts = m[:, :1].sum(-1) + (m[:, 1:] & ~m[:, :-1]).sum(-1)
    if bool((starts > 1).any()):
        bad = (starts > 1).nonzero().flatten().tolist()
        raise ValueError(f"rows {bad} have non-contiguous masks: GAE needs one run of completion tokens")


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation"), right to left over each row's completion:

        δ_t = R_t + γ V_{t+1} − V_t
        A_t = δ_t + γλ A_{t+1}          (= Σ_l (γλ)^l δ_{t+l})
        returns_t = A_t + V_t           (the value head's regression target, a TD(λ) return)

    with V and A after a row's last completion token taken as 0 (the episode ends with the EOS token).
    λ = 1 gives the Monte-Carlo return minus V; λ = 0 the one-step TD error.

    ``rewards``, ``values`` (B, T), e.g. from :func:`token_level_rewards` and the value head;
    ``mask`` (B, T) bool. A row's masked positions must be contiguous (one completion; padding and
    prompt on either side): this is checked (one host sync), since a gap would silently treat one
    completion as two episodes. A row with no masked token gives zeros. Returns (advantages, returns),
    both (B, T), 0 outside the mask, detached. Whitening, if wanted, is the caller's
    (:func:`preftune.rl.masked.masked_whiten`).
    """
    m = as_bool_mask(rewards, mask)
    if values.shape != rewards.shape:
        raise ValueError(f"values shape {tuple(values.shape)} != rewards shape {tuple(rewards.shape)}")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must lie in [0, 1], got gamma={gamma}, lam={lam}")
    _check_contiguous(m)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    # Zero the unmasked entries up front: then "the next position is unmasked" reads as V = A = 0 there,
    # which is exactly the end-of-episode bootstrap, with no special case for each row's end.
    r = torch.where(m, rewards.detach(), zero)
    v = torch.where(m, values.detach(), zero)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(r[:, 0])
    columns = []
    # A Python loop over T: the recursion is sequential; T small launches are cheap next to generation.
    for t in reversed(range(r.shape[-1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        adv_t = torch.where(m[:, t], delta + gamma * lam * next_adv, zero)
        columns.append(adv_t)
        next_value, next_adv = v[:, t], adv_t
    advantages = torch.stack(columns[::-1], dim=-1)
    returns = torch.where(m, advantages + v, zero)
    return advantages, returns


def rloo_advantages(scores: Tensor, k: int) -> Tensor:
    """REINFORCE Leave-One-Out advantages (Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline
    for Free!"; for RLHF: Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
    Optimization for Learning from Human Feedback in LLMs"):

        A_i = s_i − 1/(k−1) Σ_{j≠i} s_j    over the k completions of the same prompt
            = k/(k−1) · (s_i − mean_j s_j)

    The baseline excludes s_i, so it is independent of sample i and the gradient stays unbiased; a
    reward shift by any f(x) (same preferences, docs/maths.md §objective.classes) cancels; a group's advantages sum to 0.
    ``scores`` (P·k,): k consecutive entries per prompt. Returns (P·k,), detached.
    """
    try:
        k_int = operator.index(k)  # any integer type (int, numpy ints); floats are a caller bug
    except TypeError:
        k_int = 0
    if k_int < 2:
        raise ValueError(f"RLOO needs k >= 2 completions per prompt (leave-one-out of one is empty), got {k!r}")
    k = k_int
    if scores.dim() != 1 or scores.numel() % k:
        raise ValueError(f"scores must be 1-D with a multiple of k={k} entries, got shape {tuple(scores.shape)}")
    groups = scores.detach().reshape(-1, k)
    others_mean = (groups.sum(-1, keepdim=True) - groups) / (k - 1)
    return (groups - others_mean).reshape(-1)


def batch_mean_baseline(scores: Tensor) -> Tensor:
    """REINFORCE with the batch mean as baseline (Williams 1992, "Simple Statistical
    Gradient-Following Algorithms for Connectionist Reinforcement Learning"):
    A_i = s_i − mean_j s_j. Slightly biased (the mean includes s_i, an O(1/N) effect; RLOO removes
    it). Any shape; returns the same shape, detached.
    """
    scores = scores.detach()
    return scores - scores.mean()


# ----- group-relative and batch-normalised advantages (GRPO family, REINFORCE++) ------------------

SCALE_REWARDS = ("group", "batch", "none")


def _check_groups(rewards: Tensor, num_generations: int) -> int:
    try:
        g = operator.index(num_generations)
    except TypeError:
        g = 0
    if g < 1:
        raise ValueError(f"num_generations must be a positive integer, got {num_generations!r}")
    if rewards.dim() != 1 or rewards.numel() % g:
        raise ValueError(f"rewards must be 1-D with a multiple of num_generations={g} entries, "
                         f"got shape {tuple(rewards.shape)}")
    if bool(torch.isinf(rewards).any()):
        # NaN means "unscorable" (excluded below); ±inf is a reward function bug that would make every
        # advantage of its group (or, with batch scaling, of the batch) NaN or 0 without a word.
        bad = torch.isinf(rewards).nonzero().flatten().tolist()
        raise ValueError(f"rewards at rows {bad} are infinite")
    return g


def _nanstd(x: Tensor, dim: int | None = None) -> Tensor:
    """Sample standard deviation ignoring NaNs, with Bessel's n − 1 (NaN where fewer than 2 values)."""
    keep = dim is not None
    mean = torch.nanmean(x, dim=dim, keepdim=True) if keep else torch.nanmean(x)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=keep) if keep else (~torch.isnan(x)).sum()
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=keep) if keep else torch.nanmean((x - mean) ** 2)
    nan = torch.full_like(var, float("nan"))
    return torch.where(count > 1, var * count / (count - 1).clamp_min(1), nan).sqrt()


def group_advantages(rewards: Tensor, num_generations: int, scale_rewards: str = "group", *,
                     std_eps: float = 1e-4) -> Tensor:
    """Group-relative advantages of GRPO (Shao et al. 2024, "DeepSeekMath: Pushing the Limits of
    Mathematical Reasoning in Open Language Models", §4.1.2, outcome supervision):

        A_i = (r_i − mean_{j∈g(i)} r_j) / (std + std_eps)

    over the G = ``num_generations`` completions g(i) of the same prompt. ``scale_rewards`` (the names of
    TRL's GRPOConfig) picks the std:

        "group"  std of the group (DeepSeekMath; TRL's default)
        "batch"  std of the whole batch, the centring still per group (Hu et al. 2025, "PPO Lite")
        "none"   no division (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
                 Perspective" (Dr. GRPO): dividing by the group std weights prompts by 1/σ(x))

    Conventions as TRL 1.16: the std is the sample std with Bessel's n − 1 correction, ``std_eps``
    = 1e-4 is added to the std (not the variance), so a zero-variance group gets A = 0. A NaN reward
    marks an unscorable completion: it is left out of the group's mean and std and its advantage is 0.
    A group with fewer than two scorable rewards gets A = 0 throughout when scaled.

    ``rewards`` (B,) with B = n_groups · G, the G completions of a prompt consecutive. With "batch"
    scaling the std is over every entry given, so pass the rewards of the *global* batch (gathered over
    ranks), then take this rank's slice of the result. Returns (B,), detached.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    g = _check_groups(rewards, num_generations)
    grouped = rewards.detach().reshape(-1, g)
    adv = grouped - torch.nanmean(grouped, dim=1, keepdim=True)
    if scale_rewards == "group":
        adv = adv / (_nanstd(grouped, dim=1) + std_eps)
    elif scale_rewards == "batch":
        adv = adv / (_nanstd(grouped.reshape(-1)) + std_eps)
    adv = adv.reshape(-1)
    return torch.where(torch.isnan(adv), torch.zeros((), dtype=adv.dtype, device=adv.device), adv)


def zero_std_groups(rewards: Tensor, num_generations: int, atol: float = 1e-8) -> Tensor:
    """Which groups carry no learning signal: std of the group's (scorable) rewards ≤ ``atol``
    (TRL's ``frac_reward_zero_std`` test, torch.isclose(std, 0)). All-correct and all-wrong groups of a
    0/1 reward are the cases DAPO's dynamic sampling drops (:func:`preftune.rl.rollout.groups_with_signal`).
    A group with fewer than two scorable rewards counts as zero-std. ``rewards`` (n_groups · G,);
    returns (n_groups,) bool.
    """
    g = _check_groups(rewards, num_generations)
    std = _nanstd(rewards.detach().reshape(-1, g), dim=1).squeeze(1)
    return torch.isnan(std) | (std <= atol)


def kl_penalised_scores(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """The KL penalty in the reward (Ziegler et al. 2019; Ouyang et al. 2022 eq. 2), per completion:

        r̃(x, y) = r(x, y) − β Σ_t kl_t

    ``scores`` (B,), ``kl`` (B, T) per-token estimates (:func:`preftune.rl.kl.kl_penalty` of the
    sampling policy against π_ref; with k1 the sum is log π(y|x)/π_ref(y|x), the KL-regularised
    objective's own reward), ``mask`` (B, T). The GRPO family then centres/scales r̃ like any reward;
    the alternative, the KL as a loss term, is :func:`preftune.rl.grpo.kl_loss_term`. Returns (B,),
    detached.
    """
    m = as_bool_mask(kl, mask)
    if scores.dim() != 1 or scores.shape[0] != kl.shape[0]:
        raise ValueError(f"scores must have shape ({kl.shape[0]},), got {tuple(scores.shape)}")
    zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
    return (scores.to(kl.dtype) - kl_coef * torch.where(m, kl, zero).sum(-1)).detach()


def masked_moments(x: Tensor, mask: Tensor) -> Tensor:
    """(count, Σx, Σx²) over the masked entries, float64: the statistics of a global batch
    normalisation, to be all-reduced (summed) over ranks in one call and passed back as ``moments``.
    float64 because the variance is formed as Σx²/n − mean², which cancels when |mean| ≫ std."""
    m = as_bool_mask(x, mask)
    v = torch.where(m, x.detach().double(), torch.zeros((), dtype=torch.float64, device=x.device))
    return torch.stack([m.sum().double(), v.sum(), (v * v).sum()])


def reinforce_pp_advantages(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float, *,
                            num_generations: int | None = None, moments: Tensor | None = None,
                            eps: float = 1e-8) -> Tensor:
    """REINFORCE++ advantages (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
    Language Models", eqs. 8–10): the KL-penalised return to go of every token, normalised over the
    global batch,

        A_t  = r(x, y) − β Σ_{s ≥ t} kl_s                        (KL in the reward, γ = 1)
        Â_t  = (A_t − mean_batch A) / √(var_batch A + eps)       (over every completion token of the batch)

    ``num_generations`` = G gives REINFORCE++-baseline: r is first centred on its group's mean (the
    G completions of a prompt, consecutive), then the same. Without it there is no per-prompt baseline;
    the batch mean is the only one.

    ``scores`` (B,), ``kl`` (B, T) per-token KL estimates (k1 in the paper), ``mask`` (B, T).
    ``moments``: the (count, Σ, Σ²) of A over the global batch, i.e. :func:`masked_moments` of
    :func:`reinforce_pp_returns` summed over ranks; None normalises over this tensor alone (one rank).
    Returns (B, T), 0 off the mask, detached.
    """
    returns = reinforce_pp_returns(scores, kl, mask, kl_coef, num_generations=num_generations)
    m = as_bool_mask(returns, mask)
    moments = masked_moments(returns, m) if moments is None else moments.to(torch.float64)
    count = moments[0].clamp_min(1)
    mean = moments[1] / count
    var = (moments[2] / count - mean * mean).clamp_min(0)
    white = ((returns.double() - mean) * torch.rsqrt(var + eps)).to(returns.dtype)
    return torch.where(m, white, torch.zeros((), dtype=returns.dtype, device=returns.device))


def reinforce_pp_returns(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float, *,
                         num_generations: int | None = None) -> Tensor:
    """The un-normalised A_t = r − β Σ_{s≥t} kl_s of :func:`reinforce_pp_advantages` ((B, T), 0 off the
    mask, detached); r centred per group first when ``num_generations`` is given."""
    scores = scores.detach()
    if num_generations is not None:
        g = _check_groups(scores, num_generations)
        grouped = scores.reshape(-1, g)
        scores = (grouped - grouped.mean(-1, keepdim=True)).reshape(-1)
    rewards = token_level_rewards(scores, kl, mask, kl_coef)  # −β kl_t, plus r on the last token
    # Return to go with γ = 1: a reverse cumulative sum (rewards are already 0 off the mask).
    returns = rewards.flip(-1).cumsum(-1).flip(-1)
    return torch.where(as_bool_mask(kl, mask), returns, torch.zeros((), dtype=returns.dtype, device=returns.device))
