"""Pure functions over a rollout, applied between generation and the loss: truncated completions (and
TRL's ``mask_truncated_completions``), DAPO's soft overlong punishment, and DAPO's dynamic sampling
(which groups to keep, and whether to generate more).

DAPO: Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale".
Shapes: ``completion_ids`` and masks (B, T), right-padded; per-completion tensors (B,); groups are the
G = ``num_generations`` consecutive completions of one prompt.
"""

from __future__ import annotations

import torch
from torch import Tensor

from preftune.rl.advantages import zero_std_groups
from preftune.rl.masked import as_bool_mask


def truncated_completions(completion_ids: Tensor, mask: Tensor, eos_token_ids: list[int] | tuple[int, ...],
                          pad_token_id: int | None = None) -> Tensor:
    """True where a completion was cut by the length limit: its last token is not an EOS (TRL 1.16's test:
    the last token is neither an EOS nor the pad token). A row with no token is not truncated (there is
    nothing to mask). Returns (B,) bool."""
    m = as_bool_mask(completion_ids, mask)
    positions = torch.arange(m.shape[-1], device=m.device)
    last = torch.where(m, positions, -1).amax(-1)
    token = completion_ids.gather(-1, last.clamp_min(0)[:, None]).squeeze(-1)
    ends = torch.tensor([*eos_token_ids, *([] if pad_token_id is None else [pad_token_id])],
                        dtype=completion_ids.dtype, device=completion_ids.device)
    return (last >= 0) & ~torch.isin(token, ends)


def mask_truncated(mask: Tensor, truncated: Tensor) -> Tensor:
    """``mask_truncated_completions``: drop every token of a truncated completion from the loss (DAPO §3.4:
    a cut answer's reward says nothing about its reasoning; penalising it adds noise). The completion still
    counts in its group's advantage statistics, as in TRL. (B, T) bool."""
    m = mask if mask.dtype == torch.bool else mask != 0
    if truncated.shape != m.shape[:1]:
        raise ValueError(f"truncated must have shape ({m.shape[0]},), got {tuple(truncated.shape)}")
    return m & ~truncated.bool()[:, None]


def soft_overlong_punishment(lengths: Tensor, max_completion_length: int, soft_punish_cache: int) -> Tensor:
    """DAPO's overlong reward shaping (eq. 13), added to the task reward; L = ``max_completion_length``,
    C = ``soft_punish_cache`` (TRL's names, ``trl.rewards.get_soft_overlong_punishment``):

        R_length(y) = 0                  |y| ≤ L − C
                    = ((L − C) − |y|)/C   L − C < |y| ≤ L      (linear from 0 down to −1)
                    = −1                 |y| > L

    ``lengths`` (B,) completion lengths in tokens; returns (B,) in the default float dtype.
    """
    if not 0 <= soft_punish_cache <= max_completion_length:
        raise ValueError(f"soft_punish_cache must lie in [0, max_completion_length={max_completion_length}], "
                         f"got {soft_punish_cache}")
    n = lengths.to(torch.get_default_dtype())
    start = max_completion_length - soft_punish_cache
    ramp = (start - n) / max(soft_punish_cache, 1)  # only used where C > 0 (the band is empty when C = 0)
    out = torch.where(n <= start, torch.zeros_like(n), ramp)
    return torch.where(n > max_completion_length, torch.full_like(n, -1.0), out)


def groups_with_signal(rewards: Tensor, num_generations: int, atol: float = 1e-8) -> Tensor:
    """DAPO's dynamic-sampling filter (eq. 11, 0 < |{correct}| < G): keep a group only if its rewards are
    not all equal (std > ``atol``); an all-equal group has zero advantages and adds nothing but noise to
    the normaliser. ``rewards`` (n_groups · G,); returns (n_groups,) bool."""
    return ~zero_std_groups(rewards, num_generations, atol)


def fill_batch(keep: Tensor, target_groups: int, *, final: bool = False) -> Tensor | None:
    """DAPO's refill policy (Algorithm 1: sample, filter, repeat until the buffer holds the batch), as a
    pure function over group indices.

    ``keep`` (n,) bool: the filter's verdict on every group generated so far this step, in generation
    order (concatenate the rounds). Returns the indices of the first ``target_groups`` kept groups, or
    None when fewer were kept: generate another round and call again. ``final=True`` (the round budget,
    e.g. verl's ``max_num_gen_batches``, is spent) returns the kept groups there are, possibly fewer or
    none; a short batch is the caller's to log (and an empty one to skip, with a counted reason).
    """
    if target_groups < 1:
        raise ValueError(f"target_groups must be >= 1, got {target_groups}")
    kept = keep.bool().nonzero().flatten()
    if kept.numel() >= target_groups:
        return kept[:target_groups]
    return kept if final else None


def group_rows(groups: Tensor, num_generations: int) -> Tensor:
    """Row indices of the completions of ``groups`` (group g owns rows g·G … g·G + G − 1)."""
    offsets = torch.arange(num_generations, device=groups.device)
    return (groups[:, None] * num_generations + offsets).reshape(-1)
