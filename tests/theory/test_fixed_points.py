"""The GRPO-family fixed points and tabular trainers: the closed forms are stationary points of the
expected loss (autograd of the shipped per-token pieces), the sampled loss is an unbiased estimate of
that expected loss's gradient, and the finite-group factors hold (shipped group functions, enumerated)."""

from __future__ import annotations

import itertools

import pytest
import torch

from preftune.rl import group_advantages, groups_with_signal
from preftune.theory.fixed_points import LossShape, dynamic_sampling_weight, kl_loss_myopic_optimum, solve
from preftune.theory.grpo import Variant, batch_loss, expected_loss, sample_batch, train_grpo_sampled
from preftune.theory.world import TabularWorld

F64 = torch.float64


@pytest.fixture(scope="module")
def world() -> TabularWorld:
    return TabularWorld.make(seed=0)


def test_one_token_completions_make_the_myopic_optimum_pi_star():
    # With |y| = 1 there is no future KL to miss: the per-token fixed point is π* exactly.
    w = TabularWorld.make(seed=3, max_len=1)
    torch.testing.assert_close(kl_loss_myopic_optimum(w), w.optimal_policy(), rtol=0, atol=1e-12)
    # ...and with longer completions it is not.
    w3 = TabularWorld.make(seed=3)
    assert w3.mean_kl(kl_loss_myopic_optimum(w3), w3.optimal_policy()) > 1e-2


def _grad(world, v, probs, **kw):
    logits = world.tree.logits_from_probs(probs).requires_grad_(True)
    g, = torch.autograd.grad(expected_loss(world, v, logits, **kw), logits)
    return g


VARIANTS = [
    ("k2", Variant(kl="loss", kl_estimator="k2"), False),
    ("k3 forward", Variant(kl="loss", kl_estimator="k3"), False),
    ("k3 × ρ, length-normalised", Variant(loss_type="grpo", kl="loss", kl_estimator="k3",
                                          use_bias_correction_kl=True), False),
    ("k3, length-normalised, std (DeepSeekMath)", Variant(loss_type="grpo", scale_rewards="group", kl="loss",
                                                          kl_estimator="k3"), False),
    ("k3 × ρ, batch std", Variant(scale_rewards="batch", kl="loss", kl_estimator="k3", use_bias_correction_kl=True),
     False),
    ("k3 × ρ, G = 4", Variant(kl="loss", kl_estimator="k3", use_bias_correction_kl=True, group_size=4), True),
]


@pytest.mark.parametrize("name,v,finite", VARIANTS, ids=[n for n, _, _ in VARIANTS])
def test_closed_form_is_a_stationary_point_of_the_expected_loss(world, name, v, finite):
    fp = solve(world, v.loss_shape(finite))
    at_fp = _grad(world, v, fp, finite_group=finite)
    at_star = _grad(world, v, world.optimal_policy(), finite_group=finite)
    assert float(at_fp.abs().max()) < 1e-10, name
    assert float(at_star.abs().max()) > 1e-3, name  # π* is not stationary for this loss


def test_dynamic_sampling_closed_form_is_stationary(world):
    reward = (world.reward >= torch.quantile(world.reward, 0.8, dim=-1, keepdim=True)).double()
    v = Variant(kl="loss", kl_estimator="k3", use_bias_correction_kl=True, dynamic_sampling=True)
    fp = solve(world, v.loss_shape(True), reward=reward, beta=0.25)
    grad = _grad(world, v, fp, reward=reward, beta=0.25, finite_group=True)
    assert float(grad.abs().max()) < 1e-10
    with pytest.raises(ValueError, match="0/1 reward"):
        solve(world, v.loss_shape(True))  # r* is not 0/1


def test_k1_in_the_loss_has_no_fixed_point(world):
    with pytest.raises(ValueError, match="no finite fixed point"):
        solve(world, Variant(kl="loss", kl_estimator="k1").loss_shape(False))


@pytest.mark.parametrize("loss_type,factor", [("dr_grpo", 3.0), ("grpo", 1.0)])
def test_sampled_loss_is_an_unbiased_estimate_of_the_expected_gradient(world, loss_type, factor):
    """The mean of batch_loss gradients (G = 4, no std, k3 × ρ in the loss) is the gradient of expected_loss
    with the finite-G factor, within 5 standard errors. The batch averages over its sequences and
    prompts (ρ uniform), so E[batch_loss] = expected_loss / L for dr_grpo (its constant L = max_len = 3)
    and = expected_loss for grpo (whose 1/|y| is in f and w)."""
    v = Variant(loss_type=loss_type, kl="loss", kl_estimator="k3", use_bias_correction_kl=True, group_size=4,
                groups_per_prompt=400)
    gen = torch.Generator().manual_seed(0)
    logits = world.ref_logits + 0.4 * torch.randn(world.ref_logits.shape, generator=gen, dtype=F64)
    exact = _grad_logits(lambda lg: expected_loss(world, v, lg, finite_group=True), logits)
    grads = torch.stack([_grad_logits(lambda lg: batch_loss(world, v, lg, sample_batch(world, v, logits, gen)), logits)
                         for _ in range(40)])
    mean, se = grads.mean(0) * factor, grads.std(0) * factor / 40 ** 0.5
    assert float(exact.abs().max()) > 10 * float(se.max())  # the test can tell a wrong gradient apart
    assert bool(((mean - exact).abs() <= 5 * se + 1e-12).all())


def _grad_logits(fn, logits):
    lg = logits.clone().requires_grad_(True)
    g, = torch.autograd.grad(fn(lg), lg)
    return g


def test_group_mean_scales_the_policy_gradient_by_g_minus_1_over_g():
    """Enumerate every group of G = 3 draws from a 3-outcome distribution: with the shipped
    group_advantages (no std), E[A_1 · 1{y_1 = y}] = (G − 1)/G · q(y) (r(y) − V)."""
    q, r, G = torch.tensor([0.2, 0.5, 0.3], dtype=F64), torch.tensor([1.0, -0.5, 2.0], dtype=F64), 3
    V = float((q * r).sum())
    expect = torch.zeros(3, dtype=F64)
    for group in itertools.product(range(3), repeat=G):
        prob = float(torch.prod(q[list(group)]))
        adv = group_advantages(r[list(group)], G, "none")
        expect[group[0]] += prob * adv[0]
    torch.testing.assert_close(expect, (G - 1) / G * q * (r - V), rtol=0, atol=1e-15)


def test_dynamic_sampling_weight_matches_the_shipped_filter():
    # Monte Carlo with groups_with_signal: P(group mixed | first member correct) = 1 − p^{G−1}.
    gen = torch.Generator().manual_seed(1)
    p, G, n = 0.7, 5, 200_000
    rewards = (torch.rand(n, G, generator=gen, dtype=F64) < p).double()
    mixed = groups_with_signal(rewards.reshape(-1), G)
    predicted = dynamic_sampling_weight(torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([p], dtype=F64), G)
    for value, col in ((1.0, 0), (0.0, 1)):
        sel = rewards[:, 0] == value
        freq = float(mixed[sel].double().mean())
        se = (freq * (1 - freq) / float(sel.sum())) ** 0.5
        assert abs(freq - float(predicted[0, col])) < 4 * se


def test_sampled_training_is_seeded(world):
    v = Variant(loss_type="dapo", scale_rewards="group", groups_per_prompt=2, dynamic_sampling=True)
    a = train_grpo_sampled(world, v, steps=15, seed=2, record_every=10**6)
    b = train_grpo_sampled(world, v, steps=15, seed=2, record_every=10**6)
    c = train_grpo_sampled(world, v, steps=15, seed=3, record_every=10**6)
    assert torch.equal(a.logps, b.logps) and not torch.equal(a.logps, c.logps)


def test_loss_shape_is_read_from_trl_names():
    assert Variant(kl="loss", kl_estimator="k3").loss_shape(False) == LossShape(divergence="forward")
    shape = Variant(loss_type="grpo", scale_rewards="group", kl="loss", kl_estimator="k3",
                    use_bias_correction_kl=True, group_size=6).loss_shape(True)
    assert shape == LossShape(divergence="reverse", length_normalised=True, scale="group", group_size=6)
    with pytest.raises(ValueError, match="KL in the loss"):
        Variant(kl="reward").loss_shape(False)
