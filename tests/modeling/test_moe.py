"""The MoE router load-balancing loss: TRL's rule for switching it on, the same value and gradients as the
model's own forward with labels (padded, packed, and with a shared prompt and a repeated row computed
once), and a router gradient it changes."""

import copy
import re

import pytest
import torch

from preftune.errors import ConfigError
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.modeling.moe import configure_router_aux, router_aux, with_router_aux
from preftune.stages.sft import nll
from preftune.testing import tiny_llama
from preftune.tiny_architectures import tiny_causal_lm

MOE = ["qwen3-moe", "qwen2-moe", "mixtral", "gpt-oss"]
PACKS = {"qwen3-moe", "qwen2-moe", "mixtral"}   # gpt-oss's decoder does not keep packed sequences apart


def _batch(vocab=96, seed=0):
    """Rows 0 and 1 share a 4-token prompt (a pair: prefix sharing computes it once) and row 3 repeats row 0
    (an RL group's repeated sample: computed once)."""
    g = torch.Generator().manual_seed(seed)
    lengths = (9, 7, 5, 9)
    ids = torch.randint(4, vocab, (4, 9), generator=g)
    ids[1, :4] = ids[0, :4]
    ids[3] = ids[0]
    attention = torch.zeros_like(ids)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, (n, prompt) in enumerate(zip(lengths, (4, 4, 2, 4))):
        attention[row, :n] = 1
        loss_mask[row, prompt:n] = True
        ids[row, n:] = 3
    return ids, attention, loss_mask


LAYOUTS = {"padded": dict(padding_free=False), "packed": dict(padding_free=True, prefix_sharing="false"),
           "shared": dict(padding_free=True, prefix_sharing="true")}


def _ours(lm, layout, batch):
    policy = SequenceLogprobModel(lm, chunk_size=5, **LAYOUTS[layout])
    out = policy(*batch)
    loss, sums = with_router_aux(*nll(out.logps, out.lengths), [out.aux_loss], policy.router_aux_coef)
    return loss, sums, out.aux_loss


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("arch", MOE)
def test_sft_loss_and_gradients_equal_the_models_own_loss_with_labels(arch, layout):
    if layout != "padded" and arch not in PACKS:
        pytest.skip(f"{arch} runs padded")
    ids, attention, loss_mask = batch = _batch()
    theirs_lm = tiny_causal_lm(arch, 96).eval()
    ours_lm = copy.deepcopy(theirs_lm)
    aux = router_aux(theirs_lm)
    assert aux is not None and aux.coef == 0.02
    # transformers: token-mean cross-entropy over the labelled (completion) tokens + coef × aux(attention_mask).
    labels = ids.masked_fill(~loss_mask, -100)
    out = theirs_lm(input_ids=ids, attention_mask=attention, labels=labels)
    out.loss.backward()
    loss, sums, our_aux = _ours(ours_lm, layout, batch)
    loss.backward()
    assert torch.allclose(our_aux, out.aux_loss, atol=1e-6)
    assert torch.allclose(loss, out.loss, atol=1e-6)
    assert torch.allclose(sums["aux_loss"] / sums["count"], out.aux_loss, atol=1e-6)
    for (name, p), q in zip(theirs_lm.named_parameters(), ours_lm.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


@pytest.mark.parametrize("arch", MOE)
def test_the_router_loss_changes_the_routers_gradient(arch):
    batch = _batch()
    with_aux = tiny_causal_lm(arch, 96).eval()
    without = copy.deepcopy(with_aux)
    configure_router_aux(without, 0.0)
    _ours(with_aux, "padded", batch)[0].backward()
    loss, sums, aux = _ours(without, "padded", batch)
    assert aux is None and "aux_loss" not in sums
    loss.backward()
    routers = [n for n, _ in with_aux.named_parameters() if re.search(r"\.(gate|router)\.weight$", n)]
    assert routers
    grads = dict(with_aux.named_parameters())
    for name, p in without.named_parameters():
        if name in routers:
            assert (grads[name].grad - p.grad).abs().max() > 1e-6, name
    # ... by exactly coef × ∂aux/∂router (the language-model part being the same in both).
    probe = tiny_causal_lm(arch, 96).eval()
    _, _, aux = _ours(probe, "padded", batch)
    router_grads = torch.autograd.grad(aux, [p for n, p in probe.named_parameters() if n in routers])
    for name, g in zip(routers, router_grads):
        p = dict(without.named_parameters())[name]
        assert torch.allclose(grads[name].grad - p.grad, 0.02 * g, atol=1e-6), name


def test_trl_rule_on_by_default_for_an_moe_model_whatever_output_router_logits_says():
    # Mixtral's own config: output_router_logits false, router_aux_loss_coef 0.001. TRL switches it on.
    lm = tiny_causal_lm("mixtral", 96)
    lm.config.output_router_logits = False
    lm.config.router_aux_loss_coef = 0.001
    line = configure_router_aux(lm, None)
    assert lm.config.output_router_logits is True and router_aux(lm).coef == 0.001
    assert "on, × 0.001" in line and "aux_loss" in line
    assert configure_router_aux(lm, 0.5) and router_aux(lm).coef == 0.5
    assert "off" in configure_router_aux(lm, 0.0)
    assert lm.config.output_router_logits is False and router_aux(lm) is None


def test_a_dense_model_has_no_router_loss_and_a_coefficient_for_it_is_an_error():
    lm = tiny_llama(96)
    assert configure_router_aux(lm, None) is None and router_aux(lm) is None
    with pytest.raises(ConfigError, match="router_aux_loss_coef is 0.1 but model type 'llama' is not a mixture"):
        configure_router_aux(lm, 0.1)


def test_no_router_loss_outside_autograd():
    lm = tiny_causal_lm("qwen3-moe", 96).eval()
    with torch.no_grad():
        out = SequenceLogprobModel(lm)(*_batch())
    assert out.aux_loss is None
