"""A rollout is a batch source for the shared loop (``preftune.train.loop``), not a second loop.

Every online stage (ppo, rloo, reinforce, grpo, online-dpo) samples completions for a batch of prompts,
scores them, turns them into a :class:`Rollout` (per-row tensors: token ids, masks, old and reference
log-probs, advantages, ...) and trains on it in micro-batches. :class:`RolloutSource` does the
bookkeeping, with TRL's GRPO schedule:

    generation g        ``prompts`` prompts per process × ``generations`` completions each
    passes              the rollout is used ``passes`` times (num_iterations, ppo_epochs), each pass
                        reshuffled and cut into ``chunks`` micro-batches (steps_per_generation)
    optimizer step      ``accumulation`` consecutive micro-batches (gradient_accumulation_steps)

so micro-step m = step × accumulation + a belongs to generation m // (chunks × passes). When a
generation's micro-batches all fall inside one optimizer step, the policy that trains on them is the
one that sampled them (``Schedule.on_policy``); otherwise old log-probs are kept for the ratio.

Everything random is a function of the seed and a position, never of a stream's history: the prompts
of generation g are the :class:`~preftune.train.sampler.StepSampler`'s global batch g, completion j of
the prompt in global slot p is sampled with seed ``row_seed(seed, TRAIN, g, p, j)``, and pass i's
shuffle with ``row_seed(seed, SHUFFLE, g, i, rank)``. Resuming, the number of processes and the split
into micro-batches leave the samples unchanged; a checkpoint taken in the middle of a generation's
micro-batches stores the rollout (every rank's), so a resumed run continues bitwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from preftune.data.collate import Rows
from preftune.data.dataset import BuiltDataset
from preftune.modeling.generation import row_seed
from preftune.train.distributed import DistInfo
from preftune.train.sampler import StepSampler

TRAIN, EVAL, SHUFFLE = 1, 2, 3   # independent random streams of one run


@dataclass(frozen=True)
class Schedule:
    prompts: int         # per process per generation
    generations: int     # completions per prompt
    chunks: int          # micro-batches per pass over a rollout
    passes: int          # passes over each rollout
    accumulation: int    # micro-batches per optimizer step
    unit: int = 1        # rows kept together when shuffling (online DPO: a prompt's pair)

    @property
    def rows(self) -> int:
        return self.prompts * self.generations

    @property
    def cycle(self) -> int:
        """Micro-steps per generation."""
        return self.chunks * self.passes

    @property
    def on_policy(self) -> bool:
        """Each generation is trained on within the optimizer step that sampled it (no stale weights)."""
        return self.accumulation % self.cycle == 0

    def describe(self) -> str:
        return (f"{self.prompts} prompt(s) × {self.generations} completion(s) per process per generation; "
                f"{self.passes} pass(es) × {self.chunks} micro-batch(es) of {self.rows // self.chunks}; "
                f"{self.accumulation} micro-batch(es) per optimizer step"
                + ("" if self.on_policy else "; later micro-batches train on stale samples (clipped ratio)"))


@dataclass
class Rollout:
    """One generation's completions on this process, ``N = prompts × generations`` rows ([N, T] aligned).

    ``data`` holds what the loss reads (advantages, old / reference log-probs, values, ...), ``stats``
    per-completion numbers [N] whose means are logged (reward, KL, length, ...); ``group`` [N] is the
    prompt's index within the generation (rows of one prompt are consecutive)."""

    rows: Rows
    group: Tensor
    data: dict[str, Tensor] = field(default_factory=dict)
    stats: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, idx: Tensor) -> RolloutBatch:
        """Rows ``idx``, trimmed to their longest sequence (no compute on shared padding)."""
        width = int(self.rows.attention_mask[idx].sum(1).max())
        rows = self.rows
        sub = Rows(rows.input_ids[idx, :width], rows.attention_mask[idx, :width], rows.loss_mask[idx, :width],
                   rows.example[idx], rows.position[idx], rows.column[idx])
        data = {k: (v[idx, :width] if v.dim() == 2 else v[idx]) for k, v in self.data.items()}
        return RolloutBatch(sub, self.group[idx], data, {k: v[idx] for k, v in self.stats.items()})

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors only (a checkpoint loads it without unpickling classes)."""
        return {"rows": {f.name: getattr(self.rows, f.name) for f in fields(Rows)}, "group": self.group,
                "data": self.data, "stats": self.stats}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> Rollout:
        rows = Rows(**{k: v.to(device) for k, v in state["rows"].items()})
        return cls(rows, state["group"].to(device), {k: v.to(device) for k, v in state["data"].items()},
                   {k: v.to(device) for k, v in state["stats"].items()})


@dataclass
class RolloutBatch:
    rows: Rows
    group: Tensor
    data: dict[str, Tensor]
    stats: dict[str, Tensor]

    @property
    def num_tokens(self) -> int:
        return int(self.rows.attention_mask.sum())

    def stat_sums(self) -> dict[str, Tensor]:
        """Sums of the per-completion stats, each with its own denominator (``count:<key>``): logged as
        means over completions whatever the loss averages over (tokens, sequences, pairs)."""
        out: dict[str, Tensor] = {}
        for key, values in self.stats.items():
            kept = ~torch.isnan(values)          # a reward no function gave is left out of its mean
            out[key] = torch.where(kept, values, 0.0).sum()
            out[f"count:{key}"] = kept.sum().float()
        return out


MakeRollout = Callable[[int, list[Any], list[int]], Rollout]


class RolloutSource:
    """The loop's batch source for online stages (module docstring). ``make_rollout(g, examples, slots)``
    samples and scores generation ``g`` for this process's prompts (``slots``: their positions in the
    global batch, which seed the sampling) and returns the :class:`Rollout`."""

    def __init__(self, schedule: Schedule, prompts: BuiltDataset, make_rollout: MakeRollout, info: DistInfo,
                 seed: int) -> None:
        self.schedule = schedule
        self.prompts = prompts
        self.make_rollout = make_rollout
        self.info = info
        self.seed = seed
        self.sampler = StepSampler(len(prompts), schedule.prompts, 1, info.world_size, info.rank, seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch * schedule.cycle / schedule.accumulation
        self.buffer: tuple[int, Rollout] | None = None
        self.seconds_generating = 0.0

    def describe(self) -> str:
        return f"prompts: {self.sampler.describe()}; {self.schedule.describe()}"

    def total_steps(self, num_train_epochs: float, max_steps: int) -> int:
        if max_steps > 0:
            return max_steps
        return max(1, int(self.steps_per_epoch * num_train_epochs))

    def rollout(self, generation: int) -> Rollout:
        if self.buffer is None or self.buffer[0] != generation:
            (indices,) = self.sampler.micro_batches(generation)
            slots = [self.info.rank * self.schedule.prompts + i for i in range(len(indices))]
            start = time.perf_counter()
            rollout = self.make_rollout(generation, [self.prompts.examples[i] for i in indices], slots)
            self.seconds_generating += time.perf_counter() - start
            self.buffer = (generation, rollout)
        return self.buffer[1]

    def order(self, generation: int, iteration: int, n: int, device: torch.device) -> Tensor:
        """Pass ``iteration``'s row order: a permutation of whole units (``Schedule.unit`` rows each)."""
        g = torch.Generator().manual_seed(row_seed(self.seed, SHUFFLE, generation, iteration, self.info.rank))
        unit = self.schedule.unit
        units = torch.randperm(n // unit, generator=g)
        return (units[:, None] * unit + torch.arange(unit)).reshape(-1).to(device)

    def micro_batches(self, step: int) -> Iterator[tuple[RolloutBatch, int]]:
        s = self.schedule
        for a in range(s.accumulation):
            generation, within = divmod(step * s.accumulation + a, s.cycle)
            if within and (self.buffer is None or self.buffer[0] != generation):
                raise RuntimeError(f"the rollout of generation {generation} is not in memory at step {step}: "
                                   "a checkpoint inside a generation must carry it")
            rollout = self.rollout(generation)
            iteration, chunk = divmod(within, s.chunks)
            size = len(rollout) // s.chunks
            idx = self.order(generation, iteration, len(rollout), rollout.group.device)[chunk * size:(chunk + 1) * size]
            batch = rollout.select(idx)
            yield batch, batch.num_tokens

    def window_metrics(self, seconds: float) -> dict[str, float]:
        share, self.seconds_generating = self.seconds_generating / seconds, 0.0
        return {"generation_time_share": min(share, 1.0)}

    # -- checkpoints -----------------------------------------------------------------------------------

    def state_dict(self, step: int) -> dict[str, Any] | None:
        """What a checkpoint after optimizer step ``step`` needs: the buffered rollouts of every process
        when the next micro-step is inside a generation (a collective under torchrun), else None."""
        generation, within = divmod(step * self.schedule.accumulation, self.schedule.cycle)
        if not within:
            return None
        assert self.buffer is not None and self.buffer[0] == generation
        local = {k: _to_cpu(v) for k, v in self.buffer[1].state_dict().items()}
        if self.info.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        return {"generation": generation, "rollouts": gathered}

    def checkpoint(self, state: Any) -> dict[str, Any]:
        """This source's part of the trainer state saved after optimizer step ``state.step``."""
        return {"rollout": self.state_dict(state.step)}

    def restore(self, saved: dict[str, Any]) -> None:
        """Read back what :meth:`checkpoint` saved in a checkpoint's trainer state."""
        self.load_state_dict(saved.get("rollout"))

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        if len(state["rollouts"]) != self.info.world_size:
            raise RuntimeError(f"the checkpoint was taken inside a generation by {len(state['rollouts'])} "
                               f"process(es); resume it with as many (or resume from a checkpoint at a "
                               f"generation boundary)")
        self.buffer = (state["generation"],
                       Rollout.from_state_dict(state["rollouts"][self.info.rank], self.info.device))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value
