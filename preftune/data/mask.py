"""Step 4: which tokens of a sequence count in the loss.

A causal LM predicts token ``t`` from position ``t - 1``; the loss (or log-prob) of a sequence
is summed over the tokens whose mask is True. Only completion tokens count: the prompt is given,
not generated, so its likelihood must not enter DPO's log-ratios or the SFT loss.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["completion_sequence"]


def completion_sequence(
    prompt_ids: Sequence[int], completion_ids: Sequence[int]
) -> tuple[list[int], list[bool]]:
    """Return ``(prompt + completion, loss_mask)``; ``loss_mask[t]`` is True iff token t is a completion.

    Consumers shift by one (logits at ``t - 1`` score token ``t``), so ``loss_mask[0]`` is always
    False: the first token has no predecessor, which is why the prompt must not be empty.
    """
    if not prompt_ids:
        raise ValueError("prompt_ids is empty: the first completion token needs a preceding token")
    if not completion_ids:
        raise ValueError("completion_ids is empty: a sequence without completion tokens has nothing to learn")
    input_ids = [*prompt_ids, *completion_ids]
    loss_mask = [False] * len(prompt_ids) + [True] * len(completion_ids)
    return input_ids, loss_mask
