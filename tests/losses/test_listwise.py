"""Plackett–Luce DPO: K = 2 is DPO, a hand-derived K = 3 value, ragged lists, gradcheck."""

import math

import pytest
import torch

from preftune.losses import plackett_luce
from preftune.losses.preference import sigmoid


def test_two_completions_is_dpo_sigmoid():
    torch.manual_seed(7)
    pc, pr, rc, rr = (torch.randn(5, dtype=torch.float64) for _ in range(4))
    losses, rewards = plackett_luce(torch.stack([pc, pr], 1), torch.stack([rc, rr], 1), beta=0.4)
    expected, chosen, rejected = sigmoid(pc, pr, rc, rr, beta=0.4)
    assert torch.allclose(losses, expected, rtol=0, atol=1e-14)
    assert torch.allclose(rewards, torch.stack([chosen, rejected], 1))


def test_three_completions_hand_values():
    # β = 1, ref = 0, r = [log 2, 0, 0]:
    #   k=0: log 2 − log(2 + 1 + 1) = −log 2;  k=1: 0 − log(1 + 1) = −log 2;  k=2: 0 − log 1 = 0  →  L = 2 log 2
    # r = [0, log 2, log 3]:
    #   k=0: 0 − log(1 + 2 + 3) = −log 6;  k=1: log 2 − log(2 + 3) = log 0.4;  k=2: 0  →  L = log 6 + log 2.5 = log 15
    policy = torch.tensor([[math.log(2), 0.0, 0.0], [0.0, math.log(2), math.log(3)]], dtype=torch.float64)
    losses, rewards = plackett_luce(policy, torch.zeros_like(policy), beta=1.0)
    assert losses.tolist() == pytest.approx([2 * math.log(2), math.log(15)], abs=1e-12)
    assert torch.equal(rewards, policy)


def test_mask_drops_padded_entries_wherever_they_are():
    # Row 0: [log 2, 0, pad, 0] with the pad excluded is the 3-list [log 2, 0, 0]: L = 2 log 2.
    # Row 1: [3, 1, pad, pad] is the 2-list: L = −log σ(3 − 1) = log(1 + e^−2) = 0.1269280.
    # The padding holds 100: were it counted, it would dominate every denominator.
    policy = torch.tensor([[math.log(2), 0.0, 100.0, 0.0], [3.0, 1.0, 100.0, 100.0]], dtype=torch.float64,
                          requires_grad=True)
    mask = torch.tensor([[True, True, False, True], [True, True, False, False]])
    losses, rewards = plackett_luce(policy, torch.zeros_like(policy), beta=1.0, mask=mask)
    assert losses.tolist() == pytest.approx([2 * math.log(2), math.log1p(math.exp(-2))], abs=1e-12)
    assert rewards[0, 2].item() == 0.0 and rewards[1, 3].item() == 0.0
    losses.sum().backward()
    assert torch.isfinite(policy.grad).all()
    assert policy.grad[~mask].abs().max().item() == 0.0


def test_gradcheck_float64_with_and_without_mask():
    torch.manual_seed(8)
    inputs = [(-3 * torch.rand(3, 4, dtype=torch.float64)).requires_grad_() for _ in range(2)]
    mask = torch.tensor([[True, True, True, True], [True, False, True, False], [True, True, False, False]])
    assert torch.autograd.gradcheck(lambda p, r: plackett_luce(p, r, beta=0.7)[0], inputs)
    assert torch.autograd.gradcheck(lambda p, r: plackett_luce(p, r, beta=0.7, mask=mask)[0], inputs)
