"""Token rewards, GAE and REINFORCE / RLOO baselines: hand-derived values and invariants."""

import pytest
import torch

from preftune.rl import batch_mean_baseline, gae, rloo_advantages, token_level_rewards

T, F = True, False


def test_token_level_rewards_hand_values_ragged_rows():
    # β = 0.1. Row 0: completion at positions 1..3, kl (0.5, −0.2, 1.0), score 2:
    #   (0, −0.05, 0.02, −0.1 + 2) = (0, −0.05, 0.02, 1.9); Σ = 1.87 = 2 − 0.1·1.3.
    # Row 1: completion at 1..2, kl (2.0, 0.4), score −1: (0, −0.2, −0.04 − 1, 0) = (0, −0.2, −1.04, 0).
    # The 9s sit outside the mask and must not appear.
    kl = torch.tensor([[9.0, 0.5, -0.2, 1.0], [9.0, 2.0, 0.4, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[F, T, T, T], [F, T, T, F]])
    out = token_level_rewards(torch.tensor([2.0, -1.0], dtype=torch.float64), kl, mask, kl_coef=0.1)
    assert out.tolist()[0] == pytest.approx([0.0, -0.05, 0.02, 1.9], abs=1e-12)
    assert out.tolist()[1] == pytest.approx([0.0, -0.2, -1.04, 0.0], abs=1e-12)
    assert out.sum(-1).tolist() == pytest.approx([1.87, -1.24], abs=1e-12)


def test_token_level_rewards_rejects_empty_row_and_bad_shapes():
    kl = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        token_level_rewards(torch.zeros(2), kl, torch.tensor([[T, F, F], [F, F, F]]), 0.1)
    with pytest.raises(ValueError, match="scores"):
        token_level_rewards(torch.zeros(3), kl, torch.ones(2, 3, dtype=torch.bool), 0.1)


def test_token_level_rewards_ignore_masked_out_kl_and_are_detached():
    scores = torch.tensor([1.0, 2.0], requires_grad=True)
    kl = torch.tensor([[0.3, 0.1, float("nan")], [float("inf"), 0.2, 0.4]], requires_grad=True)
    out = token_level_rewards(scores, kl, torch.tensor([[T, T, F], [F, T, T]]), 0.5)
    assert torch.isfinite(out).all() and not out.requires_grad
    assert torch.allclose(out, torch.tensor([[-0.15, 0.95, 0.0], [0.0, -0.1, 1.8]]))


def test_gae_hand_values():
    # γ = 0.9, λ = 0.8 (γλ = 0.72), one completion of 3 tokens at positions 1..3 of row 0, with
    # R = (0, 0, 1), V = (0.5, 0.4, 0.6), V after the end = 0:
    #   t=3: δ = 1 + 0.9·0   − 0.6 =  0.4    A = 0.4
    #   t=2: δ = 0 + 0.9·0.6 − 0.4 =  0.14   A = 0.14 + 0.72·0.4   =  0.428
    #   t=1: δ = 0 + 0.9·0.4 − 0.5 = −0.14   A = −0.14 + 0.72·0.428 = 0.16816
    #   returns = A + V = (0.66816, 0.828, 1.0)
    # Row 1: a one-token completion at position 0, R = 2, V = 0.5 → A = δ = 1.5, return 2.
    # Entries outside the mask (5, 7, 3, −2, ...) are garbage that must not leak in.
    rewards = torch.tensor([[5.0, 0.0, 0.0, 1.0, 7.0], [2.0, 5.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    values = torch.tensor([[3.0, 0.5, 0.4, 0.6, -2.0], [0.5, 9.0, 9.0, 9.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[F, T, T, T, F], [T, F, F, F, F]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([0.0, 0.16816, 0.428, 0.4, 0.0], abs=1e-12)
    assert ret[0].tolist() == pytest.approx([0.0, 0.66816, 0.828, 1.0, 0.0], abs=1e-12)
    assert adv[1].tolist() == pytest.approx([1.5, 0, 0, 0, 0], abs=1e-12)
    assert ret[1].tolist() == pytest.approx([2.0, 0, 0, 0, 0], abs=1e-12)


def _random_layout(b=6, t=9, seed=0):
    """Rewards, values and a prompt | completion | padding mask with one contiguous run per row."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(b, t, generator=g, dtype=torch.float64)
    values = torch.randn(b, t, generator=g, dtype=torch.float64)
    start = torch.randint(0, t // 2, (b, 1), generator=g)
    length = torch.randint(1, t // 2 + 1, (b, 1), generator=g)
    pos = torch.arange(t)
    return rewards, values, (pos >= start) & (pos < start + length)


def _reference_gae(rewards, values, mask, gamma, lam):
    """A_t = Σ_l (γλ)^l δ_{t+l} summed explicitly (the closed form, not the recursion)."""
    adv = torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        idx = mask[i].nonzero().flatten().tolist()
        r, v = rewards[i, idx].tolist(), values[i, idx].tolist() + [0.0]
        deltas = [r[j] + gamma * v[j + 1] - v[j] for j in range(len(idx))]
        for j, t in enumerate(idx):
            adv[i, t] = sum((gamma * lam) ** n * deltas[j + n] for n in range(len(idx) - j))
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.5, 0.0), (0.99, 1.0)])
def test_gae_matches_closed_form(gamma, lam):
    rewards, values, mask = _random_layout()
    adv, ret = gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, _reference_gae(rewards, values, mask, gamma, lam), atol=1e-12)
    assert torch.allclose(ret, torch.where(mask, adv + values, torch.zeros(())), atol=1e-15)


def test_gae_limits_lambda_one_is_monte_carlo_and_zero_is_td():
    rewards, values, mask = _random_layout(seed=3)
    gamma = 0.9
    _, ret = gae(rewards, values, mask, gamma, lam=1.0)
    # λ = 1: returns are the discounted sums of the remaining rewards, whatever V is.
    mc = torch.zeros_like(rewards)
    for i in range(rewards.shape[0]):
        idx = mask[i].nonzero().flatten().tolist()
        for j, t in enumerate(idx):
            mc[i, t] = sum(gamma**n * rewards[i, idx[j + n]] for n in range(len(idx) - j))
    assert torch.allclose(ret, mc, atol=1e-12)
    # λ = 0: A_t = δ_t = R_t + γ V_{t+1} − V_t, with V_{t+1} = 0 at each row's last token.
    adv0, _ = gae(rewards, values, mask, gamma, lam=0.0)
    next_v = torch.where(mask[:, 1:], values[:, 1:], torch.zeros(()))
    next_v = torch.cat([next_v, torch.zeros(rewards.shape[0], 1, dtype=torch.float64)], dim=1)
    td = torch.where(mask, rewards + gamma * next_v - values, torch.zeros(()))
    assert torch.allclose(adv0, td, atol=1e-12)


def test_gae_checks_contiguity_and_ranges_and_detaches():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"rows \[1\].*non-contiguous"):
        gae(x, x, torch.tensor([[F, T, T, F], [T, F, T, F]]), 1.0, 0.95)
    with pytest.raises(ValueError, match="gamma"):
        gae(x, x, torch.ones(2, 4, dtype=torch.bool), 1.5, 0.95)
    v = torch.ones(2, 4, requires_grad=True)
    adv, ret = gae(torch.ones(2, 4), v, torch.ones(2, 4, dtype=torch.bool), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad
    # A row with no completion tokens is allowed and gives zeros.
    adv, ret = gae(torch.ones(1, 3), torch.ones(1, 3), torch.zeros(1, 3, dtype=torch.bool), 1.0, 1.0)
    assert torch.equal(adv, torch.zeros(1, 3)) and torch.equal(ret, torch.zeros(1, 3))


def test_rloo_hand_values_k3():
    # Group 1 (1, 2, 6): 1 − (2+6)/2 = −3, 2 − (1+6)/2 = −1.5, 6 − (1+2)/2 = 4.5.
    # Group 2 (0, 0, 3): 0 − 1.5 = −1.5, −1.5, 3 − 0 = 3.
    adv = rloo_advantages(torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), k=3)
    assert adv.tolist() == [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0]


def test_rloo_invariants():
    torch.manual_seed(0)
    scores = torch.randn(5 * 4, dtype=torch.float64)
    adv = rloo_advantages(scores, k=4)
    # Each group sums to zero, and the leave-one-out form equals k/(k−1)·(s − group mean).
    assert torch.allclose(adv.view(5, 4).sum(-1), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    groups = scores.view(5, 4)
    assert torch.allclose(adv.view(5, 4), 4 / 3 * (groups - groups.mean(-1, keepdim=True)), atol=1e-12)
    # A per-prompt shift of the reward (same preferences, docs/maths.md §objective.classes) changes nothing.
    shifted = (groups + torch.randn(5, 1, dtype=torch.float64)).reshape(-1)
    assert torch.allclose(rloo_advantages(shifted, k=4), adv, atol=1e-12)
    assert not rloo_advantages(scores.clone().requires_grad_(), k=4).requires_grad


def test_rloo_rejects_bad_k_and_shapes():
    for k in (1, 0, 2.0):
        with pytest.raises(ValueError, match="k >= 2"):
            rloo_advantages(torch.zeros(4), k=k)
    with pytest.raises(ValueError, match="multiple of k=3"):
        rloo_advantages(torch.zeros(4), k=3)
    with pytest.raises(ValueError, match="1-D"):
        rloo_advantages(torch.zeros(2, 3), k=3)


def test_batch_mean_baseline():
    # mean(1, 2, 6) = 3 → (−2, −1, 3).
    assert batch_mean_baseline(torch.tensor([1.0, 2.0, 6.0])).tolist() == [-2.0, -1.0, 3.0]

