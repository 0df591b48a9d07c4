"""The parts every objective is made of (see :mod:`preftune.objectives`): what a loss receives
(``Score``, ``Reference``, ``Reduce``) and the :class:`Objective` record a data layout fills in.

Kept apart from the package's ``__init__`` so that the layouts (pairwise, kto, listwise) import these
without importing the package that picks among them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from preftune.data.collate import Rows
from preftune.data.dataset import BuiltDataset
from preftune.data.layouts import Layout
from preftune.modeling.logprobs import SequenceLogps
from preftune.modeling.reference import RowReduce

Score = Callable[..., SequenceLogps]
Reference = Callable[[Rows], Tensor]
Reduce = Callable[[Tensor], Tensor]
LossFn = Callable[[Any, Score, Reference, Any, Reduce], tuple[Tensor, dict[str, Tensor]]]


def no_reduce(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class Objective:
    """The layout-specific half of the DPO stage (module docstring)."""

    kind: str                                    # 'pairwise' | 'unpaired' | 'listwise'
    layout: Layout                               # the data: build, collate, row format (data/layouts.py)
    loss: LossFn                                 # (cfg, score, reference, batch, reduce) → (mean loss, sums)
    metric_keys: tuple[str, ...]                 # the sums ``loss`` returns (zeros when a rank has no data)
    # The sequences of a batch that π_ref scores: the batch's rows (KTO: its examples' and their KL partners').
    rows: Callable[[Any], list[Rows]] = field(default=lambda batch: [batch.rows])
    # Applied to a built dataset before training (KTO: fix each example's KL partner); (dataset, seed).
    prepare: Callable[[BuiltDataset, int], BuiltDataset] = field(default=lambda dataset, seed: dataset)
    # (cfg) → keyword options the loss passes to ``score`` (per_token, log_sum_sq); none: sums suffice.
    score_options: Callable[[Any], dict[str, bool]] = field(default=lambda cfg: {})
    # (cfg) → how π_ref's forward reduces to the per-row value the loss reads, or None for the plain sum;
    # when set, the reference runs per token and its ``str`` joins the reference cache key.
    reference_reduce: Callable[[Any], RowReduce | None] = field(default=lambda cfg: None)


def reference_as_policy(reference: Reference) -> Score:
    """π_θ = π_ref (step 0 of a run that starts from its reference): the policy's log-probs are the
    reference's, read from its table instead of a second forward pass."""

    def score(rows: Rows, **options: bool) -> SequenceLogps:
        if any(options.values()):
            raise ValueError(f"the reference table holds per-sequence sums only, not {sorted(options)}: "
                             "score the policy itself")
        lengths = rows.loss_mask[:, 1:].sum(1).float()
        return SequenceLogps(logps=reference(rows), lengths=lengths)

    return score
