"""Losses against values derived by hand (see each test's arithmetic), gradcheck, and invariants."""

import math

import pytest
import torch

from preftune import losses
from preftune.losses.preference import ipo, ipo_sum, sigmoid, unlikelihood

# One pair: h = (−1 − (−1.5)) − (−2 − (−1.5)) = 0.5 + 0.5 = 1.
PC, PR, RC, RR = (torch.tensor([x], dtype=torch.float64) for x in (-1.0, -2.0, -1.5, -1.5))


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_sigmoid_hand_value():
    # β = 0.5: βh = 0.5, loss = −log σ(0.5) = log(1 + e^−0.5); rewards β(π − ref) = ±0.25.
    loss, rc, rr = sigmoid(PC, PR, RC, RR, beta=0.5)
    assert loss.item() == pytest.approx(softplus(-0.5), abs=1e-12)
    assert loss.item() == pytest.approx(0.4740769841801067, abs=1e-12)
    assert rc.item() == pytest.approx(0.25) and rr.item() == pytest.approx(-0.25)


def test_cdpo_label_smoothing_hand_value():
    # ε = 0.1: 0.9·log(1+e^−0.5) + 0.1·log(1+e^0.5) = 0.9·0.474077 + 0.1·0.974077 = 0.524077
    loss, _, _ = sigmoid(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.9 * softplus(-0.5) + 0.1 * softplus(0.5), abs=1e-12)
    assert loss.item() == pytest.approx(0.5240769841801067, abs=1e-12)


def test_sigmoid_is_log2_and_rewards_zero_at_reference():
    logps = torch.tensor([-3.0, -7.5, -0.2])
    other = torch.tensor([-1.0, -9.0, -4.0])
    loss, rc, rr = sigmoid(logps, other, logps.clone(), other.clone(), beta=0.1)
    assert torch.allclose(loss, torch.full((3,), math.log(2.0)))
    assert torch.equal(rc, torch.zeros(3)) and torch.equal(rr, torch.zeros(3))


def test_ipo_sum_hand_values():
    # The paper's summed form. β = 0.5: target 1/(2β) = 1 = h, loss 0.  β = 0.25: target 2, loss (1 − 2)² = 1.
    assert ipo_sum(PC, PR, RC, RR, beta=0.5)[0].item() == pytest.approx(0.0, abs=1e-12)
    assert ipo_sum(PC, PR, RC, RR, beta=0.25)[0].item() == pytest.approx(1.0, abs=1e-12)


def test_ipo_divides_each_log_ratio_by_its_length_first():
    # TRL's form. Log-ratios 0.5 over 2 chosen tokens, −0.5 over 4 rejected: h_avg = 0.25 + 0.125 = 0.375.
    lengths = {"chosen_lengths": torch.tensor([2]), "rejected_lengths": torch.tensor([4])}
    assert ipo(PC, PR, RC, RR, beta=0.5, **lengths)[0].item() == pytest.approx((0.375 - 1.0) ** 2, abs=1e-12)
    assert ipo(PC, PR, RC, RR, beta=4 / 3, **lengths)[0].item() == pytest.approx(0.0, abs=1e-12)
    # One token each: the two forms agree.
    ones = {"chosen_lengths": torch.tensor([1]), "rejected_lengths": torch.tensor([1])}
    assert ipo(PC, PR, RC, RR, beta=0.25, **ones)[0].item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_minimum_is_at_margin_one_over_two_beta(beta):
    margins = torch.linspace(-3, 3 + 1 / beta, 2001, dtype=torch.float64)
    zeros = torch.zeros_like(margins)
    values = ipo_sum(margins, zeros, zeros, zeros, beta=beta)[0]
    assert margins[values.argmin()].item() == pytest.approx(1 / (2 * beta), abs=(margins[1] - margins[0]).item())
    # TRL's form: the minimum is where the per-token margin is 1/(2β), i.e. the summed one is 3/(2β) at 3 tokens.
    threes = torch.full_like(margins, 3)
    values = ipo(3 * margins, zeros, zeros, zeros, beta=beta, chosen_lengths=threes, rejected_lengths=threes)[0]
    assert margins[values.argmin()].item() == pytest.approx(1 / (2 * beta), abs=(margins[1] - margins[0]).item())


def test_sft_is_the_token_mean_nll_of_the_chosen_over_the_batch():
    # Chosen sums −3 (2 tokens) and −5 (6 tokens): −(−8)/8 = 1 in both entries (not the mean of 1.5 and 0.83).
    pc = torch.tensor([-3.0, -5.0], dtype=torch.float64, requires_grad=True)
    other = torch.tensor([-9.0, -9.0], dtype=torch.float64)
    loss, rc, _ = losses.get("sft")(pc, other, other, other, beta=0.5, chosen_lengths=torch.tensor([2, 6]),
                                    rejected_lengths=torch.tensor([1, 1]))
    assert loss.tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    loss.mean().backward()
    assert pc.grad.tolist() == pytest.approx([-1 / 8, -1 / 8], abs=1e-12)   # every token counts the same
    assert rc.tolist() == pytest.approx([0.5 * 6.0, 0.5 * 4.0])               # β(π − ref), reported only


def test_unlikelihood_hand_value_and_unweighted_gradient():
    # L = −β(π_w − π_l) = −0.5·(−1 + 2) = −0.5; ∂L/∂π_w = −β regardless of how well the pair is ranked.
    pc = PC.clone().requires_grad_()
    loss = unlikelihood(pc, PR, RC, RR, beta=0.5)[0]
    assert loss.item() == pytest.approx(-0.5)
    loss.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.5)


def test_dpo_gradient_is_sigma_weighted():
    # docs/maths.md §dpo.gradient: ∂L/∂log π(y_w) = −β σ(r̂_l − r̂_w). With r̂_w − r̂_l = βh = 0.5: −0.5·σ(−0.5).
    pc = PC.clone().requires_grad_()
    sigmoid(pc, PR, RC, RR, beta=0.5)[0].sum().backward()
    assert pc.grad.item() == pytest.approx(-0.5 / (1 + math.exp(0.5)), abs=1e-12)


# Completion token counts for the losses that need them (losses.needs_lengths); integers, as a
# collator produces them.
LENGTHS = {"chosen_lengths": torch.tensor([3, 5, 1, 8]), "rejected_lengths": torch.tensor([4, 2, 6, 1])}


@pytest.mark.parametrize("name", losses.names())
def test_gradcheck_float64(name):
    torch.manual_seed(0)
    # Negative, as real summed log-probs are (ORPO's log-odds need exp(mean log-prob) < 1).
    inputs = [(-0.5 - 3 * torch.rand(4, dtype=torch.float64)).requires_grad_() for _ in range(4)]
    fn = losses.get(name)
    # Every other hyperparameter keeps its default; ε = 0.2 exercises the smoothed terms (and exo_pair
    # needs ε > 0).
    hp = {"label_smoothing": 0.2} if "label_smoothing" in losses.hyperparameters(name) else {}
    if losses.needs_lengths(name):
        hp.update(LENGTHS)
    assert torch.autograd.gradcheck(lambda *x: fn(*x, beta=0.3, **hp)[0], inputs)


def test_registry_errors_name_known_losses():
    with pytest.raises(KeyError, match="sigmoid"):
        losses.get("nope")
    assert losses.hyperparameters("sigmoid") == {"label_smoothing", "f_divergence_type", "f_alpha_divergence_coef"}
    assert losses.hyperparameters("nca_pair") == set()
    assert losses.hyperparameters("discopop") == {"discopop_tau", "f_divergence_type", "f_alpha_divergence_coef"}


def test_registry_names_and_length_requirements():
    trl = {"sigmoid", "ipo", "hinge", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
           "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm"}
    assert set(losses.names()) == trl | {"sft", "ipo_sum", "unlikelihood", "simpo", "orpo"}
    assert {n for n in losses.names() if losses.needs_lengths(n)} == {"ipo", "sigmoid_norm", "sft", "simpo", "orpo"}
    # Lengths are data, never reported as hyperparameters.
    assert losses.hyperparameters("simpo") == {"simpo_gamma"}
    assert losses.hyperparameters("orpo") == {"orpo_alpha"}
    # Other signatures stay out of the pairwise registry.
    assert "kto" not in losses.names() and losses.UNPAIRED["kto"] is losses.kto
    assert "plackett_luce" not in losses.names() and losses.LISTWISE["plackett_luce"] is losses.plackett_luce


def test_registry_kinds_cover_unpaired_and_listwise():
    # get() finds every kind, so the DPO config can name any of them; names() stays pairwise-only.
    assert losses.get("kto") is losses.kto and losses.get("plackett_luce") is losses.plackett_luce
    assert losses.all_names() == sorted([*losses.names(), "kto", "plackett_luce"])
    assert [losses.kind(n) for n in ("sigmoid", "kto", "plackett_luce")] == ["pairwise", "unpaired", "listwise"]
    # KTO's batch KL and a ranking's padding mask are data, not hyperparameters.
    assert losses.hyperparameters("kto") == {"desirable_weight", "undesirable_weight"}
    assert losses.hyperparameters("plackett_luce") == set()
    with pytest.raises(KeyError, match="plackett_luce"):
        losses.kind("nope")
