"""RMSNorm and SwiGLU that keep fewer activations for backward; same math.

Per token and decoder layer, plain autograd through a Llama-style layer keeps for backward:

* each RMSNorm: its input x, the normalised x·r and the weighted output (r = 1/rms(x));
* the SwiGLU MLP: the gate g (for SiLU's backward), SiLU(g) and the up projection u (for the product),
  and the product (for the down projection).

The functions below keep only x and r [.., 1] for a norm, and g and u for SwiGLU, and recompute the
rest in backward from them (elementwise work, no matmul). That is one hidden-size vector per norm and
one intermediate-size vector per MLP less per token; :class:`_SwiGLUDown` also recomputes the product
that the down projection's weight gradient needs. On CPU, grouped-query attention hands SDPA the keys
and values unrepeated (:func:`_sdpa_grouped`). For SmolLM2-135M in a packed batch of 2,246 tokens the
saved activations go from 3,944 MiB to 2,354 MiB (−40 %) (measured with ``saved_tensors_hooks``; see
``benchmarks/RESULTS.md``).

Derivatives (row-wise, H = hidden size, n = x·r, y = w ⊙ n):

    RMSNorm:  ∂w = Σ_rows g ⊙ n,   ∂x = r · (g_n − n · mean(g_n ⊙ n)),   g_n = g ⊙ w
    SwiGLU:   h = SiLU(a) ⊙ u,  σ = sigmoid(a):  ∂u = g ⊙ SiLU(a),   ∂a = g ⊙ u ⊙ σ ⊙ (1 + a ⊙ (1 − σ))
    + down:   y = h Wᵀ + b:  ∂W = Σ_rows gᵀ h,  ∂b = Σ_rows g,  ∂h = g W

:func:`make_lean` swaps these in for the norms and MLPs of a loaded model, but only where the module's
own forward gives the same output on a random probe (relative difference < 1e-6), so a model family
with another formula (Gemma's 1 + w, a GELU MLP) keeps its own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from preftune.modeling.recompute import heads_last, keep_less, recomputable


def _wide(t: Tensor) -> Tensor:
    """fp32 at least (fp64 stays fp64, so gradcheck can run in double precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _rstd(x: Tensor, eps: float) -> Tensor:
    """r = 1/rms(x) [.., 1], in fp32 at least; a constant to autograd (the norm's backward differentiates it)."""
    with torch.no_grad():
        return torch.rsqrt(_wide(x).pow(2).mean(-1, keepdim=True) + eps)


def _normalised(x: Tensor, weight: Tensor, rstd: Tensor) -> Tensor:
    # As Llama's: normalise in fp32, cast back to the input dtype, then scale (type promotion included).
    return weight * (_wide(x) * rstd).to(x.dtype)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, rstd: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight, rstd)
        return _normalised(x, weight, rstd)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight, rstd = ctx.saved_tensors
        n = _wide(x) * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * n.to(x.dtype)).reshape(-1, weight.shape[-1]).sum(0).to(weight.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            g_n = _wide(grad * weight)
            grad_x = (rstd * (g_n - n * (g_n * n).mean(-1, keepdim=True))).to(x.dtype)
        return grad_x, grad_weight, None


def _swiglu_grads(gate: Tensor, up: Tensor, grad: Tensor, silu: Tensor | None = None) -> tuple[Tensor, Tensor]:
    # aten's own SiLU derivative is one fused pass (σ(a)(1 + a(1 − σ(a))) per element); the same kernel plain
    # autograd calls, so these are the gradients of SiLU(a) ⊙ u to the bit. ``silu``: SiLU(a), if the caller
    # already has it.
    grad_up = (grad * (F.silu(gate) if silu is None else silu)).to(up.dtype)
    grad_gate = torch.ops.aten.silu_backward((grad * up).to(gate.dtype), gate)
    return grad_gate, grad_up


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor) -> Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        return _swiglu_grads(*ctx.saved_tensors, grad)


class _SwiGLUDown(torch.autograd.Function):
    """y = down(SiLU(a) ⊙ u) keeping a, u and the down weight only: the product h, which the down
    projection's weight gradient needs, is recomputed in backward (elementwise) instead of kept —
    one more intermediate-size vector per token less. ∂W_down = Σ gᵀ h, ∂h = g W_down, then as SwiGLU."""

    @staticmethod
    def forward(ctx, gate: Tensor, up: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(gate, up, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.silu(gate) * up, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        gate, up, weight = ctx.saved_tensors
        flat_grad = grad.reshape(-1, grad.shape[-1])
        grad_weight = grad_bias = None
        silu = F.silu(gate)
        if ctx.needs_input_grad[2]:
            h = (silu * up).reshape(-1, gate.shape[-1])
            grad_weight = (flat_grad.t() @ h.to(flat_grad.dtype)).to(weight.dtype)
            del h
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_bias = flat_grad.sum(0).to(weight.dtype)
        grad_h = grad @ weight.to(grad.dtype)
        grad_gate, grad_up = _swiglu_grads(gate, up, grad_h, silu)
        return grad_gate, grad_up, grad_weight, grad_bias


def _lean_norm_forward(self: nn.Module, hidden_states: Tensor) -> Tensor:
    rstd = _rstd(hidden_states, self.variance_epsilon)
    out = _RMSNorm.apply(hidden_states, self.weight, rstd)
    # The projections after the norm keep its output for their weight gradients: keep the recipe instead.
    return recomputable(out, lambda x=hidden_states, w=self.weight: _normalised(x, w, rstd))


def _lean_mlp_forward(self: nn.Module, x: Tensor) -> Tensor:
    gate, up = self.gate_proj(x), self.up_proj(x)
    if type(self.down_proj) is nn.Linear:
        return _SwiGLUDown.apply(gate, up, self.down_proj.weight, self.down_proj.bias)
    # A wrapped down projection (a LoRA adapter) computes more than x Wᵀ + b: call it.
    return self.down_proj(_SwiGLU.apply(gate, up))


def _is_norm(m: nn.Module) -> bool:
    return type(m).__name__.endswith("RMSNorm") and isinstance(getattr(m, "weight", None), Tensor) \
        and isinstance(getattr(m, "variance_epsilon", None), float)


def _is_swiglu_mlp(m: nn.Module) -> bool:
    act = getattr(m, "act_fn", None)
    return all(isinstance(getattr(m, k, None), nn.Linear) for k in ("gate_proj", "up_proj", "down_proj")) \
        and act is not None and type(act).__name__ in ("SiLU", "SiLUActivation")


@torch.no_grad()
def _same_output(module: nn.Module, lean_forward, width: int) -> bool:
    g = torch.Generator().manual_seed(0)
    weight = next(module.parameters())
    x = torch.randn(3, width, generator=g).to(weight.device, weight.dtype)
    expected = module(x)
    got = lean_forward(module, x)
    return bool((got - expected).abs().max() <= 1e-6 * expected.abs().max().clamp(min=1e-12))


def make_lean(model: nn.Module) -> dict[str, int]:
    """Swap the lean forward into every RMSNorm and SwiGLU MLP of ``model`` that computes the same
    thing (checked per module class on a probe), and grouped-query SDPA into an ``sdpa`` model on CPU
    (checked on a probe too); returns counts {"norms", "mlps", "kept" (modules of another formula),
    "attention" (1 if switched)}. Where anything was switched, the decoder's forward also keeps the norm and
    attention outputs as recipes, not values (``recompute.py``)."""
    verdict: dict[type, bool] = {}
    counts = {"norms": 0, "mlps": 0, "kept": 0,
              "attention": int(hasattr(model, "config") and use_grouped_sdpa(model))}
    for m in model.modules():
        if _is_norm(m):
            lean, width, key = _lean_norm_forward, m.weight.shape[-1], "norms"
        elif _is_swiglu_mlp(m):
            lean, width, key = _lean_mlp_forward, m.gate_proj.in_features, "mlps"
        else:
            continue
        if type(m) not in verdict:
            verdict[type(m)] = _same_output(m, lean, width)
        if verdict[type(m)]:
            m.forward = types.MethodType(lean, m)
            counts[key] += 1
        else:
            counts["kept"] += 1
    if counts["norms"] or counts["attention"]:
        _keep_less_in(model)
    return counts


def _keep_less_in(model: nn.Module) -> None:
    """Run the decoder's forward inside :func:`~preftune.modeling.recompute.keep_less`, so the norm outputs
    and attention outputs declared above are kept as recipes (not under torch.compile, which traces its
    own backward)."""
    from preftune.modeling.layers import decoder_of

    decoder = decoder_of(model)
    if getattr(decoder, "_preftune_keeps_less", False):
        return
    forward = decoder.forward

    def keeping_less(*args, **kwargs):
        if torch.compiler.is_compiling():
            return forward(*args, **kwargs)
        with keep_less():
            return forward(*args, **kwargs)

    decoder.forward = keeping_less
    decoder._preftune_keeps_less = True


ATTENTION = "preftune_sdpa"


def _sdpa_grouped(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                  dropout: float = 0.0, scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """Transformers' SDPA attention, except on CPU with a mask and grouped-query heads: there the keys and
    values go to SDPA as they are (``enable_gqa``), not repeated to every query head, so backward keeps
    them at their own size (SmolLM2: 3 KV heads for 9 query heads, 768 floats per token and layer less).
    Transformers repeats them whenever a mask is given (packed or padded batches), because CUDA's fused
    kernels would fall back to the math kernel; the CPU flash kernel takes the groups and the mask."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plain = (query.device.type != "cpu" or getattr(module, "num_key_value_groups", 1) == 1
             or attention_mask is None or query.shape[2] == 1
             or any(kwargs.get(k) is not None for k in ("position_bias", "cache", "softcap")))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=True)
    return heads_last([out]), None


@torch.no_grad()
def _probe_output(model: nn.Module) -> Tensor:
    """The decoder's hidden states on two random rows, one right-padded (so a mask is given)."""
    from preftune.modeling.layers import decoder_of

    decoder = decoder_of(model)
    vocab = model.config.get_text_config().vocab_size
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (2, 6), generator=torch.Generator().manual_seed(0)).to(device)
    attention = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], device=device)
    was_training = decoder.training
    decoder.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            hidden = decoder(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
    finally:
        decoder.train(was_training)
    return hidden[attention.bool()].float()


def use_grouped_sdpa(model: nn.Module) -> bool:
    """Switch an ``sdpa`` model on CPU with grouped-query heads to :func:`_sdpa_grouped`; True if switched.

    Only where it is checked to work: transformers may refuse the switch (Falcon keeps its own attention
    code), or a model may not route attention through the interface; so the switch must take, the new
    function must be called on a probe, and the probe's hidden states must equal the ``sdpa`` ones
    (relative 1e-6). Otherwise the model is switched back and keeps transformers' SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or next(model.parameters()).device.type != "cpu":
        return False
    if not any(getattr(m, "num_key_value_groups", 1) > 1 for m in model.modules()):
        return False   # no grouped heads: the switch would change nothing
    expected = _probe_output(model)
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return _sdpa_grouped(*args, **kwargs)

    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    AttentionInterface.register(ATTENTION, counted)
    try:
        model.set_attn_implementation(ATTENTION)
        switched = getattr(model.config, "_attn_implementation", None) == ATTENTION
        got = _probe_output(model) if switched else expected
    finally:
        AttentionInterface.register(ATTENTION, _sdpa_grouped)
    same = bool((got - expected).abs().max() <= 1e-6 * expected.abs().max().clamp(min=1e-12))
    if switched and calls and same:
        return True
    if switched:
        model.set_attn_implementation("sdpa")
    return False
