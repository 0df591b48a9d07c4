"""Preference pairs {prompt, chosen, rejected}: any sum of the registered pairwise losses."""

from __future__ import annotations

import torch
from torch import Tensor

from preftune import losses
from preftune.config import LossConfig
from preftune.data.collate import PreferenceBatch, collate_preferences
from preftune.data.dataset import build_preference_dataset
from preftune.objectives import Objective, Reduce, Reference, Score, no_reduce

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected", "count")


def preference_loss(cfg: LossConfig, policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
                    ref_rejected: Tensor, lengths: tuple[Tensor, Tensor] | None = None
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the configured losses; returns the per-pair losses' mean and per-pair metric sums.
    ``lengths`` (completion token counts of chosen, rejected) reach only the losses that declare them."""
    weights = cfg.loss_weights or [1.0] * len(cfg.loss_type)
    total = None
    for name, weight in zip(cfg.loss_type, weights):
        hp = {k: getattr(cfg, k) for k in losses.hyperparameters(name)}
        if losses.needs_lengths(name):
            hp["chosen_lengths"], hp["rejected_lengths"] = lengths
        per_pair, chosen_rewards, rejected_rewards = losses.get(name)(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=cfg.beta, **hp)
        total = weight * per_pair if total is None else total + weight * per_pair
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
    out = score(rows)  # one forward over chosen | rejected
    policy_chosen, policy_rejected = out.logps.chunk(2)
    ref_chosen, ref_rejected = reference(rows).chunk(2)
    return preference_loss(cfg, policy_chosen, policy_rejected, ref_chosen, ref_rejected, out.lengths.chunk(2))


PAIRWISE = Objective(
    kind="pairwise",
    data_format="{prompt, chosen, rejected} (or chosen/rejected conversations sharing the prompt messages)",
    build=build_preference_dataset,
    collate=collate_preferences,
    rows=lambda batch: [batch.rows],
    loss=pairwise_loss,
    metric_keys=METRICS,
)
