"""Token log-probs through the output layer, chunk by chunk, with a hand-written backward.

For M completion positions with hidden states h [M, H], an output layer W [V, H] (bias b) and targets t:

    z_i   = g(s · (h_i Wᵀ + b))               s: the model's logit scale; g: optional soft-capping
                                              c·tanh(·/c), then division by the temperature T
    out_i = z_i[t_i] − logsumexp(z_i)         (log p(t_i | h_i))

Gradient, for an upstream gradient γ_i of out_i and p_i = softmax(z_i):

    ∂out_i/∂z_i = e_{t_i} − p_i
    ∂/∂a_i      = γ_i (e_{t_i} − p_i) · (s/T) · (1 − tanh²(s·a_i/c))   for a_i = h_i Wᵀ + b
    ∂h_i = (∂/∂a_i) W,   ∂W = Σ_i (∂/∂a_i)ᵀ h_i,   ∂b = Σ_i ∂/∂a_i

Forward keeps only h, W, b, t and logsumexp [M]; backward recomputes one chunk's logits at a time, turns
that buffer into ∂/∂a in place, and accumulates ∂W with ``addmm_`` into the first chunk's product. So at most one
[chunk, V] tensor (two with soft-capping) and no per-chunk [V, H] temporary exist at any moment, where
activation checkpointing of the same computation holds logits, log-softmax and their gradient, plus a
fresh [V, H] weight gradient for every chunk (``benchmarks/logprob_memory.py`` measures both).

The matmuls run in the autocast dtype when autocast is on (as ``F.linear`` would), everything after
them (softmax, gradient) in float32 or wider.

On request the forward also returns log Σ_v p_v² per row (WPO's weights need it), from the chunk already
in memory: log Σ_v exp(2(z_v − logsumexp z)); it is a constant to autograd (no gradient flows into it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


def _raw_logits(h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # float32 at least (float64 stays float64, so gradcheck can run in double precision).
    logits = F.linear(h, weight, None if bias is None else bias.to(weight.dtype))
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _capped(raw: Tensor, scale: float, softcap: float | None, temperature: float) -> tuple[Tensor, Tensor | None]:
    """z = g(s · raw) in place where possible; also tanh(s · raw / c) when soft-capping (for its derivative)."""
    if scale != 1.0:
        raw = raw.mul_(scale)
    squashed = None
    if softcap is not None:
        squashed = torch.tanh(raw / softcap)
        raw = squashed * softcap
    if temperature != 1.0:
        raw = raw.div_(temperature)
    return raw, squashed


class ChunkedTokenLogprobs(torch.autograd.Function):
    """``apply(hidden [M, H], weight [V, H], bias [V] | None, targets [M] long, chunk_size, scale, softcap,
    temperature, log_sum_sq=False)`` → log p(targets) [M], float32 (float64 for float64 inputs); with
    ``log_sum_sq`` the pair (log p(targets), log Σ_v p_v²), the second without gradient. Not twice
    differentiable."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk_size: int,
                scale: float, softcap: float | None, temperature: float, log_sum_sq: bool = False
                ) -> Tensor | tuple[Tensor, Tensor]:
        dtype = _compute_dtype(hidden)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            out = torch.empty(hidden.shape[0], dtype=torch.promote_types(dtype, torch.float32), device=hidden.device)
            lse = torch.empty_like(out)
            sq = torch.empty_like(out) if log_sum_sq else None
            for start in range(0, hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                z, _ = _capped(_raw_logits(hidden[rows].to(dtype), w, bias), scale, softcap, temperature)
                lse[rows] = torch.logsumexp(z, dim=-1)
                out[rows] = z.gather(1, targets[rows].unsqueeze(1)).squeeze(1) - lse[rows]
                if sq is not None:  # in place: log p, then 2 log p, in the chunk's own buffer
                    sq[rows] = torch.logsumexp(z.sub_(lse[rows].unsqueeze(1)).mul_(2.0), dim=-1)
                del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.settings = (chunk_size, scale, softcap, temperature, dtype)
        if sq is None:
            return out
        ctx.mark_non_differentiable(sq)
        return out, sq

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor, *_constant_outputs: Tensor):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        chunk_size, scale, softcap, temperature, dtype = ctx.settings
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = None   # the first chunk's product starts it: no [V, H] buffer of zeros to fill and add to
        grad_b = torch.zeros_like(bias) if need_b else None
        grad_out = grad_out.to(lse.dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            for start in range(0, hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                h = hidden[rows].to(dtype)
                z, squashed = _capped(_raw_logits(h, w, bias), scale, softcap, temperature)
                # z → softmax → γ(e_t − p), all in the one buffer.
                g = z.sub_(lse[rows].unsqueeze(1)).exp_().mul_(-grad_out[rows].unsqueeze(1))
                g.scatter_add_(1, targets[rows].unsqueeze(1), grad_out[rows].unsqueeze(1))
                if temperature != 1.0 or scale != 1.0:
                    g.mul_(scale / temperature)
                if squashed is not None:
                    g.mul_(squashed.square_().neg_().add_(1))
                    del squashed
                g_mm = g.to(dtype)
                if need_h:
                    grad_h[rows] = (g_mm @ w).to(hidden.dtype)
                if need_w:
                    if grad_w is None:
                        grad_w = (g_mm.t() @ h).to(weight.dtype)
                    elif grad_w.dtype == dtype:
                        grad_w.addmm_(g_mm.t(), h)
                    else:  # bf16 matmul, fp32 master gradient: no mixed-dtype addmm on every backend
                        grad_w.add_(g_mm.t() @ h)
                if need_b:
                    grad_b.add_(g.sum(0).to(grad_b.dtype))
                del z, g, g_mm
        if need_w and grad_w is None:   # no rows
            grad_w = torch.zeros_like(weight)
        return grad_h, grad_w, grad_b, None, None, None, None, None, None
