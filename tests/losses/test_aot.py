"""AOT (quantile-coupled) losses: hand values with sorting, and B = 1 reduces to DPO."""

import math

import pytest
import torch

from preftune.losses.aot import aot, aot_unpaired
from preftune.losses.preference import sigmoid


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def t(*x):
    return torch.tensor(x, dtype=torch.float64)


def test_aot_hand_value_sorts_before_differencing():
    # policy π_w − π_l = [−1 − (−2), −3 − (−1)] = [1, −2] → sorted [−2, 1]
    # ref     = [−1 − 0, 0.5 − 0] = [−1, 0.5]            → sorted [−1, 0.5]
    # Δ = [−2 − (−1), 1 − 0.5] = [−1, 0.5]; β = 1: L = [log(1+e^1), log(1+e^−0.5)] = [1.3132617, 0.4740770]
    # (pairwise, unsorted, it would be h = [2, −2.5]: a different loss.)
    loss, rc, rr = aot(t(-1, -3), t(-2, -1), t(-1, 0.5), t(0, 0), beta=1.0)
    assert loss.tolist() == pytest.approx([softplus(1.0), softplus(-0.5)], abs=1e-12)
    assert loss.tolist() == pytest.approx([1.3132617, 0.4740770], abs=1e-7)
    # Rewards are per pair, in input order: β(π − ref).
    assert rc.tolist() == pytest.approx([0.0, -3.5]) and rr.tolist() == pytest.approx([-2.0, -1.0])


def test_aot_unpaired_hand_value():
    # u = π_w − ref_w = [−1 − 0, −3 − 0] → [−3, −1];  v = π_l − ref_l = [−2 + 2.5, −1 − 0] = [0.5, −1] → [−1, 0.5]
    # Δ = [−2, −1.5]; β = 1: L = [log(1+e^2), log(1+e^1.5)] = [2.1269280, 1.7014133]
    loss = aot_unpaired(t(-1, -3), t(-2, -1), t(0, 0), t(-2.5, 0), beta=1.0)[0]
    assert loss.tolist() == pytest.approx([softplus(2.0), softplus(1.5)], abs=1e-12)
    assert loss.tolist() == pytest.approx([2.1269280, 1.7014133], abs=1e-7)


def test_aot_label_smoothing_hand_value():
    # Δ as in test_aot_hand_value; ε = 0.2: L_i = 0.8·log(1+e^−Δ_i) + 0.2·log(1+e^Δ_i)
    loss = aot(t(-1, -3), t(-2, -1), t(-1, 0.5), t(0, 0), beta=1.0, label_smoothing=0.2)[0]
    expected = [0.8 * softplus(-d) + 0.2 * softplus(d) for d in (-1.0, 0.5)]
    assert loss.tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("fn", [aot, aot_unpaired])
def test_single_pair_is_sigmoid(fn):
    x = [t(-1.2), t(-2.5), t(-1.0), t(-3.0)]
    assert fn(*x, beta=0.7)[0].item() == pytest.approx(sigmoid(*x, beta=0.7)[0].item(), abs=1e-12)
