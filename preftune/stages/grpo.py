"""GRPO and its family, top to bottom (Shao et al. 2024, "DeepSeekMath", §4; TRL 1.16's GRPOTrainer
names and defaults; ``loss_type`` picks the variant: grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo).

    1. run set-up: threads, process group, seeds, output folder
    2. tokenizer and prompts (train, held-out); the records' other fields (e.g. ``answer``) go to the rewards
    3. policy (optionally LoRA), its sampler, π_ref (only when beta > 0), the reward functions
    4. optimizer, generation schedule (steps_per_generation, num_iterations), resume state
    5. held-out evaluation before training: reward (per function) of sampled or greedy completions
    6. the shared optimizer-step loop, fed by a rollout source; each generation (``make_rollout``):
       a. sample num_generations completions per prompt (KV cache, stop at EOS), score them
       b. group-relative advantages (scale_rewards; several rewards: multi_objective_aggregation),
          computed on the generation batch of every process, this process's rows kept
       c. truncated completions out of the loss (mask_truncated_completions); old log-probs when the
          samples will train a later optimizer step; π_ref's when beta > 0
       and each micro-batch (``compute_loss``): ``preftune.rl.grpo_loss`` → (total, units): the step's
       loss is Σ total / Σ units over its micro-batches and processes (each loss_type's normaliser)
    7. held-out evaluation after training, final save

The math lives in :mod:`preftune.rl` (hand-derived tests, parity with TRL's own code); this script wires it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from preftune import rl
from preftune.config import GRPOConfig
from preftune.config.stages import generations_per_process
from preftune.data.prompts import build_prompt_dataset
from preftune.modeling.moe import with_router_aux
from preftune.stages.common import eval_mode, preflight, start_run, tokenizer_and_data
from preftune.stages.lifecycle import RunResult, stage
from preftune.stages.online import (
    evaluate_online,
    gather_rows,
    online_parts,
    per_token,
    rollout_source,
    sample_and_score,
)
from preftune.stages.policy import load_policy
from preftune.stages.rollout import TRAIN, Rollout, RolloutBatch, Schedule
from preftune.stages.run_io import open_io
from preftune.train.loop import autocast, train_loop
from preftune.train.optim import build_optimizer


def schedule_of(cfg: GRPOConfig) -> Schedule:
    """TRL's schedule: per_device_train_batch_size completions per micro-batch, steps_per_generation
    micro-batches per generation, num_iterations passes; here each process's share holds whole groups."""
    chunks = generations_per_process(cfg)
    rows = cfg.per_device_train_batch_size * chunks
    return Schedule(prompts=rows // cfg.num_generations, generations=cfg.num_generations, chunks=chunks,
                    passes=cfg.num_iterations, accumulation=cfg.gradient_accumulation_steps)


def advantages_of(cfg: GRPOConfig, per_function: Tensor, weights: Tensor, info) -> tuple[Tensor, Tensor, float]:
    """Group-relative advantages and the combined reward of this process's rows, and the reward's std over
    the generation batch. The statistics are those of the whole generation batch (every process's rows,
    gathered), as in TRL: "batch" scaling and normalize_then_sum's batch normalisation see all of it; then
    this process's slice is kept."""
    rows = per_function.shape[0]
    table = gather_rows(per_function, info)                                   # [world · N, F]
    weighted = table * weights.to(table.device)
    total = torch.where(torch.isnan(table).all(1), float("nan"), weighted.nansum(1))
    g = cfg.num_generations
    if cfg.multi_objective_aggregation == "sum_then_normalize":
        adv = rl.group_advantages(total, g, cfg.scale_rewards)
    else:   # each reward normalised in its group, weighted sum, then normalised over the batch (GDPO)
        per = torch.stack([rl.group_advantages(table[:, j], g, "group") for j in range(table.shape[1])], 1)
        summed = torch.where(torch.isnan(table).all(1), float("nan"), (per * weights.to(per.device)).sum(1))
        adv = rl.group_advantages(summed, summed.shape[0], "group")
    mine = slice(info.rank * rows, (info.rank + 1) * rows)
    scored = total[~torch.isnan(total)]
    return adv[mine], total[mine], scored.std().item() if scored.numel() > 1 else 0.0


def describe_eval(step: int, metrics: dict[str, float]) -> str:
    shown = " · ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("rewards/"))
    return (f"eval @ step {step}: reward {metrics['reward']:.4f} ({shown}) · length "
            f"{metrics['response_length']:.1f} · {int(metrics['completions'])} completions")


@stage
def run_grpo(cfg: GRPOConfig, *, train_data: Any = None, eval_data: Any = None) -> RunResult:
    """Train with the GRPO family; ``train_data``/``eval_data`` may be in-memory prompt records."""
    # 1. Set-up: the folder, the checkpoint to resume from.
    run = start_run(cfg)
    info = run.info
    run.log(f"grpo: loss_type {cfg.loss_type} · {cfg.num_generations} completions per prompt · scale_rewards "
            f"{cfg.scale_rewards} · β {cfg.beta} · ε [{cfg.epsilon}, {cfg.epsilon_high or cfg.epsilon}] · "
            f"importance sampling per {cfg.importance_sampling_level}")

    # 2. Tokenizer, prompts (found before any model loads), then the policy.
    tokenizer, train, held_out = tokenizer_and_data(run, build_prompt_dataset, train_data, eval_data)
    model, tokenizer = load_policy(run, tokenizer=tokenizer)
    meta = preflight(run, model, tokenizer, train)

    # 3. Policy, sampler, reference (only for a KL term), rewards.
    online, reference, rewards = online_parts(run, model, tokenizer, cfg.max_completion_length,
                                              reference=cfg.beta > 0)
    policy = online.policy

    # 4. Optimizer, generation schedule, resume.
    optimizer = build_optimizer(online.policy, cfg, run.log)
    schedule = schedule_of(cfg)

    @torch.no_grad()
    def make_rollout(generation: int, examples: list, slots: list[int]) -> Rollout:
        step = generation * schedule.cycle // schedule.accumulation
        samples = sample_and_score(run, online, tokenizer, rewards, examples, slots, cfg.num_generations, TRAIN,
                                   generation, (step, steps))
        rows, mask = samples.rows, samples.rows.loss_mask
        stats = samples.stats(info.device)
        advantages, reward, reward_std = advantages_of(cfg, samples.scores.per_function.to(info.device),
                                                       rewards.weights, info)
        truncated = ~torch.tensor(samples.ended, device=info.device)
        if cfg.mask_truncated_completions:
            rows.loss_mask = rl.mask_truncated(mask, truncated)
        data = {"advantages": advantages}
        if not schedule.on_policy or reference is not None:
            with eval_mode(policy), autocast(cfg.bf16, info.device):
                if not schedule.on_policy:   # later micro-batches train after an update: keep π_old
                    data["old_logps"] = per_token(policy, rows).tokens.float()
                if reference is not None:
                    data["ref_logps"] = reference(rows).float()
        zero_std = rl.zero_std_groups(reward, cfg.num_generations)
        stats.update({"frac_reward_zero_std": zero_std.float().repeat_interleave(cfg.num_generations),
                      "completions/clipped_ratio": truncated.float(),
                      "reward_std": torch.full_like(advantages, reward_std)})
        return Rollout(rows, samples.group_index(cfg.num_generations), data, stats)

    def compute_loss(batch: RolloutBatch) -> tuple[Tensor, dict[str, Tensor]]:
        rows, mask, d = batch.rows, batch.rows.loss_mask, batch.data
        out = per_token(online.trained, rows)
        result = rl.grpo_loss(out.tokens, d["advantages"], mask, old_logprobs=d.get("old_logps"),
                              ref_logprobs=d.get("ref_logps"), loss_type=cfg.loss_type, beta=cfg.beta,
                              epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, delta=cfg.delta,
                              importance_sampling_level=cfg.importance_sampling_level, kl_estimator=cfg.kl_estimator,
                              use_bias_correction_kl=cfg.use_bias_correction_kl,
                              max_completion_length=cfg.max_completion_length,
                              sapo_temperature_pos=cfg.sapo_temperature_pos,
                              sapo_temperature_neg=cfg.sapo_temperature_neg)
        loss, units = result.loss, result.units
        tokens = result.stats.pop("tokens")
        sums = {"loss": loss.detach() * units, "count": units}
        for key, value in result.stats.items():      # token sums: logged as means over tokens
            sums[key] = value
            sums[f"count:{key}"] = tokens
        sums["entropy"] = -torch.where(mask, out.tokens.detach(), 0.0).sum()
        sums["count:entropy"] = tokens
        # an MoE router's load-balancing loss, added as TRL adds it
        return with_router_aux(loss, {**sums, **batch.stat_sums()}, [out.aux_loss], policy.router_aux_coef)

    source, steps = rollout_source(run, schedule, train, make_rollout)
    io = open_io(run, optimizer, policy.model, tokenizer, meta, root=online.trained, restore=source.restore,
                 extra=source.checkpoint)

    def measure(step: int) -> dict[str, float]:
        return evaluate_online(run, online, tokenizer, rewards, reference, held_out, cfg.num_generations_eval or 1,
                               (step, steps))

    evaluate = io.evaluation(held_out, measure, describe_eval)

    # 5. Held-out evaluation before training.
    io.eval_before(evaluate)

    # 6. Train: the shared loop, fed by the rollout source.
    state = train_loop(cfg=cfg, model=online.trained, optimizer=optimizer, source=source, compute_loss=compute_loss,
                       info=info, logger=io.logger, total_steps=steps, state=io.state, evaluate=evaluate, save=io.save,
                       desc=f"grpo/{cfg.loss_type}")

    # 7. Evaluate after, save.
    return io.finish(state, evaluate, policy.model, tokenizer, root=online.trained)


def main(config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    from preftune.config import load_config

    return run_grpo(load_config(GRPOConfig, config_path, overrides))
