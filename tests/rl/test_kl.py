"""KL estimators, masked reductions and β controllers: hand-derived values, Monte-Carlo unbiasedness
against an exact KL, and invariants."""

import math

import pytest
import torch

from preftune.rl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
    masked_mean,
    masked_sum,
    masked_whiten,
)

LOG2 = math.log(2.0)


def test_estimators_hand_values():
    # Token 0: π = 0.5, π_ref = 0.25 → log ρ = log 2, r = π_ref/π = 1/2.
    #   k1 = log 2; k2 = ½ (log 2)² = 0.2402265; k3 = (½ − 1) − log ½ = log 2 − ½ = 0.1931472; abs = log 2.
    # Token 1: π = 0.25, π_ref = 0.5 → log ρ = −log 2, r = 2.
    #   k1 = −log 2; k2 = 0.2402265; k3 = (2 − 1) − log 2 = 0.3068528; abs = log 2.
    lp = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=torch.float64)
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=torch.float64)
    expected = {
        "k1": [LOG2, -LOG2],
        "k2": [0.5 * LOG2**2, 0.5 * LOG2**2],
        "k3": [LOG2 - 0.5, 1.0 - LOG2],
        "abs": [LOG2, LOG2],
    }
    for name, values in expected.items():
        got = kl_penalty(lp, ref, name)
        assert got.shape == (1, 2)
        assert got[0].tolist() == pytest.approx(values, abs=1e-12), name
    assert kl_penalty(lp, ref, "k3")[0].tolist() == pytest.approx([0.1931471805599453, 0.3068528194400547])


def test_unknown_estimator_lists_names():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="k1, k2, k3, abs"):
        kl_penalty(x, x, "k4")
    assert KL_ESTIMATORS == ("k1", "k2", "k3", "abs")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k3_k2_abs_nonnegative_and_zero_at_reference(dtype):
    gen = torch.Generator().manual_seed(0)
    lp = -5 * torch.rand(64, 50, generator=gen, dtype=dtype)
    # Log-ratios over many scales, including ~1e-9 where k3's two terms nearly cancel.
    scale = 10.0 ** torch.randint(-9, 1, (64, 50), generator=gen).to(dtype)
    ref = lp + scale * torch.randn(64, 50, generator=gen, dtype=dtype)
    for name in ("k2", "k3", "abs"):
        assert bool((kl_penalty(lp, ref, name) >= 0).all()), name
        assert torch.equal(kl_penalty(lp, lp, name), torch.zeros_like(lp)), name


# Two categorical distributions with a hand-computable KL:
#   KL(p‖q) = Σ p log(p/q), q uniform over 5 (q = 0.2):
#     = 0.5 log 2.5 + 0.2 log 1 + 0.15 log 0.75 + 0.1 log 0.5 + 0.05 log 0.25
#     = 0.4581454 + 0 − 0.0431523 − 0.0693147 − 0.0693147 = 0.2763636
#   E_p[k2] = ½ Σ p (log p/q)² = ½ (0.4197943 + 0 + 0.0124142 + 0.0480453 + 0.0960906) = 0.2881722
P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
Q = torch.full((5,), 0.2, dtype=torch.float64)
EXACT_KL = 0.2763636


def _samples(n: int = 200_000):
    """Token log-probs under p and q of n tokens sampled from p, shaped (1, n)."""
    y = torch.multinomial(P, n, replacement=True, generator=torch.Generator().manual_seed(1234))
    return P.log()[y][None], Q.log()[y][None]


def test_exact_kl_of_the_pair_matches_hand_value():
    assert float((P * (P / Q).log()).sum()) == pytest.approx(EXACT_KL, abs=1e-7)


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_k1_and_k3_are_unbiased(name):
    # 200k draws from p; the Monte-Carlo mean must match KL(p‖q) within 4 standard errors (the SE
    # from the samples themselves: ~0.0016 for k1, ~0.0008 for k3), a bound a correct estimator
    # fails with probability ~6e-5 (and never, with this fixed seed).
    lp, ref = _samples()
    est = kl_penalty(lp, ref, name)
    se = float(est.std() / math.sqrt(est.numel()))
    assert se < 0.002
    assert float(est.mean()) == pytest.approx(EXACT_KL, abs=4 * se)


def test_k2_is_biased_on_the_same_samples():
    # E_p[k2] = 0.2881722 ≠ KL = 0.2763636: the gap 0.0118 is ~22 standard errors (~0.0005).
    lp, ref = _samples()
    est = kl_penalty(lp, ref, "k2")
    se = float(est.std() / math.sqrt(est.numel()))
    assert float(est.mean()) == pytest.approx(0.2881722, abs=4 * se)
    assert abs(float(est.mean()) - EXACT_KL) > 8 * se


def test_masked_sum_and_mean_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[True, True, False], [False, True, True]])
    # Kept: 1, 2 | 5, 6 → sum 14, mean 14/4 = 3.5; per row: sums 3, 11, means 1.5, 5.5.
    assert masked_sum(x, mask).item() == 14.0
    assert masked_mean(x, mask).item() == 3.5
    assert masked_sum(x, mask, dim=1).tolist() == [3.0, 11.0]
    assert masked_mean(x, mask, dim=1).tolist() == [1.5, 5.5]
    # Per column: means 1, 3.5, 6.
    assert masked_mean(x, mask, dim=0).tolist() == [1.0, 3.5, 6.0]


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[False, False], [True, False]])
    assert masked_mean(x, mask, dim=1).tolist() == [0.0, 3.0]
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_masked_ops_ignore_masked_out_entries_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.4
    mask[:, 0] = True
    garbage = x.clone()
    garbage[~mask] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30])[
        torch.arange(int((~mask).sum())) % 4].double()
    for fn in (masked_sum, masked_mean):
        assert torch.equal(fn(x, mask), fn(garbage, mask))
        assert torch.equal(fn(x, mask, dim=1), fn(garbage, mask, dim=1))
    assert torch.equal(masked_whiten(x, mask), masked_whiten(garbage, mask))
    g = garbage.clone().requires_grad_()
    (masked_mean(g, mask) + masked_whiten(g, mask).pow(2).sum()).backward()
    assert torch.isfinite(g.grad).all()
    assert torch.equal(g.grad[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))


def test_masked_whiten_hand_value_and_moments():
    # Masked 1, 2, 3 (100 is masked out): μ = 2, σ² = (1 + 0 + 1)/3 = 2/3 → ±1/√(2/3) = ±1.2247449.
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    w = masked_whiten(x, mask)
    assert w[0].tolist() == pytest.approx([-1.2247449, 0.0, 1.2247449, 0.0], abs=1e-6)
    # shift_mean=False keeps μ = 2: 2 ∓ 1.2247449.
    assert masked_whiten(x, mask, shift_mean=False)[0].tolist() == pytest.approx(
        [0.7752551, 2.0, 3.2247449, 0.0], abs=1e-6)
    torch.manual_seed(1)
    y = 5 + 3 * torch.randn(4, 7, dtype=torch.float64)
    my = torch.rand(4, 7) > 0.3
    wy = masked_whiten(y, my)
    assert masked_mean(wy, my).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_mean(wy**2, my).item() == pytest.approx(1.0, abs=1e-6)  # eps = 1e-8 in σ² + eps


def test_masked_whiten_constant_input_is_finite():
    x = torch.full((2, 3), 4.0)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert torch.equal(masked_whiten(x, mask), torch.zeros(2, 3))
    kept = masked_whiten(x, mask, shift_mean=False)
    assert torch.equal(kept, torch.where(mask, x, torch.zeros(())))


def test_fixed_controller_never_moves_and_resumes():
    c = FixedKLController(0.05)
    c.update(100.0, 512)
    assert c.value == 0.05
    d = FixedKLController(1.0)
    d.load_state_dict(c.state_dict())
    assert d.value == 0.05


def test_adaptive_controller_exact_factors():
    # target 6, horizon 10000, n_steps 256:
    #   KL 9   → e = 9/6 − 1 = 0.5, clipped to 0.2  → factor 1 + 0.2·256/10000 = 1.00512
    #   KL 6.6 → e = 0.1                            → factor 1 + 0.1·256/10000 = 1.00256
    #   KL 6   → e = 0                              → factor 1
    #   KL 5.4 → e = −0.1                           → factor 0.99744
    #   KL 0   → e = −1, clipped to −0.2            → factor 0.99488
    for kl, factor in [(9.0, 1.00512), (6.6, 1.00256), (6.0, 1.0), (5.4, 0.99744), (0.0, 0.99488)]:
        c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
        c.update(kl, 256)
        assert c.value == pytest.approx(0.1 * factor, rel=1e-12), kl
    up, down = AdaptiveKLController(0.2, 1.0, 100), AdaptiveKLController(0.2, 1.0, 100)
    up.update(1.5, 10)
    down.update(0.5, 10)
    assert up.value > 0.2 > down.value


def test_adaptive_controller_compounds_and_resumes():
    # Two updates at KL = 2·target: β = 0.1 · 1.02² with n_steps/horizon = 0.1 and e = 0.2.
    c = AdaptiveKLController(0.1, 1.0, 100)
    c.update(2.0, 10)
    c.update(2.0, 10)
    assert c.value == pytest.approx(0.1 * 1.02**2, rel=1e-12)
    resumed = AdaptiveKLController(0.1, 1.0, 100)
    resumed.load_state_dict(c.state_dict())
    c.update(0.3, 7)
    resumed.update(0.3, 7)
    assert resumed.value == c.value


def test_adaptive_controller_rejects_bad_input():
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.1, 0.0, 100)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.1, 1.0, 0)
    with pytest.raises(ValueError, match="init_coef"):
        AdaptiveKLController(0.0, 1.0, 100)
    c = AdaptiveKLController(0.1, 1.0, 100)
    with pytest.raises(ValueError, match="finite"):
        c.update(float("nan"), 10)
    # KL = 0 → e = −0.2; n_steps/horizon = 5 → factor 1 − 0.2·5 = 0: β must not reach 0.
    with pytest.raises(ValueError, match="too large"):
        c.update(0.0, 500)
    assert c.value == 0.1
