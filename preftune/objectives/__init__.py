"""What the DPO stage trains against, by data layout: pairs, unpaired labels (KTO), rankings.

The DPO script (:mod:`preftune.stages.dpo`) is the same top to bottom for all three; an
:class:`Objective` supplies the parts that differ: how a data source is built, how examples are
collated, which sequences of a batch the reference scores, and the loss with its metrics. Picking
one is a function of ``loss_type`` alone (``preftune.losses.kind``).

A loss function receives two callables rather than tensors, so the same code serves training,
evaluation and the step-0 shortcut where π_θ = π_ref and the policy's log-probs are read from the
reference table (:func:`reference_as_policy`):

    score(rows, **options) -> SequenceLogps   the policy's completion log-probs (with gradient in training);
                                              options: what the loss reads beyond sums (``score_options``)
    reference(rows)        -> Tensor [R]      π_ref's, from a precomputed table or a frozen model, reduced
                                              per row by ``reference_reduce`` when the loss asks for it
"""

from __future__ import annotations

from preftune.objectives.base import (
    LossFn,
    Objective,
    Reduce,
    Reference,
    Score,
    no_reduce,
    reference_as_policy,
)

__all__ = ["LossFn", "Objective", "Reduce", "Reference", "Score", "no_reduce", "objective_for",
           "reference_as_policy"]


def objective_for(loss_type: list[str]) -> Objective:
    from preftune import losses

    kind = losses.kind(loss_type[0])
    if kind == "unpaired":
        from preftune.objectives.kto import KTO

        return KTO
    if kind == "listwise":
        from preftune.objectives.listwise import LISTWISE

        return LISTWISE
    from preftune.objectives.pairwise import PAIRWISE

    return PAIRWISE
