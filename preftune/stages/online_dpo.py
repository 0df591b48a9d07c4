"""Online DPO, top to bottom (Guo et al. 2024, "Direct Language Model Alignment from Online AI
Feedback"; TRL 1.16's OnlineDPOTrainer names where shared): DPO on pairs the current policy samples.

    1. run set-up: threads, process group, seeds, output folder
    2. tokenizer and prompts (train, held-out); the records' other fields go to the rewards
    3. policy (optionally LoRA), its sampler, the frozen reference π_ref, the reward functions
    4. optimizer, generation schedule (one fresh generation per optimizer step), resume state
    5. held-out evaluation before training: reward and KL of sampled completions
    6. the shared optimizer-step loop, fed by a rollout source; each generation (``make_rollout``):
       a. sample two completions per prompt from the current policy, score them (minus
          missing_eos_penalty), the higher-scored one is "chosen" (a tie: the first, as TRL)
       b. π_ref's sequence log-probs of both (no graph)
       and each micro-batch (``compute_loss``): any registered pairwise loss (``loss_type``, default
       sigmoid = DPO) on (chosen, rejected) against π_ref, exactly as the offline dpo stage computes it
    7. held-out evaluation after training, final save

Where it converges, in the exact tabular world: ``preftune theory`` (docs/theory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from preftune.config import OnlineDPOConfig
from preftune.data.collate import Rows
from preftune.data.prompts import build_prompt_dataset
from preftune.modeling.moe import with_router_aux
from preftune.objectives.pairwise import preference_loss
from preftune.stages.common import eval_mode, preflight, start_run, tokenizer_and_data
from preftune.stages.lifecycle import RunResult, stage
from preftune.stages.online import (
    describe_eval,
    evaluate_online,
    online_parts,
    rollout_source,
    sample_and_score,
)
from preftune.stages.policy import load_policy
from preftune.stages.rollout import TRAIN, Rollout, RolloutBatch, Schedule
from preftune.stages.run_io import open_io
from preftune.train.loop import autocast, train_loop
from preftune.train.optim import build_optimizer


def schedule_of(cfg: OnlineDPOConfig) -> Schedule:
    """per_device_train_batch_size prompts (two completions each) per micro-batch; every optimizer step
    trains on a fresh generation of the current policy (on-policy), pairs kept together."""
    ga = cfg.gradient_accumulation_steps
    return Schedule(prompts=cfg.per_device_train_batch_size * ga, generations=2, chunks=ga, passes=1,
                    accumulation=ga, unit=2)


def chosen_first(score: Tensor) -> Tensor:
    """Row order that puts each prompt's higher-scored completion first ([2P] scores, a prompt's two
    consecutive); a tie keeps the sampled order, as TRL's ``first >= second``."""
    first, second = score[0::2], score[1::2]
    swap = (second > first).long()
    base = torch.arange(0, score.numel(), 2, device=score.device)
    return torch.stack([base + swap, base + 1 - swap], 1).reshape(-1)


def reorder(rows: Rows, order: Tensor) -> Rows:
    return Rows(rows.input_ids[order], rows.attention_mask[order], rows.loss_mask[order], rows.example[order],
                rows.position[order], rows.column[order])


@stage
def run_online_dpo(cfg: OnlineDPOConfig, *, train_data: Any = None, eval_data: Any = None) -> RunResult:
    """Online DPO (or any pairwise loss_type); ``train_data``/``eval_data`` may be in-memory prompt records."""
    # 1. Set-up: the folder, the checkpoint to resume from.
    run = start_run(cfg)
    info = run.info
    run.log(f"online DPO: {', '.join(cfg.loss_type)} · β {cfg.beta} · two completions per prompt, ranked by the "
            "reward")

    # 2. Tokenizer, prompts (found before any model loads), then the policy.
    tokenizer, train, held_out = tokenizer_and_data(run, build_prompt_dataset, train_data, eval_data)
    model, tokenizer = load_policy(run, tokenizer=tokenizer)
    meta = preflight(run, model, tokenizer, train)

    # 3. Policy (scored at T = 1: DPO's log-ratios are the model's), sampler, reference, rewards.
    online, reference, rewards = online_parts(run, model, tokenizer, cfg.max_new_tokens, score_temperature=1.0)
    policy = online.policy

    # 4. Optimizer, generation schedule, resume.
    optimizer = build_optimizer(online.policy, cfg, run.log)
    schedule = schedule_of(cfg)

    @torch.no_grad()
    def make_rollout(generation: int, examples: list, slots: list[int]) -> Rollout:
        samples = sample_and_score(run, online, tokenizer, rewards, examples, slots, 2, TRAIN, generation,
                                   (generation, steps))
        stats = samples.stats(info.device)
        score = torch.nan_to_num(stats["reward"], nan=0.0)   # a completion no reward scored counts as 0
        if cfg.missing_eos_penalty is not None:
            score = score - cfg.missing_eos_penalty * (1 - stats["eos_fraction"])
        order = chosen_first(score)
        rows = reorder(samples.rows, order)
        with eval_mode(policy), autocast(cfg.bf16, info.device):
            ref_logps = reference(rows).double().sum(1).float()
        score = score[order]
        margin = (score[0::2] - score[1::2]).repeat_interleave(2)
        stats = {k: v[order] for k, v in stats.items()}
        stats.update({"scores_margin": margin, "ties": (margin == 0).float()})
        return Rollout(rows, samples.group_index(2)[order], {"ref_logps": ref_logps}, stats)

    def compute_loss(batch: RolloutBatch) -> tuple[Tensor, dict[str, Tensor]]:
        rows = batch.rows
        out = online.trained(rows.input_ids, rows.attention_mask, rows.loss_mask)
        ref = batch.data["ref_logps"]
        loss, sums = preference_loss(cfg, out.logps[0::2], out.logps[1::2], ref[0::2], ref[1::2],
                                     (out.lengths[0::2], out.lengths[1::2]))
        kl = (out.logps.detach() - ref).sum()
        sums = {**sums, "kl": kl, "count:kl": torch.tensor(float(len(rows)), device=kl.device), **batch.stat_sums()}
        return with_router_aux(loss, sums, [out.aux_loss], policy.router_aux_coef)

    source, steps = rollout_source(run, schedule, train, make_rollout)
    io = open_io(run, optimizer, policy.model, tokenizer, meta, root=online.trained, restore=source.restore,
                 extra=source.checkpoint)

    def measure(step: int) -> dict[str, float]:
        return evaluate_online(run, online, tokenizer, rewards, reference, held_out, 1, (step, steps))

    evaluate = io.evaluation(held_out, measure, describe_eval)

    # 5. Held-out evaluation before training.
    io.eval_before(evaluate)

    # 6. Train: the shared loop, fed by the rollout source.
    state = train_loop(cfg=cfg, model=online.trained, optimizer=optimizer, source=source, compute_loss=compute_loss,
                       info=info, logger=io.logger, total_steps=steps, state=io.state, evaluate=evaluate, save=io.save,
                       desc="online-dpo")

    # 7. Evaluate after, save.
    return io.finish(state, evaluate, policy.model, tokenizer, root=online.trained)


def main(config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    from preftune.config import load_config

    return run_online_dpo(load_config(OnlineDPOConfig, config_path, overrides))
