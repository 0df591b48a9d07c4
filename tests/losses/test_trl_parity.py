"""Parity with TRL's DPOTrainer: same inputs → same per-example losses and gradients (within 1e-6, float64).

Every TRL 1.16 ``loss_type`` (sft and ipo included) on sequence log-probs, alone and in weighted lists: TRL's
``_compute_loss`` runs (tests/losses/trl_harness.py) with a "model" that returns the given sequence log-probs
as per-token log-probs (value in the first completion position, zeros elsewhere, as its fused LM head
returns them) and a completion mask that encodes the given lengths. TRL returns the batch mean, so
per-example losses come from batches of one and gradients from the mean over a batch. The options that
need per-token values (ld_alpha, use_weighting, rpo_alpha) are in test_trl_parity_tokens.py.
"""

import pytest
import torch

from preftune import losses
from preftune.config import DPOConfig, load_config
from preftune.objectives.pairwise import preference_loss

pytest.importorskip("trl.trainer.dpo_trainer")
from tests.losses.trl_harness import fused_outputs, trl_loss, trl_trainer  # noqa: E402

# TRL 1.16's DPOConfig.loss_type values, all of which preftune shares.
TRL_LOSS_TYPES = {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"}


def trl_mean_loss(loss_types, pc, pr, rc, rr, lc, lr, *, beta, loss_weights=None, **args):
    """TRL's batch-mean loss for these loss types on these sequence log-probs and completion lengths."""
    b, steps = pc.shape[0], int(max(lc.max(), lr.max())) + 2
    completion_mask = torch.zeros(2 * b, steps, dtype=torch.long)
    for row, n in enumerate(torch.cat([lc, lr]).tolist()):
        completion_mask[row, 1:1 + n] = 1  # position 0 is the prompt
    first = torch.zeros(2 * b, steps - 1, dtype=torch.bool)
    first[:, 0] = True  # the first completion token's position (shifted): it carries the whole sum
    log_probs = torch.zeros(2 * b, steps - 1, dtype=pc.dtype).masked_scatter(first, torch.cat([pc, pr]))
    trainer = trl_trainer(beta=beta, loss_types=loss_types, loss_weights=loss_weights, **args)
    return trl_loss(trainer, lambda **kwargs: fused_outputs(log_probs), torch.zeros(2 * b, steps, dtype=torch.long),
                    torch.ones(2 * b, steps, dtype=torch.long), completion_mask, rc, rr)


def ours(loss_types, pc, pr, rc, rr, lc, lr, *, beta, loss_weights=None, **hp):
    """preftune's per-pair losses through the pairwise objective's sum (as training computes them)."""
    cfg = load_config(DPOConfig, None, ["model_name_or_path=x", f"beta={beta}", f"loss_type={list(loss_types)}"],
                      loss_weights=loss_weights, **hp)
    mean, _ = preference_loss(cfg, pc, pr, rc, rr, (lc, lr))
    return mean


F_DIV = [{"f_divergence_type": "forward_kl"}, {"f_divergence_type": "js_divergence"},
         {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.5},
         {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 1.7}]
SINGLE = [
    ("sigmoid", {}), ("hinge", {}), ("ipo", {}), ("exo_pair", {"label_smoothing": 0.1}), ("nca_pair", {}),
    ("robust", {}), ("robust", {"label_smoothing": 0.2}), ("bco_pair", {}), ("sppo_hard", {}), ("aot", {}),
    ("aot", {"label_smoothing": 0.1}), ("aot_unpaired", {}), ("aot_unpaired", {"label_smoothing": 0.1}),
    ("apo_zero", {}), ("apo_down", {}), ("discopop", {}), ("discopop", {"discopop_tau": 0.7}), ("sigmoid_norm", {}),
    ("sft", {}),
] + [(name, f) for name in ("sigmoid", "hinge", "ipo", "robust", "discopop", "sigmoid_norm") for f in F_DIV] \
  + [("exo_pair", {**f, "label_smoothing": 0.1}) for f in F_DIV]
# Weighted lists, as TRL sums them: MPO-style mixes, RPO as [sigmoid, sft], f-DPO over a mix with sft.
LISTS = [
    (("sigmoid", "sft"), {"loss_weights": [1.0, 0.3]}),
    (("sigmoid", "bco_pair", "sft"), {"loss_weights": [0.8, 0.2, 1.0]}),
    (("ipo", "hinge"), {"loss_weights": [0.5, 2.0]}),
    (("apo_zero", "sppo_hard", "sft"), {}),
    (("ipo", "sft"), {"loss_weights": [1.0, 0.1], "f_divergence_type": "js_divergence"}),
]
CASES = [((name,), hp) for name, hp in SINGLE] + LISTS


def test_cases_cover_every_shared_name():
    assert {name for names, _ in CASES for name in names} == TRL_LOSS_TYPES
    assert TRL_LOSS_TYPES <= set(losses.names())


def _id(names, hp):
    return "+".join(names) + "".join(f"-{v}" for k, v in hp.items() if k != "loss_weights")


@pytest.mark.parametrize("names,hp", CASES, ids=[_id(n, h) for n, h in CASES])
def test_losses_and_gradients_match_trl(names, hp):
    torch.manual_seed(11)
    b = 6
    # TRL's α-divergence path only knows float16/bfloat16/float32; everything else is compared in float64.
    dtype = torch.float32 if hp.get("f_divergence_type") == "alpha_divergence" else torch.float64
    pc, pr, rc, rr = (-0.5 - 4 * torch.rand(b, dtype=dtype) for _ in range(4))
    lc, lr = torch.randint(1, 9, (b,)), torch.randint(1, 9, (b,))
    beta = 0.3

    # Per-example losses, from batches of one. (AOT and sft couple the batch: with B = 1 they are per pair.)
    for i in range(b):
        one = [x[i:i + 1] for x in (pc, pr, rc, rr, lc, lr)]
        assert ours(names, *one, beta=beta, **hp).item() == pytest.approx(
            trl_mean_loss(names, *one, beta=beta, **hp).item(), abs=1e-6)

    # Batch mean and gradients with respect to all four log-prob inputs.
    a = [x.clone().requires_grad_() for x in (pc, pr, rc, rr)]
    t = [x.clone().requires_grad_() for x in (pc, pr, rc, rr)]
    mine = ours(names, *a, lc, lr, beta=beta, **hp)
    theirs = trl_mean_loss(names, *t, lc, lr, beta=beta, **hp)
    assert mine.item() == pytest.approx(theirs.item(), abs=1e-6)
    mine.backward()
    theirs.backward()
    for x, y in zip(a, t):  # (None: the input does not enter the loss, e.g. the reference for sft)
        gx, gy = (torch.zeros_like(v) if v.grad is None else v.grad for v in (x, y))
        assert torch.allclose(gx, gy, rtol=0, atol=1e-6)


def test_ipo_is_trls_and_ipo_sum_is_the_papers_on_a_long_and_a_short_completion():
    # 120 vs 40 tokens, log-ratios +12 and −4: TRL's IPO sees 12/120 + 4/40 = 0.2; the paper's sums see 16.
    pc, pr, rc, rr = (torch.tensor([x], dtype=torch.float64) for x in (-100.0, -60.0, -112.0, -56.0))
    lc, lr = torch.tensor([120]), torch.tensor([40])
    trl = trl_mean_loss(["ipo"], pc, pr, rc, rr, lc, lr, beta=0.5).item()
    assert ours(["ipo"], pc, pr, rc, rr, lc, lr, beta=0.5).item() == pytest.approx(trl, abs=1e-12)
    assert trl == pytest.approx((0.2 - 1.0) ** 2, abs=1e-12)
    assert ours(["ipo_sum"], pc, pr, rc, rr, lc, lr, beta=0.5).item() == pytest.approx((16.0 - 1.0) ** 2)


def test_rpo_alpha_is_trls_sft_term_with_that_weight():
    # TRL 1.16 has no rpo_alpha key; its equivalent is loss_type [sigmoid, sft] with weights [1, α].
    torch.manual_seed(3)
    pc, pr, rc, rr = (-0.5 - 4 * torch.rand(5, dtype=torch.float64) for _ in range(4))
    lc, lr = torch.randint(1, 9, (5,)), torch.randint(1, 9, (5,))
    theirs = trl_mean_loss(["sigmoid", "sft"], pc, pr, rc, rr, lc, lr, beta=0.2, loss_weights=[1.0, 0.4])
    assert ours(["sigmoid"], pc, pr, rc, rr, lc, lr, beta=0.2, rpo_alpha=0.4).item() == pytest.approx(
        theirs.item(), abs=1e-12)
