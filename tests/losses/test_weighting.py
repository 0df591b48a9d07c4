"""LD-DPO's log-probs and WPO's weights against values worked out by hand (TRL parity: test_trl_parity.py)."""

import math

import pytest
import torch

from preftune.losses.weighting import ld_logps, wpo_weights

# Row layout as the collator makes it: a prompt position (masked; its value must be ignored), then the
# completion. Chosen: 3 tokens (−1, −2, −3); rejected: 1 token (−4), then padding.
CHOSEN = torch.tensor([[99.0, -1.0, -2.0, -3.0]], dtype=torch.float64)
REJECTED = torch.tensor([[99.0, -4.0, 77.0, 55.0]], dtype=torch.float64)
CHOSEN_MASK = torch.tensor([[False, True, True, True]])
REJECTED_MASK = torch.tensor([[False, True, False, False]])


@pytest.mark.parametrize("alpha,expected", [(0.5, -1.0 + 0.5 * (-2.0 - 3.0)), (0.0, -1.0), (1.0, -6.0)])
def test_ld_weights_the_tokens_past_the_shorter_completion(alpha, expected):
    # Shared length min(3, 1) = 1: the chosen's first token counts fully, its last two with α; the rejected
    # (the shorter) has no excess.
    chosen, rejected = ld_logps(CHOSEN, REJECTED, CHOSEN_MASK, REJECTED_MASK, ld_alpha=alpha)
    assert chosen.item() == pytest.approx(expected, abs=1e-12)
    assert rejected.item() == pytest.approx(-4.0, abs=1e-12)


def test_ld_is_per_pair_and_differentiable():
    # Two pairs: (3 vs 1 tokens) and (1 vs 2 tokens); α = 0.25.
    chosen = torch.tensor([[-1.0, -2.0, -3.0], [-5.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([[-4.0, 0.0, 0.0], [-1.0, -1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    cm = torch.tensor([[True, True, True], [True, False, False]])
    rm = torch.tensor([[True, False, False], [True, True, False]])
    c, r = ld_logps(chosen, rejected, cm, rm, ld_alpha=0.25)
    assert c.tolist() == pytest.approx([-1.0 + 0.25 * -5.0, -5.0])
    assert r.tolist() == pytest.approx([-4.0, -1.0 + 0.25 * -1.0])
    (c.sum() + r.sum()).backward()
    assert chosen.grad.tolist() == [[1.0, 0.25, 0.25], [1.0, 0.0, 0.0]]
    assert rejected.grad.tolist() == [[1.0, 0.0, 0.0], [1.0, 0.25, 0.0]]


def test_wpo_weight_hand_value_and_no_gradient():
    # Chosen: Σ log p = −2, Σ log Σp² = −1 over 2 tokens → w = exp((−2 + 1)/2) = e^−0.5.
    # Rejected: −3 and −3 over 1 token → w = 1 (each token exactly as likely as a typical sample).
    logps = torch.tensor([-2.0], dtype=torch.float64, requires_grad=True)
    w = wpo_weights(logps, torch.tensor([-3.0]), torch.tensor([-1.0]), torch.tensor([-3.0]),
                    torch.tensor([2]), torch.tensor([1]))
    assert w.item() == pytest.approx(math.exp(-0.5), abs=1e-12)
    assert not w.requires_grad


def test_wpo_weight_is_one_for_tokens_as_likely_as_a_sample_of_a_flat_or_sharp_distribution():
    # Uniform over V: p = 1/V and Σ p² = 1/V, so the ratio is 1; same for a one-hot distribution.
    vocab = 50
    flat = torch.full((1,), math.log(1 / vocab), dtype=torch.float64)
    sharp = torch.zeros(1, dtype=torch.float64)
    one = torch.tensor([1])
    assert wpo_weights(flat, sharp, flat, sharp, one, one).item() == pytest.approx(1.0, abs=1e-12)
