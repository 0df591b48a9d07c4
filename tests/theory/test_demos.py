"""The convergence claims (docs/maths.md §claims) as tests, on the quick settings (a few seconds)."""

from __future__ import annotations

import pytest

from preftune.theory.demos import Settings
from preftune.theory.report import write_report

# ``results`` (tests/theory/conftest.py): every demonstration, run once on the quick settings.


def _value(results, demo: str, metric_start: str) -> float:
    checks = results[1][demo].checks
    exact = [c for c in checks if c.metric == metric_start]
    [check] = exact or [c for c in checks if c.metric.startswith(metric_start)]
    return check.value


def test_dpo_and_ppo_reach_pi_star(results):
    # Tolerance 1e-2 on E_x KL(π_θ ‖ π*), the brief's threshold.
    assert _value(results, "same_optimum", "KL(π_DPO ‖ π*) population") < 1e-2
    assert _value(results, "same_optimum", "KL(π_DPO ‖ π*) 200000 sampled") < 1e-2
    assert _value(results, "same_optimum", "KL(π_PPO") < 1e-2
    assert _value(results, "same_optimum", "KL(π_REINFORCE") < 1e-2


def test_reward_shift_gives_same_optimum(results):
    assert _value(results, "reward_shift", "max |π*(r+f)") < 1e-12
    assert _value(results, "reward_shift", "KL(π_DPO(r+f)") < 1e-2


def test_recovered_reward_matches_r_star_up_to_f(results):
    # Population DPO: max_y |β log π/π_ref − r* − f(x)| < 1e-3 with the best per-prompt f(x).
    assert _value(results, "theorem1", "max_y |r̂") < 1e-3
    # 200k sampled pairs: π*-weighted RMS error < 0.1 (sampling noise, not bias).
    assert _value(results, "theorem1", "π*-weighted RMS") < 0.1


def test_unlikelihood_ends_far_from_pi_star(results):
    assert _value(results, "unlikelihood", "KL(π_UL ‖ π*)") > 0.1
    assert _value(results, "unlikelihood", "KL(π_UL ‖ π*) / max") > 1e3
    assert _value(results, "unlikelihood", "chosen completions") > 0.5


def test_ipo_settles_dpo_pushes_to_boundary(results):
    assert _value(results, "ipo_vs_dpo", "IPO max |h") < 1e-3
    assert _value(results, "ipo_vs_dpo", "DPO min margin") > 5.0
    assert _value(results, "ipo_vs_dpo", "DPO max π(y_l)") < 1e-3


def test_sacpo_two_stages_match_combined_optimum(results):
    assert _value(results, "sacpo", "exact") < 1e-12
    assert _value(results, "sacpo", "KL(π_stage2") < 1e-2


def test_every_check_passes_and_report_renders(results, tmp_path):
    world, res = results
    failed = [(c.demo, c.metric, c.value) for r in res.values() for c in r.checks if not c.passed]
    assert not failed
    path = write_report(tmp_path, world, Settings.quick(), res, seconds=0.0, quick=True)
    text = path.read_text(encoding="utf-8")
    assert "| demonstration | metric | value | threshold | result |" in text and "**FAIL**" not in text
    pytest.importorskip("matplotlib")
    assert (tmp_path / "kl_to_optimum.png").stat().st_size > 0
    assert (tmp_path / "recovered_reward.png").stat().st_size > 0


def test_sampled_rloo_reaches_pi_star(results):
    # K fresh completions per prompt per step, leave-one-out baseline: sampling noise only.
    assert _value(results, "sampled_rl", "KL(π_RLOO ‖ π*)") < 1e-2


def test_sampled_ppo_reaches_pi_star_with_k1_not_k3(results):
    assert _value(results, "sampled_rl", "KL(π_PPO ‖ π*), k1") < 1e-2
    # k3 in the reward: unbiased KL value, biased gradient; the run settles far from π*.
    assert _value(results, "sampled_rl", "KL(π_PPO-k3 ‖ π*)") > 0.1
