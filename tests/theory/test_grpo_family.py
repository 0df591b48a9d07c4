"""The GRPO-family table's claims (preftune.theory.demos_grpo), on the quick settings: each variant lands on
the limit its expected gradient predicts, and the predictions that differ from π* really differ."""

from __future__ import annotations

import pytest
import torch

from preftune.theory.demos_grpo import PI_STAR, POINT_MASS, binary_reward


def _rows(results):
    return results[1]["grpo_family"].numbers["rows"]


def _row(results, start: str, estimate: str = ""):
    [row] = [r for r in _rows(results) if r.name.startswith(start) and r.estimate.startswith(estimate)]
    return row


def test_every_variant_has_a_row_and_a_verdict(results):
    names = " | ".join(r.name for r in _rows(results))
    for needle in ("Dr. GRPO", "std scaling", "loss_type=grpo", "loss_type=dapo", "GSPO", "clip-higher", "CISPO",
                   "REINFORCE++,", "REINFORCE++-baseline", "online DPO, Bradley–Terry", "online DPO, deterministic",
                   "k1 KL in the loss", "k2 KL in the loss", "k3 KL in the loss", "k3 × ρ", "DeepSeekMath",
                   "dynamic sampling", "TRL 1.16 defaults"):
        assert needle in names, needle
    assert all(r.verdict for r in _rows(results))


def test_kl_in_the_reward_reaches_pi_star_for_every_surrogate_and_aggregation(results):
    # π* makes every group-centred advantage exactly 0 (the shaped reward is β log Z(x) for all y).
    star_rows = [r for r in _rows(results) if r.limit_label == PI_STAR]
    assert len(star_rows) == 11
    for r in star_rows:
        assert r.kl_to_star < (1e-2 if r.sampled else 1e-3), (r.name, r.estimate, r.kl_to_star)


def test_objective_gap_is_beta_times_kl(results):
    # Gibbs: J(π*) − J(π) = β KL(π ‖ π*), with each row's own r and β.
    for r in _rows(results):
        assert abs(r.objective_gap - r.beta * r.kl_to_star) < 1e-12, r.name


def test_per_token_kl_in_the_loss_lands_on_the_myopic_fixed_point_not_pi_star(results):
    for start in ("k2 KL in the loss", "k3 KL in the loss", "k3 × ρ KL in the loss", "DeepSeekMath",
                  "std scaling + k3"):
        r = _row(results, start)
        assert r.distance < 1e-3, (start, r.distance)  # max |π − predicted fixed point|
        assert r.limit_kl_to_star > 1e-2 and r.kl_to_star > 1e-2, start


def test_k2_and_k3_times_ratio_are_the_same_update(results):
    # On-policy, ∇(ρ k3) = (k3 + 1 − π_ref/π)∇log π = log(π/π_ref)∇log π = ∇k2, token by token.
    a, b = _row(results, "k2 KL in the loss"), _row(results, "k3 × ρ KL in the loss")
    torch.testing.assert_close(a.result.logps, b.result.logps, rtol=0, atol=1e-12)
    # The forward-KL fixed point (k3 without the ratio) is a different one.
    assert _row(results, "k3 KL in the loss").limit_kl_to_star > 2 * a.limit_kl_to_star


def test_std_scaling_with_kl_in_the_loss_collapses(results):
    # β_eff(x) = β(σ_π(x) + 1e-4) shrinks with the reward spread it causes: the policy concentrates.
    r = _row(results, "std scaling + k3")
    assert float(r.limit.max(-1).values.min()) > 0.99 and float(r.result.probs.max(-1).values.min()) > 0.99


def test_finite_group_rescales_beta(results):
    r = _row(results, "k3 × ρ in the loss, finite group")
    assert world_kl(results, r, r.limit) < 1e-2
    assert r.alternative[1] > 2e-2  # the G → ∞ prediction is measurably elsewhere


def test_dynamic_sampling_moves_the_fixed_point(results):
    exact = _row(results, "dynamic sampling", "exact")
    sampled = _row(results, "dynamic sampling", "sampled")
    control = _row(results, "same without dynamic sampling")
    assert exact.distance < 1e-3
    assert world_kl(results, sampled, sampled.limit) < 1e-2 and sampled.alternative[1] > 2e-2
    assert world_kl(results, control, control.limit) < 1e-2 and control.alternative[1] > 2e-2
    # Dropping the KL of all-equal groups weakens the regulariser on near-solved prompts: more accuracy.
    correct = binary_reward(results[0])
    assert bool(((sampled.result.probs * correct).sum(-1) > (control.result.probs * correct).sum(-1)).all())


def test_unregularised_variants_collapse(results):
    for start in ("k1 KL in the loss", "TRL 1.16 defaults", "online DPO, deterministic"):
        r = _row(results, start)
        assert r.limit_label == POINT_MASS and r.distance < 0.1 and r.kl_to_star > 0.1, start


def world_kl(results, row, target) -> float:
    return results[0].mean_kl(row.result.probs, target)


@pytest.mark.parametrize("start", ["Dr. GRPO", "TRL 1.16 defaults"])
def test_rows_record_curves(results, start):
    hist = _row(results, start).result.history
    assert len(hist["kl_to_target"]) == len(hist["step"]) > 2


def test_report_has_the_table_and_plot(results, tmp_path):
    from preftune.theory.demos import Settings
    from preftune.theory.report import write_report

    text = write_report(tmp_path, results[0], Settings.quick(), results[1], seconds=0.0, quick=True).read_text()
    assert "| variant | estimate | KL(π ‖ π*) | J(π*) − J(π) | predicted limit | distance to it | verdict |" in text
    assert text.count("converges to π*") == 11 and "**FAIL**" not in text
    pytest.importorskip("matplotlib")
    assert "![grpo_family.png](grpo_family.png)" in text and (tmp_path / "grpo_family.png").stat().st_size > 0
