"""Deterministic, rank-aware data order, derived from (seed, step) alone.

The order is a pure function of the optimizer step, so resuming needs no sampler state beyond the
step, and N processes with accumulation k see exactly the micro-batches that one process with
accumulation N·k sees: the global batch of a step is the same; only who computes which slice differs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from preftune.errors import ConfigError


class StepSampler:
    """Indices for every (step, micro-step, rank).

    The global batch of an optimizer step holds ``per_device_batch_size × accumulation × world_size``
    examples taken in order from a per-epoch permutation. It is cut into ``accumulation × world_size``
    micro-batches; micro-step ``a`` of rank ``r`` gets micro-batch ``a × world_size + r``. A final
    partial global batch is not used in that epoch (the permutation changes next epoch); the count is
    reported by :meth:`describe`.
    """

    GROUP = 16  # global batches per length-sorted window when grouping by length

    def __init__(self, num_examples: int, per_device_batch_size: int, accumulation: int,
                 world_size: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True,
                 lengths: Sequence[int] | None = None) -> None:
        """``lengths`` (one per example) turns on length grouping: each epoch's permutation is cut into
        windows of ``GROUP`` global batches, each window sorted by length (longest first) and cut into
        global batches, and the global batches are then shuffled. A micro-batch then holds examples of
        similar length, so little of it is padding, while the epoch still visits every example once in
        an order that is a function of (seed, epoch)."""
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError(f"got {len(lengths)} lengths for {num_examples} examples")
        self.lengths = list(lengths) if lengths is not None else None
        self.n = num_examples
        self.batch = per_device_batch_size
        self.accumulation = accumulation
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.global_batch = per_device_batch_size * accumulation * world_size
        self.steps_per_epoch = num_examples // self.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{num_examples} training examples are fewer than one global batch "
                f"({per_device_batch_size} per device × {accumulation} accumulation × {world_size} processes "
                f"= {self.global_batch}); lower the batch size or add data")
        self._epoch = -1
        self._perm: list[int] = []

    def describe(self) -> str:
        unused = self.n - self.steps_per_epoch * self.global_batch
        return (f"{self.n} examples, global batch {self.global_batch}, {self.steps_per_epoch} steps per epoch"
                + (f", {unused} examples left out of each epoch (partial global batch)" if unused else ""))

    def _permutation(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
            self._perm = self._grouped(perm, g) if self.lengths is not None else perm
            self._epoch = epoch
        return self._perm

    def _grouped(self, perm: list[int], g: torch.Generator) -> list[int]:
        used = self.steps_per_epoch * self.global_batch   # the partial global batch stays at the end
        window = self.GROUP * self.global_batch
        lengths = self.lengths
        flat: list[int] = []
        for start in range(0, used, window):
            flat += sorted(perm[start:min(start + window, used)], key=lambda i: -lengths[i])
        batches = [flat[i:i + self.global_batch] for i in range(0, used, self.global_batch)]
        order = torch.randperm(len(batches), generator=g).tolist() if self.shuffle else range(len(batches))
        return [i for b in order for i in batches[b]] + perm[used:]

    def micro_batches(self, step: int) -> list[Sequence[int]]:
        """The ``accumulation`` index lists this rank processes for optimizer step ``step`` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        start = within * self.global_batch
        out = []
        for a in range(self.accumulation):
            k = a * self.world_size + self.rank
            out.append(perm[start + k * self.batch: start + (k + 1) * self.batch])
        return out


def total_steps(steps_per_epoch: int, num_train_epochs: float, max_steps: int) -> int:
    """``max_steps`` if set, else the epochs' steps rounded up (as transformers: 2.5 epochs of 3 steps are
    8 steps)."""
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(steps_per_epoch * num_train_epochs))


def eval_shard(num_examples: int, world_size: int, rank: int) -> range:
    """Evaluation indices of one rank: a strided shard, so every example is scored exactly once."""
    return range(rank, num_examples, world_size)
