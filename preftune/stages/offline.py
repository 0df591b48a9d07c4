"""Pieces every stage that trains or evaluates on a fixed dataset wires together (sft, dpo, rm, eval):
the batch builder, the policy as a ``score`` callable, and the held-out evaluation.

The online stages sample their batches instead (``stages/online.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from preftune.data.collate import Rows
from preftune.data.dataset import BuiltDataset
from preftune.objectives import Objective, Reference, Score
from preftune.stages.common import eval_mode, num_tokens
from preftune.stages.lifecycle import Run
from preftune.train.loop import autocast, reduce_means
from preftune.train.sampler import eval_shard

__all__ = ["GetBatch", "evaluate", "evaluate_objective", "make_batches", "scorer"]

GetBatch = Callable[[list[int]], tuple[Any, int]]   # example indices -> (batch on the device, its token count)


def make_batches(collate: Callable[..., Any], dataset: BuiltDataset | None, pad_token_id: int,
                 device: torch.device) -> GetBatch | None:
    """``get_batch(indices)``: ``collate(examples, indices, pad_token_id=)`` of those examples, moved to
    ``device``, and the tokens the policy runs over (None for no dataset: a run without held-out data)."""
    if dataset is None:
        return None

    def get_batch(indices: list[int]) -> tuple[Any, int]:
        examples = [dataset.examples[i] for i in indices]
        return collate(examples, indices, pad_token_id=pad_token_id).to(device), num_tokens(examples)
    return get_batch


def scorer(model: nn.Module, aux_losses: list[Tensor | None] | None = None) -> Score:
    """The policy as a ``score(rows, **options)`` callable (``model``: a SequenceLogprobModel, DDP-wrapped or
    not); each call's MoE router loss is appended to ``aux_losses`` when given."""
    def score(rows: Rows, **options: bool):
        out = model(rows.input_ids, rows.attention_mask, rows.loss_mask, **options)
        if aux_losses is not None:
            aux_losses.append(out.aux_loss)
        return out
    return score


@torch.no_grad()
def evaluate(run: Run, model: nn.Module, dataset: BuiltDataset, get_batch: GetBatch,
             batch_sums: Callable[[Any], dict[str, Tensor]], keys: Iterable[str]) -> dict[str, float]:
    """Held-out metrics: ``batch_sums(batch)`` (per-example sums, a ``count`` among them) over this rank's
    strided shard of ``dataset`` in ``per_device_eval_batch_size`` batches, ``model`` in evaluation mode,
    then exact means over every rank. A rank with no example left contributes zeros for ``keys``."""
    cfg = run.cfg
    shard = list(eval_shard(len(dataset), run.info.world_size, run.info.rank))
    sums: dict[str, Tensor] = {}
    with eval_mode(model):
        for i in range(0, len(shard), cfg.per_device_eval_batch_size):
            batch, _ = get_batch(shard[i:i + cfg.per_device_eval_batch_size])
            with autocast(cfg.bf16, run.info.device):
                for k, v in batch_sums(batch).items():
                    sums[k] = sums[k] + v if k in sums else v
    if not sums:
        sums = {k: torch.zeros((), device=run.info.device) for k in keys}
    return reduce_means(sums, run.info)


def evaluate_objective(run: Run, model: nn.Module, objective: Objective, score: Score, reference: Reference,
                       dataset: BuiltDataset, get_batch: GetBatch) -> dict[str, float]:
    """:func:`evaluate` with ``objective``'s loss and metrics (dpo, and ``preftune eval``); ``score``: the
    policy (``model``), or log-probs it would give (a reference table read as the policy at step 0)."""
    cfg = run.cfg
    return evaluate(run, model, dataset, get_batch, lambda batch: objective.loss(cfg, score, reference, batch)[1],
                    objective.metric_keys)
