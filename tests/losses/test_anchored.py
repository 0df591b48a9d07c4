"""TRL's anchored losses (nca_pair, bco_pair, sppo_hard, apo_zero, apo_down): hand values."""

import math

import pytest
import torch

from preftune.losses.anchored import apo_down, apo_zero, bco_pair, nca_pair, sppo_hard

# Chosen log-ratio a = −1 − (−1.5) = 0.5, rejected b = −2 − (−1.5) = −0.5; β = 0.5 → r_w = 0.25, r_l = −0.25.
PC, PR, RC, RR = (torch.tensor([x], dtype=torch.float64) for x in (-1.0, -2.0, -1.5, -1.5))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_nca_pair_hand_value():
    # −log σ(0.25) − ½ log σ(−0.25) − ½ log σ(0.25)
    #   = 1.5·log(1+e^−0.25) + 0.5·log(1+e^0.25) = 1.5·0.5759394 + 0.5·0.8259394 = 1.2768788
    loss, rc, rr = nca_pair(PC, PR, RC, RR, beta=0.5)
    assert loss.item() == pytest.approx(1.5 * softplus(-0.25) + 0.5 * softplus(0.25), abs=1e-12)
    assert loss.item() == pytest.approx(1.2768788, abs=1e-7)
    assert rc.item() == pytest.approx(0.25) and rr.item() == pytest.approx(-0.25)


def test_bco_pair_hand_values():
    # δ = 0: −log σ(0.25) − log σ(0.25) = 2·0.5759394 = 1.1518788
    # δ = 0.1: −log σ(0.15) − log σ(−(−0.25 − 0.1)) = log(1+e^−0.15) + log(1+e^−0.35) = 1.1543392
    assert bco_pair(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(2 * softplus(-0.25), abs=1e-12)
    loss = bco_pair(PC, PR, RC, RR, beta=0.5, bco_delta=0.1)[0]
    assert loss.item() == pytest.approx(softplus(-0.15) + softplus(-0.35), abs=1e-12)
    assert loss.item() == pytest.approx(1.1543392, abs=1e-7)


def test_sppo_hard_hand_values():
    # β = 0.5, targets ±1/(2β) = ±1: (0.5 − 1)² + (−0.5 + 1)² = 0.5.  β = 1, targets ±0.5: 0 + 0 = 0.
    assert sppo_hard(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(0.5, abs=1e-12)
    assert sppo_hard(PC, PR, RC, RR, beta=1.0)[0].item() == pytest.approx(0.0, abs=1e-12)


def test_apo_zero_hand_value():
    # (1 − σ(0.25)) + σ(−0.25) = 2σ(−0.25) = 0.8756470
    loss = apo_zero(PC, PR, RC, RR, beta=0.5)[0]
    assert loss.item() == pytest.approx(2 * sig(-0.25), abs=1e-12)
    assert loss.item() == pytest.approx(0.8756470, abs=1e-7)


def test_apo_down_hand_value():
    # σ(0.25) + (1 − σ(0.25 − (−0.25))) = 0.5621765 + 1 − 0.6224593 = 0.9397172
    loss = apo_down(PC, PR, RC, RR, beta=0.5)[0]
    assert loss.item() == pytest.approx(sig(0.25) + 1 - sig(0.5), abs=1e-12)
    assert loss.item() == pytest.approx(0.9397172, abs=1e-7)


def test_apo_zero_raises_chosen_apo_down_lowers_it():
    # ∂L/∂log π(y_w): APO-zero −β σ'(r_w) < 0 (gradient descent raises y_w); APO-down
    # β σ'(r_w) − β σ'(r_w − r_l) = 0.5·(0.2461340 − 0.2350037) > 0 (lowers y_w).
    for fn, sign in ((apo_zero, -1), (apo_down, 1)):
        pc = PC.clone().requires_grad_()
        fn(pc, PR, RC, RR, beta=0.5)[0].sum().backward()
        assert math.copysign(1, pc.grad.item()) == sign
