"""Unpaired {prompt, completion, label} examples: KTO (Ethayarajh et al. 2024; losses.unpaired).

Each example i is scored twice: its own completion (with gradient), and a *mismatched* completion
y_j, j ≠ i, under the same prompt (no gradient: KTO's reference point z is detached). The partner
of every example is fixed once, before training (``assign_kl_partners``, seeded), rather than
re-drawn from whatever else is in the batch; so π_ref's log-probs of the mismatched pairs are a
fixed table too, computed once with the rest of the reference log-probs. z is the mean log-ratio
over the mismatched pairs of the whole micro-batch — across ranks under torchrun, so the estimate
does not depend on how a batch is sharded — clamped at 0 (the paper's max(0, ·)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from preftune.config import LossConfig
from preftune.data.collate import UnpairedBatch
from preftune.data.dataset import assign_kl_partners
from preftune.data.layouts import LAYOUTS
from preftune.losses import kto
from preftune.objectives.base import Objective, Reduce, Reference, Score, no_reduce

METRICS = ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "count", "count:rewards/chosen", "count:rewards/rejected", "count:logps/chosen",
           "count:logps/rejected")


def kto_loss(cfg: LossConfig, score: Score, reference: Reference, batch: UnpairedBatch,
             reduce: Reduce = no_reduce) -> tuple[Tensor, dict[str, Tensor]]:
    # 1. The reference point z from the mismatched pairs; no graph is kept for them.
    with torch.no_grad():
        kl_policy = score(batch.kl).logps
    kl_ref = reference(batch.kl)
    totals = reduce(torch.stack([(kl_policy - kl_ref).sum().float(),
                                 torch.tensor(float(len(batch.kl)), device=kl_policy.device)]))
    z = (totals[0] / totals[1]).clamp(min=0.0)

    # 2. The loss on the examples themselves.
    out = score(batch.main)
    ref = reference(batch.main)
    per_example, rewards = kto(out.logps, ref, batch.labels, beta=cfg.beta, kl=z,
                               desirable_weight=cfg.desirable_weight, undesirable_weight=cfg.undesirable_weight)

    # 3. Metrics as sums; desirable ("chosen") and undesirable ("rejected") means get their own counts.
    desirable = batch.labels.to(rewards.dtype)
    undesirable = 1.0 - desirable
    # Right side of the reference point: a desirable example above β z, an undesirable one below it.
    correct = torch.where(batch.labels, rewards > cfg.beta * z, rewards < cfg.beta * z)
    logps = out.logps.detach()
    n = torch.tensor(float(len(per_example)), device=rewards.device)
    sums = {
        "loss": per_example.detach().sum(),
        "kl": z * n,
        "rewards/chosen": (rewards * desirable).sum(),
        "rewards/rejected": (rewards * undesirable).sum(),
        "rewards/accuracies": correct.float().sum(),
        "logps/chosen": (logps * desirable).sum(),
        "logps/rejected": (logps * undesirable).sum(),
        "count": n,
        "count:rewards/chosen": desirable.sum(),
        "count:rewards/rejected": undesirable.sum(),
        "count:logps/chosen": desirable.sum(),
        "count:logps/rejected": undesirable.sum(),
    }
    return per_example.mean(), sums


KTO = Objective(
    kind="unpaired",
    layout=LAYOUTS["unpaired"],
    rows=lambda batch: [batch.main, batch.kl],
    loss=kto_loss,
    metric_keys=METRICS,
    prepare=assign_kl_partners,
)
