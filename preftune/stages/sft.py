"""Supervised fine-tuning on completions, top to bottom (docs/maths.md §rlhf.sft).

The DPO paper builds π_ref by SFT on the preferred completions (x, y_w) when no SFT model exists:
``preftune sft train_file=prefs.jsonl completion_field=chosen`` does exactly that, and the DPO
config then names the resulting folder as its model.

    1. run set-up          2. tokenizer and data          3. policy model
    4. optimizer, data order, resume                      5. held-out NLL before
    6. the optimizer-step loop                            7. held-out NLL after, final save
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from preftune.config import SFTConfig
from preftune.data.collate import CompletionBatch, collate_completions
from preftune.data.dataset import BuiltDataset, build_completion_dataset
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.modeling.moe import with_router_aux
from preftune.stages.common import (
    Run,
    RunResult,
    checkpoint_saver,
    eval_after,
    eval_before,
    finish,
    load_data,
    load_policy,
    metrics_logger,
    num_tokens,
    packing,
    plan_steps,
    policy_tokenizer,
    preflight,
    restore_state,
    stage,
    start_run,
)
from preftune.stages.inputs import Objects, resolve_data, with_peft_config
from preftune.train.checkpoint import (
    resolve_resume,
)
from preftune.train.distributed import wrap_ddp
from preftune.train.fsdp import shard
from preftune.train.loop import IndexedBatches, autocast, reduce_means, train_loop
from preftune.train.optim import build_optimizer
from preftune.train.sampler import eval_shard


def nll(logps: Tensor, lengths: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean negative log-likelihood of the completions; sums for exact cross-rank means."""
    tokens = lengths.sum()
    loss = -logps.sum() / tokens.clamp(min=1)
    return loss, {"loss": -logps.detach().sum(), "count": tokens.detach()}


def make_batches(dataset: BuiltDataset, pad_token_id: int, device: torch.device):
    def get_batch(indices: list[int]) -> tuple[CompletionBatch, int]:
        examples = [dataset.examples[i] for i in indices]
        return collate_completions(examples, indices, pad_token_id=pad_token_id).to(device), num_tokens(examples)
    return get_batch


@torch.no_grad()
def evaluate(run: Run, policy: SequenceLogprobModel, dataset: BuiltDataset, get_batch) -> dict[str, float]:
    cfg: SFTConfig = run.cfg
    was_training = policy.training
    policy.eval()
    shard = list(eval_shard(len(dataset), run.info.world_size, run.info.rank))
    sums = {"loss": torch.zeros((), device=run.info.device), "count": torch.zeros((), device=run.info.device)}
    for i in range(0, len(shard), cfg.per_device_eval_batch_size):
        batch, _ = get_batch(shard[i:i + cfg.per_device_eval_batch_size])
        with autocast(cfg.bf16, run.info.device):
            out = policy(batch.input_ids, batch.attention_mask, batch.loss_mask)
        _, s = nll(out.logps, out.lengths)
        sums = {k: sums[k] + s[k] for k in sums}
    policy.train(was_training)
    metrics = reduce_means(sums, run.info)
    metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
    return metrics


@stage
def run_sft(cfg: SFTConfig, *, train_data: Any = None, eval_data: Any = None, model: nn.Module | None = None,
            tokenizer: Any = None, processing_class: Any = None, peft_config: Any = None) -> RunResult:
    """Supervised fine-tuning. From Python: in-memory ``train_data``/``eval_data``, a ``model`` object
    (trained in place), ``tokenizer`` / ``processing_class``, ``peft_config`` (see :mod:`preftune.stages.inputs`)."""
    started = time.perf_counter()
    objects = Objects.of(model, tokenizer, processing_class, peft_config)
    objects.check(cfg)
    cfg = with_peft_config(cfg, objects)
    # 1. Run set-up; the data is found before any model loads.
    run = start_run(cfg)
    info = run.info
    resume_dir = resolve_resume(cfg.resume, cfg.output_dir, run.log)
    resolve_data(run, train_data, eval_data)

    # 2-3. Model, tokenizer, data.
    tokenizer = policy_tokenizer(run, objects)
    train, held_out = load_data(run, build_completion_dataset, train_data, eval_data, tokenizer,
                                completion_field=cfg.completion_field)
    model, tokenizer = load_policy(run, resume_dir, objects, needs_reference=False, tokenizer=tokenizer)
    meta = preflight(run, resume_dir, model, tokenizer, train)
    policy = SequenceLogprobModel(model, cfg.logprob_chunk_size, **packing(run, model))
    ddp_policy = shard(policy, model) if cfg.fsdp and info.enabled else wrap_ddp(policy, info)
    train_batch = make_batches(train, tokenizer.pad_token_id, info.device)
    eval_batch = make_batches(held_out, tokenizer.pad_token_id, info.device) if held_out is not None else None

    # 4. Optimizer, data order, resume.
    optimizer = build_optimizer(policy, cfg)
    sampler, steps = plan_steps(run, train)
    state = restore_state(run, resume_dir, optimizer, policy)
    logger = metrics_logger(run, resume_step=state.step if resume_dir is not None else None)
    result = RunResult(output_dir=run.output_dir, final_dir=None, metrics_file=logger.path)
    save = checkpoint_saver(run, policy.model, tokenizer, optimizer, meta, root=policy)

    def do_eval(step: int) -> dict[str, float]:
        metrics = evaluate(run, policy, held_out, eval_batch)
        logger.log(step, metrics, split="eval")
        run.log(f"eval @ step {step}: nll {metrics['loss']:.4f} · perplexity {metrics['perplexity']:.2f}")
        return metrics

    # 5. Held-out NLL before.
    if held_out is not None and cfg.eval_on_start:
        result.eval_before = eval_before(state, do_eval)

    # 6. Train.
    def compute_loss(batch: CompletionBatch):
        out = ddp_policy(batch.input_ids, batch.attention_mask, batch.loss_mask)
        return with_router_aux(*nll(out.logps, out.lengths), [out.aux_loss], policy.router_aux_coef)

    state = train_loop(cfg=cfg, model=ddp_policy, optimizer=optimizer, source=IndexedBatches(sampler, train_batch),
                       compute_loss=compute_loss, info=info, logger=logger, total_steps=steps, state=state,
                       evaluate=do_eval if held_out is not None else None, save=save, desc="sft")

    # 7. Evaluate after, save.
    if held_out is not None and cfg.eval_strategy != "no":
        result.eval_after = eval_after(state, do_eval)
    return finish(run, result, state, logger, policy.model, tokenizer, save, started, root=policy)


def main(config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    from preftune.config import load_config

    return run_sft(load_config(SFTConfig, config_path, overrides))
