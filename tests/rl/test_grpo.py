"""GRPO-family losses: surrogates, importance weights, KL terms and aggregations, with values worked out
by hand in the comments, float64 gradcheck for every loss_type, and the expected-gradient identities of
the KL estimators (exact sums over a categorical distribution)."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.rl import (
    AGGREGATIONS,
    LOSS_TYPES,
    cispo_surrogate,
    clipped_surrogate,
    grpo_loss,
    importance_log_weights,
    kl_loss_term,
    sapo_surrogate,
    step_share,
)

F64 = torch.float64


def t(*values):
    return torch.tensor(values, dtype=F64)


def test_clipped_surrogate_by_hand():
    lw = torch.log(t(1.5, 1.5, 0.5, 1.25, 1.5)).reshape(-1, 1)
    adv = t(1, -1, -1, 1, -1).reshape(-1, 1)
    # ε = 0.2: ρ = 1.5, A = 1 → −min(1.5, 1.2) = −1.2 (clipped, no gradient)
    #          ρ = 1.5, A = −1 → −min(−1.5, −1.2) = 1.5 (pessimistic: charged in full)
    #          ρ = 0.5, A = −1 → −min(−0.5, −0.8) = 0.8 (clipped below)
    #          ρ = 1.25, A = 1 → −1.2
    out = clipped_surrogate(lw, adv, epsilon_low=0.2, epsilon_high=0.2).flatten()
    torch.testing.assert_close(out[:4], t(-1.2, 1.5, 0.8, -1.2), rtol=0, atol=1e-15)
    # clip-higher ε_high = 0.28: ρ = 1.25 < 1.28 is no longer clipped → −1.25.
    assert float(clipped_surrogate(lw, adv, epsilon_low=0.2, epsilon_high=0.28)[3]) == pytest.approx(-1.25, abs=1e-15)
    # two-sided δ = 1.4 caps the negative-advantage ratio: −min(−1.4, −1.2) = 1.4; A > 0 untouched.
    two = clipped_surrogate(lw, adv, epsilon_low=0.2, epsilon_high=0.2, delta=1.4).flatten()
    torch.testing.assert_close(two, t(-1.2, 1.4, 0.8, -1.2, 1.4), rtol=0, atol=1e-15)


def test_clipped_surrogate_gradient_is_zero_outside_the_band():
    lw = torch.log(t(1.5, 1.5, 0.5, 1.1)).reshape(-1, 1).requires_grad_(True)
    adv = t(1, -1, -1, 1).reshape(-1, 1)
    clipped_surrogate(lw, adv, epsilon_low=0.2, epsilon_high=0.2).sum().backward()
    # d(−ρA)/d log ρ = −ρA where the unclipped term is the min; 0 where the clipped one is.
    torch.testing.assert_close(lw.grad.flatten(), t(0, 1.5, 0, -1.1), rtol=0, atol=1e-15)


def test_cispo_weight_is_capped_and_stop_gradient():
    # ρ = 1.5 under cap 5: ℓ = −1.5 · A · log π with A = 2, log π = −0.7 → 2.1; ∂ℓ/∂log π = −3.
    # ρ = 1.5 over cap 1.2: weight 1.2 → ℓ = 1.68, ∂ℓ/∂log π = −2.4; no gradient through the weight.
    lp = t(-0.7, -0.7).reshape(2, 1).requires_grad_(True)
    lw = torch.log(t(1.5, 1.5)).reshape(2, 1).requires_grad_(True)
    adv = t(2, 2).reshape(2, 1)
    a = cispo_surrogate(lp[:1], lw[:1], adv[:1], epsilon_high=5.0)
    b = cispo_surrogate(lp[1:], lw[1:], adv[1:], epsilon_high=1.2)
    torch.testing.assert_close(torch.cat([a, b]).flatten(), t(2.1, 1.68), rtol=0, atol=1e-15)
    (a + b).sum().backward()
    torch.testing.assert_close(lp.grad.flatten(), t(-3.0, -2.4), rtol=0, atol=1e-15)
    assert lw.grad is None or float(lw.grad.abs().max()) == 0.0


def test_sapo_gate_by_hand():
    # ρ = 1: (4/τ) σ(0) = 2/τ → ℓ = −2A/τ; τ = 1 for A > 0, 1.05 for A < 0.
    lw = torch.zeros(2, 1, dtype=F64, requires_grad=True)
    out = sapo_surrogate(lw, t(1, -1).reshape(2, 1))
    torch.testing.assert_close(out.flatten(), t(-2.0, 2 / 1.05), rtol=0, atol=1e-15)
    out.sum().backward()
    # ∂ℓ/∂log ρ at ρ = 1 = −(4/τ) σ'(0) τ A = −A: the plain policy gradient, whatever τ.
    torch.testing.assert_close(lw.grad.flatten(), t(-1.0, 1.0), rtol=0, atol=1e-15)


def test_importance_weights_token_and_sequence():
    lp = t(-1.0, -2.0, -3.0, -1.0, -1.0, 50.0).reshape(2, 3)
    old = t(-1.3, -1.9, -3.4, -1.0, -2.0, 0.0).reshape(2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]]).bool()
    # token: log ρ = lp − old on the mask, 0 off it (the 50 there never reaches exp).
    torch.testing.assert_close(importance_log_weights(lp, old, mask, "token"),
                               t(0.3, -0.1, 0.4, 0, 1.0, 0).reshape(2, 3), rtol=0, atol=1e-15)
    # sequence (GSPO): mean of the token log-ratios: (0.3 − 0.1 + 0.4)/3 = 0.2; (0 + 1)/2 = 0.5.
    torch.testing.assert_close(importance_log_weights(lp, old, mask, "sequence"), t(0.2, 0.5).reshape(2, 1),
                               rtol=0, atol=1e-15)


def test_kl_terms_by_hand():
    # log π − log π_ref = log 2 on the first token, 0 on the second.
    lp, ref = t(math.log(2) - 1, -1.0).reshape(1, 2), t(-1.0, -1.0).reshape(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    x = math.log(2)
    expected = {"k1": x, "k2": 0.5 * x * x, "k3": 0.5 - 1 + x}  # k3 = e^{−x} − 1 + x
    for est, value in expected.items():
        torch.testing.assert_close(kl_loss_term(lp, ref, mask, estimator=est), t(value, 0).reshape(1, 2),
                                   rtol=0, atol=1e-15)
    # × ρ with log ρ = 0.1 (use_bias_correction_kl).
    torch.testing.assert_close(kl_loss_term(lp, ref, mask, log_weights=torch.full((1, 1), 0.1, dtype=F64)),
                               t(math.exp(0.1) * expected["k3"], 0).reshape(1, 2), rtol=0, atol=1e-15)


def test_aggregations_by_hand():
    loss = t(1, 2, 3, 4, 5, 6).reshape(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    # sequence_mean: (1 + 2)/2 + 4/1 = 5.5 over 2 sequences; batch_token_mean: (1 + 2 + 4)/3, one unit;
    # constant (L = 4): 7/4 over 2; token_mean: 7 over 3 tokens; sequence_sum: 7 over 2 sequences.
    expected = {"sequence_mean": (5.5, 2), "batch_token_mean": (7 / 3, 1), "constant": (7 / 4, 2),
                "token_mean": (7, 3), "sequence_sum": (7, 2)}
    for name, (total, units) in expected.items():
        got = AGGREGATIONS[name](loss, mask, max_completion_length=4)
        torch.testing.assert_close(torch.stack(got), t(total, units), rtol=0, atol=1e-15)
    # A (B, 1) sequence-level loss counts once per token (as TRL's broadcast): 10·2 + 20·1 = 40 over 3.
    torch.testing.assert_close(torch.stack(AGGREGATIONS["token_mean"](t(10, 20).reshape(2, 1), mask)), t(40, 3))
    with pytest.raises(ValueError, match="max_completion_length"):
        AGGREGATIONS["constant"](loss, mask)


def test_step_share_sums_to_the_global_mean():
    # Two micro-batches with totals 3 and 5 over units 1 and 3: step loss 8/4 = 2; shares 3/4 + 5/4.
    assert float(step_share(t(3.0)[0], 4.0) + step_share(t(5.0)[0], 4.0)) == pytest.approx(2.0)
    assert float(step_share(t(3.0)[0], 0.0)) == 3.0  # no units: the clamp keeps it finite


def test_grpo_loss_on_policy_by_hand():
    """On-policy (old = None): ρ = 1, so the surrogate value is −A per token, and with β = 0:
    rows A = [2, −1], lengths 2 and 1 → tokens −2, −2, +1.
      grpo    (−2 − 2)/2 + 1/1 = −1 over 2 sequences → −0.5
      dapo    (−4 + 1)/3 tokens = −1
      dr_grpo −3 / L(=4) over 2 sequences → −0.375
      luspo   −3 over 2 sequences → −1.5"""
    lp = t(-0.5, -1.5, -0.2, 9.0).reshape(2, 2).requires_grad_(True)
    mask = torch.tensor([[1, 1], [1, 0]]).bool()
    adv = t(2, -1)
    expected = {"grpo": -0.5, "dapo": -1.0, "dr_grpo": -0.375, "luspo": -1.5, "bnpo": -1.0}
    for loss_type, value in expected.items():
        out = grpo_loss(lp, adv, mask, loss_type=loss_type, max_completion_length=4)
        assert float(out.loss.detach()) == pytest.approx(value, abs=1e-15), loss_type
    # dapo's gradient: −A_i/3 per token on the mask, 0 off it.
    grpo_loss(lp, adv, mask, loss_type="dapo").loss.backward()
    torch.testing.assert_close(lp.grad, t(-2 / 3, -2 / 3, 1 / 3, 0).reshape(2, 2), rtol=0, atol=1e-15)


def test_padding_garbage_reaches_neither_value_nor_gradient():
    lp = t(-0.5, float("-inf"), -0.2, float("nan")).reshape(2, 2).requires_grad_(True)
    ref = t(-0.4, float("nan"), -0.3, float("-inf")).reshape(2, 2)
    old = t(-0.6, float("inf"), -0.1, float("nan")).reshape(2, 2)
    mask = torch.tensor([[1, 0], [1, 0]]).bool()
    for loss_type in LOSS_TYPES:
        for level in ("token", "sequence"):
            out = grpo_loss(lp, t(1, -1), mask, old_logprobs=old, ref_logprobs=ref, beta=0.1, loss_type=loss_type,
                            importance_sampling_level=level, max_completion_length=2)
            grad, = torch.autograd.grad(out.loss, lp)
            assert bool(torch.isfinite(out.loss)) and bool(torch.isfinite(grad).all()), (loss_type, level)
            assert float(grad[:, 1].abs().max()) == 0.0


def test_grpo_loss_errors_and_stats():
    lp, mask = torch.zeros(2, 2, dtype=F64), torch.ones(2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(lp, t(1, 1), mask, loss_type="ppo")
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(lp, t(1, 1), mask, beta=0.1)
    with pytest.raises(ValueError, match="importance_sampling_level"):
        grpo_loss(lp, t(1, 1), mask, importance_sampling_level="seq")
    # Ratios 1.5 (A > 0: high clip) and 0.5 (A < 0: low clip) on one token each, 1 elsewhere.
    old = torch.log(t(1 / 1.5, 1, 1 / 0.5, 1)).reshape(2, 2)
    stats = grpo_loss(lp, t(1, -1), mask, old_logprobs=old).stats
    assert {k: float(v) for k, v in stats.items()} == {"tokens": 4.0, "clip_ratio/low": 1.0,
                                                       "clip_ratio/high": 1.0, "clip_ratio/region": 2.0}


CASES = [(lt, lvl, beta, est) for lt in sorted(LOSS_TYPES) for lvl in ("token", "sequence")
         for beta, est in ((0.0, "k3"), (0.1, "k3"), (0.1, "k2"), (0.1, "k1"))]


@pytest.mark.parametrize("loss_type,level,beta,estimator", CASES)
def test_gradcheck_every_loss_type(loss_type, level, beta, estimator):
    gen = torch.Generator().manual_seed(len(loss_type) * 7 + len(level) + int(beta * 10))
    lp = (-torch.rand(3, 4, generator=gen, dtype=F64) * 2 - 0.1).requires_grad_(True)
    old = lp.detach() + 0.05 * torch.randn(3, 4, generator=gen, dtype=F64)  # ratios inside the clip band
    old[0] = lp.detach()[0] - 0.6  # row 0 far outside it: exercises the flat, clipped pieces
    ref = lp.detach() + 0.3 * torch.randn(3, 4, generator=gen, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]).bool()
    adv = torch.randn(3, generator=gen, dtype=F64)

    def f(x):
        return grpo_loss(x, adv, mask, old_logprobs=old, ref_logprobs=ref, loss_type=loss_type, beta=beta,
                         kl_estimator=estimator, importance_sampling_level=level, epsilon_high=0.28,
                         delta=1.3, max_completion_length=5).loss
    assert torch.autograd.gradcheck(f, (lp,), eps=1e-6, atol=1e-8)


def _categorical_expected_grad(estimator: str, weighted: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Σ_a π(a) ∇_z k(a) for one token with softmax logits z, sampled on-policy (ρ = 1, ∇ρ = ∇log π)."""
    z = t(0.3, -0.8, 1.1, 0.0).requires_grad_(True)
    ref = torch.log_softmax(t(-0.2, 0.5, 0.1, 0.4), -1)
    logp = torch.log_softmax(z, -1)
    pi = logp.detach().exp()
    mask = torch.ones(4, 1, dtype=torch.bool)
    log_w = (logp - logp.detach()).reshape(4, 1) if weighted else None  # ρ = π/sg(π)
    kl = kl_loss_term(logp.reshape(4, 1), ref.reshape(4, 1), mask, estimator=estimator, log_weights=log_w)
    grad, = torch.autograd.grad((pi.reshape(4, 1) * kl).sum(), z)
    return grad, z, ref


def test_expected_kl_term_gradients():
    """What each KL-in-the-loss estimator's gradient optimises, exactly (the claims of docs/theory):
    E_π∇k1 = 0; E_π∇k2 = E_π∇(ρ k3) = ∇KL(π‖π_ref); E_π∇k3 = ∇KL(π_ref‖π)."""
    for est, weighted, target in (("k1", False, None), ("k2", False, "reverse"), ("k3", True, "reverse"),
                                  ("k3", False, "forward")):
        grad, z, ref = _categorical_expected_grad(est, weighted)
        logp = torch.log_softmax(z, -1)
        if target is None:
            torch.testing.assert_close(grad, torch.zeros_like(grad), rtol=0, atol=1e-15)
            continue
        kl = (logp.exp() * (logp - ref)).sum() if target == "reverse" else (ref.exp() * (ref - logp)).sum()
        want, = torch.autograd.grad(kl, z)
        torch.testing.assert_close(grad, want, rtol=0, atol=1e-14)
        assert float(want.abs().max()) > 1e-2
