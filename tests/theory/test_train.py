"""The tabular trainers use preftune.rl's math exactly where they claim to (docs/maths.md §rl)."""

from __future__ import annotations

import pytest
import torch

from preftune.rl.kl import kl_penalty
from preftune.rl.masked import masked_sum
from preftune.rl.surrogate import ppo_policy_loss
from preftune.theory.train import TabularPolicy, exact_ppo_loss, train_ppo_sampled
from preftune.theory.world import TabularWorld

CLIP = 0.2


@pytest.fixture(scope="module")
def world() -> TabularWorld:
    return TabularWorld.make(seed=0)


def _policies(world: TabularWorld):
    """π_old = a perturbed π_ref, π_θ = π_old perturbed enough that many ratios leave [1−ε, 1+ε]."""
    gen = torch.Generator().manual_seed(5)
    old_logits = world.ref_logits + 0.3 * torch.randn(world.ref_logits.shape, generator=gen, dtype=torch.float64)
    new_logits = old_logits + 0.3 * torch.randn(old_logits.shape, generator=gen, dtype=torch.float64)
    old = world.tree.seq_logprobs(old_logits)
    adv = torch.randn(old.shape, generator=gen, dtype=torch.float64)
    return old, new_logits, adv


def test_exact_ppo_loss_is_the_pi_old_weighted_clipped_surrogate(world):
    old, new_logits, adv = _policies(world)
    rho = world.prompt_weights
    a = new_logits.clone().requires_grad_(True)
    b = new_logits.clone().requires_grad_(True)
    lp_a, lp_b = world.tree.seq_logprobs(a), world.tree.seq_logprobs(b)
    ours = exact_ppo_loss(lp_a, old, adv, rho, CLIP)
    ratio = torch.exp(lp_b - old)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - CLIP, 1 + CLIP) * adv)
    by_hand = -(rho * (old.exp() * surrogate).sum(-1)).sum()
    # Both sides of the band are exercised, for both signs of A.
    assert bool(((ratio > 1 + CLIP) & (adv > 0)).any()) and bool(((ratio < 1 - CLIP) & (adv < 0)).any())
    torch.testing.assert_close(ours, by_hand, rtol=0, atol=1e-13)
    ours.backward()
    by_hand.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-13)


def test_sampled_ppo_policy_loss_estimates_the_exact_surrogate(world):
    """ppo_policy_loss on completions drawn from π_old, unweighted, is a Monte-Carlo estimate of the
    exact surrogate: agreement within 4 standard errors (seeded, so deterministic)."""
    old, new_logits, adv = _policies(world)
    new = world.tree.seq_logprobs(new_logits)
    n = 200_000
    ys = torch.multinomial(old.exp(), n, replacement=True, generator=torch.Generator().manual_seed(0))
    rows = torch.arange(world.n_prompts)[:, None]

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t[rows, ys].reshape(-1, 1)
    mask = torch.ones(world.n_prompts * n, 1, dtype=torch.bool)
    sampled, _ = ppo_policy_loss(pick(new), pick(old), pick(adv), mask, CLIP)
    exact = exact_ppo_loss(new, old, adv, world.prompt_weights, CLIP)
    ratio = torch.exp(pick(new) - pick(old))
    per_sample = torch.maximum(-pick(adv) * ratio, -pick(adv) * ratio.clamp(1 - CLIP, 1 + CLIP))
    stderr = float(per_sample.std()) / (world.n_prompts * n) ** 0.5
    assert abs(float(sampled) - float(exact)) < 4 * stderr
    assert stderr < 5e-3  # the test is tight enough to catch a missing π_old weight


def test_path_logprobs_feed_per_token_kl_that_sums_to_the_sequence_log_ratio(world):
    """k1 per token, summed over the completion, is log π(y|x)/π_ref(y|x): the reward of sampled PPO
    with k1 equals the exact REINFORCE / PPO reward r − β log π/π_ref."""
    tree = world.tree
    gen = torch.Generator().manual_seed(2)
    logits = world.ref_logits + 0.5 * torch.randn(world.ref_logits.shape, generator=gen, dtype=torch.float64)
    path, ref_path = tree.path_logprobs(logits), tree.path_logprobs(world.ref_logits)
    mask = tree.step_mask.bool().expand_as(path)
    torch.testing.assert_close(path.sum(-1), tree.seq_logprobs(logits), rtol=0, atol=0)
    k1 = masked_sum(kl_penalty(path, ref_path, "k1"), mask, dim=-1)
    torch.testing.assert_close(k1, tree.seq_logprobs(logits) - world.ref_logps, rtol=0, atol=1e-12)
    # k3 summed over tokens is ≥ 0 and not the sequence log-ratio (hence a different fixed point).
    k3 = masked_sum(kl_penalty(path, ref_path, "k3"), mask, dim=-1)
    assert bool((k3 >= 0).all()) and float((k3 - k1).abs().max()) > 1e-3


def test_train_ppo_sampled_is_seeded_and_moves_toward_pi_star(world):
    star = world.optimal_policy()
    a = train_ppo_sampled(world, iterations=20, n_samples=8, seed=3, record_every=10**6)
    b = train_ppo_sampled(world, iterations=20, n_samples=8, seed=3, record_every=10**6)
    c = train_ppo_sampled(world, iterations=20, n_samples=8, seed=4, record_every=10**6)
    assert torch.equal(a.logps, b.logps) and not torch.equal(a.logps, c.logps)
    assert world.mean_kl(a.probs, star) < 0.5 * world.mean_kl(world.ref_probs, star)
    with pytest.raises(ValueError, match="n_samples >= 2"):
        train_ppo_sampled(world, n_samples=1)


def test_tabular_policy_starts_at_reference(world):
    torch.testing.assert_close(TabularPolicy(world).logps(), world.ref_logps, rtol=0, atol=0)
