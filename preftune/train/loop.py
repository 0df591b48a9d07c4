"""The optimizer-step loop every stage shares: accumulate, guard non-finite, clip, step, log.

A stage supplies a *batch source* and a loss. ``source.micro_batches(step)`` yields the micro-batches
of optimizer step ``step`` on this rank, each with its number of non-padding tokens: for a fixed data
set that is :class:`IndexedBatches` (dataset indices from a :class:`StepSampler`, collated); for online
training it is a rollout (``preftune.stages.online``), which samples, scores and buffers completions
and hands them out as micro-batches. ``compute_loss(batch)`` returns the micro-batch loss (a mean
over its items) together with detached per-item *sums* of whatever it wants logged, including
``count``, the number of items the loss averages over (pairs, lists, sequences, or tokens). Sums
reduce exactly across micro-steps and ranks; they are turned into means only when logged.

The gradient of a step is the mean over *all* the step's items, whatever the split into micro-batches
and ranks: each micro-batch back-propagates its loss × count (a sum), and the summed gradient is
divided once by the global count. So batch 8 × accumulation 1 and batch 1 × accumulation 8 take the
same step, also for SFT's token mean, where a per-micro-batch mean would weight short micro-batches'
tokens more (tested in tests/train/test_invariances.py).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from preftune.config import TrainingConfig
from preftune.errors import PreftuneError
from preftune.train import faults, signals
from preftune.train.cadence import Cadence
from preftune.train.checkpoint import list_checkpoints
from preftune.train.distributed import DistInfo, all_reduce_sum
from preftune.train.fsdp import full_norm, is_fsdp
from preftune.train.host_memory import release_freed_memory
from preftune.train.metrics import MetricsLogger, format_postfix, progress_bar
from preftune.train.optim import lr_schedule, set_lr
from preftune.train.sampler import StepSampler

Batch = Any
ComputeLoss = Callable[[Batch], tuple[Tensor, dict[str, Tensor]]]


class BatchSource(Protocol):
    """Where the loop gets its micro-batches. ``steps_per_epoch`` (optimizer steps per pass over the
    data) is only for the logged ``epoch``. A source may also define ``window_metrics(seconds)``:
    host-side metrics of the steps since the last log (e.g. the share of time spent generating)."""

    steps_per_epoch: float

    def micro_batches(self, step: int) -> Iterable[tuple[Batch, int]]: ...


class IndexedBatches:
    """A fixed data set: the sampler's index lists for the step, each collated by ``get_batch`` (which
    returns the batch and its non-padding token count), one micro-batch at a time."""

    def __init__(self, sampler: StepSampler, get_batch: Callable[[list[int]], tuple[Batch, int]]) -> None:
        self.sampler = sampler
        self.get_batch = get_batch
        self.steps_per_epoch = sampler.steps_per_epoch

    def micro_batches(self, step: int) -> Iterable[tuple[Batch, int]]:
        indices: Sequence[int]
        for indices in self.sampler.micro_batches(step):
            yield self.get_batch(list(indices))


@dataclass
class LoopState:
    step: int = 0                 # optimizer steps taken (including skipped non-finite ones)
    tokens_seen: int = 0          # non-padding tokens through the policy, summed over ranks, every step
    skipped_steps: int = 0
    consecutive_skips: int = 0    # non-finite steps in a row (not saved: a resumed run starts afresh)
    history: list[dict[str, float]] = field(default_factory=list)
    # Held-out evaluations already made ({"before"|"after": {"step", "metrics"}}), saved in checkpoints so a
    # resumed run neither loses them nor logs them twice.
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)


def autocast(cfg_bf16: bool, device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg_bf16)


def reduce_means(sums: dict[str, Tensor], info: DistInfo) -> dict[str, float]:
    """All-reduce per-item sums, then divide: one host sync for the lot.

    Each sum is divided by ``count``, or by ``count:<key>`` when the stage gives that key its own
    denominator (KTO's desirable and undesirable examples); a metric whose count is 0 is left out.
    """
    keys = sorted(sums)
    packed = all_reduce_sum(torch.stack([sums[k].detach().float() for k in keys]), info).tolist()
    totals = dict(zip(keys, packed))
    count = totals.pop("count")
    counts = {k.removeprefix("count:"): totals.pop(k) for k in keys if k.startswith("count:")}
    return {k: v / counts.get(k, count) for k, v in totals.items() if counts.get(k, count) > 0}


class TrainingDiverged(PreftuneError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


def guarded_step(params: list[Tensor], optimizer: torch.optim.Optimizer, max_grad_norm: float, state: LoopState,
                 info: DistInfo, where: str, write: Callable[[str], None] = print,
                 nonfinite_loss: Tensor | None = None) -> Tensor:
    """Clip (the pre-clip norm is returned, to be logged as grad_norm), step, zero the gradients.

    A non-finite gradient norm, or ``nonfinite_loss`` > 0 (non-finite micro-batch losses, already
    summed over ranks), skips the update: parameters and optimizer state stay bitwise as they were
    (clipping only touches the gradients, which are then dropped). Counted in ``state.skipped_steps``.
    All ranks hold the same reduced gradients and the same loss flag, so they take the same decision.
    """
    grad_norm = full_norm(torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf))
    ok = torch.isfinite(grad_norm)
    if nonfinite_loss is not None:
        ok = ok & (nonfinite_loss == 0)
    if ok.item():  # the one host sync per optimizer step: stepping or not is a host decision
        optimizer.step()
        state.consecutive_skips = 0
    else:
        state.skipped_steps += 1
        state.consecutive_skips += 1
        if info.is_main:
            what = "loss" if nonfinite_loss is not None and nonfinite_loss.item() > 0 else "gradient norm"
            write(f"{where}: non-finite {what} (grad norm {grad_norm.item()}); update skipped, parameters and "
                  f"optimizer state unchanged ({state.skipped_steps} skipped so far)")
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def stop_if_diverged(state: LoopState, limit: int, output_dir: str) -> None:
    """After ``limit`` skipped steps in a row, stop: more data will not make the numbers finite again."""
    if limit <= 0 or state.consecutive_skips < limit:
        return
    found = list_checkpoints(output_dir)
    kept = (f"the last good checkpoint is kept: {found[-1]} (resume=latest continues from it)" if found
            else "no checkpoint was saved before this point")
    raise TrainingDiverged(
        f"stopped at step {state.step}: {state.consecutive_skips} optimizer steps in a row had a non-finite loss or "
        f"gradient (max_consecutive_skips={limit}); {kept}. Lower learning_rate, enable gradient clipping "
        f"(max_grad_norm), or check the data of these steps.")


def stop_if_signalled(state: LoopState, votes: float, save: Callable[[LoopState], None] | None,
                      output_dir: str) -> None:
    """At a step boundary: when any rank was asked to stop (``votes`` > 0: SIGTERM / SIGINT, see
    ``preftune.train.signals``), save a checkpoint (a no-op when this step's was just written; none
    inside a run of non-finite steps) and raise RunInterrupted with one line on how to continue."""
    if votes <= 0:
        return
    signum = signals.requested() or signal.SIGTERM
    if save is not None and state.consecutive_skips == 0:
        save(state)
        kept = f"checkpoint-{state.step} is saved"
    else:
        found = list_checkpoints(output_dir)
        why = "the last steps were non-finite" if state.consecutive_skips else "this loop saves none"
        kept = (f"no checkpoint was saved now ({why}); the last one is {found[-1].name}" if found
                else f"no checkpoint was saved ({why})")
    raise signals.RunInterrupted(signum, f"stopped by {signals.name(signum)} after step {state.step}; {kept}. "
                                         "Continue with the same command plus resume=latest")


def train_loop(
    *,
    cfg: TrainingConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    source: BatchSource,
    compute_loss: ComputeLoss,
    info: DistInfo,
    logger: MetricsLogger,
    total_steps: int,
    state: LoopState,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    save: Callable[[LoopState], None] | None = None,
    after_step: Callable[[LoopState], None] | None = None,
    desc: str = "train",
) -> LoopState:
    """Run optimizer steps ``state.step`` .. ``total_steps - 1``. Token counts come with the batches
    (known on the host) and ride on the step's one all-reduce, so counting them costs no extra sync.
    ``after_step(state)`` runs after every optimizer step, before its logging, evaluation and checkpoint
    (TR-DPO's reference update)."""
    params = [p for p in model.parameters() if p.requires_grad]
    schedule = lr_schedule(cfg, total_steps)
    cadence = Cadence.of(cfg, total_steps, source.steps_per_epoch)
    is_ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    sharded = is_fsdp(model)
    bar = progress_bar(total_steps, state.step, cfg.progress_bar and info.is_main, desc)
    window: dict[str, Tensor] = {}
    grad_norms: list[Tensor] = []
    window_start = time.perf_counter()
    # Global tokens (all ranks) not yet added to state.tokens_seen: a device scalar, read only when
    # logging or saving, so the count is exact at every checkpoint without a host sync per step.
    pending_tokens = torch.zeros((), dtype=torch.float64, device=info.device)
    window_tokens = torch.zeros((), dtype=torch.float64, device=info.device)

    def flush_tokens() -> float:
        nonlocal pending_tokens
        tokens = pending_tokens.item()
        state.tokens_seen += int(tokens)
        pending_tokens = torch.zeros_like(pending_tokens)
        return tokens

    window_metrics = getattr(source, "window_metrics", None)
    model.train()

    while state.step < total_steps:
        # 1. Learning rate is a function of the step alone.
        lr = schedule(state.step)
        set_lr(optimizer, lr)

        # 2. Forward/backward over the micro-batches; gradients sync across ranks only on the last one.
        #    Each micro-batch back-propagates a *sum* over its items (loss × count).
        micro = list(source.micro_batches(state.step))   # token ids only: the activations come one at a time
        units = torch.zeros((), device=info.device)
        nonfinite = torch.zeros((), device=info.device)
        step_tokens = 0
        poison = faults.nan_if("nan_loss", state.step + 1, info.rank)
        for i, (batch, n_tokens) in enumerate(micro):
            sync = i == len(micro) - 1
            ctx = model.no_sync() if (is_ddp and not sync) else contextlib.nullcontext()
            if sharded:  # reduce-scatter gradients only after the last micro-batch
                model.set_requires_gradient_sync(sync)
            with ctx:
                with autocast(cfg.bf16, info.device):
                    loss, sums = compute_loss(batch)
                    if poison != 1.0:  # only under PREFTUNE_FAULT=nan_loss:...
                        loss = loss * poison
                if cfg.release_host_memory:   # the forward's temporaries, before backward's peak
                    release_freed_memory(info.device)
                (loss * sums["count"]).backward()
                if cfg.release_host_memory:
                    release_freed_memory(info.device)
            units = units + sums["count"].detach()
            nonfinite = nonfinite + (~torch.isfinite(loss.detach())).float()
            for k, v in sums.items():
                window[k] = window[k] + v if k in window else v.detach().clone()
            step_tokens += n_tokens

        # 3. Mean over the step's global items (DDP has already averaged over ranks, hence × world
        #    size), then clip and step, or skip a non-finite update.
        #    Each rank's stop vote (a signal arrived) rides along, so all ranks stop after the same step.
        local_stop = float(signals.requested() is not None)
        reduced = all_reduce_sum(torch.stack([units.double(), nonfinite.double(),
                                              torch.tensor(float(step_tokens), dtype=torch.float64,
                                                           device=info.device),
                                              torch.tensor(local_stop, dtype=torch.float64, device=info.device)]), info)
        units, nonfinite, tokens, votes = reduced[0].float(), reduced[1].float(), reduced[2], reduced[3]
        pending_tokens = pending_tokens + tokens
        window_tokens = window_tokens + tokens
        scale = info.world_size / units.clamp(min=1)
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
        grad_norm = guarded_step(params, optimizer, cfg.max_grad_norm, state, info,
                                 f"step {state.step + 1}", bar.write, nonfinite_loss=nonfinite)
        grad_norms.append(grad_norm.detach())
        state.step += 1
        bar.update(1)
        if after_step is not None:
            after_step(state)

        # 4. Log: one reduction and host sync per logging step, not per micro-step.
        if cadence.log(state.step):
            metrics = reduce_means(window, info)
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            metrics["grad_norm"] = torch.stack(grad_norms).float().mean().item()
            metrics["lr"] = lr
            metrics["tokens_per_s"] = window_tokens.item() / elapsed
            metrics["epoch"] = state.step / source.steps_per_epoch
            flush_tokens()
            metrics["tokens_seen"] = float(state.tokens_seen)
            metrics["skipped_steps"] = float(state.skipped_steps)
            if window_metrics is not None:
                metrics.update(window_metrics(elapsed))
            logger.log(state.step, metrics)
            state.history.append({"step": state.step, **metrics})
            bar.set_postfix(format_postfix(metrics), refresh=False)
            window, grad_norms = {}, []
            window_tokens, window_start = torch.zeros_like(window_tokens), time.perf_counter()
        stop_if_diverged(state, cfg.max_consecutive_skips, cfg.output_dir)   # after the step is logged

        # 5. Held-out evaluation and checkpoints on their strategies (the last step's: the stage's, after it).
        if evaluate is not None and cadence.evaluate(state.step) and state.step < total_steps:
            model.eval()
            evaluate(state.step)
            model.train()
            window_start = time.perf_counter()  # evaluation time is not training throughput
        if save is not None and cadence.save(state.step) and state.step < total_steps:
            # Not in the middle of a run of skipped steps: the newest checkpoint stays one from before
            # the trouble, and rotation cannot delete it in favour of one taken inside it.
            if state.consecutive_skips == 0:
                flush_tokens()
                save(state)
            elif info.is_main:
                bar.write(f"step {state.step}: checkpoint not saved, the last {state.consecutive_skips} step(s) "
                          "were skipped as non-finite")
            window_start = time.perf_counter()
        faults.pause_if("pause_after_step", state.step, info.rank, until=lambda: signals.requested() is not None)
        # One process reads its flag now; several use the votes reduced with this step's counts.
        stop = votes.item() if info.enabled else float(signals.requested() is not None)
        if stop > 0:
            flush_tokens()   # the checkpoint it saves counts every token so far
        stop_if_signalled(state, stop, save, cfg.output_dir)
        faults.kill_if("kill_after_step", state.step, info.rank)
    flush_tokens()
    bar.close()
    return state
