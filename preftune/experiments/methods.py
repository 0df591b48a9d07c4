"""The trained methods of the sentiment experiment: one entry each in :data:`METHODS`.

An entry says what the method is called, which config key lists the values its runs sweep (one run per
value: DPO's β, PPO's KL coefficient, ...), and how one run is trained (a function of the experiment, the
run and its folder that calls the stage's ``run_*`` API). Everything after training (checkpoints measured
on the held-out prompts, frontier, verdict, plots, report) is the same for every method, so a new method
is one entry here plus its config keys.

**Equal budgets.** Every run trains on the same number of *gradient sequences*: completions that enter a
gradient step, counted once per pass. A DPO run on P pairs for E epochs gets 2·P·E; an online run gets
the same (``rl_sequences`` = null) or what ``rl_sequences`` says, spent as its own schedule requires
(PPO: rollout completions × ppo_epochs; RLOO and GRPO: completions, one pass; online DPO: two completions
per prompt, one pass). Completions are equally long everywhere (``max_new_tokens``; few end early), so
equal sequences are, to within the measured lengths, equal policy-gradient tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from preftune.experiments.io import continue_or_restart

if TYPE_CHECKING:
    from preftune.experiments.config import SentimentExperimentConfig
    from preftune.experiments.sentiment import SentimentExperiment


@dataclass(frozen=True)
class RunSpec:
    name: str    # e.g. dpo_beta0.1, ppo_gt_kl0.05
    method: str  # a key of METHODS
    beta: float  # the swept value: DPO/IPO/online-DPO β, PPO/RLOO KL coefficient, GRPO's β


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    color: str
    sweep_key: str       # config key: the values one run each is trained with
    symbol: str          # how the swept value is written in labels
    run_prefix: str      # run names: f"{name}_{run_prefix}{value:g}"
    online: bool         # samples its own completions (False: trains on the π_SFT pairs)
    train: Callable[[SentimentExperiment, RunSpec, Path, int], int]
    # train(exp, spec, folder, budget_sequences) -> gradient sequences it was given; resumes when interrupted


def run_specs(cfg: SentimentExperimentConfig) -> list[RunSpec]:
    out = []
    for m in METHODS.values():
        if m.name in cfg.methods:
            out += [RunSpec(f"{m.name}_{m.run_prefix}{v:g}", m.name, v) for v in getattr(cfg, m.sweep_key)]
    return out


def budget(cfg: SentimentExperimentConfig, num_pairs: int) -> int:
    """Gradient sequences per run: ``rl_sequences``, or one DPO run's (2 × pairs × dpo_epochs)."""
    return cfg.rl_sequences or max(1, round(2 * num_pairs * cfg.dpo_epochs))


def save_every(steps: int, points: int) -> int:
    return max(1, math.ceil(steps / points))


def _prompts(exp: SentimentExperiment) -> list[dict]:
    lines = (exp.out / "prompts" / "train.jsonl").read_text().splitlines()
    return [{"prompt": json.loads(line)["prompt"]} for line in lines if line.strip()]


def _common(exp: SentimentExperiment, folder: Path) -> dict[str, Any]:
    cfg = exp.cfg
    return {"model_name_or_path": str(exp.sft_dir), "output_dir": str(folder), **continue_or_restart(folder),
            "max_length": cfg.max_prompt_length + cfg.max_new_tokens + 8, "lr_scheduler_type": "constant"}


# -- offline: DPO and IPO on the π_SFT pairs -----------------------------------------------------------


def train_pairwise(exp: SentimentExperiment, spec: RunSpec, folder: Path, sequences: int) -> int:
    from preftune.config import DPOConfig
    from preftune.stages.dpo import run_dpo

    cfg = exp.cfg
    # IPO in the paper's summed form (ipo_sum): TRL's per-token "ipo" reads β on another scale.
    values = {**_common(exp, folder), "beta": spec.beta, "loss_type": ["sigmoid" if spec.method == "dpo" else "ipo_sum"],
              "learning_rate": cfg.dpo_learning_rate, "per_device_train_batch_size": cfg.dpo_batch_size,
              "per_device_eval_batch_size": cfg.dpo_batch_size, "lr_scheduler_type": "constant_with_warmup",
              "warmup_ratio": 0.1}
    dpo_cfg = exp.stage_config(DPOConfig, values, cfg.dpo_extra)
    per_step = dpo_cfg.per_device_train_batch_size * dpo_cfg.gradient_accumulation_steps
    steps = max(1, round(sequences / (2 * per_step)))
    run_dpo(exp.with_steps(dpo_cfg, steps, save_every(steps, cfg.points_per_run)),
            train_data=str(exp.out / "pairs" / "pairs.jsonl"))
    return 2 * per_step * steps


# -- online: PPO (r* or the reward model), RLOO --------------------------------------


def _rl(exp: SentimentExperiment, folder: Path, reward: str, extra: list[str], **values: Any):
    from preftune.config import RLConfig

    cfg = exp.cfg
    common = {k: v for k, v in _common(exp, folder).items() if k != "max_length"}  # online: max_new_tokens bounds
    merged = {**common, "reward": reward, "max_new_tokens": cfg.max_new_tokens, **values}
    return exp.stage_config(RLConfig, merged, extra)


def train_ppo(exp: SentimentExperiment, spec: RunSpec, folder: Path, sequences: int) -> int:
    from preftune.stages.rl import run_rl

    cfg = exp.cfg
    reward = exp.reward_spec() if spec.method == "ppo_gt" else str(exp.out / "rm" / "final")
    per_rollout = cfg.ppo_batch_size * cfg.ppo_epochs  # each rollout completion is trained ppo_epochs times
    rollouts = cfg.ppo_max_steps or max(1, round(sequences / per_rollout))
    rl_cfg = _rl(exp, folder, reward, cfg.ppo_extra, algorithm="ppo", kl_coef=spec.beta,
                 learning_rate=cfg.ppo_learning_rate, per_device_train_batch_size=cfg.ppo_batch_size,
                 per_device_eval_batch_size=cfg.ppo_batch_size, ppo_epochs=cfg.ppo_epochs,
                 num_mini_batches=cfg.ppo_num_mini_batches)
    # The stage counts optimizer steps (ppo_epochs × num_mini_batches per rollout); points fall on rollout ends.
    updates = cfg.ppo_epochs * cfg.ppo_num_mini_batches
    run_rl(exp.with_steps(rl_cfg, rollouts * updates, save_every(rollouts, cfg.points_per_run) * updates),
           train_data=_prompts(exp))
    return per_rollout * rollouts


def train_rloo(exp: SentimentExperiment, spec: RunSpec, folder: Path, sequences: int) -> int:
    from preftune.stages.rl import run_rl

    cfg = exp.cfg
    per_rollout = cfg.rloo_batch_size * cfg.rloo_num_generations
    rollouts = max(1, round(sequences / per_rollout))
    rl_cfg = _rl(exp, folder, exp.reward_spec(), cfg.rloo_extra, algorithm="rloo", kl_coef=spec.beta,
                 num_generations=cfg.rloo_num_generations, learning_rate=cfg.rloo_learning_rate,
                 per_device_train_batch_size=cfg.rloo_batch_size, per_device_eval_batch_size=cfg.rloo_batch_size)
    run_rl(exp.with_steps(rl_cfg, rollouts, save_every(rollouts, cfg.points_per_run)), train_data=_prompts(exp))
    return per_rollout * rollouts


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dpo", "DPO", "tab:blue", "dpo_betas", "β", "beta", False, train_pairwise),
    Method("ipo", "IPO", "tab:cyan", "ipo_betas", "β", "beta", False, train_pairwise),
    Method("ppo_gt", "PPO-GT (r*)", "tab:red", "ppo_kl_coefs", "KL coef", "kl", True, train_ppo),
    Method("ppo_rm", "PPO-RM (reward model)", "tab:orange", "ppo_kl_coefs", "KL coef", "kl", True, train_ppo),
    Method("rloo", "RLOO (r*)", "tab:purple", "rloo_kl_coefs", "KL coef", "kl", True, train_rloo),
)}
