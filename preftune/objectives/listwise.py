"""Ranked lists {prompt, completions: [best, ..., worst]}: Plackett–Luce DPO (losses.listwise).

All completions of all lists in a batch are scored in one forward pass (rows flattened, no padding
rows for shorter lists), then scattered into [B, K] matrices with a mask for the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from preftune.config import LossConfig
from preftune.data.collate import RankingBatch
from preftune.data.layouts import LAYOUTS
from preftune.losses import plackett_luce
from preftune.objectives.base import Objective, Reduce, Reference, Score, no_reduce

METRICS = ("loss", "rewards/best", "rewards/worst", "rewards/margins", "rewards/accuracies", "rewards/top1",
           "logps/best", "logps/worst", "count")


def ranking_metrics(rewards: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per-list sums: best and worst reward, their margin, the fraction of the list's ordered pairs
    (i ranked above j) with r_i > r_j, and whether the best completion has the highest reward.
    ``rewards``, ``mask``: [B, K]; padded entries are ignored."""
    k = mask.shape[1]
    last = mask.sum(1) - 1                               # index of the worst (last real) entry
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    best, worst = rewards[:, 0], rewards[rows, last]
    above = torch.ones(k, k, dtype=torch.bool, device=mask.device).triu(1)  # i < j: i is ranked above j
    pairs = above & mask.unsqueeze(2) & mask.unsqueeze(1)
    ordered = (rewards.unsqueeze(2) > rewards.unsqueeze(1)) & pairs
    pair_acc = ordered.sum((1, 2)).float() / pairs.sum((1, 2)).clamp(min=1).float()
    others = rewards.masked_fill(~mask, float("-inf"))[:, 1:]
    top1 = best > others.max(1).values
    return {"rewards/best": best.sum(), "rewards/worst": worst.sum(), "rewards/margins": (best - worst).sum(),
            "rewards/accuracies": pair_acc.sum(), "rewards/top1": top1.float().sum()}


def listwise_loss(cfg: LossConfig, score: Score, reference: Reference, batch: RankingBatch,
                  reduce: Reduce = no_reduce) -> tuple[Tensor, dict[str, Tensor]]:
    out = score(batch.rows)
    policy, mask = batch.to_matrix(out.logps)
    ref, _ = batch.to_matrix(reference(batch.rows))
    per_list, rewards = plackett_luce(policy, ref, beta=cfg.beta, mask=mask)
    logps = policy.detach()
    rows = torch.arange(logps.shape[0], device=logps.device)
    sums = {
        "loss": per_list.detach().sum(),
        **ranking_metrics(rewards, mask),
        "logps/best": logps[:, 0].sum(),
        "logps/worst": logps[rows, mask.sum(1) - 1].sum(),
        "count": torch.tensor(float(per_list.shape[0]), device=per_list.device),
    }
    return per_list.mean(), sums


LISTWISE = Objective(
    kind="listwise",
    layout=LAYOUTS["ranking"],
    loss=listwise_loss,
    metric_keys=METRICS,
)
