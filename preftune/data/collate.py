"""Step 5: pad tokenized examples into tensors for one training step.

Preference batches put all chosen sequences first and all rejected ones after them, in the same
example order, so a single forward pass scores both halves and ``logps[:B]`` / ``logps[B:]``
pair up. Padding is on the right: positions stay 0..len-1 for every real token, and pads carry
attention 0 and loss mask False so they affect neither attention nor the loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from preftune.data.mask import completion_sequence
from preftune.data.tokenize import TokenizedCompletion, TokenizedPreference

__all__ = ["CompletionBatch", "PreferenceBatch", "collate_completions", "collate_preferences"]


@dataclass
class PreferenceBatch:
    """``[2B, T]`` tensors: rows ``0..B-1`` chosen, rows ``B..2B-1`` rejected; ``index`` is ``[B]``."""

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    loss_mask: torch.BoolTensor
    index: torch.LongTensor  # dataset positions: the key for cached reference log-probs

    def to(self, device: torch.device | str) -> PreferenceBatch:
        """A copy with every tensor on ``device``."""
        return PreferenceBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.loss_mask.to(device),
            self.index.to(device),
        )

    @property
    def num_pairs(self) -> int:
        """B, the number of preference pairs (half the rows)."""
        return int(self.index.shape[0])


@dataclass
class CompletionBatch:
    """``[B, T]`` tensors for SFT; ``index`` is ``[B]``."""

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    loss_mask: torch.BoolTensor
    index: torch.LongTensor

    def to(self, device: torch.device | str) -> CompletionBatch:
        """A copy with every tensor on ``device``."""
        return CompletionBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.loss_mask.to(device),
            self.index.to(device),
        )


def collate_preferences(
    examples: Sequence[TokenizedPreference],
    indices: Sequence[int],
    *,
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> PreferenceBatch:
    """Pad pairs into a :class:`PreferenceBatch` (chosen rows first, then rejected)."""
    _check(examples, indices)
    rows = [completion_sequence(e.prompt_ids, e.chosen_ids) for e in examples]
    rows += [completion_sequence(e.prompt_ids, e.rejected_ids) for e in examples]
    ids, attention, loss = _pad(rows, pad_token_id, pad_to_multiple_of)
    return PreferenceBatch(ids, attention, loss, torch.tensor(list(indices), dtype=torch.long))


def collate_completions(
    examples: Sequence[TokenizedCompletion],
    indices: Sequence[int],
    *,
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
) -> CompletionBatch:
    """Pad SFT examples into a :class:`CompletionBatch`."""
    _check(examples, indices)
    rows = [completion_sequence(e.prompt_ids, e.completion_ids) for e in examples]
    ids, attention, loss = _pad(rows, pad_token_id, pad_to_multiple_of)
    return CompletionBatch(ids, attention, loss, torch.tensor(list(indices), dtype=torch.long))


def _check(examples: Sequence, indices: Sequence[int]) -> None:
    if not examples:
        raise ValueError("cannot collate an empty batch")
    if len(indices) != len(examples):
        raise ValueError(f"got {len(examples)} examples but {len(indices)} indices")


def _pad(
    rows: list[tuple[list[int], list[bool]]], pad_token_id: int, pad_to_multiple_of: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids, _ in rows)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of  # round up
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for r, (ids, mask) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[r, : len(ids)] = 1
        loss_mask[r, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
    return input_ids, attention, loss_mask
