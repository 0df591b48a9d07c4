"""Reward-model losses: Bradley–Terry (TRL RewardTrainer semantics) and Plackett–Luce on rewards."""

import math

import pytest
import torch

from preftune.losses import plackett_luce
from preftune.losses.preference import sigmoid
from preftune.losses.reward import bradley_terry, plackett_luce_rewards


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def t(*x):
    return torch.tensor(x, dtype=torch.float64)


def test_bradley_terry_hand_values():
    # r_c = 1, r_r = 0.5: −log σ(0.5) = 0.4740770; margin 0.25: −log σ(0.25) = 0.5759394;
    # + centering 0.01·(1 + 0.5)² = 0.0225 → 0.5984394.
    assert bradley_terry(t(1.0), t(0.5)).item() == pytest.approx(softplus(-0.5), abs=1e-12)
    assert bradley_terry(t(1.0), t(0.5), margin=0.25).item() == pytest.approx(softplus(-0.25), abs=1e-12)
    loss = bradley_terry(t(1.0), t(0.5), margin=t(0.25), center_rewards_coefficient=0.01)
    assert loss.item() == pytest.approx(softplus(-0.25) + 0.0225, abs=1e-12)
    assert loss.item() == pytest.approx(0.5984394, abs=1e-7)


def test_centering_term_mean_is_trls_batch_term():
    # TRL adds c·mean_B((r_c + r_r)²) to the mean loss; per pair it is c·(r_c + r_r)², same mean.
    # Pairs (1, 0) and (−1, −2): squares 1 and 9, mean 5; c = 0.1 adds 0.5 to the mean loss.
    chosen, rejected = t(1.0, -1.0), t(0.0, -2.0)
    centered = bradley_terry(chosen, rejected, center_rewards_coefficient=0.1)
    extra = centered.mean() - bradley_terry(chosen, rejected).mean()
    assert extra.item() == pytest.approx(0.5, abs=1e-12)


def test_plackett_luce_rewards_hand_value():
    # r = [0, log 2, log 3]: log 6 + log(5/2) = log 15 (see test_listwise); padded 3-list in a K = 4 row.
    rewards = t(0.0, math.log(2), 7.0, math.log(3)).unsqueeze(0)
    mask = torch.tensor([[True, True, False, True]])
    assert plackett_luce_rewards(rewards, mask).item() == pytest.approx(math.log(15), abs=1e-12)


def test_plackett_luce_two_is_bradley_terry_is_dpo_on_implicit_rewards():
    # docs/maths.md §preference, §dpo.loss: with r̂ = β log π/π_ref, PL(K = 2) = BT = the DPO sigmoid loss.
    torch.manual_seed(9)
    pc, pr, rc, rr = (torch.randn(6, dtype=torch.float64) for _ in range(4))
    beta = 0.3
    r_w, r_l = beta * (pc - rc), beta * (pr - rr)
    bt = bradley_terry(r_w, r_l)
    pl = plackett_luce_rewards(torch.stack([r_w, r_l], 1))
    dpo = sigmoid(pc, pr, rc, rr, beta=beta)[0]
    listwise = plackett_luce(torch.stack([pc, pr], 1), torch.stack([rc, rr], 1), beta=beta)[0]
    for other in (pl, dpo, listwise):
        assert torch.allclose(bt, other, rtol=0, atol=1e-14)


def test_gradcheck_float64():
    torch.manual_seed(10)
    c, r = (torch.randn(5, dtype=torch.float64, requires_grad=True) for _ in range(2))
    margin = torch.rand(5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b: bradley_terry(a, b, margin=margin, center_rewards_coefficient=0.05), (c, r))
    scores = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, True], [True, True, False], [True, True, True]])
    assert torch.autograd.gradcheck(lambda s: plackett_luce_rewards(s, mask), (scores,))
