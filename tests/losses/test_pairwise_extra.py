"""TRL's margin losses (hinge, robust, exo_pair, discopop, sigmoid_norm): hand values and invariants."""

import math

import pytest
import torch

from preftune.losses.pairwise_extra import discopop, exo_pair, hinge, robust, sigmoid_norm
from preftune.losses.preference import sigmoid

# Pair of test_preference: chosen log-ratio a = 0.5, rejected b = −0.5, h = a − b = 1.
PC, PR, RC, RR = (torch.tensor([x], dtype=torch.float64) for x in (-1.0, -2.0, -1.5, -1.5))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_hinge_hand_values_and_zero_gradient_past_margin():
    # β = 0.5: max(0, 1 − 0.5·1) = 0.5.  β = 2: max(0, 1 − 2) = 0, and no gradient.
    assert hinge(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(0.5, abs=1e-12)
    pc = PC.clone().requires_grad_()
    loss = hinge(pc, PR, RC, RR, beta=2.0)[0]
    loss.sum().backward()
    assert loss.item() == 0.0 and pc.grad.item() == 0.0


def test_robust_hand_value():
    # ε = 0.1, βh = 0.5: [0.9·log(1+e^−0.5) − 0.1·log(1+e^0.5)] / 0.8
    #   = (0.9·0.4740770 − 0.1·0.9740770) / 0.8 = (0.4266693 − 0.0974077) / 0.8 = 0.4115770
    loss = robust(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)[0]
    assert loss.item() == pytest.approx((0.9 * softplus(-0.5) - 0.1 * softplus(0.5)) / 0.8, abs=1e-12)
    assert loss.item() == pytest.approx(0.4115770, abs=1e-7)


def test_robust_with_no_noise_is_sigmoid():
    torch.manual_seed(3)
    x = [torch.randn(6, dtype=torch.float64) for _ in range(4)]
    for a, b in zip(robust(*x, beta=0.4, label_smoothing=0.0), sigmoid(*x, beta=0.4)):
        assert torch.allclose(a, b, rtol=0, atol=1e-15)


def test_robust_refuses_half_noise():
    with pytest.raises(ValueError, match="0.5"):
        robust(PC, PR, RC, RR, beta=0.5, label_smoothing=0.5)


def test_exo_pair_hand_value():
    # ε = 0.1, βh = 0.5: q_w = σ(0.5) = 0.6224593, q_l = σ(−0.5) = 0.3775407
    # L = q_w (log q_w − log 0.9) + q_l (log q_l − log 0.1)
    #   = 0.6224593·(−0.4740770 + 0.1053605) + 0.3775407·(−0.9740770 + 2.3025851) = 0.2720548
    qw, ql = sig(0.5), sig(-0.5)
    loss = exo_pair(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)[0]
    assert loss.item() == pytest.approx(qw * (math.log(qw) - math.log(0.9)) + ql * (math.log(ql) - math.log(0.1)),
                                        abs=1e-12)
    assert loss.item() == pytest.approx(0.2720548, abs=1e-7)


def test_exo_pair_is_zero_when_policy_matches_label_distribution():
    # KL(q ‖ p) = 0 when σ(βh) = 1 − ε, i.e. βh = log((1 − ε)/ε) = log 9 for ε = 0.1.
    margin = torch.tensor([math.log(9.0)], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    assert exo_pair(margin, zero, zero, zero, beta=1.0, label_smoothing=0.1)[0].item() == pytest.approx(0, abs=1e-12)


def test_exo_pair_needs_label_smoothing():
    with pytest.raises(ValueError, match="label_smoothing"):
        exo_pair(PC, PR, RC, RR, beta=0.5)


def test_discopop_hand_values():
    # ρ = βh = 0.5. τ = 0.05: m = σ(10) = 0.9999546; L = (1 − m)·log(1+e^−0.5) + m·e^−0.5 = 0.6065246
    # τ = 1: m = σ(0.5) = 0.6224593; L = 0.3775407·0.4740770 + 0.6224593·0.6065307 = 0.5565240
    m = sig(10.0)
    loss = discopop(PC, PR, RC, RR, beta=0.5)[0]
    assert loss.item() == pytest.approx((1 - m) * softplus(-0.5) + m * math.exp(-0.5), abs=1e-12)
    assert loss.item() == pytest.approx(0.6065246, abs=1e-7)
    assert discopop(PC, PR, RC, RR, beta=0.5, discopop_tau=1.0)[0].item() == pytest.approx(0.5565240, abs=1e-7)


def test_sigmoid_norm_hand_value():
    # |y_w| = 2, |y_l| = 4: h_norm = 0.5/2 − (−0.5)/4 = 0.375; β = 0.5: L = log(1 + e^−0.1875) = 0.6037853
    loss, rc, rr = sigmoid_norm(PC, PR, RC, RR, beta=0.5, chosen_lengths=torch.tensor([2]),
                                rejected_lengths=torch.tensor([4]))
    assert loss.item() == pytest.approx(softplus(-0.1875), abs=1e-12)
    assert loss.item() == pytest.approx(0.6037853, abs=1e-7)
    # Rewards are not length-normalised: β·(±0.5).
    assert rc.item() == pytest.approx(0.25) and rr.item() == pytest.approx(-0.25)


def test_sigmoid_norm_with_unit_lengths_is_sigmoid_and_zero_length_counts_as_one():
    torch.manual_seed(4)
    x = [torch.randn(5, dtype=torch.float64) for _ in range(4)]
    ones, zeros = torch.ones(5), torch.zeros(5)
    expected = sigmoid(*x, beta=0.3)[0]
    assert torch.allclose(sigmoid_norm(*x, beta=0.3, chosen_lengths=ones, rejected_lengths=ones)[0], expected)
    assert torch.allclose(sigmoid_norm(*x, beta=0.3, chosen_lengths=zeros, rejected_lengths=ones)[0], expected)
