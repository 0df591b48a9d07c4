"""Parity with TRL 1.16 for the options that read per-token values: ld_alpha (LD-DPO), use_weighting (WPO),
rpo_alpha / the sft term, alone and combined, through preftune's pairwise objective.

Part 1 (float64, within 1e-6): both sides read the same per-token tensors. TRL's ``_compute_loss`` gets them
from its "model" and "reference model" (tests/losses/trl_harness.py), as its fused LM head returns them
(0 where masked); preftune's ``pairwise_loss`` gets them from ``score`` and from a ``FrozenReference`` whose
model returns them, with the objective's own reference reduction. Loss and gradient with respect to every
completion token's log-prob are compared.

Part 2 (float32, a tiny Llama): TRL patches the model with its own ``add_fused_lm_head`` and runs its own
kernel; preftune runs ``SequenceLogprobModel`` (its chunked output layer, including log Σ_v p_v²) on the
same weights and batch. Compared: the per-token statistics, the loss, and the gradient of every parameter.
"""

import copy

import pytest
import torch

from preftune.config import DPOConfig, load_config
from preftune.data.collate import PreferenceBatch
from preftune.modeling.logprobs import SequenceLogprobModel, SequenceLogps
from preftune.modeling.reference import FrozenReference
from preftune.objectives.pairwise import PAIRWISE, pairwise_loss
from preftune.stages.offline import scorer
from preftune.testing import tiny_llama

pytest.importorskip("trl.trainer.dpo_trainer")
from tests.losses.trl_harness import fused_outputs, trl_loss, trl_trainer  # noqa: E402


def batch_layout(seed, b=4, vocab=0):
    """Right-padded (chosen | rejected) rows with a pair-shared prompt of 1-3 tokens and completions of 1-6."""
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, 4, (b,), generator=gen).repeat(2)
    length = torch.randint(1, 7, (2 * b,), generator=gen)
    steps = int((prompt + length).max())
    pos = torch.arange(steps)
    attention = (pos < (prompt + length)[:, None]).long()
    completion = ((pos >= prompt[:, None]) & (pos < (prompt + length)[:, None])).long()
    ids = torch.randint(0, max(vocab, 1), (2 * b, steps), generator=gen) * attention
    return PreferenceBatch(ids, attention, completion.bool(), torch.arange(b))


def cfg_for(loss_types, loss_weights=None, **keys):
    return load_config(DPOConfig, None, ["model_name_or_path=x", "beta=0.3", f"loss_type={list(loss_types)}",
                                         "precompute_ref_log_probs=false"], loss_weights=loss_weights, **keys)


class TokenModel:
    """A stand-in SequenceLogprobModel returning fixed per-token values (aligned with the loss mask)."""

    def __init__(self, tokens, log_sum_sq=None):
        self.tokens, self.sq = tokens, log_sum_sq

    def __call__(self, input_ids, attention_mask, loss_mask, per_token=False, log_sum_sq=False):
        return SequenceLogps(logps=self.tokens.sum(1), lengths=loss_mask.sum(1).to(self.tokens.dtype),
                             tokens=self.tokens if per_token else None,
                             log_sum_sq=self.sq.sum(1) if log_sum_sq else None)


# (loss_type, loss_weights, preftune keys); TRL gets the same loss list (+ sft for rpo_alpha) and options.
CASES = [
    (["sigmoid"], None, {"ld_alpha": 0.5}),
    (["sigmoid"], None, {"ld_alpha": 0.0}),
    (["ipo"], None, {"ld_alpha": 0.3}),
    (["sigmoid_norm"], None, {"ld_alpha": 0.7}),
    (["hinge", "apo_zero"], [1.0, 0.5], {"ld_alpha": 0.5}),
    (["aot"], None, {"ld_alpha": 0.5}),
    (["sigmoid", "sft"], [1.0, 0.3], {"ld_alpha": 0.5}),   # sft reads the plain sums under LD
    (["sigmoid"], None, {"use_weighting": True}),
    (["ipo"], None, {"use_weighting": True}),
    (["robust"], None, {"use_weighting": True, "label_smoothing": 0.1}),
    (["sigmoid", "apo_down"], [1.0, 0.5], {"use_weighting": True, "ld_alpha": 0.6,
                                           "f_divergence_type": "js_divergence"}),
    (["sigmoid"], None, {"rpo_alpha": 0.3}),
    (["ipo"], None, {"rpo_alpha": 1.0, "ld_alpha": 0.4}),
    (["ipo", "sft"], [1.0, 0.2], {"ld_alpha": 0.6, "f_divergence_type": "js_divergence"}),
] + [([name], None, {"use_weighting": True, **hp}) for name, hp in (
    ("hinge", {}), ("exo_pair", {"label_smoothing": 0.1}), ("nca_pair", {}), ("bco_pair", {}), ("sppo_hard", {}),
    ("apo_zero", {}), ("apo_down", {}), ("discopop", {}), ("sigmoid_norm", {}))]
# sft (or rpo_alpha) with use_weighting: see test_sft_with_use_weighting_is_what_trls_code_intends.
# TRL 1.16 cannot back-propagate hinge with use_weighting (it multiplies ReLU's output in place, which ReLU's
# backward needs): for hinge only the loss value is compared with TRL's.
NO_TRL_BACKWARD = {("hinge",)}


def _trl_side(loss_types, loss_weights, keys):
    if keys.get("rpo_alpha") is not None:   # TRL 1.16's form of RPO
        loss_types = [*loss_types, "sft"]
        loss_weights = [*(loss_weights or [1.0] * (len(loss_types) - 1)), keys["rpo_alpha"]]
    options = {k: v for k, v in keys.items() if k != "rpo_alpha"}
    return loss_types, loss_weights, options


@pytest.mark.parametrize("loss_types,loss_weights,keys", CASES,
                         ids=["+".join(c[0]) + "-" + "-".join(f"{k}{v}" for k, v in c[2].items()) for c in CASES])
def test_per_token_options_match_trl_in_float64(loss_types, loss_weights, keys):
    batch = batch_layout(seed=len(str(keys)) + len(loss_types))
    mask = batch.loss_mask
    shifted = mask[:, 1:]
    m = int(mask.sum())
    gen = torch.Generator().manual_seed(5)
    policy_flat = (-0.1 - 3 * torch.rand(m, generator=gen, dtype=torch.float64)).requires_grad_()
    trl_flat = policy_flat.detach().clone().requires_grad_()
    ref_flat = -0.1 - 3 * torch.rand(m, generator=gen, dtype=torch.float64)
    sq_flat = -0.1 - 2 * torch.rand(m, generator=gen, dtype=torch.float64)

    def ours_layout(flat):  # column t: log p(x_t | x_<t)
        return torch.zeros(mask.shape, dtype=torch.float64).masked_scatter(mask, flat)

    def trl_layout(flat):   # column t: log p(x_{t+1} | x_≤t), TRL's shifted per-token tensors
        return torch.zeros(shifted.shape, dtype=torch.float64).masked_scatter(shifted, flat)

    cfg = cfg_for(loss_types, loss_weights, **keys)
    score = scorer(TokenModel(ours_layout(policy_flat), ours_layout(sq_flat)))
    reference = FrozenReference(TokenModel(ours_layout(ref_flat)), PAIRWISE.reference_reduce(cfg))
    mine, _ = pairwise_loss(cfg, score, reference, batch)

    trl_types, trl_weights, options = _trl_side(loss_types, loss_weights, keys)
    ref_out = fused_outputs(trl_layout(ref_flat))
    trainer = trl_trainer(beta=0.3, loss_types=trl_types, loss_weights=trl_weights,
                          ref_model=lambda **kwargs: ref_out, **options)
    policy_out = fused_outputs(trl_layout(trl_flat), trl_layout(sq_flat))
    theirs = trl_loss(trainer, lambda **kwargs: policy_out, batch.input_ids, batch.attention_mask, mask.long())

    assert mine.item() == pytest.approx(theirs.item(), abs=1e-6)
    if keys.get("use_weighting") and tuple(loss_types) in NO_TRL_BACKWARD:
        return
    mine.backward()
    theirs.backward()
    assert torch.allclose(policy_flat.grad, trl_flat.grad, rtol=0, atol=1e-6)


def test_sft_with_use_weighting_is_what_trls_code_intends():
    # TRL 1.16 fails on this combination: it multiplies the sft term, an expanded scalar, by the weights in
    # place. Its code means every pair's entry times w(y_w)·w(y_l), i.e. NLL × the batch's mean weight; that is
    # what preftune computes, checked here by hand from the per-token values.
    batch = batch_layout(seed=7)
    mask = batch.loss_mask
    gen = torch.Generator().manual_seed(2)
    tokens, sq = (torch.zeros(mask.shape, dtype=torch.float64).masked_scatter(
        mask, -0.1 - 2 * torch.rand(int(mask.sum()), generator=gen, dtype=torch.float64)) for _ in range(2))
    trainer = trl_trainer(beta=0.3, loss_types=["sigmoid", "sft"], loss_weights=[1.0, 0.5], use_weighting=True,
                          ref_model=lambda **kwargs: fused_outputs(tokens[:, 1:]))
    with pytest.raises(RuntimeError, match="memory location"):
        trl_loss(trainer, lambda **kwargs: fused_outputs(tokens[:, 1:], sq[:, 1:]), batch.input_ids,
                 batch.attention_mask, mask.long())

    cfg = cfg_for(["sft"], use_weighting=True)
    mine, _ = pairwise_loss(cfg, scorer(TokenModel(tokens, sq)), FrozenReference(TokenModel(tokens)), batch)
    lengths = mask.sum(1).double()
    w = torch.exp(((tokens - sq) * mask).sum(1) / lengths)
    w_chosen, w_rejected = w.chunk(2)
    chosen_tokens, chosen_lengths = tokens.chunk(2)[0], lengths.chunk(2)[0]
    nll = -chosen_tokens.sum() / chosen_lengths.sum()
    assert mine.item() == pytest.approx((nll * (w_chosen * w_rejected)).mean().item(), abs=1e-12)


def test_ld_alpha_one_and_weights_off_are_plain_dpo():
    # ld_alpha = 1 weights nothing: the same loss as without it (the α = 0 / 0.5 cases above, compared with
    # TRL, are where it does weigh).
    batch = batch_layout(seed=1)
    tokens, ref_tokens = (torch.zeros(batch.loss_mask.shape, dtype=torch.float64).masked_scatter(
        batch.loss_mask, -1 - torch.rand(int(batch.loss_mask.sum()), dtype=torch.float64)) for _ in range(2))
    ref = TokenModel(ref_tokens)
    plain, _ = pairwise_loss(cfg_for(["sigmoid"]), scorer(TokenModel(tokens)), FrozenReference(ref), batch)
    cfg = cfg_for(["sigmoid"], ld_alpha=1.0)
    ld, _ = pairwise_loss(cfg, scorer(TokenModel(tokens)), FrozenReference(ref, PAIRWISE.reference_reduce(cfg)),
                          batch)
    assert ld.item() == pytest.approx(plain.item(), abs=1e-12)


@pytest.mark.parametrize("keys", [{"ld_alpha": 0.5, "use_weighting": True}, {"ld_alpha": 0.25, "rpo_alpha": 0.3}],
                         ids=["ld+wpo", "ld+rpo"])
def test_tiny_model_through_trls_fused_head_and_preftunes_chunked_layer(keys):
    from trl.trainer.utils import add_fused_lm_head

    vocab = 97
    batch = batch_layout(seed=3, b=3, vocab=vocab)
    policy_lm = tiny_llama(vocab, hidden_size=16, intermediate_size=32, seed=1)
    ref_lm = tiny_llama(vocab, hidden_size=16, intermediate_size=32, seed=2).eval()
    theirs_lm = copy.deepcopy(policy_lm)
    add_fused_lm_head(theirs_lm, outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    theirs_ref = copy.deepcopy(ref_lm)
    add_fused_lm_head(theirs_ref)

    # The per-token statistics: TRL's kernel against preftune's chunked output layer (chunks of 5 rows).
    ours_model = SequenceLogprobModel(policy_lm, chunk_size=5)
    labels = batch.input_ids.masked_fill(~batch.loss_mask, -100)
    with torch.no_grad():
        trl_out = theirs_lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels,
                            fused_lm_head=True)
        out = ours_model(batch.input_ids, batch.attention_mask, batch.loss_mask, per_token=True, log_sum_sq=True)
    assert torch.allclose(out.tokens[:, 1:], trl_out.log_probs, atol=1e-5)
    assert torch.allclose(out.log_sum_sq, trl_out.log_sum_sq_probs.sum(1), atol=1e-5)

    # The loss and every parameter's gradient.
    cfg = cfg_for(["sigmoid"], **keys)
    reference = FrozenReference(SequenceLogprobModel(ref_lm, chunk_size=5), PAIRWISE.reference_reduce(cfg))
    mine, _ = pairwise_loss(cfg, scorer(ours_model), reference, batch)
    trl_types, trl_weights, options = _trl_side(["sigmoid"], None, keys)
    trainer = trl_trainer(beta=0.3, loss_types=trl_types, loss_weights=trl_weights, ref_model=theirs_ref,
                          policy=theirs_lm, **options)
    theirs = trl_loss(trainer, theirs_lm, batch.input_ids, batch.attention_mask, batch.loss_mask.long())
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-5)
    mine.backward()
    theirs.backward()
    for (name, p), q in zip(policy_lm.named_parameters(), theirs_lm.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
