"""The experiment's outputs: ``points.csv``, ``frontier.png``, ``training.png``, ``verdict.json`` (DPO − PPO-GT
per KL bin, for a later run's power calculation) and ``report.md`` (the verdict
per KL bin with paired bootstrap standard errors, the other methods against DPO, win rates against π_SFT,
the power calculation and the pilot's cost model, every point, runtime, configuration)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import platform
from pathlib import Path
from typing import Any

import torch
import yaml

from preftune.config import from_dict, to_dict
from preftune.experiments import frontier, plots, power, stats
from preftune.experiments.config import load_experiment_config
from preftune.experiments.methods import METHODS, budget, run_specs
from preftune.experiments.protocol import Experiment
from preftune.experiments.sampling import PromptValues

CHALLENGER, BASELINE = ("dpo",), ("ppo_gt",)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(v: float | None, digits: int = 4) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def stage_folders(exp: Experiment) -> list[tuple[str, Path]]:
    return [(name, folder) for name, folder, _ in exp.plan()]


def write_outputs(exp: Experiment, points: list[frontier.Point], values: dict[tuple[str, int], PromptValues],
                  wall_seconds: float) -> None:
    out, cfg = exp.out, exp.cfg
    frontier.write_csv(points, out / "points.csv")
    size = (f"{cfg.size} size: {cfg.num_train_prompts} train / {cfg.num_eval_prompts} held-out IMDb prefixes × "
            f"{cfg.eval_samples_per_prompt} sample(s)")
    plots.plot_frontier(points, out / "frontier.png", f"Controlled sentiment ({size})")
    plots.plot_training(points, out / "training.png", f"Reward vs KL along training ({size}); labels: last step")
    main = stats.binned_verdict(points, values, CHALLENGER, BASELINE, resamples=cfg.bootstrap, seed=cfg.seed)
    (out / "verdict.json").write_text(json.dumps({
        "challenger": main.challenger, "baseline": main.baseline, "prompts": main.prompts,
        "samples_per_prompt": cfg.eval_samples_per_prompt, "resamples": main.resamples,
        "bins": [dataclasses.asdict(b) for b in main.bins]}, indent=1) + "\n")
    (out / "report.md").write_text(render(exp, points, values, wall_seconds, main))


def render(exp: Experiment, points: list[frontier.Point], values: dict[tuple[str, int], PromptValues],
           wall_seconds: float, main: stats.BinnedVerdict) -> str:
    cfg = exp.cfg
    missing = [name for name, folder in stage_folders(exp) if not (folder / "done.json").is_file()]
    lines = ["# Controlled sentiment generation: reward vs KL (DPO paper §6.1, offline)", ""]
    if missing:
        lines += [f"**Partial: {len(missing)} stage(s) not done yet ({', '.join(missing)}).** Rerun the same command "
                  "to continue; this report covers what is done.", ""]
    if cfg.size == "pilot":
        lines += ["**This is the pilot**: a small run whose purpose is the power and cost section below; its verdict "
                  "is not a result.", ""]
    lines += [f"**Does DPO's frontier dominate PPO-GT's?** {_headline(main)}", "",
              "![reward vs KL frontier](frontier.png)", ""]
    lines += _verdict_section(main)
    lines += _comparisons(points, values, cfg)
    lines += ["## Reward vs KL along training", "",
              "Each run from π_SFT through its checkpoints (in training order, the last labelled with its step), "
              "±1 standard error; dashed: the method's frontier.", "", "![reward vs KL along training](training.png)",
              ""]
    lines += _win_rates(points, values)
    lines += _setup(exp)
    lines += _power(exp, main, values)
    lines += _scale(exp, points, main)
    lines += _points(points)
    lines += _runtime(exp, wall_seconds)
    # Not output_dir: the report lies in it, and an absolute path names the machine the run happened on.
    settings = {k: v for k, v in to_dict(cfg).items() if k != "output_dir"}
    lines += ["## Configuration", "", "```yaml", yaml.safe_dump(settings, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def _headline(v: stats.BinnedVerdict) -> str:
    if not v.bins:
        return f"Not answerable from this run: {v.text}."
    answer = {"dominates": "Yes on the sign of every margin", "is dominated by": "No: PPO-GT's is above at every bin",
              "crosses": "Neither dominates: the margins change sign"}[v.label]
    sig = (f"significant (beyond 2 standard errors) at {v.count('higher')} bin(s) for DPO and "
           f"{v.count('lower')} for PPO-GT, within the noise at {v.count('within noise')}")
    return f"{answer} — {sig}. {v.text}"


def _verdict_section(v: stats.BinnedVerdict) -> list[str]:
    lines = ["## Verdict per KL bin: DPO − PPO-GT", "",
             "Frontier = the upper concave envelope of a method's measured points and π_SFT (attainable by mixing "
             "two of its policies), interpolated at each KL; compared only up to the smaller of the two methods' "
             "largest measured KL. ±: standard error from a paired bootstrap over the held-out prompts (every point "
             "resampled with the same prompts, envelopes and margins recomputed each time: reward noise, KL noise "
             "and the choice of vertices all included). *z* = margin / SE; |z| > 2 is called significant.", "",
             "| KL (nats) | DPO frontier | PPO-GT frontier | margin | z | at this KL |", "|---|---|---|---|---|---|"]
    for b in v.bins:
        call = {"higher": "DPO higher", "lower": "PPO-GT higher", "within noise": "within noise"}[b.call]
        lines.append(f"| {b.kl:.3g} | {_fmt(b.challenger)} ± {_fmt(b.challenger_se)} | {_fmt(b.baseline)} ± "
                     f"{_fmt(b.baseline_se)} | {b.margin:+.4f} ± {_fmt(b.margin_se)} | {b.z:+.1f} | {call} |")
    lines += ["", "The bins are not independent (neighbouring bins share vertices), so read the table as one curve "
              "of margins with its error band, not as separate tests. An envelope is a maximum over noisy points, "
              "biased upwards by the noise, more so for the method with more points near a bin.", ""]
    return lines


def _comparisons(points: list[frontier.Point], values: dict[tuple[str, int], PromptValues], cfg) -> list[str]:
    others = [m for m in METHODS if m not in CHALLENGER + BASELINE and any(p.method == m for p in points)]
    lines = ["## Every other method against DPO", "",
             "The same procedure (frontiers, bins, paired bootstrap) with DPO as the challenger. Online methods "
             "sample their own completions from the same train prompts and optimise the same r*.", "",
             "| method | bins | DPO higher | within noise | method higher | margins (DPO − method) ± SE |",
             "|---|---|---|---|---|---|"]
    for m in others + list(BASELINE):
        v = stats.binned_verdict(points, values, CHALLENGER, (m,), resamples=cfg.bootstrap, seed=cfg.seed)
        margins = ", ".join(f"{b.kl:.3g}: {b.margin:+.3f}±{b.margin_se:.3f}" for b in v.bins) or "no common KL"
        lines.append(f"| {frontier.LABELS[m]} | {len(v.bins)} | {v.count('higher')} | {v.count('within noise')} | "
                     f"{v.count('lower')} | {margins} |")
    return lines + [""]


def _win_rates(points: list[frontier.Point], values: dict[tuple[str, int], PromptValues]) -> list[str]:
    lines = ["## Win rate against π_SFT", "",
             "How often a policy's sample beats π_SFT's sample of the same held-out prompt (same sample index, so "
             "the same random numbers), judged by r*; ties count ½; ± over prompts. Per run: its last checkpoint; "
             "per method: its point with the highest r*.", "",
             "| method | run | step | r* | KL | win rate vs π_SFT |", "|---|---|---|---|---|---|"]
    for m in METHODS:
        mine = [p for p in points if p.method == m]
        if not mine:
            continue
        last = [max((p for p in mine if p.run == run), key=lambda p: p.step) for run in dict.fromkeys(p.run for p in mine)]
        best = max(mine, key=lambda p: p.reward)
        for p, tag in [*((p, "") for p in last), (best, " (best r*)")]:
            lines.append(f"| {frontier.LABELS[m]}{tag} | {p.run} | {p.step} | {_fmt(p.reward)} | {_fmt(p.kl, 3)} | "
                         f"{_fmt(p.win_rate, 3)} ± {_fmt(p.win_rate_sem, 3)} |")
    return lines + [""]


def _setup(exp: Experiment) -> list[str]:
    cfg, out = exp.cfg, exp.out
    lines = ["## Setup", "",
             f"Base model `{cfg.model_name_or_path}` → π_SFT (fine-tuned on {cfg.sft_num_reviews} IMDb reviews). "
             f"Prompts: IMDb review prefixes of {cfg.prompt_min_words}–{cfg.prompt_max_words} words "
             f"({cfg.num_train_prompts} train, {cfg.num_eval_prompts} held out; prompt, SFT and classifier reviews "
             f"disjoint). Completions: up to {cfg.max_new_tokens} tokens, temperature 1, no top-k/top-p. "
             f"Pairs: {cfg.samples_per_prompt} samples of π_SFT per train prompt, {cfg.pair_mode.replace('_', ' ')}, "
             f"up to {cfg.pairs_per_prompt} per prompt. Each point: mean r* and KL(π ‖ π_SFT) = E[log π(y|x) − "
             f"log π_SFT(y|x)] (summed over the completion's tokens) from the same {cfg.eval_samples_per_prompt} "
             "sample(s) per held-out prompt, identical for every method (±: standard error over prompts); best-of-N "
             "uses KL = log N − (N − 1)/N.", ""]
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
        facts.append(f"**Equal budgets**: every run trains on {budget(cfg, pairs['pairs'])} gradient sequences "
                     "(completions entering a gradient step, counted once per pass: DPO 2 × pairs × epochs; PPO "
                     "rollout completions × ppo_epochs; RLOO, GRPO and online DPO their completions, one pass)")
    rm = _read(out / "rm" / "done.json") or {}
    if rm.get("eval_after"):
        facts.append(f"reward model held-out pair accuracy {rm['eval_before'].get('accuracy', float('nan')):.3f} → "
                     f"{rm['eval_after'].get('accuracy', float('nan')):.3f} ({rm['eval_pairs']} pairs)")
    facts.append("the KL of every point is measured the same way (sequence-level, on fresh held-out samples); in "
                 "training PPO and RLOO subtract β·Σ_t (log π − log π_SFT) from the reward (k1 per token), GRPO adds "
                 "its own KL term to the loss and DPO's β is its implicit KL strength")
    return lines + [f"- {f}" for f in facts] + [""]


def _pilot(exp: Experiment) -> tuple[Path, Any] | None:
    folder = exp.out if exp.cfg.size == "pilot" else exp.out / "pilot"
    saved = _read(folder / "config.json")
    if saved is None or not (folder / "point_sft" / "done.json").is_file():
        return None
    return folder, from_dict(type(exp.cfg), saved)


def _power(exp: Experiment, main: stats.BinnedVerdict, values: dict[tuple[str, int], PromptValues]
           ) -> list[str]:
    cfg = exp.cfg
    lines = ["## Power and cost", ""]
    pilot = _pilot(exp)
    if pilot is None:
        return lines + ["No pilot in this output folder (run_pilot=true runs it as the first stage, `preftune "
                        "experiment sentiment --pilot` alone; either writes `<output_dir>/pilot/`, and this section "
                        "then shows the sizes it implies).", ""]
    folder, pcfg = pilot
    rewards = (_read(folder / "point_sft" / "done.json") or {}).get("rewards") or []
    if pcfg.eval_samples_per_prompt < 2:
        return lines + ["The pilot measured one sample per prompt: its noise cannot be split (set "
                        "eval_samples_per_prompt >= 2 in the pilot).", ""]
    nz = power.noise(rewards)
    target = cfg if cfg.size != "pilot" else load_experiment_config()
    k, prompts = target.eval_samples_per_prompt, target.num_eval_prompts
    lines += [f"From the pilot (`{folder.name}/`, {nz.prompts} held-out prompts × {nz.k} samples of its π_SFT): "
              f"per-sample standard deviation of r* **σ = {nz.sd:.3f}**, of which between prompts τ = "
              f"{math.sqrt(nz.between):.3f} and within a prompt s_w = {math.sqrt(nz.within):.3f}.", "",
              f"A margin of {power.MARGIN} in r* is {power.Z:g} standard errors when the margin's SE ≤ "
              f"{power.MARGIN / power.Z:.3f}. Two points measured independently on P prompts × k samples: SE = "
              "√(2 (τ² + s_w²/k) / P), so P ≥ 2 (τ² + s_w²/k) (2 / 0.03)² = "
              + ", ".join(f"**{nz.prompts_needed(kk)}** prompts at k = {kk}" for kk in (1, 2, 4)) +
              f" (k = 1 is the cheapest per sample: each extra prompt also averages out τ). "
              f"{'The CPU size' if cfg.size == 'pilot' else 'This run'} uses P = {prompts}, k = {k}: predicted "
              f"margin SE {nz.margin_se(prompts, k):.4f} without pairing.", ""]
    lines += _paired_size(folder, prompts, k, "The CPU size" if cfg.size == "pilot" else "This run")
    if main.bins and cfg.size != "pilot":
        ses = sorted(b.margin_se for b in main.bins)
        lines += [f"Measured here (paired bootstrap, DPO − PPO-GT): margin SE {ses[0]:.4f}–{ses[-1]:.4f} (median "
                  f"{ses[len(ses) // 2]:.4f}) — the pairing (same prompts and random numbers for every point) "
                  "removes the prompts' share.", ""]
    costs = power.unit_costs(folder, pcfg)
    got = power.pair_yield(folder, pcfg)
    got = 1.0 if got is None else got   # no pairs stage in the pilot yet: assume every pair asked for
    predicted = power.predict(target, costs, got)
    total = sum(v for v in predicted.values() if not math.isnan(v))
    names = power.describe_units()
    lines += ["Pilot CPU cost per unit of work (CPU seconds of the process, all its threads; on a shared machine "
              "the wall clock would measure the neighbours too):", "", "| work | CPU s per unit |", "|---|---|"]
    lines += [f"| {names.get(kind, kind)} | {v:.3g} |" for kind, v in sorted(costs.items())]
    lines += ["", f"Predicted for {'the CPU size' if cfg.size == 'pilot' else 'this run'}: **{total / 3600:.2f} CPU-hours** "
              f"(≈ {total / 3600 / max(1, target.threads or 2):.2f} h on {target.threads or 2} quiet cores), "
              f"{power.expected_pairs(target, got)} pairs expected (the pilot got {got:.0%} of the pairs it asked "
              "for).", ""]
    if cfg.size != "pilot":
        spent = [(_read(f / "done.json") or {}).get("cpu_seconds") for name, f in stage_folders(exp) if name != "pilot"]
        if spent and all(v is not None for v in spent) and total > 0:
            lines += [f"Measured for this run's stages (the pilot's excluded): **{sum(spent) / 3600:.2f} CPU-hours**, "
                      f"{sum(spent) / total:.2f}× the prediction.", ""]
    if cfg.size == "pilot":
        lines += ["| stage | predicted CPU s |", "|---|---|"]
        lines += [f"| {stage} | {_fmt(v, 0)} |" for stage, v in predicted.items()] + [""]
    return lines


def _paired_size(pilot: Path, prompts: int, k: int, subject: str = "This run") -> list[str]:
    """The size the paired verdict needs, from the pilot's own paired bootstrap (its ``verdict.json``, which
    :func:`write_outputs` writes before the report, so the pilot's own report reads it too)."""
    saved = _read(pilot / "verdict.json") or {}
    ses = [b["margin_se"] for b in saved.get("bins", [])]
    p0, k0 = saved.get("prompts", 0), saved.get("samples_per_prompt", k)
    if not ses or not p0:
        return ["The pilot has no DPO − PPO-GT margin yet, so the paired size cannot be computed from it.", ""]
    worst = max(ses)
    need = power.paired_prompts_needed(worst, p0)
    fits = "meets" if (prompts >= need and k >= k0) else "does not meet"
    return [f"The verdict is paired (every point uses the same prompts and random numbers), so the size comes from "
            f"the pilot's paired bootstrap: its DPO − PPO-GT margin SE is at most **{worst:.4f}** over its "
            f"{len(ses)} KL bin(s) on {p0} prompts × {k0} samples; the SE falls as 1/√P, so a margin of "
            f"{power.MARGIN} is {power.Z:g} SE from P ≥ {p0} ({worst:.4f} · {power.Z:g} / {power.MARGIN})² = "
            f"**{need}** prompts at k = {k0}. {subject} uses P = {prompts}, k = {k}: it {fits} that size (the "
            "pilot's policies are near π_SFT; margins between policies further apart pair less well, so the SEs "
            "measured in a run's own verdict are the ones to read).", ""]


def _scale(exp: Experiment, points: list[frontier.Point], main: stats.BinnedVerdict) -> list[str]:
    cfg = exp.cfg
    kl_top = max((p.kl for p in points if p.step > 0 and p.method != "bon"), default=float("nan"))
    reach = (f"KL up to {main.bins[-1].kl:.3g} nats where DPO and PPO-GT are compared" if main.bins else
             "no KL range shared by DPO and PPO-GT")
    return ["## What this scale can and cannot say", "",
            f"The paper's Fig. 2 (left) trains GPT-2 large (774M parameters) on IMDb prefixes with a large "
            f"pre-trained sentiment classifier as r*, over a much wider KL range. Here: `{cfg.model_name_or_path}`"
            f", {cfg.num_train_prompts} train prompts, r* a TF-IDF classifier, {cfg.max_new_tokens}-token completions, "
            f"a training budget of minutes per run on a CPU, {reach} (largest measured KL {_fmt(kl_top, 2)}). What it "
            "can say: on the same prompts, reward and sample-level KL estimator, with equal gradient budgets and "
            "error bars that include the noise of both axes, which frontier is higher at the KLs reached here, and "
            "whether the difference is larger than the noise. What it cannot say: whether the ordering holds for a "
            "larger model, a stronger r*, longer training or the large-KL end of the paper's plot; hyperparameters "
            "(learning rates, PPO's clipping and value loss, batch sizes) were not tuned per method, which tends to "
            "favour the simpler objective at small budgets; and a CPU-sized PPO is far from converged, so a margin "
            "here measures sample efficiency at this budget as much as the attainable frontier.", ""]


def _points(points: list[frontier.Point]) -> list[str]:
    lines = ["## Points", "", "Also in `points.csv`. `step`: optimizer step (DPO/IPO/GRPO/online DPO) or rollout "
             "(PPO/RLOO) of the checkpoint; N for best-of-N.", "",
             "| method | run | β / KL coef | step | r* | ± | KL | ± | win vs π_SFT | samples |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        lines.append(f"| {frontier.LABELS.get(p.method, p.method)} | {p.run} | {'' if math.isnan(p.beta) else f'{p.beta:g}'}"
                     f" | {p.step} | {_fmt(p.reward)} | {_fmt(p.reward_sem)} | {_fmt(p.kl, 3)} | {_fmt(p.kl_sem, 3)} "
                     f"| {_fmt(p.win_rate, 3)} | {p.n} |")
    return lines + [""]


def _runtime(exp: Experiment, wall_seconds: float) -> list[str]:
    lines = ["## Runtime", "", "| stage | wall s | CPU s | this invocation |", "|---|---|---|---|"]
    wall = cpu = 0.0
    for name, folder in stage_folders(exp):
        done = _read(folder / "done.json")
        if done is None:
            lines.append(f"| {name} | – | – | not done |")
            continue
        wall += float(done.get("seconds", 0.0))
        cpu += float(done.get("cpu_seconds", 0.0))
        skipped = exp.timings.get(name, {}).get("skipped", True)
        lines.append(f"| {name} | {done.get('seconds', 0.0):.0f} | {_fmt(done.get('cpu_seconds'), 0)} | "
                     f"{'done before' if skipped else 'ran'} |")
    threads = exp.cfg.threads or torch.get_num_threads()
    lines += [f"| **all stages** | **{wall:.0f}** ({wall / 3600:.2f} h) | **{cpu:.0f}** ({cpu / 3600:.2f} h) | |", "",
              f"CPU seconds / {threads} threads ≈ {cpu / threads / 3600:.2f} h: the wall time on quiet cores (the "
              f"wall column also counts other jobs sharing the machine). This invocation: {wall_seconds:.0f} s wall. "
              f"Device: {exp.device}, {torch.get_num_threads()} torch thread(s), "
              f"{platform.processor() or platform.machine()}; torch {torch.__version__}; written "
              f"{dt.datetime.now().isoformat(timespec='seconds')}. Runs: {', '.join(s.name for s in run_specs(exp.cfg))}.",
              ""]
    return lines
