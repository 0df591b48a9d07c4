"""Preference pairs {prompt, chosen, rejected}: any weighted sum of the registered pairwise losses.

Around the losses, TRL's three per-pair options, each a pure function in :mod:`preftune.losses`:

- ``ld_alpha`` (LD-DPO): every loss sees length-desensitised log-probs of π_θ and of π_ref, computed
  from per-token log-probs (:func:`~preftune.losses.weighting.ld_logps`); likelihood losses (``sft``)
  keep the plain sums.
- ``use_weighting`` (WPO): every term of the sum is multiplied by the pair's weight
  (:func:`~preftune.losses.weighting.wpo_weights`), from the policy's log Σ_v p_v² per token.
- ``rpo_alpha`` (RPO): adds ``rpo_alpha`` × the ``sft`` term, i.e. ``loss_type=[..., sft]`` with that weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preftune import losses
from preftune.config import LossConfig
from preftune.data.collate import PreferenceBatch, Rows
from preftune.data.layouts import LAYOUTS
from preftune.losses.weighting import ld_logps, wpo_weights
from preftune.modeling.logprobs import SequenceLogps
from preftune.objectives.base import Objective, Reduce, Reference, Score, no_reduce

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected", "count")


@dataclass(frozen=True)
class LengthDesensitised:
    """LD-DPO's log-probs of (chosen | rejected) rows from their per-token log-probs: what π_ref must
    return, and what is cached, when ``ld_alpha`` is set (its text is part of the cache key)."""

    ld_alpha: float

    def __call__(self, rows: Rows, out: SequenceLogps) -> Tensor:
        chosen_tokens, rejected_tokens = out.tokens.chunk(2)
        chosen_mask, rejected_mask = rows.loss_mask.chunk(2)
        return torch.cat(ld_logps(chosen_tokens, rejected_tokens, chosen_mask, rejected_mask,
                                  ld_alpha=self.ld_alpha))

    def __str__(self) -> str:
        return f"ld_alpha={self.ld_alpha!r}"


def reference_reduce(cfg: LossConfig) -> LengthDesensitised | None:
    return None if cfg.ld_alpha is None else LengthDesensitised(cfg.ld_alpha)


def score_options(cfg: LossConfig) -> dict[str, bool]:
    """What the loss reads from the policy's forward beyond per-sequence sums."""
    options = {}
    if cfg.ld_alpha is not None:
        options["per_token"] = True
    if cfg.use_weighting:
        options["log_sum_sq"] = True
    return options


def preference_loss(cfg: LossConfig, policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
                    ref_rejected: Tensor, lengths: tuple[Tensor, Tensor] | None = None, *,
                    plain_chosen: Tensor | None = None, pair_weights: Tensor | None = None
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the configured losses (plus ``rpo_alpha`` × sft); returns the per-pair losses' mean
    and per-pair metric sums. ``lengths`` (completion token counts of chosen, rejected) reach only the
    losses that declare them; ``plain_chosen`` (the chosen plain sums, when ``policy_chosen`` is LD-DPO's)
    only the likelihood losses; ``pair_weights`` (B,) (WPO) multiply every term."""
    terms = list(zip(cfg.loss_type, cfg.loss_weights or [1.0] * len(cfg.loss_type)))
    if cfg.rpo_alpha is not None:
        terms.append(("sft", cfg.rpo_alpha))
    total, rewards = None, None
    for name, weight in terms:
        hp = {k: getattr(cfg, k) for k in losses.hyperparameters(name)}
        if losses.needs_lengths(name):
            hp["chosen_lengths"], hp["rejected_lengths"] = lengths
        likelihood = name in losses.PLAIN_LIKELIHOOD and plain_chosen is not None
        per_pair, chosen_rewards, rejected_rewards = losses.get(name)(
            plain_chosen if likelihood else policy_chosen, policy_rejected, ref_chosen, ref_rejected,
            beta=cfg.beta, **hp)
        if rewards is None and not likelihood:   # reported rewards: β log π/π_ref of what the margin sees
            rewards = chosen_rewards, rejected_rewards
        if pair_weights is not None:
            per_pair = per_pair * pair_weights
        total = weight * per_pair if total is None else total + weight * per_pair
    if rewards is not None:
        chosen_rewards, rejected_rewards = rewards
    margins = chosen_rewards - rejected_rewards
    sums = {
        "loss": total.detach().sum(),
        "rewards/chosen": chosen_rewards.sum(),
        "rewards/rejected": rejected_rewards.sum(),
        "rewards/margins": margins.sum(),
        "rewards/accuracies": (margins > 0).float().sum(),
        "logps/chosen": policy_chosen.detach().sum(),
        "logps/rejected": policy_rejected.detach().sum(),
        "count": torch.tensor(float(policy_chosen.shape[0]), device=policy_chosen.device),
    }
    return total.mean(), sums


def pairwise_loss(cfg: LossConfig, score: Score, reference: Reference, batch: PreferenceBatch,
                  reduce: Reduce = no_reduce) -> tuple[Tensor, dict[str, Tensor]]:
    rows = batch.rows
    out = score(rows, **score_options(cfg))  # one forward over chosen | rejected
    plain_chosen, plain_rejected = out.logps.chunk(2)
    lengths = out.lengths.chunk(2)
    ld = reference_reduce(cfg)
    policy_chosen, policy_rejected = (plain_chosen, plain_rejected) if ld is None else ld(rows, out).chunk(2)
    ref_chosen, ref_rejected = reference(rows).chunk(2)
    weights = None
    if cfg.use_weighting:
        weights = wpo_weights(plain_chosen, plain_rejected, *out.log_sum_sq.chunk(2), *lengths)
    return preference_loss(cfg, policy_chosen, policy_rejected, ref_chosen, ref_rejected, lengths,
                           plain_chosen=None if ld is None else plain_chosen, pair_weights=weights)


PAIRWISE = Objective(
    kind="pairwise",
    layout=LAYOUTS["preference"],
    loss=pairwise_loss,
    metric_keys=METRICS,
    score_options=score_options,
    reference_reduce=reference_reduce,
)
