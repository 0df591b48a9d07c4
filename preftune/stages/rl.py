"""Online KL-regularised RL, top to bottom (docs/maths.md §objective, §rl): PPO, RLOO and REINFORCE.

The objective is J(π) = E_{x, y~π}[r(x, y)] − β KL(π ‖ π_ref). Each iteration (a *rollout*):

    1. run set-up: threads, process group, seeds, output folder
    2. tokenizer and prompts (train, held-out)
    3. policy (optionally LoRA; PPO adds a value head on its own hidden states), π_ref, reward function
    4. optimizer, prompt order, resume state
    5. held-out evaluation before training: mean reward and KL of sampled completions
    6. the rollout loop:
       a. sample num_generations completions per prompt (``generate``, KV cache, stop at EOS)
       b. score them with the reward function; per-token log-probs under π_old and π_ref (no graph)
       c. KL-penalised reward: per token for PPO (−β·kl_t, score at the last token), per sequence for
          RLOO / REINFORCE (score − β Σ_t kl_t)
       d. advantages: GAE on the value head (PPO), leave-one-out (RLOO), batch mean (REINFORCE)
       e. update: ppo_epochs × num_mini_batches clipped-surrogate steps (PPO) or one policy-gradient step
       f. adapt β (adaptive_kl), log, evaluate / save on schedule
    7. held-out evaluation after training, final save

The math lives in :mod:`preftune.rl` (tested against hand-derived values); this script only wires it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from preftune import rl
from preftune.config import RLConfig, to_dict
from preftune.data.collate import Rows, _pad
from preftune.data.mask import completion_sequence
from preftune.data.prompts import TokenizedPrompt, build_prompt_dataset
from preftune.modeling.load import freeze, load_causal_lm
from preftune.modeling.logprobs import SequenceLogprobModel, unwrap_causal_lm
from preftune.rewards import load_reward, score
from preftune.stages.common import (
    Run,
    RunResult,
    finish,
    load_data,
    load_policy,
    metrics_logger,
    model_kwargs,
    packing,
    plan_steps,
    policy_tokenizer,
    preflight,
    require_optimizer_state,
    start_run,
)
from preftune.stages.inputs import policy_path, resolve_data
from preftune.train.cadence import Cadence
from preftune.train.checkpoint import load_trainer_state, resolve_resume, save_checkpoint, set_rng_state
from preftune.train.distributed import all_reduce_sum, wrap_ddp
from preftune.train.loop import LoopState, autocast, guarded_step, reduce_means, stop_if_diverged
from preftune.train.metrics import format_postfix, progress_bar
from preftune.train.optim import build_optimizer, lr_schedule, set_lr
from preftune.train.sampler import eval_shard

EVAL_SEED_OFFSET = 7919  # held-out sampling uses its own seed: the same noise before and after training


@dataclass
class Rollout:
    """N = prompts × num_generations sampled completions and everything the update needs ([N, T] aligned)."""

    rows: Rows
    scores: Tensor         # [N] reward function (minus missing_eos_penalty)
    old_logps: Tensor      # [N, T] per token under π_old (the sampling policy)
    ref_logps: Tensor      # [N, T] per token under π_ref
    values: Tensor | None  # [N, T] V(prefix) under π_old's value head (PPO)
    kl: Tensor             # [N, T] per-token KL estimate, 0 off the completion
    ended: Tensor          # [N] bool: the completion stopped at EOS
    seconds_generating: float

    @property
    def mask(self) -> Tensor:
        return self.rows.loss_mask

    def __len__(self) -> int:
        return len(self.rows)


# ----------------------------------------------------------------------------------------------------
# a. Sampling


@torch.no_grad()
def generate(lm: nn.Module, tokenizer: Any, prompts: list[tuple[int, ...]], cfg: RLConfig,
             device: torch.device) -> list[list[int]]:
    """Sample one completion per prompt; each ends at its first EOS (kept) or after max_new_tokens."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    # Left padding, so that every prompt ends where generation starts.
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = lm.generate(input_ids=ids, attention_mask=attention, do_sample=True, temperature=cfg.temperature,
                      top_p=cfg.top_p, top_k=0, max_new_tokens=cfg.max_new_tokens, use_cache=True,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    completions = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[:row.index(tokenizer.eos_token_id) + 1]
        completions.append(row)
    return completions


def make_rows(prompts: list[tuple[int, ...]], completions: list[list[int]], pad_id: int,
              device: torch.device) -> Rows:
    """Right-padded prompt | completion rows, the layout every log-prob computation here expects."""
    ids, attention, mask = _pad([completion_sequence(p, c) for p, c in zip(prompts, completions)], pad_id, None)
    n = torch.arange(len(prompts))
    return Rows(ids, attention, mask, n, n, torch.zeros_like(n)).to(device)


def per_token(model: nn.Module, rows: Rows):
    return model(rows.input_ids, rows.attention_mask, rows.loss_mask, per_token=True)


def build_reference(run: Run, policy: SequenceLogprobModel):
    """``reference(rows) -> [N, T]`` per-token log-probs of π_ref (fresh samples: nothing to precompute)."""
    cfg: RLConfig = run.cfg
    if cfg.use_peft and cfg.ref_model_name_or_path is None:
        run.log("reference: the policy with its LoRA adapter disabled")

        def adapter_disabled(rows: Rows) -> Tensor:
            with policy.model.disable_adapter():
                return per_token(policy, rows).tokens
        return adapter_disabled
    path = cfg.ref_model_name_or_path or policy_path(cfg)
    frozen = freeze(load_causal_lm(path, run.info.device, **model_kwargs(cfg)))
    ref = SequenceLogprobModel(frozen, cfg.logprob_chunk_size, temperature=cfg.temperature, **packing(run, frozen))
    run.log(f"reference: {path} (frozen copy)")
    return lambda rows: per_token(ref, rows).tokens


@torch.no_grad()
def collect(run: Run, policy: SequenceLogprobModel, reference, reward_fn, tokenizer: Any,
            examples: list[TokenizedPrompt], generations: int) -> Rollout:
    """Steps a–b: sample ``generations`` completions per prompt (consecutive rows), decode, score;
    per-token log-probs and values of π_old and π_ref."""
    cfg: RLConfig = run.cfg
    device = run.info.device
    prompts = [ex.prompt_ids for ex in examples for _ in range(generations)]
    raw_prompts = [ex.prompt for ex in examples for _ in range(generations)]
    was_training = policy.training
    policy.eval()
    start = time.perf_counter()
    with autocast(cfg.bf16, device):
        completions = generate(unwrap_causal_lm(policy.model), tokenizer, prompts, cfg, device)
    seconds = time.perf_counter() - start
    rows = make_rows(prompts, completions, tokenizer.pad_token_id, device)
    ended = torch.tensor([c[-1] == tokenizer.eos_token_id for c in completions], device=device)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    scores = score(reward_fn, raw_prompts, texts, device)
    if cfg.missing_eos_penalty is not None:
        scores = scores - cfg.missing_eos_penalty * (~ended).float()
    with autocast(cfg.bf16, device):
        out = per_token(policy, rows)
        ref_logps = reference(rows).float()
    policy.train(was_training)
    old_logps = out.tokens.float()
    kl = rl.kl_penalty(old_logps, ref_logps, cfg.kl_estimator) * rows.loss_mask
    return Rollout(rows, scores, old_logps, ref_logps, out.values, kl, ended, seconds)


# ----------------------------------------------------------------------------------------------------
# c–e. Advantages and updates


def select(rows: Rows, idx: Tensor) -> Rows:
    """A minibatch of rows, trimmed to its longest sequence (no compute spent on shared padding)."""
    width = int(rows.attention_mask[idx].sum(1).max())
    return Rows(rows.input_ids[idx, :width], rows.attention_mask[idx, :width], rows.loss_mask[idx, :width],
                rows.example[idx], rows.position[idx], rows.column[idx])


def ppo_update(run: Run, model: nn.Module, params: list[Tensor], optimizer, rollout: Rollout, kl_coef: float,
               state: LoopState, lr_of) -> dict[str, Tensor]:
    """PPO (Schulman et al. 2017) on one rollout: GAE advantages, then ppo_epochs × num_mini_batches
    clipped-surrogate + value-loss steps. Returns per-minibatch sums of the update statistics."""
    cfg: RLConfig = run.cfg
    mask = rollout.mask
    rewards = rl.token_level_rewards(rollout.scores, rollout.kl, mask, kl_coef)
    advantages, returns = rl.gae(rewards, rollout.values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages:
        advantages = rl.masked_whiten(advantages, mask)
    n = len(rollout)
    size = n // cfg.num_mini_batches
    sums: dict[str, Tensor] = {}
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(n, device=mask.device)
        for i in range(cfg.num_mini_batches):
            idx = order[i * size:(i + 1) * size]
            rows = select(rollout.rows, idx)
            width = rows.input_ids.shape[1]
            set_lr(optimizer, lr_of(state.optimizer_steps))
            with autocast(cfg.bf16, run.info.device):
                out = per_token(model, rows)
            sub = rows.loss_mask
            policy_loss, stats = rl.ppo_policy_loss(out.tokens, rollout.old_logps[idx, :width],
                                                    advantages[idx, :width], sub, cfg.clip_range)
            value_loss, v_stats = rl.value_loss(out.values, rollout.values[idx, :width], returns[idx, :width], sub,
                                                cfg.clip_range_value)
            aux_coef = getattr(model, "module", model).router_aux_coef   # an MoE router's loss, as TRL adds it
            loss = policy_loss + cfg.vf_coef * value_loss
            (loss + aux_coef * out.aux_loss if out.aux_loss is not None else loss).backward()
            grad_norm = guarded_step(params, optimizer, cfg.max_grad_norm, state, run.info,
                                     f"rollout {state.step + 1}")
            state.optimizer_steps += 1
            for k, v in {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                         "clipfrac": stats["clipfrac"], "approx_kl": stats["approx_kl"],
                         "vf_clipfrac": v_stats["vf_clipfrac"], "grad_norm": grad_norm.detach(),
                         "updates": torch.ones((), device=mask.device),
                         **({"aux_loss": out.aux_loss.detach()} if out.aux_loss is not None else {})}.items():
                sums[k] = sums[k] + v if k in sums else v
    return sums


def policy_gradient_update(run: Run, model: nn.Module, params: list[Tensor], optimizer, rollout: Rollout,
                           kl_coef: float, state: LoopState, lr_of) -> dict[str, Tensor]:
    """RLOO (Ahmadian et al. 2024) or REINFORCE with a batch-mean baseline: one on-policy step on the
    sequence-level KL-penalised reward R = score − β Σ_t kl_t."""
    cfg: RLConfig = run.cfg
    returns = rollout.scores - kl_coef * rollout.kl.sum(1)
    if cfg.algorithm == "rloo":
        advantages = rl.rloo_advantages(returns, cfg.num_generations)
    else:
        advantages = rl.batch_mean_baseline(returns)
    if cfg.whiten_advantages:
        advantages = rl.masked_whiten(advantages, torch.ones_like(advantages, dtype=torch.bool))
    set_lr(optimizer, lr_of(state.optimizer_steps))
    with autocast(cfg.bf16, run.info.device):
        out = model(rollout.rows.input_ids, rollout.rows.attention_mask, rollout.rows.loss_mask)
    loss = rl.sequence_policy_gradient_loss(out.logps, advantages)
    aux_coef = getattr(model, "module", model).router_aux_coef   # an MoE router's loss, as TRL adds it
    (loss + aux_coef * out.aux_loss if out.aux_loss is not None else loss).backward()
    grad_norm = guarded_step(params, optimizer, cfg.max_grad_norm, state, run.info, f"rollout {state.step + 1}")
    state.optimizer_steps += 1
    return {"policy_loss": loss.detach(), "grad_norm": grad_norm.detach(),
            "updates": torch.ones((), device=loss.device),
            **({"aux_loss": out.aux_loss.detach()} if out.aux_loss is not None else {})}


def rollout_metrics(rollout: Rollout, kl_coef: float) -> dict[str, Tensor]:
    """Per-completion sums (divided by ``count`` when logged)."""
    mask = rollout.mask
    n = torch.tensor(float(len(rollout)), device=mask.device)
    seq_kl = rollout.kl.sum(1)
    return {
        "reward": rollout.scores.sum(),
        "reward_sq": (rollout.scores ** 2).sum(),
        "kl": seq_kl.sum(),
        "non_score_reward": (-kl_coef * seq_kl).sum(),
        "entropy": -(rollout.old_logps * mask).sum(1).div(mask.sum(1)).sum(),
        "response_length": mask.sum().float(),
        "eos_fraction": rollout.ended.float().sum(),
        "count": n,
    }


# ----------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(run: Run, policy: SequenceLogprobModel, reference, reward_fn, tokenizer, dataset) -> dict[str, float]:
    """Mean reward, KL (k1, per completion) and length of one sampled completion per held-out prompt.
    Sampling uses a fixed seed, forked off the training RNG: the same noise at every evaluation, and the
    training stream (hence resume) untouched."""
    cfg: RLConfig = run.cfg
    shard = list(eval_shard(len(dataset), run.info.world_size, run.info.rank))
    sums: dict[str, Tensor] = {}
    devices = [run.info.device] if run.info.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed + EVAL_SEED_OFFSET + run.info.rank)
        for i in range(0, len(shard), cfg.per_device_eval_batch_size):
            examples = [dataset.examples[j] for j in shard[i:i + cfg.per_device_eval_batch_size]]
            rollout = collect(run, policy, reference, reward_fn, tokenizer, examples, 1)
            k1 = (rollout.old_logps - rollout.ref_logps) * rollout.mask
            s = {"reward": rollout.scores.sum(), "kl": k1.sum(), "response_length": rollout.mask.sum().float(),
                 "eos_fraction": rollout.ended.float().sum(), "count": torch.tensor(float(len(rollout)))}
            for k, v in s.items():
                sums[k] = sums[k] + v.to(run.info.device) if k in sums else v.to(run.info.device)
    if not sums:
        sums = {k: torch.zeros((), device=run.info.device) for k in ("reward", "kl", "response_length",
                                                                       "eos_fraction", "count")}
    return reduce_means(sums, run.info)


# ----------------------------------------------------------------------------------------------------
# The script


def run_rl(cfg: RLConfig, *, train_data: Any = None, eval_data: Any = None) -> RunResult:
    """Online RL with ``cfg.algorithm``; ``train_data``/``eval_data`` may be in-memory prompt records."""
    started = time.perf_counter()
    # 1. Set-up.
    run = start_run(cfg)
    info = run.info
    resume_dir = resolve_resume(cfg.resume, cfg.output_dir, run.log)
    run.log(f"algorithm: {cfg.algorithm} · {cfg.num_generations} completion(s) per prompt · KL β {cfg.kl_coef} "
            f"({cfg.kl_estimator}{', adaptive, target ' + str(cfg.kl_target) if cfg.adaptive_kl else ''})")

    # 2. Tokenizer, prompts. Generation needs a pad token distinct from nothing at all.
    resolve_data(run, train_data, eval_data)  # before any model loads
    tokenizer = policy_tokenizer(run)
    train, held_out = load_data(run, build_prompt_dataset, train_data, eval_data, tokenizer)
    model, tokenizer = load_policy(run, resume_dir, tokenizer=tokenizer)
    meta = preflight(run, resume_dir, model, tokenizer, train)

    # 3. Policy (+ value head), reference, reward.
    value_head = None
    if cfg.algorithm == "ppo":
        hidden = unwrap_causal_lm(model).config.hidden_size
        value_head = nn.Linear(hidden, 1).to(info.device)
        nn.init.zeros_(value_head.weight)   # V ≡ 0 at the start: no arbitrary early advantages
        nn.init.zeros_(value_head.bias)
    policy = SequenceLogprobModel(model, cfg.logprob_chunk_size, value_head=value_head, temperature=cfg.temperature,
                                  **packing(run, model))
    ddp_policy = wrap_ddp(policy, info)
    reference = build_reference(run, policy)
    reward_fn = load_reward(cfg.reward, info.device, batch_size=cfg.reward_batch_size)
    run.log(f"reward: {cfg.reward}")

    # 4. Optimizer, prompt order, KL controller, resume.
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = build_optimizer(policy, cfg)
    sampler, rollouts = plan_steps(run, train)
    updates_per_rollout = cfg.ppo_epochs * cfg.num_mini_batches if cfg.algorithm == "ppo" else 1
    total_updates = rollouts * updates_per_rollout
    lr_of = lr_schedule(cfg, total_updates)
    cadence = Cadence.of(cfg, rollouts, sampler.steps_per_epoch)

    controller = (rl.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
                  else rl.FixedKLController(cfg.kl_coef))
    state = LoopState()
    if resume_dir is None:
        torch.manual_seed(cfg.seed + info.rank)  # distinct sampling streams per rank
    else:
        saved = load_trainer_state(resume_dir, info)
        require_optimizer_state(saved, resume_dir)
        optimizer.load_state_dict(saved["optimizer"])
        controller.load_state_dict(saved["kl_controller"])
        if value_head is not None:
            value_head.load_state_dict(saved["value_head"])
        set_rng_state(saved["rng"])
        state = LoopState(step=saved["step"], tokens_seen=saved["tokens_seen"], skipped_steps=saved["skipped_steps"],
                          optimizer_steps=saved["optimizer_steps"])
        run.log(f"resumed from {resume_dir} at rollout {state.step}")
    logger = metrics_logger(run, resume_step=state.step if resume_dir is not None else None)
    result = RunResult(output_dir=run.output_dir, final_dir=None, metrics_file=logger.path)

    def save(s: LoopState) -> None:
        extra = {"tokens_seen": s.tokens_seen, "skipped_steps": s.skipped_steps, "optimizer_steps": s.optimizer_steps,
                 "kl_controller": controller.state_dict(), "config": to_dict(cfg),
                 "value_head": value_head.state_dict() if value_head is not None else None}
        path = save_checkpoint(run.output_dir, s.step, policy.model, tokenizer,
                               None if cfg.save_only_model else optimizer, extra, info, cfg.save_total_limit, meta)
        run.log(f"checkpoint saved: {path}")

    def do_eval(step: int) -> dict[str, float]:
        metrics = evaluate(run, policy, reference, reward_fn, tokenizer, held_out)
        logger.log(step, metrics, split="eval")
        run.log(f"eval @ rollout {step}: reward {metrics['reward']:.4f} · KL {metrics['kl']:.4f} · "
                f"length {metrics['response_length']:.1f}")
        return metrics

    # 5. Held-out evaluation before training.
    if held_out is not None and state.step == 0 and cfg.eval_on_start:
        result.eval_before = do_eval(0)

    # 6. The rollout loop.
    update = ppo_update if cfg.algorithm == "ppo" else policy_gradient_update
    bar = progress_bar(rollouts, state.step, cfg.progress_bar and info.is_main, cfg.algorithm)
    ddp_policy.train()
    while state.step < rollouts:
        t0 = time.perf_counter()
        (indices,) = sampler.micro_batches(state.step)
        kl_coef = controller.value
        rollout = collect(run, policy, reference, reward_fn, tokenizer, [train.examples[i] for i in indices],
                          cfg.num_generations)
        sums = rollout_metrics(rollout, kl_coef)
        sums.update(update(run, ddp_policy, params, optimizer, rollout, kl_coef, state, lr_of))
        state.step += 1
        stop_if_diverged(state, cfg.max_consecutive_skips, cfg.output_dir)
        bar.update(1)
        seconds = time.perf_counter() - t0

        # f. β follows the measured KL (global mean over ranks); log; evaluate and save on schedule.
        packed = all_reduce_sum(torch.stack([sums["kl"].float(), sums["count"].float()]), info)
        mean_kl = (packed[0] / packed[1]).item()
        controller.update(mean_kl, int(packed[1].item()))
        tokens = int(rollout.rows.attention_mask.sum())
        if cadence.log(state.step):
            updates = sums.pop("updates")
            per_update = {k: sums.pop(k) / updates for k in list(sums)
                          if k in ("policy_loss", "value_loss", "clipfrac", "approx_kl", "vf_clipfrac", "grad_norm",
                                   "aux_loss")}
            metrics = reduce_means(sums, info)
            metrics["reward_std"] = max(metrics.pop("reward_sq") - metrics["reward"] ** 2, 0.0) ** 0.5
            metrics.update({k: all_reduce_sum(v.float(), info).item() / info.world_size for k, v in per_update.items()})
            metrics.update({"kl_coef": kl_coef, "lr": lr_of(max(state.optimizer_steps - 1, 0)),
                            "generation_time_share": rollout.seconds_generating / seconds,
                            "tokens_per_s": all_reduce_sum(torch.tensor(float(tokens)), info).item() / seconds,
                            "epoch": state.step / sampler.steps_per_epoch})
            state.tokens_seen += tokens
            logger.log(state.step, metrics)
            state.history.append({"step": state.step, **metrics})
            bar.set_postfix(format_postfix(metrics), refresh=False)
        if held_out is not None and cadence.evaluate(state.step) and state.step < rollouts:
            do_eval(state.step)
        if cadence.save(state.step) and state.step < rollouts and not state.consecutive_skips:
            save(state)
    bar.close()

    # 7. Evaluate after, save (the value head next to the final model, for a later PPO run to start from).
    if held_out is not None and cfg.eval_strategy != "no":
        result.eval_after = do_eval(state.step)
    result = finish(run, result, state, logger, policy.model, tokenizer, save, started)
    if value_head is not None and info.is_main and result.final_dir is not None:
        torch.save(value_head.state_dict(), Path(result.final_dir) / "value_head.pt")
    return result


def main(config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    from preftune.config import load_config

    return run_rl(load_config(RLConfig, config_path, overrides))

