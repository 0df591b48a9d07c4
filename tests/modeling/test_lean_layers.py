"""Lean RMSNorm / SwiGLU: hand-derived backward vs finite differences, equality with the Llama modules,
fewer saved activations, and no swap where the module computes something else."""

import pytest
import torch
from torch import nn

from preftune.modeling.lean_layers import _RMSNorm, _rstd, _SwiGLU, _SwiGLUDown, make_lean
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.testing import tiny_llama


def test_rmsnorm_backward_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    # r = 1/rms(a) is recomputed from the perturbed input: the backward must hold its derivative too.
    assert torch.autograd.gradcheck(lambda a, b: _RMSNorm.apply(a, b, _rstd(a, 1e-6)), (x, w))


def test_swiglu_backward_matches_finite_differences():
    g = torch.Generator().manual_seed(1)
    gate = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SwiGLU.apply, (gate, up))


def test_swiglu_down_backward_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    gate = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SwiGLUDown.apply, (gate, up, weight, bias))
    assert torch.autograd.gradcheck(lambda a, b, w: _SwiGLUDown.apply(a, b, w, None), (gate, up, weight))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_gradients_are_plain_autograds_to_the_bit(dtype):
    # The lean backward calls the same kernels as autograd through SiLU(a) ⊙ u (mul, silu_backward), in
    # the same order: not merely close, equal.
    g = torch.Generator().manual_seed(4)
    gate, up, grad = (torch.randn(5, 7, generator=g).to(dtype) for _ in range(3))
    expected = torch.autograd.grad(torch.nn.functional.silu(gate.requires_grad_()) * up.requires_grad_(),
                                   (gate, up), grad)
    got = torch.autograd.grad(_SwiGLU.apply(gate, up), (gate, up), grad)
    assert all(torch.equal(e, o) for e, o in zip(expected, got))


def test_rmsnorm_by_hand():
    # x = (3, 4): rms = sqrt((9 + 16) / 2) = sqrt(12.5); y = w ⊙ x / rms.
    x = torch.tensor([[3.0, 4.0]])
    w = torch.tensor([1.0, 2.0])
    y = _RMSNorm.apply(x, w, _rstd(x, 0.0))
    r = 12.5 ** -0.5
    assert torch.allclose(y, torch.tensor([[3 * r, 8 * r]]))


def _batch():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(4, 96, (3, 10), generator=g)
    attention = (torch.arange(10)[None] < torch.tensor([[10], [7], [5]])).long()
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, 3:] = attention[:, 3:].bool()
    return ids, attention, loss_mask


@pytest.mark.parametrize("padding_free", [False, True])
def test_a_lean_llama_gives_the_same_logps_and_gradients_and_keeps_less(padding_free):
    torch.manual_seed(0)
    plain = tiny_llama(96, num_key_value_heads=2)   # grouped-query attention: 4 query heads, 2 KV heads
    lean = tiny_llama(96, num_key_value_heads=2)
    lean.load_state_dict(plain.state_dict())
    layers = len(lean.model.layers)
    assert make_lean(lean) == {"norms": 2 * layers + 1, "mlps": layers, "kept": 0, "attention": 1}

    saved = {}
    for name, model in (("plain", plain), ("lean", lean)):
        total = [0]

        def pack(t, total=total):
            total[0] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = SequenceLogprobModel(model, padding_free=padding_free)(*_batch())
        saved[name] = total[0]
        out.logps.sum().backward()
        saved[name + "_logps"] = out.logps.detach()
    assert torch.allclose(saved["plain_logps"], saved["lean_logps"], atol=1e-6)
    for (n, p), q in zip(plain.named_parameters(), lean.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), n
    # Per position and layer at least: one hidden vector per norm (2), two intermediate vectors per MLP
    # (SiLU(g), the product) and, for the unrepeated keys and values, 2 × (query − KV heads) head vectors.
    cfg = lean.config
    positions = _batch()[0].numel() if not padding_free else 10 * 2   # 10 | 7 + 5 - rows of 10
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_layer = 2 * cfg.hidden_size + 2 * cfg.intermediate_size + 2 * (4 - 2) * head_dim
    fewer = positions * layers * per_layer
    assert saved["plain"] - saved["lean"] >= fewer


class GemmaStyleRMSNorm(nn.Module):
    """Scales by (1 + w): the lean norm would compute something else, so it must not be swapped in."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width))
        self.variance_epsilon = 1e-6

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon) * (1 + self.weight)


def test_a_norm_with_another_formula_keeps_its_own_forward():
    model = nn.Sequential(GemmaStyleRMSNorm(4))
    assert make_lean(model) == {"norms": 0, "mlps": 0, "kept": 1, "attention": 0}
    assert "forward" not in vars(model[0])


@pytest.mark.parametrize("arch, switched", [("llama-gqa", 1), ("falcon-rotary", 0), ("gpt2", 0), ("gemma2", 0)])
def test_grouped_query_sdpa_is_reported_only_where_it_took(arch, switched):
    # Falcon: transformers refuses the attention switch (its attention has its own code); GPT-2: no grouped
    # heads, nothing to gain; Gemma 2: eager attention. Only a switch checked on a probe is reported.
    from preftune.tiny_architectures import tiny_causal_lm

    model = tiny_causal_lm(arch, 96)
    before = model.config._attn_implementation
    assert make_lean(model)["attention"] == switched
    assert (model.config._attn_implementation == "preftune_sdpa") == bool(switched)
    if not switched:
        assert model.config._attn_implementation == before
