"""Group-relative (GRPO), batch-normalised (REINFORCE++) advantages and the KL in the reward: values
worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.rl import (
    group_advantages,
    kl_penalised_scores,
    masked_moments,
    reinforce_pp_advantages,
    reinforce_pp_returns,
    zero_std_groups,
)

F64 = torch.float64
NAN = float("nan")


def t(*values):
    return torch.tensor(values, dtype=F64)


def test_group_scaling_by_hand():
    # Group 1 = [1, 0, 0, 1]: mean 0.5, deviations ±0.5, sample variance (4 · 0.25)/(4 − 1) = 1/3.
    # Group 2 = [2, 2, 2, 2]: no spread, A = 0 (the 1e-4 keeps 0/0 away).
    r = t(1, 0, 0, 1, 2, 2, 2, 2)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(group_advantages(r, 4, "group"), t(a, -a, -a, a, 0, 0, 0, 0), rtol=0, atol=1e-15)


def test_batch_scaling_centres_per_group_divides_by_batch_std():
    # Batch mean 10/8 = 1.25; squared deviations .0625 + 1.5625 + 1.5625 + .0625 + 4 · .5625 = 5.5;
    # sample variance 5.5/7. Centring is still per group: group 1 gets ±0.5, group 2 gets 0.
    r = t(1, 0, 0, 1, 2, 2, 2, 2)
    a = 0.5 / (math.sqrt(5.5 / 7) + 1e-4)
    torch.testing.assert_close(group_advantages(r, 4, "batch"), t(a, -a, -a, a, 0, 0, 0, 0), rtol=0, atol=1e-15)


def test_no_scaling_is_the_centred_reward():
    # Dr. GRPO: r − group mean only. Group 1 = [3, 1]: mean 2 → [1, −1]; group 2 = [0, 4] → [−2, 2].
    torch.testing.assert_close(group_advantages(t(3, 1, 0, 4), 2, "none"), t(1, -1, -2, 2), rtol=0, atol=0)


def test_unscorable_rewards_are_left_out_and_get_zero():
    # Group 1 = [1, NaN, 0, 2]: mean over {1, 0, 2} = 1, sample variance (0 + 1 + 1)/2 = 1, std 1.
    # Group 2 = [3, NaN, NaN, NaN]: one scorable reward, no std → 0 throughout when scaled.
    r = t(1, NAN, 0, 2, 3, NAN, NAN, NAN)
    a = 1 / (1 + 1e-4)
    torch.testing.assert_close(group_advantages(r, 4), t(0, 0, -a, a, 0, 0, 0, 0), rtol=0, atol=1e-15)
    torch.testing.assert_close(group_advantages(r, 4, "none"), t(0, 0, -1, 1, 0, 0, 0, 0), rtol=0, atol=0)
    assert zero_std_groups(r, 4).tolist() == [False, True]


def test_zero_std_groups_and_bad_input():
    assert zero_std_groups(t(1, 1, 0, 1, 5, 5), 2).tolist() == [True, False, True]
    with pytest.raises(ValueError, match="infinite"):
        group_advantages(t(1, float("inf"), 0, 1), 2)
    with pytest.raises(ValueError, match="multiple of num_generations"):
        group_advantages(t(1, 2, 3), 2)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(t(1, 2), 2, "std")


def test_advantages_are_detached_and_shift_invariant():
    r = torch.randn(12, dtype=F64, requires_grad=True)
    a = group_advantages(r, 4)
    assert not a.requires_grad
    # A per-prompt shift f(x) (same preferences) leaves group advantages unchanged, for every scaling.
    shift = torch.tensor([5.0, -3.0, 100.0], dtype=F64).repeat_interleave(4)
    for scale in ("group", "none"):
        torch.testing.assert_close(group_advantages(r + shift, 4, scale), group_advantages(r, 4, scale),
                                   rtol=0, atol=1e-12)


def test_kl_penalised_scores_by_hand():
    # r − β Σ_t kl_t over the mask: row 0: 1 − 0.5 · (0.1 + 0.2) = 0.85; row 1: 0 − 0.5 · 0.4 = −0.2.
    kl = t(0.1, 0.2, 9.0, 0.4, 9.0, 9.0).reshape(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    torch.testing.assert_close(kl_penalised_scores(t(1, 0), kl, mask, 0.5), t(0.85, -0.2), rtol=0, atol=1e-15)


def test_reinforce_pp_returns_to_go_by_hand():
    # β = 1. Row 0: token rewards −0.1, −0.2, −0.3 + 1 → returns 0.4, 0.5, 0.7.
    # Row 1 (2 tokens): −0.5, −0.5 + 0 → returns −1.0, −0.5.
    kl = t(0.1, 0.2, 0.3, 0.5, 0.5, 7.0).reshape(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()
    returns = reinforce_pp_returns(t(1, 0), kl, mask, 1.0)
    torch.testing.assert_close(returns, t(0.4, 0.5, 0.7, -1.0, -0.5, 0).reshape(2, 3), rtol=0, atol=1e-15)
    # Whitened over the 5 tokens: mean 0.1/5 = 0.02, deviations .38 .48 .68 −1.02 −.52,
    # population variance (.1444 + .2304 + .4624 + 1.0404 + .2704)/5 = 0.4296.
    expect = t(0.38, 0.48, 0.68, -1.02, -0.52, 0) / math.sqrt(0.4296 + 1e-8)
    expect[-1] = 0.0
    torch.testing.assert_close(reinforce_pp_advantages(t(1, 0), kl, mask, 1.0), expect.reshape(2, 3),
                               rtol=0, atol=1e-12)


def test_reinforce_pp_baseline_subtracts_group_mean_first():
    # One token each, no KL. Without baseline: [1, 0, 3, 3], mean 1.75, variance 6.75/4 = 1.6875.
    # With group mean (G = 2): [0.5, −0.5, 0, 0], mean 0, variance 0.5/4 = 0.125.
    scores, kl, mask = t(1, 0, 3, 3), torch.zeros(4, 1, dtype=F64), torch.ones(4, 1, dtype=torch.bool)
    plain = reinforce_pp_advantages(scores, kl, mask, 0.1).squeeze(-1)
    torch.testing.assert_close(plain, t(-0.75, -1.75, 1.25, 1.25) / math.sqrt(1.6875 + 1e-8), rtol=0, atol=1e-12)
    based = reinforce_pp_advantages(scores, kl, mask, 0.1, num_generations=2).squeeze(-1)
    torch.testing.assert_close(based, t(0.5, -0.5, 0, 0) / math.sqrt(0.125 + 1e-8), rtol=0, atol=1e-12)


def test_reinforce_pp_global_moments_equal_one_big_batch():
    """Two ranks' halves normalised with the summed moments = the whole batch normalised at once."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(8, generator=gen, dtype=F64)
    kl = torch.rand(8, 4, generator=gen, dtype=F64)
    mask = torch.arange(4)[None] < torch.tensor([4, 2, 3, 1, 4, 4, 2, 3])[:, None]
    whole = reinforce_pp_advantages(scores, kl, mask, 0.3, num_generations=2)
    halves = [(scores[:4], kl[:4], mask[:4]), (scores[4:], kl[4:], mask[4:])]
    moments = sum(masked_moments(reinforce_pp_returns(s, k, m, 0.3, num_generations=2), m) for s, k, m in halves)
    parts = [reinforce_pp_advantages(s, k, m, 0.3, num_generations=2, moments=moments) for s, k, m in halves]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-12)
    assert abs(float(whole[mask].mean())) < 1e-12 and abs(float(whole[mask].std(unbiased=False)) - 1) < 1e-6
