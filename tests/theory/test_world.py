"""Exact mathematics of the tabular world (docs/maths.md §objective, §preference): identities that hold to float precision."""

from __future__ import annotations

import pytest
import torch

from preftune.theory.data import bt_prob, expected_pairs, plackett_luce_logprob, sample_pairs, sample_rankings
from preftune.theory.tree import CompletionTree
from preftune.theory.world import TabularWorld, kl


@pytest.fixture(scope="module")
def world() -> TabularWorld:
    return TabularWorld.make(seed=0)


def test_tree_log_probs_are_token_sums_and_normalise():
    tree = CompletionTree(vocab=3, max_len=3)
    assert tree.n == 3 + 9 + 27
    logits = torch.randn(2, tree.n_nodes, tree.n_actions, dtype=torch.float64)
    logps = tree.seq_logprobs(logits)
    torch.testing.assert_close(logps.exp().sum(-1), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
    # 'ab' then EOS: three token log-probs summed by hand.
    tok = tree.token_logprobs(logits)
    i = tree.completions.index((0, 1))
    by_hand = tok[:, 0, 0] + tok[:, tree.node_of[(0,)], 1] + tok[:, tree.node_of[(0, 1)], tree.eos]
    torch.testing.assert_close(logps[:, i], by_hand, rtol=0, atol=1e-12)
    # Every full-support distribution is one logit table (π* is representable).
    back = tree.seq_logprobs(tree.logits_from_probs(logps.exp()))
    torch.testing.assert_close(back, logps, rtol=0, atol=1e-12)


def test_optimal_policy_normalises_and_matches_formula(world):
    star = world.optimal_policy()
    torch.testing.assert_close(star.sum(-1), torch.ones(world.n_prompts, dtype=torch.float64), rtol=0, atol=1e-12)
    by_formula = world.ref_probs * torch.exp(world.reward / world.beta)
    by_formula = by_formula / by_formula.sum(-1, keepdim=True)
    torch.testing.assert_close(star, by_formula, rtol=0, atol=1e-12)
    # Inversion (docs/maths.md §objective.inverse): r = β log π*/π_ref + β log Z(x).
    inverted = world.recovered_reward(star) + world.beta * world.log_partition().unsqueeze(-1)
    torch.testing.assert_close(inverted, world.reward, rtol=0, atol=1e-12)


def test_kl_is_zero_at_equality_and_positive_otherwise(world):
    star = world.optimal_policy()
    assert float(kl(star, star).abs().max()) < 1e-15
    assert world.mean_kl(world.ref_probs, star) > 0.1


def test_objective_is_maximised_by_pi_star(world):
    star = world.optimal_policy()
    best = world.objective(star)
    # J(π*) = β E_x log Z(x) (plug π* into the objective).
    assert abs(best - world.beta * float(world.log_partition().mean())) < 1e-12
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1e-1, 1.0):
        for _ in range(20):
            noise = scale * torch.randn(star.shape, generator=gen, dtype=torch.float64)
            perturbed = torch.softmax(star.log() + noise, dim=-1)
            assert world.objective(perturbed) < best
    # and J(π*) − J(π) = β KL(π‖π*) exactly (Gibbs variational identity).
    assert abs(best - world.objective(world.ref_probs) - world.beta * world.mean_kl(world.ref_probs, star)) < 1e-12


def test_reward_shift_invariance_is_exact(world):
    f = 7.0 * torch.randn(world.n_prompts, 1, dtype=torch.float64)
    shifted = world.reward + f
    assert float((world.optimal_policy(shifted) - world.optimal_policy()).abs().max()) < 1e-12
    pop = expected_pairs(world)
    a = bt_prob(world.reward, pop.prompt, pop.chosen, pop.rejected)
    b = bt_prob(shifted, pop.prompt, pop.chosen, pop.rejected)
    assert float((a - b).abs().max()) < 1e-12
    x, ranking = sample_rankings(world, 50, 5, seed=1)
    assert float((plackett_luce_logprob(shifted, x, ranking)
                  - plackett_luce_logprob(world.reward, x, ranking)).abs().max()) < 1e-12
    # Recovered reward is only defined up to f(x): shifting r does not change β log π*/π_ref.
    assert world.reward_errors(world.optimal_policy(shifted).log(), reward=shifted)["max_abs"] < 1e-12


def test_population_pairs_and_samples(world):
    pop = expected_pairs(world)
    assert abs(float(pop.weight.sum()) - 1.0) < 1e-12
    det = expected_pairs(world, deterministic=True)
    assert bool((world.reward[det.prompt, det.chosen] > world.reward[det.prompt, det.rejected]).all())
    s1, s2 = sample_pairs(world, 5000, seed=3), sample_pairs(world, 5000, seed=3)
    assert torch.equal(s1.chosen, s2.chosen) and torch.equal(s1.weight, s2.weight)  # seeded
    assert bool((s1.chosen != s1.rejected).all())
    assert abs(float(s1.weight.sum()) - 1.0) < 1e-12


def test_plackett_luce_sampler_matches_its_probabilities():
    """Rankings of 2 items: the empirical first-place frequency is the BT probability."""
    world = TabularWorld.make(seed=1, n_prompts=1, vocab=1, max_len=2)  # completions 'a$' and 'aa'
    x, ranking = sample_rankings(world, 20000, 2, seed=0)
    freq = float((ranking[:, 0] == 0).double().mean())
    p = float(torch.sigmoid(world.reward[0, 0] - world.reward[0, 1]))
    assert abs(freq - p) < 0.02
    logp = plackett_luce_logprob(world.reward, x[:1], torch.tensor([[0, 1]]))
    assert abs(float(logp.exp()) - p) < 1e-12
