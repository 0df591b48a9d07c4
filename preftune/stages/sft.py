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
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from preftune.config import SFTConfig
from preftune.data.collate import CompletionBatch, collate_completions
from preftune.data.dataset import build_completion_dataset
from preftune.modeling.moe import with_router_aux
from preftune.stages.common import plan_steps, preflight, start_run, tokenizer_and_data
from preftune.stages.inputs import Objects, with_peft_config
from preftune.stages.lifecycle import RunResult, stage
from preftune.stages.offline import evaluate, make_batches
from preftune.stages.policy import distribute, load_policy, logprob_model
from preftune.stages.run_io import open_io
from preftune.train.loop import IndexedBatches, train_loop
from preftune.train.optim import build_optimizer


def nll(logps: Tensor, lengths: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Token-mean negative log-likelihood of the completions; sums for exact cross-rank means."""
    tokens = lengths.sum()
    loss = -logps.sum() / tokens.clamp(min=1)
    return loss, {"loss": -logps.detach().sum(), "count": tokens.detach()}


def describe_eval(step: int, metrics: dict[str, float]) -> str:
    return f"eval @ step {step}: nll {metrics['loss']:.4f} · perplexity {metrics['perplexity']:.2f}"


@stage
def run_sft(cfg: SFTConfig, *, train_data: Any = None, eval_data: Any = None, model: nn.Module | None = None,
            tokenizer: Any = None, processing_class: Any = None, peft_config: Any = None) -> RunResult:
    """Supervised fine-tuning. From Python: in-memory ``train_data``/``eval_data``, a ``model`` object
    (trained in place), ``tokenizer`` / ``processing_class``, ``peft_config`` (see :mod:`preftune.stages.inputs`)."""
    objects = Objects.of(model, tokenizer, processing_class, peft_config)
    objects.check(cfg)
    cfg = with_peft_config(cfg, objects)
    # 1. Run set-up: the folder, the checkpoint to resume from.
    run = start_run(cfg)
    info = run.info

    # 2-3. Tokenizer and data (found before any model loads), then the policy.
    tokenizer, train, held_out = tokenizer_and_data(run, build_completion_dataset, train_data, eval_data, objects,
                                                    completion_field=cfg.completion_field)
    model, tokenizer = load_policy(run, objects, needs_reference=False, tokenizer=tokenizer)
    meta = preflight(run, model, tokenizer, train)
    policy = logprob_model(run, model)
    ddp_policy = distribute(run, policy, model)
    train_batch = make_batches(collate_completions, train, tokenizer.pad_token_id, info.device)
    eval_batch = make_batches(collate_completions, held_out, tokenizer.pad_token_id, info.device)

    # 4. Optimizer, data order, resume.
    optimizer = build_optimizer(policy, cfg)
    sampler, steps = plan_steps(run, train)
    io = open_io(run, optimizer, policy.model, tokenizer, meta, root=policy)

    def held_out_nll(batch: CompletionBatch) -> dict[str, Tensor]:
        out = policy(batch.input_ids, batch.attention_mask, batch.loss_mask)
        return nll(out.logps, out.lengths)[1]

    def measure(step: int) -> dict[str, float]:
        metrics = evaluate(run, policy, held_out, eval_batch, held_out_nll, ("loss", "count"))
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
        return metrics

    evaluate_nll = io.evaluation(held_out, measure, describe_eval)

    # 5. Held-out NLL before.
    io.eval_before(evaluate_nll)

    # 6. Train.
    def compute_loss(batch: CompletionBatch):
        out = ddp_policy(batch.input_ids, batch.attention_mask, batch.loss_mask)
        return with_router_aux(*nll(out.logps, out.lengths), [out.aux_loss], policy.router_aux_coef)

    state = train_loop(cfg=cfg, model=ddp_policy, optimizer=optimizer, source=IndexedBatches(sampler, train_batch),
                       compute_loss=compute_loss, info=info, logger=io.logger, total_steps=steps, state=io.state,
                       evaluate=evaluate_nll, save=io.save, desc="sft")

    # 7. Evaluate after, save.
    return io.finish(state, evaluate_nll, policy.model, tokenizer, root=policy)


def main(config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    from preftune.config import load_config

    return run_sft(load_config(SFTConfig, config_path, overrides))
