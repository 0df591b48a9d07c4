"""Online KL-regularised RL, top to bottom (docs/maths.md §objective, §rl): PPO, RLOO and REINFORCE.

The objective is J(π) = E_{x, y~π}[r(x, y)] − β KL(π ‖ π_ref).

    1. run set-up: threads, process group, seeds, output folder
    2. tokenizer and prompts (train, held-out)
    3. policy (optionally LoRA; PPO adds a value head on its own hidden states), sampler, π_ref, rewards
    4. optimizer, rollout schedule, KL controller, resume state
    5. held-out evaluation before training: mean reward and KL of sampled completions
    6. the shared optimizer-step loop, fed by a rollout source; each generation (``make_rollout``):
       a. sample num_generations completions per prompt (KV cache, stop at EOS), score them
       b. per-token log-probs (and values) under π_old, and under π_ref, without a graph
       c. KL-penalised reward: per token for PPO (−β·kl_t, score at the last token), per sequence for
          RLOO / REINFORCE (score − β Σ_t kl_t)
       d. advantages: GAE on the value head (PPO), leave-one-out (RLOO), batch mean (REINFORCE),
          whitened over the rollout of all processes; then β follows the measured KL (adaptive_kl)
       and each micro-batch (``compute_loss``): PPO's clipped surrogate + value loss over
       ppo_epochs × num_mini_batches optimizer steps per rollout, or one policy-gradient step
    7. held-out evaluation after training, final save

The math lives in :mod:`preftune.rl` (tested against hand-derived values); this script only wires it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from preftune import rl
from preftune.config import RLConfig
from preftune.data.prompts import build_prompt_dataset
from preftune.modeling.logprobs import unwrap_causal_lm
from preftune.modeling.moe import with_router_aux
from preftune.stages.common import eval_mode, preflight, start_run, tokenizer_and_data
from preftune.stages.lifecycle import RunResult, stage
from preftune.stages.online import (
    describe_eval,
    evaluate_online,
    global_mean_std,
    global_whiten,
    online_parts,
    per_token,
    rollout_source,
    sample_and_score,
)
from preftune.stages.policy import load_policy
from preftune.stages.rollout import TRAIN, Rollout, RolloutBatch, Schedule
from preftune.stages.run_io import open_io
from preftune.train.distributed import all_reduce_sum
from preftune.train.loop import autocast, train_loop
from preftune.train.optim import build_optimizer


def schedule_of(cfg: RLConfig) -> Schedule:
    """A rollout is per_device_train_batch_size × gradient_accumulation_steps prompts per process; PPO
    makes ppo_epochs passes of num_mini_batches optimizer steps over it, RLOO / REINFORCE one step."""
    if cfg.algorithm == "ppo":
        chunks, passes = cfg.num_mini_batches * cfg.gradient_accumulation_steps, cfg.ppo_epochs
    else:
        chunks, passes = cfg.gradient_accumulation_steps, 1
    return Schedule(prompts=cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
                    generations=cfg.num_generations, chunks=chunks, passes=passes,
                    accumulation=cfg.gradient_accumulation_steps)


@stage
def run_rl(cfg: RLConfig, *, train_data: Any = None, eval_data: Any = None) -> RunResult:
    """Online RL with ``cfg.algorithm``; ``train_data``/``eval_data`` may be in-memory prompt records."""
    # 1. Set-up: the folder, the checkpoint to resume from.
    run = start_run(cfg)
    info = run.info
    run.log(f"algorithm: {cfg.algorithm} · {cfg.num_generations} completion(s) per prompt · KL β {cfg.kl_coef} "
            f"({cfg.kl_estimator}{', adaptive, target ' + str(cfg.kl_target) if cfg.adaptive_kl else ''})")

    # 2. Tokenizer, prompts (found before any model loads), then the policy.
    tokenizer, train, held_out = tokenizer_and_data(run, build_prompt_dataset, train_data, eval_data)
    model, tokenizer = load_policy(run, tokenizer=tokenizer)
    meta = preflight(run, model, tokenizer, train)

    # 3. Policy (+ value head), sampler, reference, rewards.
    value_head = None
    if cfg.algorithm == "ppo":
        value_head = nn.Linear(unwrap_causal_lm(model).config.hidden_size, 1).to(info.device)
        nn.init.zeros_(value_head.weight)   # V ≡ 0 at the start: no arbitrary early advantages
        nn.init.zeros_(value_head.bias)
    online, reference, rewards = online_parts(run, model, tokenizer, cfg.max_new_tokens, value_head=value_head)
    policy = online.policy

    # 4. Optimizer, rollout schedule, KL controller, resume.
    optimizer = build_optimizer(online.policy, cfg, run.log)
    controller = (rl.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
                  else rl.FixedKLController(cfg.kl_coef))

    @torch.no_grad()
    def make_rollout(generation: int, examples: list, slots: list[int]) -> Rollout:
        step = generation * source.schedule.cycle // source.schedule.accumulation
        samples = sample_and_score(run, online, tokenizer, rewards, examples, slots, cfg.num_generations, TRAIN,
                                   generation, (step, total))
        rows, mask = samples.rows, samples.rows.loss_mask
        stats = samples.stats(info.device)
        scored = ~torch.isnan(stats["reward"])
        score = torch.where(scored, stats["reward"], 0.0)
        if cfg.missing_eos_penalty is not None:
            score = score - cfg.missing_eos_penalty * (1 - stats["eos_fraction"])
        with eval_mode(policy), autocast(cfg.bf16, info.device):
            out = per_token(policy, rows)
            ref_logps = reference(rows).float()
        old_logps = out.tokens.float()
        kl = rl.kl_penalty(old_logps, ref_logps, cfg.kl_estimator) * mask
        beta = controller.value
        data: dict[str, Tensor] = {}
        if cfg.algorithm == "ppo":
            token_rewards = rl.token_level_rewards(score, kl, mask, beta)
            advantages, returns = rl.gae(token_rewards, out.values.float(), mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                advantages = global_whiten(advantages, mask, info)
            data = {"old_logps": old_logps, "values": out.values.float(), "returns": returns}
        else:
            returns = score - beta * kl.sum(1)
            if cfg.algorithm == "rloo":
                advantages = rl.rloo_advantages(returns, cfg.num_generations)
            else:
                advantages = returns - global_mean_std(returns, info)[0]
            if cfg.whiten_advantages:
                advantages = global_whiten(advantages, torch.ones_like(advantages, dtype=torch.bool), info)
        # A completion no reward function scored teaches nothing.
        data["advantages"] = advantages * (scored[:, None] if advantages.dim() == 2 else scored)
        seq_kl = kl.sum(1)
        n_kl = all_reduce_sum(torch.stack([seq_kl.sum(), torch.tensor(float(len(seq_kl)), device=info.device)]), info)
        controller.update((n_kl[0] / n_kl[1]).item(), int(n_kl[1].item()))
        stats.update({
            "kl": seq_kl, "non_score_reward": -beta * seq_kl,
            "entropy": -(old_logps * mask).sum(1) / mask.sum(1),
            "reward_std": torch.full_like(score, global_mean_std(score, info)[1].item()),
            "kl_coef": torch.full_like(score, beta),
        })
        return Rollout(rows, samples.group_index(cfg.num_generations), data, stats)

    def compute_loss(batch: RolloutBatch) -> tuple[Tensor, dict[str, Tensor]]:
        rows, mask, d = batch.rows, batch.rows.loss_mask, batch.data
        if cfg.algorithm == "ppo":
            out = per_token(online.trained, rows)
            policy_loss, stats = rl.ppo_policy_loss(out.tokens, d["old_logps"], d["advantages"], mask, cfg.clip_range)
            value_loss, v_stats = rl.value_loss(out.values, d["values"], d["returns"], mask, cfg.clip_range_value)
            loss = policy_loss + cfg.vf_coef * value_loss
            count = mask.sum().float()     # both terms are token means: the step's mean is over its tokens
            parts = {"policy_loss": policy_loss, "value_loss": value_loss, **stats, **v_stats}
        else:
            out = online.trained(rows.input_ids, rows.attention_mask, mask)
            loss = rl.sequence_policy_gradient_loss(out.logps, d["advantages"])
            count = torch.tensor(float(len(rows)), device=mask.device)
            parts = {"policy_loss": loss}
        sums = {k: v.detach() * count for k, v in parts.items() if k != "ratio_mean"}
        # an MoE router's load-balancing loss, added as TRL adds it
        return with_router_aux(loss, {"loss": loss.detach() * count, "count": count, **sums, **batch.stat_sums()},
                               [out.aux_loss], policy.router_aux_coef)

    source, total = rollout_source(run, schedule_of(cfg), train, make_rollout, "rollouts")

    def restore(saved: dict[str, Any]) -> None:
        controller.load_state_dict(saved["kl_controller"])
        if value_head is not None:
            value_head.load_state_dict(saved["value_head"])
        source.restore(saved)

    def extra(s) -> dict[str, Any]:
        return {"kl_controller": controller.state_dict(), **source.checkpoint(s),
                "value_head": value_head.state_dict() if value_head is not None else None}

    io = open_io(run, optimizer, policy.model, tokenizer, meta, root=online.trained, restore=restore, extra=extra)

    def measure(step: int) -> dict[str, float]:
        return evaluate_online(run, online, tokenizer, rewards, reference, held_out)

    evaluate = io.evaluation(held_out, measure, describe_eval)

    # 5. Held-out evaluation before training.
    io.eval_before(evaluate)

    # 6. Train: the shared loop, fed by the rollout source.
    state = train_loop(cfg=cfg, model=online.trained, optimizer=optimizer, source=source, compute_loss=compute_loss,
                       info=info, logger=io.logger, total_steps=total, state=io.state, evaluate=evaluate, save=io.save,
                       desc=cfg.algorithm)

    # 7. Evaluate after, save (the value head next to the final model, for a later PPO run to start from).
    result = io.finish(state, evaluate, policy.model, tokenizer, root=online.trained)
    if value_head is not None and info.is_main and result.final_dir is not None:
        from safetensors.torch import save_file

        save_file(value_head.state_dict(), str(Path(result.final_dir) / "value_head.safetensors"))
    return result


def main(config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    from preftune.config import load_config

    return run_rl(load_config(RLConfig, config_path, overrides))
