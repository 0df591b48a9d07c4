"""How each method of the sentiment experiment is trained: one trainer per entry of :data:`METHODS`
(:mod:`preftune.experiments.catalog`: its name, label and which config key lists the values its runs sweep,
one run per value: DPO's β, PPO's KL coefficient, ...). A trainer is a function of the experiment, the run
and its folder that calls the stage's ``run_*`` API. Everything after training (checkpoints measured on the
held-out prompts, frontier, verdict, plots, report) is the same for every method, so a new method is one
catalog entry, its trainer in :data:`TRAINERS` and its config keys.

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
from pathlib import Path
from typing import Any

from preftune.experiments.catalog import METHODS, Method, RunSpec
from preftune.experiments.config import SentimentExperimentConfig
from preftune.experiments.io import continue_or_restart
from preftune.experiments.protocol import Experiment

__all__ = ["METHODS", "TRAINERS", "Method", "RunSpec", "budget", "run_specs", "save_every"]

# train(exp, spec, folder, budget_sequences) -> gradient sequences it was given; resumes when interrupted
Trainer = Callable[[Experiment, RunSpec, Path, int], int]


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


def _prompts(exp: Experiment) -> list[dict]:
    lines = (exp.out / "prompts" / "train.jsonl").read_text().splitlines()
    return [{"prompt": json.loads(line)["prompt"]} for line in lines if line.strip()]


def _common(exp: Experiment, folder: Path) -> dict[str, Any]:
    cfg = exp.cfg
    return {"model_name_or_path": str(exp.sft_dir), "output_dir": str(folder), **continue_or_restart(folder),
            "max_length": cfg.max_prompt_length + cfg.max_new_tokens + 8, "lr_scheduler_type": "constant"}


# -- offline: DPO and IPO on the π_SFT pairs -----------------------------------------------------------


def train_pairwise(exp: Experiment, spec: RunSpec, folder: Path, sequences: int) -> int:
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


# -- online: PPO (r* or the reward model), RLOO, GRPO, online DPO ------------------------------------------


def _online(exp: Experiment, cls: type, folder: Path, reward: str, extra: list[str], *,
            length_key: str = "max_new_tokens", **values: Any):
    """An online stage's config, ``reward`` scoring its samples; completions are bounded by ``length_key``
    (GRPO calls it max_completion_length), not ``max_length``."""
    common = {k: v for k, v in _common(exp, folder).items() if k != "max_length"}
    merged = {**common, "reward": reward, length_key: exp.cfg.max_new_tokens, **values}
    return exp.stage_config(cls, merged, extra)


def _rl(exp: Experiment, folder: Path, reward: str, extra: list[str], **values: Any):
    from preftune.config import RLConfig

    return _online(exp, RLConfig, folder, reward, extra, **values)


def train_ppo(exp: Experiment, spec: RunSpec, folder: Path, sequences: int) -> int:
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


def train_rloo(exp: Experiment, spec: RunSpec, folder: Path, sequences: int) -> int:
    from preftune.stages.rl import run_rl

    cfg = exp.cfg
    per_rollout = cfg.rloo_batch_size * cfg.rloo_num_generations
    rollouts = max(1, round(sequences / per_rollout))
    rl_cfg = _rl(exp, folder, exp.reward_spec(), cfg.rloo_extra, algorithm="rloo", kl_coef=spec.beta,
                 num_generations=cfg.rloo_num_generations, learning_rate=cfg.rloo_learning_rate,
                 per_device_train_batch_size=cfg.rloo_batch_size, per_device_eval_batch_size=cfg.rloo_batch_size)
    run_rl(exp.with_steps(rl_cfg, rollouts, save_every(rollouts, cfg.points_per_run)), train_data=_prompts(exp))
    return per_rollout * rollouts


def train_grpo(exp: Experiment, spec: RunSpec, folder: Path, sequences: int) -> int:
    """GRPO on r*: grpo_batch_size prompts × grpo_num_generations completions per optimizer step, one pass
    (every completion enters one gradient step); β is GRPO's KL term in the loss (its k3 estimator)."""
    from preftune.config import GRPOConfig
    from preftune.stages.grpo import run_grpo

    cfg = exp.cfg
    rows = cfg.grpo_batch_size * cfg.grpo_num_generations  # GRPO's batch counts completions (TRL's meaning)
    grpo_cfg = _online(exp, GRPOConfig, folder, exp.reward_spec(), cfg.grpo_extra, beta=spec.beta,
                       length_key="max_completion_length", num_generations=cfg.grpo_num_generations,
                       learning_rate=cfg.grpo_learning_rate, per_device_train_batch_size=rows,
                       per_device_eval_batch_size=rows, temperature=1.0)
    # Each optimizer step trains per_device_train_batch_size × gradient_accumulation_steps completions, whatever
    # steps_per_generation / num_iterations say (a later pass over a generation counts its completions again).
    per_step = grpo_cfg.per_device_train_batch_size * grpo_cfg.gradient_accumulation_steps
    steps = max(1, round(sequences / per_step))
    run_grpo(exp.with_steps(grpo_cfg, steps, save_every(steps, cfg.points_per_run)), train_data=_prompts(exp))
    return per_step * steps


def train_online_dpo(exp: Experiment, spec: RunSpec, folder: Path, sequences: int) -> int:
    """Online DPO judged by r*: each optimizer step samples two completions of online_dpo_batch_size prompts
    from the current policy, r* ranks each pair, then one DPO step (one pass); learning-rate schedule as
    offline DPO's, so the two differ only in where the pairs come from."""
    from preftune.config import OnlineDPOConfig
    from preftune.stages.online_dpo import run_online_dpo

    cfg = exp.cfg
    odpo_cfg = _online(exp, OnlineDPOConfig, folder, exp.reward_spec(), cfg.online_dpo_extra, beta=spec.beta,
                       loss_type=["sigmoid"], learning_rate=cfg.online_dpo_learning_rate,
                       per_device_train_batch_size=cfg.online_dpo_batch_size,
                       per_device_eval_batch_size=cfg.online_dpo_batch_size, temperature=1.0,
                       lr_scheduler_type="constant_with_warmup", warmup_ratio=0.1)
    per_step = 2 * odpo_cfg.per_device_train_batch_size * odpo_cfg.gradient_accumulation_steps
    steps = max(1, round(sequences / per_step))
    run_online_dpo(exp.with_steps(odpo_cfg, steps, save_every(steps, cfg.points_per_run)), train_data=_prompts(exp))
    return per_step * steps


TRAINERS: dict[str, Trainer] = {"dpo": train_pairwise, "ipo": train_pairwise, "ppo_gt": train_ppo, "ppo_rm": train_ppo,
                                "rloo": train_rloo, "grpo": train_grpo, "online_dpo": train_online_dpo}
