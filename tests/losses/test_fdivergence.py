"""f-DPO (Wang et al. 2023) through the f_divergence_type option: hand values and invariants."""

import math

import pytest
import torch

from preftune import losses
from preftune.losses.preference import F_DIVERGENCES, f_divergence_scores, sigmoid

# Same pair as test_preference: chosen log-ratio a = −1 − (−1.5) = 0.5, rejected b = −2 − (−1.5) = −0.5.
PC, PR, RC, RR = (torch.tensor([x], dtype=torch.float64) for x in (-1.0, -2.0, -1.5, -1.5))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_reverse_kl_is_plain_sigmoid_bit_for_bit():
    torch.manual_seed(1)
    x = [torch.randn(5, dtype=torch.float64) for _ in range(4)]
    for default, explicit in zip(sigmoid(*x, beta=0.2, label_smoothing=0.1),
                                 sigmoid(*x, beta=0.2, label_smoothing=0.1, f_divergence_type="reverse_kl",
                                         f_alpha_divergence_coef=3.0)):
        assert torch.equal(default, explicit)


def test_forward_kl_hand_value():
    # f'(u) = 1 − 1/u: h = (1 − e^−0.5) − (1 − e^0.5) = e^0.5 − e^−0.5 = 2 sinh 0.5 = 1.0421906109874948
    # β = 0.5: L = log(1 + e^(−0.5·1.0421906)) = log(1 + e^−0.5210953) = 0.4661648...
    h = 2 * math.sinh(0.5)
    assert softplus(-0.5 * h) == pytest.approx(0.4661648, abs=1e-7)
    loss, rc, rr = sigmoid(PC, PR, RC, RR, beta=0.5, f_divergence_type="forward_kl")
    assert loss.item() == pytest.approx(softplus(-0.5 * h), abs=1e-12)
    # Rewards stay β log π/π_ref whatever the divergence.
    assert rc.item() == pytest.approx(0.25) and rr.item() == pytest.approx(-0.25)


def test_js_divergence_hand_value():
    # f'(u) = log 2 + log σ(log u): h = log σ(0.5) − log σ(−0.5) = 0.5 (log σ(x) − log σ(−x) = x).
    # β = 0.5: L = log(1 + e^−0.25) = 0.5759394...
    loss = sigmoid(PC, PR, RC, RR, beta=0.5, f_divergence_type="js_divergence")[0]
    assert loss.item() == pytest.approx(softplus(-0.25), abs=1e-12)
    assert loss.item() == pytest.approx(0.5759394198788436, abs=1e-12)


def test_alpha_divergence_hand_value():
    # α = 0.5: f'(u) = (u^−0.5 − 1)/(−0.5) = 2(1 − e^(−a/2)).
    # h = 2(1 − e^−0.25) − 2(1 − e^0.25) = 2(e^0.25 − e^−0.25) = 4 sinh 0.25 = 1.0104273
    # β = 0.5: L = log(1 + e^(−0.5052137)) = 0.4721077...
    h = 4 * math.sinh(0.25)
    assert softplus(-0.5 * h) == pytest.approx(0.4721077, abs=1e-7)
    loss = sigmoid(PC, PR, RC, RR, beta=0.5, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5)[0]
    assert loss.item() == pytest.approx(softplus(-0.5 * h), abs=1e-12)


def test_alpha_divergence_at_one_is_reverse_kl():
    # (u^(α−1) − 1)/(α − 1) → log u as α → 1; at α = 1 exactly the limit is used.
    assert sigmoid(PC, PR, RC, RR, beta=0.5, f_divergence_type="alpha_divergence",
                   f_alpha_divergence_coef=1.0)[0].item() == pytest.approx(softplus(-0.5), abs=1e-12)
    near = sigmoid(PC, PR, RC, RR, beta=0.5, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=1.001)[0]
    assert near.item() == pytest.approx(softplus(-0.5), abs=1e-3)


def test_unknown_divergence_is_refused():
    with pytest.raises(ValueError, match="forward_kl"):
        f_divergence_scores(torch.zeros(1), "kl")


@pytest.mark.parametrize("divergence", F_DIVERGENCES)
def test_every_divergence_is_log2_at_reference(divergence):
    # f'(1) is the same for both completions, so h = 0 and L = log 2, as for DPO.
    x = torch.tensor([-3.0, -0.7], dtype=torch.float64)
    y = torch.tensor([-1.0, -5.0], dtype=torch.float64)
    loss = sigmoid(x, y, x.clone(), y.clone(), beta=0.3, f_divergence_type=divergence)[0]
    assert torch.allclose(loss, torch.full((2,), math.log(2.0), dtype=torch.float64))


F_LOSSES = [n for n in losses.names() if "f_divergence_type" in losses.hyperparameters(n)]


def test_f_divergence_losses_are_trls_set():
    # TRL 1.16 applies f_divergence_type to exactly these DPOTrainer loss types ("sft" aside: it reads no
    # log-ratio), plus ipo_sum, the paper's form of ipo.
    assert set(F_LOSSES) == {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "ipo_sum"}


@pytest.mark.parametrize("name", F_LOSSES)
@pytest.mark.parametrize("divergence,coef", [("forward_kl", 0.5), ("js_divergence", 0.5),
                                             ("alpha_divergence", 0.5), ("alpha_divergence", 2.0)])
def test_gradcheck_float64_f_divergence(name, divergence, coef):
    torch.manual_seed(2)
    inputs = [(-0.5 - 2 * torch.rand(3, dtype=torch.float64)).requires_grad_() for _ in range(4)]
    hp = {"f_divergence_type": divergence, "f_alpha_divergence_coef": coef}
    if "label_smoothing" in losses.hyperparameters(name):
        hp["label_smoothing"] = 0.2
    if losses.needs_lengths(name):
        hp.update(chosen_lengths=torch.tensor([2, 1, 7]), rejected_lengths=torch.tensor([5, 3, 1]))
    fn = losses.get(name)
    assert torch.autograd.gradcheck(lambda *x: fn(*x, beta=0.3, **hp)[0], inputs)
