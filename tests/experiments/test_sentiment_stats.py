"""The sentiment experiment's statistics: frontier envelopes, the per-KL-bin verdict and its paired bootstrap
standard errors, win rates, the noise decomposition and sample size of the power calculation, and the
pilot's cost model. Expected values are derived by hand in the comments."""

import json
import math

import numpy as np
import pytest

from preftune.experiments import power, report
from preftune.experiments.config import load_experiment_config
from preftune.experiments.frontier import Point, envelope
from preftune.experiments.sampling import PromptValues, win_rate
from preftune.experiments.stats import binned_verdict, hull_at

NAN = float("nan")


def test_hull_at_by_hand_and_agrees_with_the_point_envelope():
    kl = np.array([0.0, 1.0, 2.0, 2.5, 3.0])
    r = np.array([0.5, 0.7, 0.65, 0.75, 0.9])
    # (2, 0.65) is dominated-by-mixture and (2.5, 0.75) lies under the segment (1, 0.7)–(3, 0.9)
    got = hull_at(kl, r, np.array([-0.1, 0.0, 0.5, 2.0, 3.0, 7.0]))
    assert np.isnan(got[0])
    assert got[1:] == pytest.approx([0.5, 0.6, 0.8, 0.9, 0.9])
    pts = [Point("dpo", "d", 0.1, i, float(y), 0.0, float(x), 0.0, 1) for i, (x, y) in enumerate(zip(kl, r))]
    assert [(p.kl, p.reward) for p in envelope(pts)] == [(0.0, 0.5), (1.0, 0.7), (3.0, 0.9)]


def values_for(rewards, kls):
    """PromptValues with one sample per prompt."""
    return PromptValues([[float(v)] for v in rewards], [[float(v)] for v in kls])


def point(method, run, step, v: PromptValues):
    r = [g[0] for g in v.rewards]
    k = [g[0] for g in v.kls]
    return Point(method, run, 0.1, step, sum(r) / len(r), 0.0, sum(k) / len(k), 0.0, len(r))


def test_binned_verdict_without_noise_is_exact_interpolation():
    # 4 identical prompts: no resample changes anything, so every SE is 0 and the margins are exact.
    # DPO frontier: (0, 0.5) -> (1, 0.7); PPO-GT: (0, 0.5) -> (2, 0.6); compared up to KL 1 (DPO's largest).
    # At KL 0.5: DPO 0.5 + 0.5 · 0.2 = 0.6, PPO-GT 0.5 + 0.25 · 0.1 = 0.525; at KL 1: 0.7 vs 0.55.
    values = {("sft", 0): values_for([0.5] * 4, [0.0] * 4), ("dpo_b", 5): values_for([0.7] * 4, [1.0] * 4),
              ("ppo_k", 3): values_for([0.6] * 4, [2.0] * 4)}
    points = [point("sft", "sft", 0, values[("sft", 0)]), point("dpo", "dpo_b", 5, values[("dpo_b", 5)]),
              point("ppo_gt", "ppo_k", 3, values[("ppo_k", 3)])]
    v = binned_verdict(points, values, resamples=20)
    assert [b.kl for b in v.bins] == [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
    at_half = v.bins[4]
    assert (at_half.challenger, at_half.baseline, at_half.margin) == pytest.approx((0.6, 0.525, 0.075))
    assert v.bins[-1].margin == pytest.approx(0.7 - 0.55)
    assert all(b.margin_se < 1e-12 and b.z > 1e6 and b.call == "higher" for b in v.bins)  # rounding only
    assert v.label == "dominates" and v.count("higher") == 7
    # Swapped roles: the same margins with the other sign.
    w = binned_verdict(points, values, ("ppo_gt",), ("dpo",), resamples=20)
    assert w.label == "is dominated by" and [b.margin for b in w.bins] == pytest.approx([-b.margin for b in v.bins])
    assert binned_verdict(points, values, ("dpo",), ("rloo",)).label == "no data"


def test_bootstrap_standard_error_is_the_paired_one():
    # P prompts with a large shared prompt effect u_i; both methods at KL exactly 1 on every prompt, so the
    # margin at KL 1 is mean(a − b) and its SE is sd(a − b)/√P (the prompt effect cancels); at KL 0.5 both
    # frontiers are halfway from π_SFT: margin and SE are halved.
    rng = np.random.default_rng(0)
    n = 400
    u = rng.normal(0, 0.3, n)
    a, b, s = 0.7 + u + rng.normal(0, 0.05, n), 0.65 + u + rng.normal(0, 0.05, n), 0.5 + u
    values = {("sft", 0): values_for(s, [0.0] * n), ("d", 1): values_for(a, [1.0] * n),
              ("p", 1): values_for(b, [1.0] * n)}
    points = [point("sft", "sft", 0, values[("sft", 0)]), point("dpo", "d", 1, values[("d", 1)]),
              point("ppo_gt", "p", 1, values[("p", 1)])]
    v = binned_verdict(points, values, resamples=2000, seed=1)
    paired = float(np.std(a - b, ddof=1) / math.sqrt(n))
    unpaired = math.sqrt(np.var(a, ddof=1) / n + np.var(b, ddof=1) / n)
    last = v.bins[-1]
    assert last.kl == 1.0 and last.margin == pytest.approx(float(np.mean(a - b)))
    assert last.margin_se == pytest.approx(paired, rel=0.1) and last.margin_se < unpaired / 3
    half = next(x for x in v.bins if x.kl == 0.5)
    assert half.margin == pytest.approx(last.margin / 2) and half.margin_se == pytest.approx(last.margin_se / 2,
                                                                                             rel=1e-6)
    assert last.call == "higher" and last.z > 2


def test_bootstrap_carries_the_noise_of_the_kl_estimates():
    # Same rewards on every prompt (no reward noise at all), KLs noisy across prompts: the frontier at a KL
    # below the point is 0.5 + k · 0.2 / mean(KL), which moves with the resampled KL, so its SE is > 0.
    n = 200
    kls = np.random.default_rng(2).exponential(1.0, n)
    values = {("sft", 0): values_for([0.5] * n, [0.0] * n), ("d", 1): values_for([0.7] * n, kls),
              ("p", 1): values_for([0.6] * n, [3.0] * n)}
    points = [point("sft", "sft", 0, values[("sft", 0)]), point("dpo", "d", 1, values[("d", 1)]),
              point("ppo_gt", "p", 1, values[("p", 1)])]
    v = binned_verdict(points, values, resamples=1000)
    b = next(x for x in v.bins if x.kl == 0.5)
    # delta method: d/dK (0.2 · 0.5 / K) = −0.1 / K², SE(K) = sd/√n
    expected = 0.1 / kls.mean() ** 2 * np.std(kls, ddof=1) / math.sqrt(n)
    assert b.challenger_se == pytest.approx(expected, rel=0.15) and b.baseline_se < 1e-12


def test_win_rate_by_hand():
    # prompt 0: 0.9 > 0.5 wins, 0.1 = 0.1 ties: (1 + ½)/2 = 0.75; prompt 1: 0 < 1 loses: 0
    rate, sem = win_rate([[0.9, 0.1], [0.0, 0.0]], [[0.5, 0.1], [1.0, 1.0]])
    assert rate == pytest.approx(0.375) and sem == pytest.approx(0.375)  # per-prompt 0.75, 0: sd 0.53, /√2
    with pytest.raises(ValueError, match="different prompts"):
        win_rate([[0.1]], [[0.1, 0.2]])


def test_noise_decomposition_and_sample_size_by_hand():
    nz = power.noise([[0.0, 0.0], [1.0, 1.0]])  # all the spread is between prompts
    assert (nz.within, nz.between, nz.sd) == pytest.approx((0.0, 0.5, math.sqrt(0.5)))
    nz = power.noise([[0.0, 1.0], [0.0, 1.0]])  # all of it within: s_w² = 0.5, prompt means equal
    assert (nz.within, nz.between) == pytest.approx((0.5, 0.0))
    # P ≥ 2 (τ² + s_w²/k)(2/0.03)²: 2 · 0.5 · 4444.4 = 4444.4 -> 4445 at k = 1; 2 · 0.25 · 4444.4 at k = 2
    assert nz.prompts_needed(1) == 4445 and nz.prompts_needed(2) == 2223
    assert nz.margin_se(100, 1) == pytest.approx(0.1) and nz.point_se(100, 2) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="same number"):
        power.noise([[0.1, 0.2], [0.3]])


def test_paired_size_scales_the_pilots_margin_se_as_one_over_root_p():
    # SE ≤ 0.03 / 2 = 0.015 is the target; an SE of s on P₀ prompts needs P₀ (s / 0.015)² prompts.
    assert power.paired_prompts_needed(0.015, 100) == 100      # already exactly on target
    assert power.paired_prompts_needed(0.030, 50) == 200       # twice the SE: four times the prompts
    assert power.paired_prompts_needed(0.0075, 96) == 24       # half the SE: a quarter
    assert power.paired_prompts_needed(0.0, 96) == 1
    assert power.paired_prompts_needed(0.01, 10, margin=0.01, z=1.0) == 10
    with pytest.raises(ValueError):
        power.paired_prompts_needed(0.01, 0)


def test_the_report_sizes_the_run_from_the_pilots_verdict_json(tmp_path):
    bins = [{"kl": 0.05, "margin_se": 0.0071}, {"kl": 0.1, "margin_se": 0.0150}, {"kl": 0.2, "margin_se": 0.0120}]
    (tmp_path / "verdict.json").write_text(json.dumps({"prompts": 96, "samples_per_prompt": 2, "bins": bins}))
    text = "\n".join(report._paired_size(tmp_path, 96, 2))
    # The worst bin, 0.0150 on 96 prompts, is exactly the target SE 0.03 / 2: 96 prompts are needed.
    assert "at most **0.0150** over its 3 KL bin(s) on 96 prompts × 2 samples" in text
    assert "= **96** prompts at k = 2. This run uses P = 96, k = 2: it meets that size" in text
    assert "it does not meet that size" in "\n".join(report._paired_size(tmp_path, 64, 2))
    # The pilot's own k is read from the file: 4 samples there, 2 here, is not the size it measured.
    (tmp_path / "verdict.json").write_text(json.dumps({"prompts": 96, "samples_per_prompt": 4, "bins": bins}))
    text = "\n".join(report._paired_size(tmp_path, 96, 2, "The CPU size"))
    assert "prompts at k = 4. The CPU size uses P = 96, k = 2: it does not meet that size" in text
    (tmp_path / "verdict.json").write_text(json.dumps({"prompts": 96, "samples_per_prompt": 2, "bins": []}))
    assert "no DPO − PPO-GT margin yet" in "\n".join(report._paired_size(tmp_path, 96, 2))


def test_noise_recovers_known_components():
    rng = np.random.default_rng(3)
    tau, sw = 0.2, 0.3
    means = rng.normal(0, tau, 4000)
    nz = power.noise([[float(m + e) for e in rng.normal(0, sw, 3)] for m in means])
    assert math.sqrt(nz.between) == pytest.approx(tau, rel=0.06) and math.sqrt(nz.within) == pytest.approx(sw, rel=0.03)


def write(path, payload):
    path.mkdir(parents=True, exist_ok=True)
    (path / "done.json").write_text(json.dumps(payload))


def test_unit_costs_and_prediction_by_hand(tmp_path):
    cfg = load_experiment_config(None, ["methods=[dpo,ppo_gt,bon]", "dpo_betas=[0.1]", "ppo_kl_coefs=[0.1]",
                                        "num_train_prompts=10", "num_eval_prompts=20", "eval_samples_per_prompt=2",
                                        "sft_num_reviews=50", "samples_per_prompt=4", "pairs_per_prompt=2",
                                        "best_of_n=[1,4]", "bon_prompts=5", "points_per_run=2"])
    write(tmp_path / "prompts", {"cpu_seconds": 1.0})
    write(tmp_path / "rstar", {"cpu_seconds": 30.0})
    write(tmp_path / "sft", {"cpu_seconds": 100.0})                       # 50 sequences: 2 s each
    write(tmp_path / "pairs", {"cpu_seconds": 40.0, "pairs": 15})          # 10 × 4 = 40 samples: 1 s each
    write(tmp_path / "point_sft", {"cpu_seconds": 80.0})                   # 20 × 2 = 40 scored: 2 s each
    write(tmp_path / "bon", {"cpu_seconds": 20.0, "samples": 4, "prompts": 5})  # 20 samples: 1 s each
    # The DPO run was resumed from step 2 of 4: its training time covers 15 of its 30 sequences.
    for run, method, train, total, seqs, resumed in (("dpo_beta0.1", "dpo", 60.0, 220.0, 30, 2),
                                                     ("ppo_gt_kl0.1", "ppo_gt", 90.0, 250.0, 30, 0)):
        write(tmp_path / "runs" / run, {"method": method, "cpu_seconds": total, "train_cpu_seconds": train,
                                        "gradient_sequences": seqs, "steps": [2, 4], "resumed_at": resumed,
                                        "points": {"2": {}, "4": {}}})
    costs = power.unit_costs(tmp_path, cfg)
    # scored samples: point_sft 80 s / 40, dpo 160 s / 80, ppo 160 s / 80 -> 400 / 200 = 2 s
    assert costs == pytest.approx({"stage_prompts": 1.0, "stage_rstar": 30.0, "sft_sequence": 2.0, "sample": 1.0,
                                   "scored_sample": 2.0, "train_dpo": 4.0, "train_ppo_gt": 3.0})
    # pairs resumed with 30 of its 40 samples drawn before: 10 s for the last 10 -> with bon's 20 s / 20: 1 s
    write(tmp_path / "pairs", {"cpu_seconds": 10.0, "pairs": 15, "sampled_now": 10})
    assert power.unit_costs(tmp_path, cfg)["sample"] == pytest.approx(1.0)
    assert power.pair_yield(tmp_path, cfg) == 0.75   # 15 of the 10 × 2 pairs asked for
    big = load_experiment_config(None, ["methods=[dpo,ipo,ppo_gt,bon]", "dpo_betas=[0.1]", "ipo_betas=[0.5]",
                                        "ppo_kl_coefs=[0.1,1]", "num_train_prompts=100", "num_eval_prompts=50",
                                        "eval_samples_per_prompt=1", "sft_num_reviews=10", "samples_per_prompt=2",
                                        "pairs_per_prompt=1", "best_of_n=[1,2]", "points_per_run=3"])
    # 100 prompts × 1 pair asked × 0.75 -> 75 pairs -> 150 gradient sequences per run
    assert power.expected_pairs(big, 0.75) == 75
    got = power.predict(big, costs, 0.75)
    assert got["sft"] == 20.0 and got["pairs"] == 200.0 and got["point_sft"] == 100.0 and got["bon"] == 100.0
    assert got["dpo_beta0.1"] == 600.0 and got["ipo_beta0.5"] == 600.0  # IPO priced as DPO
    assert got["ppo_gt_kl1"] == 450.0 and got["ppo_gt_kl1 (points)"] == 3 * 50 * 2.0


def test_online_methods_the_pilot_skipped_are_priced_as_rloo():
    cfg = load_experiment_config(None, ["methods=[rloo,grpo,online_dpo]", "rloo_kl_coefs=[0.1]", "grpo_betas=[0.1]",
                                        "online_dpo_betas=[0.5]", "rl_sequences=100", "num_eval_prompts=10",
                                        "eval_samples_per_prompt=2", "points_per_run=3"])
    costs = {"train_rloo": 2.0, "scored_sample": 0.5}
    got = power.predict(cfg, costs, 1.0)
    assert got["rloo_kl0.1"] == got["grpo_beta0.1"] == got["online_dpo_beta0.5"] == 200.0   # 100 sequences × 2 s
    assert got["grpo_beta0.1 (points)"] == 3 * 10 * 2 * 0.5
    assert power.predict(cfg, {**costs, "train_grpo": 3.0}, 1.0)["grpo_beta0.1"] == 300.0  # measured: its own
    assert power.describe_units()["train_online_dpo"] == "online DPO (r*) gradient sequence"
