"""The optimizer-step loop every stage shares: accumulate, guard non-finite, clip, step, log.

A stage supplies two functions: ``get_batch(indices)`` turns dataset indices into a device batch,
and ``compute_loss(batch)`` returns the micro-batch loss (a mean over its items) together with
detached per-item *sums* of whatever it wants logged, including ``count``. Sums reduce exactly
across micro-steps and ranks; they are turned into means only when logged.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from preftune.config import TrainingConfig
from preftune.train.distributed import DistInfo, all_reduce_sum
from preftune.train.metrics import MetricsLogger, format_postfix, progress_bar
from preftune.train.optim import lr_at, set_lr, warmup_steps
from preftune.train.sampler import StepSampler

Batch = Any
ComputeLoss = Callable[[Batch], tuple[Tensor, dict[str, Tensor]]]


@dataclass
class LoopState:
    step: int = 0                 # optimizer steps taken (including skipped non-finite ones)
    tokens_seen: int = 0          # non-padding tokens through the policy, all ranks (as of the last log)
    skipped_steps: int = 0
    optimizer_steps: int = 0      # RL: several optimizer steps per rollout (``step`` counts rollouts)
    history: list[dict[str, float]] = field(default_factory=list)


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


def guarded_step(params: list[Tensor], optimizer: torch.optim.Optimizer, max_grad_norm: float, state: LoopState,
                 info: DistInfo, where: str, write: Callable[[str], None] = print) -> Tensor:
    """Clip (the pre-clip norm is returned, to be logged as grad_norm), step, zero the gradients.

    A non-finite norm skips the update, counted in ``state.skipped_steps``: a NaN or inf never reaches
    the optimizer. All ranks hold the same reduced gradients, so they take the same decision.
    """
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else math.inf)
    if torch.isfinite(grad_norm):
        optimizer.step()
    else:
        state.skipped_steps += 1
        if info.is_main:
            write(f"{where}: non-finite gradient norm ({grad_norm.item()}); update skipped "
                  f"({state.skipped_steps} so far)")
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def train_loop(
    *,
    cfg: TrainingConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: StepSampler,
    get_batch: Callable[[list[int]], tuple[Batch, int]],
    compute_loss: ComputeLoss,
    info: DistInfo,
    logger: MetricsLogger,
    total_steps: int,
    state: LoopState,
    evaluate: Callable[[int], dict[str, float]] | None = None,
    save: Callable[[LoopState], None] | None = None,
    desc: str = "train",
) -> LoopState:
    """Run optimizer steps ``state.step`` .. ``total_steps - 1``. ``get_batch`` returns the batch and
    its number of non-padding tokens (known on the host, so counting throughput costs no sync)."""
    params = [p for p in model.parameters() if p.requires_grad]
    warmup = warmup_steps(cfg, total_steps)
    is_ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    bar = progress_bar(total_steps, state.step, cfg.progress_bar and info.is_main, desc)
    window: dict[str, Tensor] = {}
    grad_norms: list[Tensor] = []
    window_tokens, window_start = 0, time.perf_counter()
    model.train()

    while state.step < total_steps:
        # 1. Learning rate is a function of the step alone.
        lr = lr_at(state.step, peak=cfg.learning_rate, warmup=warmup, total=total_steps, kind=cfg.lr_scheduler_type)
        set_lr(optimizer, lr)

        # 2. Forward/backward over the micro-batches; gradients sync across ranks only on the last one.
        micro = sampler.micro_batches(state.step)
        for i, indices in enumerate(micro):
            batch, n_tokens = get_batch(list(indices))
            sync = i == len(micro) - 1
            ctx = model.no_sync() if (is_ddp and not sync) else contextlib.nullcontext()
            with ctx:
                with autocast(cfg.bf16, info.device):
                    loss, sums = compute_loss(batch)
                (loss / len(micro)).backward()
            for k, v in sums.items():
                window[k] = window[k] + v if k in window else v.detach().clone()
            window_tokens += n_tokens

        # 3. Clip, step, or refuse a non-finite update.
        grad_norm = guarded_step(params, optimizer, cfg.max_grad_norm, state, info,
                                 f"step {state.step + 1}", bar.write)
        grad_norms.append(grad_norm.detach())
        state.step += 1
        bar.update(1)

        # 4. Log: one reduction and host sync per logging step, not per micro-step.
        if state.step % cfg.logging_steps == 0 or state.step == total_steps:
            metrics = reduce_means(window, info)
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            tokens = all_reduce_sum(torch.tensor(float(window_tokens)), info).item()
            metrics["grad_norm"] = torch.stack(grad_norms).float().mean().item()
            metrics["lr"] = lr
            metrics["tokens_per_s"] = tokens / elapsed
            metrics["epoch"] = state.step / sampler.steps_per_epoch
            state.tokens_seen += int(tokens)
            metrics["tokens_seen"] = float(state.tokens_seen)
            logger.log(state.step, metrics)
            state.history.append({"step": state.step, **metrics})
            bar.set_postfix(format_postfix(metrics), refresh=False)
            window, grad_norms = {}, []
            window_tokens, window_start = 0, time.perf_counter()

        # 5. Periodic held-out evaluation and checkpoints.
        if evaluate is not None and cfg.eval_steps and state.step % cfg.eval_steps == 0 and state.step < total_steps:
            model.eval()
            evaluate(state.step)
            model.train()
            window_start = time.perf_counter()  # evaluation time is not training throughput
        if save is not None and cfg.save_steps and state.step % cfg.save_steps == 0 and state.step < total_steps:
            save(state)
            window_start = time.perf_counter()
    bar.close()
    return state
