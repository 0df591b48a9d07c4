"""Sizing the experiment from a pilot: how many held-out samples a margin needs, and what each stage costs.

**Noise of r\\*.** π_SFT's held-out samples y_ij (prompt i, sample j of k) split r*'s variance in two:
within a prompt, s_w² = the mean over prompts of the sample variance of its k values; between prompts,
τ² = var_i(prompt means) − s_w²/k (the spread of the prompts' true means). A point measured on P prompts
with k samples each has standard error √((τ² + s_w²/k) / P); with k = 1 that is σ/√P, σ² = τ² + s_w²
the per-sample variance.

**Power.** A margin between two points measured independently has standard error √2 times that; it is 2
standard errors when margin ≥ 2·√(2(τ² + s_w²/k)/P), i.e. with

    P ≥ 2 (τ² + s_w²/k) (2 / margin)²  prompts          (k = 1: n = P ≥ 8 σ² / margin²).

This ignores the pairing (every point uses the same prompts and random numbers, so the prompt's share of
the noise, and much of the sampling noise of two policies still close to π_SFT, cancels from a margin): it
is the conservative size. The verdict is paired, so the size is chosen from the pilot's own paired
bootstrap instead: a margin SE of s measured on P₀ prompts shrinks as 1/√P, so

    P ≥ P₀ (s / (margin / 2))²  prompts at the pilot's k              (:func:`paired_prompts_needed`)

taking s as the largest margin SE over the pilot's KL bins (the noisiest place on its curve).

**Cost.** Every stage's ``done.json`` records its CPU seconds; divided by the stage's units of work (SFT
sequences, sampled completions, scored completions, gradient sequences per method) they give unit costs
that predict any other size's CPU time (:func:`predict`). CPU seconds, not wall seconds: on a shared
machine the wall clock also measures the neighbours; on quiet cores wall ≈ CPU seconds / threads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preftune.experiments.catalog import METHODS
from preftune.experiments.config import SentimentExperimentConfig
from preftune.experiments.methods import budget, run_specs

MARGIN = 0.03
Z = 2.0


@dataclass(frozen=True)
class Noise:
    within: float    # s_w²: variance of r* between samples of one prompt
    between: float   # τ²: variance of the prompts' mean r*
    prompts: int
    k: int

    @property
    def sd(self) -> float:
        """σ: the standard deviation of one sample's r* (over prompts and samples)."""
        return math.sqrt(self.within + self.between)

    def point_se(self, prompts: int, k: int) -> float:
        return math.sqrt((self.between + self.within / k) / prompts)

    def margin_se(self, prompts: int, k: int) -> float:
        """Of the difference of two points measured independently on ``prompts`` × ``k`` samples."""
        return math.sqrt(2) * self.point_se(prompts, k)

    def prompts_needed(self, k: int, margin: float = MARGIN, z: float = Z) -> int:
        """Fewest held-out prompts (k samples each) for which ``margin`` is ``z`` standard errors."""
        return math.ceil(2 * (self.between + self.within / k) * (z / margin) ** 2)


def paired_prompts_needed(margin_se: float, prompts: int, margin: float = MARGIN, z: float = Z) -> int:
    """Fewest held-out prompts at which a paired margin whose SE was ``margin_se`` on ``prompts`` prompts has
    SE ≤ margin / z (the SE of a mean over prompts shrinks as 1/√prompts)."""
    if margin_se < 0 or prompts < 1:
        raise ValueError("paired_prompts_needed: margin_se must be >= 0 and prompts >= 1")
    return max(1, math.ceil(prompts * (margin_se * z / margin) ** 2))


def noise(rewards: list[list[float]]) -> Noise:
    """:class:`Noise` of r* from ``rewards[i][j]`` (prompt i, sample j; every prompt the same k >= 2)."""
    k = len(rewards[0]) if rewards else 0
    if k < 2 or any(len(g) != k for g in rewards) or len(rewards) < 2:
        raise ValueError("noise: need >= 2 prompts with the same number (>= 2) of samples each")
    means = [sum(g) / k for g in rewards]
    within = sum(sum((v - m) ** 2 for v in g) / (k - 1) for g, m in zip(rewards, means)) / len(rewards)
    mu = sum(means) / len(means)
    var_means = sum((m - mu) ** 2 for m in means) / (len(means) - 1)
    return Noise(within, max(var_means - within / k, 0.0), len(rewards), k)


# -- cost ------------------------------------------------------------------------------------------------


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def units(cfg: SentimentExperimentConfig, num_pairs: int) -> dict[str, tuple[str, float]]:
    """Each stage's (kind of work, amount) under ``cfg`` with ``num_pairs`` preference pairs."""
    k_eval = cfg.num_eval_prompts * cfg.eval_samples_per_prompt
    out = {"prompts": ("stage_prompts", 1.0), "rstar": ("stage_rstar", 1.0),
           "sft": ("sft_sequence", cfg.sft_num_reviews * cfg.sft_epochs),
           "pairs": ("sample", cfg.num_train_prompts * cfg.samples_per_prompt),
           "point_sft": ("scored_sample", k_eval)}
    if "bon" in cfg.methods:
        out["bon"] = ("sample", min(cfg.bon_prompts or cfg.num_eval_prompts, cfg.num_eval_prompts) * max(cfg.best_of_n))
    if "ppo_rm" in cfg.methods:
        out["rm"] = ("rm_sequence", 2 * num_pairs * cfg.rm_epochs)
    sequences = budget(cfg, num_pairs)
    for spec in run_specs(cfg):
        out[spec.name] = (f"train_{spec.method}", sequences)
        out[f"{spec.name} (points)"] = ("scored_sample", cfg.points_per_run * k_eval)
    return out


def unit_costs(out: Path, cfg: SentimentExperimentConfig) -> dict[str, float]:
    """CPU seconds per unit of each kind of work, from the finished stages in ``out`` (made with ``cfg``)."""
    pairs = _read(out / "pairs" / "done.json") or {}
    plan = units(cfg, int(pairs.get("pairs", 0)))
    spent: dict[str, float] = {}
    amount: dict[str, float] = {}

    def add(kind: str, cpu: float, n: float) -> None:
        spent[kind] = spent.get(kind, 0.0) + cpu
        amount[kind] = amount.get(kind, 0.0) + n

    for stage, (kind, n) in plan.items():
        if stage.endswith(" (points)"):
            continue
        folder = out / "runs" / stage if stage in {s.name for s in run_specs(cfg)} else out / stage
        done = _read(folder / "done.json")
        if done is None or "cpu_seconds" not in done:
            continue
        if kind.startswith("train_"):
            last = max(done["steps"], default=0)
            trained_now = 1 - done.get("resumed_at", 0) / last if last else 1.0
            add(kind, done["train_cpu_seconds"], done["gradient_sequences"] * trained_now)
            add("scored_sample", done["cpu_seconds"] - done["train_cpu_seconds"],
                len(done["points"]) * cfg.num_eval_prompts * cfg.eval_samples_per_prompt)
        elif stage == "pairs":
            add(kind, done["cpu_seconds"], done.get("sampled_now", n))
        elif kind == "rm_sequence":
            add(kind, done["cpu_seconds"], done.get("trained_sequences", n))
        else:
            add(kind, done["cpu_seconds"], n)
    return {kind: spent[kind] / amount[kind] for kind in spent if amount[kind] > 0}


def pair_yield(out: Path, cfg: SentimentExperimentConfig) -> float | None:
    """The share of the asked-for pairs (``pairs_per_prompt`` per train prompt) the pilot got: ties and
    duplicate samples make it less than 1."""
    done = _read(out / "pairs" / "done.json")
    return None if done is None else done["pairs"] / (cfg.num_train_prompts * cfg.pairs_per_prompt)


def expected_pairs(cfg: SentimentExperimentConfig, pair_yield: float) -> int:
    return round(pair_yield * cfg.pairs_per_prompt * cfg.num_train_prompts)


# Work the pilot need not run, priced as work that costs the same: IPO's step is DPO's, PPO-RM's is PPO-GT's
# (plus a reward model's forward), a reward-model sequence is one forward and backward like a DPO sequence.
# A GRPO or online-DPO gradient sequence is, like RLOO's, one sampled completion scored by r*, π_ref's forward
# and one forward and backward, once; RLOO also re-scores it under π_old, so this prices both slightly high.
PROXY = {"train_ipo": "train_dpo", "train_ppo_rm": "train_ppo_gt", "rm_sequence": "train_dpo",
         "train_grpo": "train_rloo", "train_online_dpo": "train_rloo"}


def predict(cfg: SentimentExperimentConfig, costs: dict[str, float], pair_yield: float) -> dict[str, float]:
    """Predicted CPU seconds of each stage under ``cfg`` (NaN where the pilot measured no such work), its
    pairs being ``pair_yield`` of those it asks for (:func:`pair_yield` of the pilot)."""
    num_pairs = expected_pairs(cfg, pair_yield)
    return {stage: costs.get(kind, costs.get(PROXY.get(kind, ""), math.nan)) * n
            for stage, (kind, n) in units(cfg, num_pairs).items()}


def describe_units() -> dict[str, str]:
    return {"stage_prompts": "the prompts stage (split and write the prompts)",
            "stage_rstar": "the r* stage (train the classifier)", "sft_sequence": "SFT sequence", "sample": "sampled completion (r* scored)",
            "scored_sample": "held-out completion with its KL", "rm_sequence": "reward-model sequence",
            **{f"train_{m}": f"{METHODS[m].label} gradient sequence" for m in METHODS}}
