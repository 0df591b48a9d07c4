"""SimPO and ORPO: hand values, reference independence, reduction to DPO, gradcheck."""

import math

import pytest
import torch

from preftune.losses.preference import sigmoid
from preftune.losses.reference_free import _log_odds, orpo, simpo


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def t(*x):
    return torch.tensor(x, dtype=torch.float64)


TWO = torch.tensor([2])


def test_simpo_hand_value():
    # Means: −1/2 = −0.5 and −2/2 = −1; β = 2, γ = 0.5: 2·(−0.5 + 1) − 0.5 = 0.5 → log(1 + e^−0.5) = 0.4740770
    loss = simpo(t(-1), t(-2), t(-1.5), t(-1.5), beta=2.0, chosen_lengths=TWO, rejected_lengths=TWO,
                 simpo_gamma=0.5)[0]
    assert loss.item() == pytest.approx(softplus(-0.5), abs=1e-12)
    assert loss.item() == pytest.approx(0.4740770, abs=1e-7)


@pytest.mark.parametrize("fn", [simpo, orpo])
def test_reference_enters_only_the_rewards(fn):
    kw = dict(beta=0.5, chosen_lengths=TWO, rejected_lengths=TWO)
    a = fn(t(-1), t(-2), t(-1.5), t(-1.5), **kw)
    b = fn(t(-1), t(-2), t(-7.0), t(3.0), **kw)
    assert a[0].item() == b[0].item()
    # Rewards: β(π − ref) = 0.5·(−1 + 1.5) = 0.25 and 0.5·(−1 + 7) = 3.
    assert a[1].item() == pytest.approx(0.25) and b[1].item() == pytest.approx(3.0)


def test_simpo_without_margin_and_equal_lengths_is_dpo_on_mean_logps():
    # γ = 0, |y_w| = |y_l| = n: −log σ(β(π_w/n − π_l/n)) = sigmoid(π_w/n, π_l/n, 0, 0).
    torch.manual_seed(5)
    pc, pr = -5 * torch.rand(6, dtype=torch.float64), -5 * torch.rand(6, dtype=torch.float64)
    n = torch.tensor([3, 3, 7, 7, 1, 12])
    zero = torch.zeros(6, dtype=torch.float64)
    got = simpo(pc, pr, zero, zero, beta=2.0, chosen_lengths=n, rejected_lengths=n, simpo_gamma=0.0)[0]
    assert torch.allclose(got, sigmoid(pc / n, pr / n, zero, zero, beta=2.0)[0], rtol=0, atol=1e-14)


def test_orpo_hand_value():
    # m_w = −1/2 = −0.5, m_l = −2/2 = −1.
    # log odds(−0.5) = −0.5 − log(1 − e^−0.5) = −0.5 − log 0.3934693 = −0.5 + 0.9327521 = 0.4327521
    # log odds(−1)   = −1 − log(1 − e^−1)     = −1 − log 0.6321206   = −1 + 0.4586751   = −0.5413249
    # λ = 0.1: L = 0.5 + 0.1·log(1 + e^−0.9740770) = 0.5 + 0.1·0.3202998 = 0.5320300
    odds_w = -0.5 - math.log(1 - math.exp(-0.5))
    odds_l = -1.0 - math.log(1 - math.exp(-1.0))
    loss = orpo(t(-1), t(-2), t(0), t(0), beta=0.5, chosen_lengths=TWO, rejected_lengths=TWO, orpo_alpha=0.1)[0]
    assert loss.item() == pytest.approx(0.5 + 0.1 * softplus(-(odds_w - odds_l)), abs=1e-12)
    assert loss.item() == pytest.approx(0.5320300, abs=1e-7)


def test_orpo_without_penalty_is_chosen_nll_per_token():
    # λ = 0: L = −log π(y_w)/|y_w| = 6/4 = 1.5.
    loss = orpo(t(-6), t(-2), t(0), t(0), beta=0.5, chosen_lengths=torch.tensor([4]), rejected_lengths=TWO,
                orpo_alpha=0.0)[0]
    assert loss.item() == pytest.approx(1.5, abs=1e-12)


def test_orpo_log_odds_stable_near_probability_one():
    # m = −1e−10: log odds = m − log(1 − e^m) = −1e−10 − log(1e−10 − 5e−21 + …) = 23.0258509298 (to 1e−12 rel.).
    # Naively, 1 − exp(m) in float64 is 1.00000008e−10: the log odds would be off by 8e−8.
    got = _log_odds(t(-1e-10)).item()
    assert got == pytest.approx(-1e-10 - math.log(1e-10) + 5e-11, rel=1e-13)
    assert got == pytest.approx(23.0258509298, abs=1e-9)
