"""The experiment's outputs: ``points.csv``, ``frontier.png`` and ``report.md`` (config, runtime per stage,
r*'s accuracy, every point, and the verdict computed by :func:`preftune.experiments.frontier.verdict`)."""

from __future__ import annotations

import datetime as dt
import json
import math
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from preftune.config import to_dict
from preftune.experiments import frontier

if TYPE_CHECKING:
    from preftune.experiments.sentiment import SentimentExperiment


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(v: float, digits: int = 4) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def stage_folders(exp: SentimentExperiment) -> list[tuple[str, Path]]:
    from preftune.experiments.sentiment import run_specs

    out = exp.out
    names = [("prompts", out / "prompts"), ("rstar", out / "rstar"), ("sft", out / "sft"), ("pairs", out / "pairs"),
             ("point_sft", out / "point_sft")]
    if "bon" in exp.cfg.methods:
        names.append(("bon", out / "bon"))
    if "ppo_rm" in exp.cfg.methods:
        names.append(("rm", out / "rm"))
    names += [(s.name, out / "runs" / s.name) for s in run_specs(exp.cfg)]
    return names


def write_outputs(exp: SentimentExperiment, points: list[frontier.Point], wall_seconds: float) -> None:
    out = exp.out
    frontier.write_csv(points, out / "points.csv")
    cfg = exp.cfg
    title = (f"Controlled sentiment ({cfg.size} size): {cfg.num_train_prompts} train / {cfg.num_eval_prompts} "
             f"held-out IMDb prefixes, {cfg.eval_samples_per_prompt} samples each")
    frontier.plot(points, out / "frontier.png", title)
    (out / "report.md").write_text(render(exp, points, wall_seconds))


def render(exp: SentimentExperiment, points: list[frontier.Point], wall_seconds: float) -> str:
    cfg = exp.cfg
    out = exp.out
    lines = ["# Controlled sentiment generation: reward vs KL (DPO paper §6.1, offline)", ""]
    main = frontier.verdict(points, ("dpo",), frontier.PPO)
    lines += [f"**Verdict: DPO's frontier {frontier.PHRASES[main.label]} PPO's here{main.qualifier}.** {main.text}", ""]
    lines += ["![reward vs KL frontier](frontier.png)", ""]
    lines += ["## Setup", "",
              f"Base model `{cfg.model_name_or_path}` → π_SFT (fine-tuned on {cfg.sft_num_reviews} IMDb reviews). "
              f"Prompts: IMDb review prefixes of {cfg.prompt_min_words}–{cfg.prompt_max_words} words "
              f"({cfg.num_train_prompts} train, {cfg.num_eval_prompts} held out; prompt, SFT and classifier reviews "
              f"disjoint). Completions: up to {cfg.max_new_tokens} tokens, temperature 1, no top-k/top-p. "
              f"Pairs: {cfg.samples_per_prompt} samples of π_SFT per prompt, {cfg.pair_mode.replace('_', ' ')}. "
              "Each point: mean r* and KL(π ‖ π_SFT) = E[log π(y|x) − log π_SFT(y|x)] from the same "
              f"{cfg.eval_samples_per_prompt} samples per held-out prompt (±: standard error over prompts); "
              "best-of-N uses KL = log N − (N − 1)/N.", ""]
    rs = _read(out / "rstar" / "done.json") or {}
    if rs.get("reward") == "classifier":
        lines += [f"**r\\*** = P(positive) of TF-IDF (1–2-grams) + logistic regression trained on "
                  f"{rs['train_windows']} windows of {rs['window_words']} words from {rs['train_reviews']} IMDb "
                  f"reviews. Accuracy: **{rs['rotten_tomatoes_accuracy']:.3f} on the {rs['rotten_tomatoes_rows']} "
                  f"Rotten Tomatoes rows**, {rs['held_out_window_accuracy']:.3f} on held-out {rs['window_words']}-word "
                  f"windows, {rs['held_out_review_accuracy']:.3f} on {rs['held_out_reviews']} held-out full reviews.", ""]
    elif rs:
        lines += [f"**r\\*** = `{rs.get('reward')}` (a user-supplied reward function).", ""]
    facts = []
    sft = _read(out / "sft" / "done.json") or {}
    if sft.get("eval_before"):
        facts.append(f"π_SFT held-out NLL per token {sft['eval_before']['loss']:.3f} → {sft['eval_after']['loss']:.3f}")
    pairs = _read(out / "pairs" / "done.json") or {}
    if pairs:
        facts.append(f"{pairs['pairs']} pairs from {pairs['samples']} π_SFT samples (mean r* "
                     f"{pairs['mean_sample_reward']:.3f}, mean chosen − rejected gap {pairs['mean_gap']:+.3f})")
    rm = _read(out / "rm" / "done.json") or {}
    if rm.get("eval_after"):
        facts.append(f"reward model held-out pair accuracy {rm['eval_before'].get('accuracy', float('nan')):.3f} → "
                     f"{rm['eval_after'].get('accuracy', float('nan')):.3f} ({rm['eval_pairs']} pairs)")
    lines += [f"- {f}" for f in facts] + ([""] if facts else [])

    lines += ["## Verdicts", ""]
    for chal, base in ((("dpo",), frontier.PPO), (("dpo",), ("ppo_gt",)), (("dpo",), ("ppo_rm",)),
                       (("ipo",), frontier.PPO), (("dpo", "ipo"), frontier.PPO)):
        v = frontier.verdict(points, chal, base)
        if v.label != "no data":
            lines.append(f"- {v.text}")
    lines += ["", "A method's frontier: the upper concave envelope of its points and π_SFT (attainable by mixing "
              "two of its policies, since KL is convex). Each PPO point against DPO's frontier at its KL:", "",
              "| PPO point | r* | KL | DPO frontier at that KL | gap | verdict |", "|---|---|---|---|---|---|"]
    for p, f, f_se in main.rows:
        if f is None:
            lines.append(f"| {p.run} @ {p.step} | {_fmt(p.reward)} ± {_fmt(p.reward_sem)} | {_fmt(p.kl, 3)} | "
                         "no DPO point at so little KL | | not dominated |")
            continue
        gap = f - p.reward
        lines.append(f"| {p.run} @ {p.step} | {_fmt(p.reward)} ± {_fmt(p.reward_sem)} | {_fmt(p.kl, 3)} | "
                     f"{_fmt(f)} ± {_fmt(f_se)} | {gap:+.4f} | {'dominated' if gap >= 0 else 'not dominated'} |")
    lines += ["", "Small runs, noisy points: read the verdict with the standard errors next to it. With more "
              "prompts, samples and steps (`--gpu`) the points tighten and the runs move further.", ""]

    lines += ["## Points", "", "Also in `points.csv`. `step`: optimizer step (DPO/IPO) or rollout (PPO) of the "
              "checkpoint; N for best-of-N.", "",
              "| method | run | β / KL coef | step | r* | ± | KL | ± | samples |", "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {frontier.LABELS.get(p.method, p.method)} | {p.run} | {'' if math.isnan(p.beta) else f'{p.beta:g}'}"
                     f" | {p.step} | {_fmt(p.reward)} | {_fmt(p.reward_sem)} | {_fmt(p.kl, 3)} | {_fmt(p.kl_sem, 3)} "
                     f"| {p.n} |")
    lines += ["", "## Runtime", "", "| stage | seconds | this invocation |", "|---|---|---|"]
    total = 0.0
    for name, folder in stage_folders(exp):
        done = _read(folder / "done.json") or {}
        seconds = float(done.get("seconds", 0.0))
        total += seconds
        skipped = exp.timings.get(name, {}).get("skipped", True)
        lines.append(f"| {name} | {seconds:.1f} | {'skipped (done before)' if skipped else 'ran'} |")
    lines += [f"| **all stages** | **{total:.1f}** ({total / 60:.1f} min) | |", "",
              f"This invocation: {wall_seconds:.1f} s wall. Device: {exp.device}, {torch.get_num_threads()} torch "
              f"thread(s), {platform.processor() or platform.machine()}; torch {torch.__version__}; written "
              f"{dt.datetime.now().isoformat(timespec='seconds')}.", ""]
    lines += ["## Configuration", "", "```yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
