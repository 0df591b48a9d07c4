"""KTO: hand values, the KL reference point, gradcheck."""

import math

import pytest
import torch

from preftune.losses import UNPAIRED, kto


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


POLICY = torch.tensor([-1.0, -2.0], dtype=torch.float64)
REF = torch.tensor([-1.5, -1.5], dtype=torch.float64)  # log-ratios r = [0.5, −0.5]
LABELS = torch.tensor([True, False])


def test_kto_hand_values():
    # β = 0.5, z = 0.2, λ_D = 2, λ_U = 1.5:
    # desirable:   2·(1 − σ(0.5·(0.5 − 0.2)))    = 2·(1 − σ(0.15))   = 0.9251403
    # undesirable: 1.5·(1 − σ(0.5·(0.2 − (−0.5)))) = 1.5·(1 − σ(0.35)) = 0.6200736
    losses, rewards = kto(POLICY, REF, LABELS, beta=0.5, kl=torch.tensor(0.2, dtype=torch.float64),
                          desirable_weight=2.0, undesirable_weight=1.5)
    assert losses.tolist() == pytest.approx([2 * (1 - sig(0.15)), 1.5 * (1 - sig(0.35))], abs=1e-12)
    assert losses.tolist() == pytest.approx([0.9251403, 0.6200736], abs=1e-7)
    assert rewards.tolist() == pytest.approx([0.25, -0.25]) and not rewards.requires_grad
    assert UNPAIRED["kto"] is kto


def test_kto_clamps_negative_kl_and_does_not_differentiate_it():
    # z = −3 clamps to 0: both losses are 1 − σ(0.5·0.5) = 1 − σ(0.25) = 0.4378235.
    kl = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    losses, _ = kto(POLICY, REF, LABELS, beta=0.5, kl=kl)
    assert losses.tolist() == pytest.approx([1 - sig(0.25)] * 2, abs=1e-12)
    assert not losses.requires_grad


def test_kto_gradient_sign_follows_label():
    # Desirable: ∂L/∂log π = −β σ'(·) < 0 (raise it); undesirable: +β σ'(·) > 0 (lower it).
    policy = POLICY.clone().requires_grad_()
    kto(policy, REF, LABELS, beta=0.5, kl=torch.tensor(0.0))[0].sum().backward()
    assert policy.grad[0] < 0 < policy.grad[1]


def test_kto_gradcheck_float64():
    torch.manual_seed(6)
    inputs = [(-3 * torch.rand(6, dtype=torch.float64)).requires_grad_() for _ in range(2)]
    labels = torch.tensor([True, False, True, True, False, False])
    kl = torch.tensor(0.3, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p, r: kto(p, r, labels, beta=0.3, kl=kl, desirable_weight=1.3, undesirable_weight=0.7)[0], inputs)
