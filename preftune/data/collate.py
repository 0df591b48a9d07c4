"""Step 5: pad tokenized examples into tensors for one training step.

Preference batches put all chosen sequences first and all rejected ones after them, in the same
example order, so a single forward pass scores both halves and ``logps[:B]`` / ``logps[B:]``
pair up. Padding is on the right: positions stay 0..len-1 for every real token, and pads carry
attention 0 and loss mask False so they affect neither attention nor the loss.

KTO batches hold two sets of rows: each example's own sequence, and its prompt followed by its KL
partner's completion; the two are padded separately, since the partner rows only feed KTO's
reference point. Ranked lists are ragged (K differs between examples), so their rows are every
completion of every example with no padding rows, and :meth:`RankingBatch.to_matrix` lays
per-row values out as the ``[B, K]`` matrix plus mask that the Plackett–Luce loss takes.

Every row must have at least one supervised token: a row whose loss mask is all False would add
nothing to a summed loss and divide by zero in a per-token mean, so collating one is an error
naming the example, never a silently wasted or NaN row. The builders never produce such a row
(a completion is at least its EOS, and a fully truncated one is dropped); this is the last check
before a loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict, TypeVar

import torch

from preftune.data.mask import completion_sequence
from preftune.data.tokenize import (
    TokenizedCompletion,
    TokenizedPreference,
    TokenizedRanking,
    TokenizedUnpaired,
)

if TYPE_CHECKING:
    from typing_extensions import Required, Unpack

__all__ = [
    "CompletionBatch",
    "PaddedBatch",
    "PreferenceBatch",
    "RankingBatch",
    "Rows",
    "UnpairedBatch",
    "collate_completions",
    "collate_preferences",
    "collate_rankings",
    "collate_unpaired",
]

PaddedT = TypeVar("PaddedT", bound="PaddedBatch")


@dataclass
class Rows:
    """``R`` padded sequences to score, and which (example, column) of a reference table each one is.

    Every batch kind (pairs, unpaired KTO examples with their KL partners, ranked lists) reduces
    to rows like these, so the log-prob model and every form of the reference handle all of them:
    ``example`` is the dataset position, ``position`` the example's place in the batch (0..B-1),
    ``column`` which of the example's sequences the row holds (0 = chosen, 1 = rejected for a
    pair; the rank for a list; 0 = the completion, 1 = the KL partner for KTO).
    """

    input_ids: torch.LongTensor      # [R, T]
    attention_mask: torch.LongTensor  # [R, T]
    loss_mask: torch.BoolTensor       # [R, T]
    example: torch.LongTensor         # [R]
    position: torch.LongTensor        # [R]
    column: torch.LongTensor          # [R]

    def to(self, device: torch.device | str) -> Rows:
        """A copy with every tensor on ``device``."""
        return Rows(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.loss_mask,
                                              self.example, self.position, self.column)))

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        """The rows of ``parts`` in one set, right-padded to the longest (so one forward scores them all and
        rows that share a prompt, such as KTO's example and its KL partner, can share it). The added padding
        holds token 0 with attention 0, as any padding is never read."""
        if len(parts) == 1:
            return parts[0]
        width = max(p.input_ids.shape[1] for p in parts)

        def widen(t: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]))

        return Rows(*(torch.cat([widen(getattr(p, k)) for p in parts])
                      for k in ("input_ids", "attention_mask", "loss_mask")),
                    *(torch.cat([getattr(p, k) for p in parts]) for k in ("example", "position", "column")))


@dataclass
class PaddedBatch:
    """Padded sequences, one per row (``[N, T]``), and the dataset position of each example (``index``, ``[B]``):
    what a batch of pairs and a batch of SFT examples both are."""

    input_ids: torch.LongTensor
    attention_mask: torch.LongTensor
    loss_mask: torch.BoolTensor
    index: torch.LongTensor  # dataset positions: the key for cached reference log-probs

    def to(self: PaddedT, device: torch.device | str) -> PaddedT:
        """A copy with every tensor on ``device``."""
        return type(self)(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.loss_mask.to(device),
            self.index.to(device),
        )


@dataclass
class PreferenceBatch(PaddedBatch):
    """``[2B, T]`` tensors: rows ``0..B-1`` chosen, rows ``B..2B-1`` rejected; ``index`` is ``[B]``."""

    @property
    def num_pairs(self) -> int:
        """B, the number of preference pairs (half the rows)."""
        return int(self.index.shape[0])

    @property
    def rows(self) -> Rows:
        """The same tensors as :class:`Rows`: columns 0 (chosen) then 1 (rejected)."""
        b = self.num_pairs
        position = torch.arange(b, device=self.index.device).repeat(2)
        column = torch.arange(2, device=self.index.device).repeat_interleave(b)
        return Rows(self.input_ids, self.attention_mask, self.loss_mask, self.index.repeat(2), position, column)


@dataclass
class CompletionBatch(PaddedBatch):
    """``[B, T]`` tensors for SFT; ``index`` is ``[B]``."""


@dataclass
class UnpairedBatch:
    """KTO rows: ``main`` = prompt + own completion (column 0), ``kl`` = prompt + KL partner's (column 1).

    ``main`` and ``kl`` have B rows each, in the same example order, and their own padded length.
    """

    main: Rows
    kl: Rows
    labels: torch.BoolTensor  # [B], True = desirable
    index: torch.LongTensor  # [B] dataset positions

    def to(self, device: torch.device | str) -> UnpairedBatch:
        """A copy with every tensor on ``device``."""
        return UnpairedBatch(self.main.to(device), self.kl.to(device), self.labels.to(device), self.index.to(device))


@dataclass
class RankingBatch:
    """Every completion of B ranked lists as rows: example order, then rank order (0 = best)."""

    rows: Rows
    index: torch.LongTensor  # [B] dataset positions
    num_columns: int  # K, the longest list in this batch

    def to(self, device: torch.device | str) -> RankingBatch:
        """A copy with every tensor on ``device``."""
        return RankingBatch(self.rows.to(device), self.index.to(device), self.num_columns)

    def to_matrix(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.BoolTensor]:
        """Scatter one value per row (``[R]``) into ``[B, K]``; also return the ``[B, K]`` mask of real entries.

        Entries past the end of a shorter list are 0 and masked False. Built with an out-of-place
        ``index_put`` on zeros, so gradients flow back to ``values``.
        """
        if values.shape[:1] != (len(self.rows),):
            raise ValueError(f"expected one value per row ({len(self.rows)}), got shape {tuple(values.shape)}")
        shape = (int(self.index.shape[0]), self.num_columns)
        where = (self.rows.position.to(values.device), self.rows.column.to(values.device))
        matrix = values.new_zeros(shape + tuple(values.shape[1:])).index_put(where, values)
        mask = torch.zeros(shape, dtype=torch.bool, device=values.device).index_put(
            where, torch.ones(len(self.rows), dtype=torch.bool, device=values.device)
        )
        return matrix, mask


class Padding(TypedDict, total=False):
    """The keyword arguments every ``collate_*`` takes (``pad_token_id`` required)."""

    pad_token_id: Required[int]
    pad_to_multiple_of: int | None  # round the padded length up to a multiple of this (default None: no rounding)


def collate_preferences(examples: Sequence[TokenizedPreference], indices: Sequence[int],
                        **padding: Unpack[Padding]) -> PreferenceBatch:
    """Pad pairs into a :class:`PreferenceBatch` (chosen rows first, then rejected)."""
    _check(examples, indices)
    rows = [_sequence(e.prompt_ids, e.chosen_ids, e.origin, "chosen") for e in examples]
    rows += [_sequence(e.prompt_ids, e.rejected_ids, e.origin, "rejected") for e in examples]
    return PreferenceBatch(*pad_rows(rows, **padding), _long(indices))


def collate_completions(examples: Sequence[TokenizedCompletion], indices: Sequence[int],
                        **padding: Unpack[Padding]) -> CompletionBatch:
    """Pad SFT examples into a :class:`CompletionBatch`."""
    _check(examples, indices)
    rows = [_sequence(e.prompt_ids, e.completion_ids, e.origin, "completion") for e in examples]
    return CompletionBatch(*pad_rows(rows, **padding), _long(indices))


def collate_unpaired(examples: Sequence[TokenizedUnpaired], indices: Sequence[int],
                     **padding: Unpack[Padding]) -> UnpairedBatch:
    """Pad KTO examples and their KL partners into an :class:`UnpairedBatch`."""
    _check(examples, indices)
    for e in examples:
        if not e.kl_completion_ids:
            raise ValueError(
                f"{e.origin}: the example has no KL partner (kl_completion_ids is empty); "
                "assign_kl_partners must run on the dataset first"
            )
    main = [_sequence(e.prompt_ids, e.completion_ids, e.origin, "completion") for e in examples]
    kl = [_sequence(e.prompt_ids, e.kl_completion_ids, e.origin, "KL partner") for e in examples]
    index = _long(indices)
    position = torch.arange(len(examples))
    return UnpairedBatch(
        Rows(*pad_rows(main, **padding), index.clone(), position, torch.zeros_like(index)),
        Rows(*pad_rows(kl, **padding), index.clone(), position.clone(), torch.ones_like(index)),
        torch.tensor([e.label for e in examples], dtype=torch.bool),
        index,
    )


def collate_rankings(examples: Sequence[TokenizedRanking], indices: Sequence[int],
                     **padding: Unpack[Padding]) -> RankingBatch:
    """Pad ranked lists into a :class:`RankingBatch`: R = the total number of completions."""
    _check(examples, indices)
    rows, example, position, column = [], [], [], []
    for b, (e, i) in enumerate(zip(examples, indices)):
        for rank, completion in enumerate(e.completion_ids):
            rows.append(_sequence(e.prompt_ids, completion, e.origin, f"completion of rank {rank + 1}"))
            example.append(i)
            position.append(b)
            column.append(rank)
    return RankingBatch(
        Rows(*pad_rows(rows, **padding), _long(example), _long(position), _long(column)),
        _long(indices),
        max(len(e.completion_ids) for e in examples),
    )


def _check(examples: Sequence, indices: Sequence[int]) -> None:
    if not examples:
        raise ValueError("cannot collate an empty batch")
    if len(indices) != len(examples):
        raise ValueError(f"got {len(examples)} examples but {len(indices)} indices")


def _sequence(
    prompt_ids: Sequence[int], completion_ids: Sequence[int], origin: str, what: str
) -> tuple[list[int], list[bool]]:
    """``completion_sequence``, refusing a row with no supervised token (module docstring) by its origin."""
    if not completion_ids:
        raise ValueError(
            f"{origin}: the {what} has no tokens, so its row would have no supervised token (its loss "
            "mask would be all False); such a row must never reach a loss"
        )
    if not prompt_ids:
        raise ValueError(f"{origin}: the prompt has no tokens; the first completion token needs a preceding one")
    return completion_sequence(prompt_ids, completion_ids)


def _long(values: Sequence[int]) -> torch.LongTensor:
    return torch.tensor(list(values), dtype=torch.long)


def pad_rows(
    rows: list[tuple[list[int], list[bool]]], pad_token_id: int, pad_to_multiple_of: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, loss mask)`` rows → right-padded ``input_ids``, ``attention_mask`` and ``loss_mask`` [rows, length],
    the length rounded up to ``pad_to_multiple_of`` when set."""
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
