"""Parity with TRL's DPOTrainer: same inputs → same per-example losses and gradients (within 1e-6).

TRL computes its losses inside ``DPOTrainer._compute_loss`` (TRL 1.16; there is no standalone
``dpo_loss`` any more), so the harness calls that method on a stub trainer whose "model" returns the
given sequence log-probs as per-token log-probs (value in the first position, zeros after) and whose
completion mask encodes the given lengths. TRL returns the batch mean, so per-example losses come from
batches of one and gradients from the mean over a batch. Written against TRL 1.16; a TRL whose trainer
internals differ fails here loudly rather than silently skipping.
"""

import collections
import types

import pytest
import torch

from preftune import losses

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")


def trl_mean_loss(loss_type, pc, pr, rc, rr, lc, lr, *, beta, **args):
    """TRL's batch-mean loss for loss_type on these sequence log-probs and completion lengths."""
    b, steps = pc.shape[0], int(max(lc.max(), lr.max())) + 2
    logps = torch.cat([pc, pr])  # TRL's batch layout: chosen rows, then rejected rows
    zeros = torch.zeros(2 * b, steps - 1, dtype=logps.dtype)
    outputs = types.SimpleNamespace(
        log_probs=torch.cat([logps[:, None], zeros[:, 1:]], 1), entropy=zeros, mean_logits=zeros,
        is_top1=torch.zeros(2 * b, steps - 1, dtype=torch.bool))
    completion_mask = torch.zeros(2 * b, steps, dtype=torch.long)
    for row, n in enumerate(torch.cat([lc, lr]).tolist()):
        completion_mask[row, 1:1 + n] = 1  # position 0 is the prompt
    accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                                        gather_for_metrics=lambda x: x)
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, beta=beta, loss_types=[loss_type], loss_weights=[1.0], use_weighting=False,
        f_divergence_type=args.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=args.get("f_alpha_divergence_coef", 0.5),
        label_smoothing=args.get("label_smoothing", 0.0),
        args=types.SimpleNamespace(discopop_tau=args.get("discopop_tau", 0.05)),
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * b, steps, dtype=torch.long), "completion_mask": completion_mask,
              "attention_mask": torch.ones(2 * b, steps, dtype=torch.long),
              "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    return trl_dpo.DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, return_outputs=False)


def ours(name, pc, pr, rc, rr, lc, lr, *, beta, **hp):
    if name == "ipo":
        # preftune's IPO uses summed log-probs (the paper); TRL averages per token first.
        return losses.get(name)(pc / lc, pr / lr, rc / lc, rr / lr, beta=beta, **hp)[0]
    if losses.needs_lengths(name):
        hp = {**hp, "chosen_lengths": lc, "rejected_lengths": lr}
    return losses.get(name)(pc, pr, rc, rr, beta=beta, **hp)[0]


F_DIV = [{"f_divergence_type": "forward_kl"}, {"f_divergence_type": "js_divergence"},
         {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.5},
         {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 1.7}]
CASES = [
    ("sigmoid", {}), ("hinge", {}), ("ipo", {}), ("exo_pair", {"label_smoothing": 0.1}), ("nca_pair", {}),
    ("robust", {}), ("robust", {"label_smoothing": 0.2}), ("bco_pair", {}), ("sppo_hard", {}), ("aot", {}),
    ("aot", {"label_smoothing": 0.1}), ("aot_unpaired", {}), ("aot_unpaired", {"label_smoothing": 0.1}),
    ("apo_zero", {}), ("apo_down", {}), ("discopop", {}), ("discopop", {"discopop_tau": 0.7}), ("sigmoid_norm", {}),
] + [(name, f) for name in ("sigmoid", "hinge", "robust", "discopop", "sigmoid_norm") for f in F_DIV] \
  + [("exo_pair", {**f, "label_smoothing": 0.1}) for f in F_DIV]


def test_cases_cover_every_shared_name():
    # TRL 1.16's loss types, less "sft" (not a preference loss).
    trl_names = {"sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                 "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm"}
    assert {name for name, _ in CASES} == trl_names == trl_names & set(losses.names())


@pytest.mark.parametrize("name,hp", CASES, ids=[f"{n}-{'-'.join(map(str, h.values()))}" for n, h in CASES])
def test_losses_and_gradients_match_trl(name, hp):
    torch.manual_seed(11)
    b = 6
    # TRL's α-divergence path only knows float16/bfloat16/float32; everything else is compared in float64.
    dtype = torch.float32 if hp.get("f_divergence_type") == "alpha_divergence" else torch.float64
    pc, pr, rc, rr = (-0.5 - 4 * torch.rand(b, dtype=dtype) for _ in range(4))
    lc, lr = torch.randint(1, 9, (b,)), torch.randint(1, 9, (b,))
    beta = 0.3
    trl_hp = {**hp, "label_smoothing": hp.get("label_smoothing", 0.0)}
    theirs_hp = {k: v for k, v in trl_hp.items() if k in losses.hyperparameters(name)}

    # Per-example losses, from batches of one. (AOT couples the batch: with B = 1 it is per pair.)
    for i in range(b):
        one = [x[i:i + 1] for x in (pc, pr, rc, rr, lc, lr)]
        assert ours(name, *one, beta=beta, **theirs_hp).item() == pytest.approx(
            trl_mean_loss(name, *one, beta=beta, **trl_hp).item(), abs=1e-6)

    # Batch mean and gradients with respect to all four log-prob inputs.
    a = [x.clone().requires_grad_() for x in (pc, pr, rc, rr)]
    t = [x.clone().requires_grad_() for x in (pc, pr, rc, rr)]
    mine = ours(name, *a, lc, lr, beta=beta, **theirs_hp).mean()
    theirs = trl_mean_loss(name, *t, lc, lr, beta=beta, **trl_hp)
    assert mine.item() == pytest.approx(theirs.item(), abs=1e-6)
    mine.backward()
    theirs.backward()
    for x, y in zip(a, t):
        assert torch.allclose(x.grad, y.grad, rtol=0, atol=1e-6)
