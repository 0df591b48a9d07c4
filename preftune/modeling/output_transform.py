"""What a causal LM does to its logits after the output layer, found from its own forward on a probe.

The chunked log-prob path (``output_layer.py``) applies the output layer itself, to the decoder's final
hidden states, instead of calling the model's forward. Many models do more than ``h Wᵀ + b`` there:
Granite divides by ``logits_scaling``, Cohere multiplies by ``logit_scale``, Gemma 2 soft-caps with
``c·tanh(·/c)``, another family may do both or something else. Rather than keep a list of config names
(which silently misses the next family), :func:`derive_output_transform` runs the model's forward once
with its decoder output replaced by designed hidden states, computes ``a = h Wᵀ + b`` itself, and fits

    logits = s · a + k                 (a scale; k, a constant shift, leaves the softmax unchanged)
    logits = c · tanh(s · a / c)       (a scale, then soft-capping; cap-then-scale is the same family)

in float64. The probe rows are ``t · e_j`` (one hidden unit, t a power of two from 2⁻⁸ to 2¹⁶), so
``a`` is computed exactly in any dtype (one product per entry, no rounding when the head has no bias)
and spans ~1e-4 to ~1e4 in magnitude: small enough that a soft-cap is linear there, large enough that
it saturates. In float16 (largest value 65504) the magnitudes stop where ``t · max|W|`` stays 64× below
the largest value, so no probe entry overflows to inf. A form is accepted when it reproduces every probe logit within the dtype's rounding
(1e-5 relative in float32); when neither does, :class:`OutputTransformError` names the model type.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from preftune.errors import ConfigError


class OutputTransformError(ConfigError):
    """The model's logits are not a scale / soft-cap of its output layer: its log-probs cannot be chunked."""


@dataclass(frozen=True)
class OutputTransform:
    """logits = cap(scale · (h Wᵀ + b)), cap(x) = softcap · tanh(x / softcap), or x when softcap is None."""

    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, raw: Tensor) -> Tensor:
        z = raw * self.scale
        return z if self.softcap is None else self.softcap * torch.tanh(z / self.softcap)

    def describe(self) -> str:
        parts = [] if self.scale == 1.0 else [f"× {self.scale:.6g}"]
        if self.softcap is not None:
            parts.append(f"soft-cap {self.softcap:.6g}")
        return ", ".join(parts) or "none"


_EXPONENTS = range(-8, 17, 2)   # t = 2^e: 13 magnitudes
_UNITS = 3                      # hidden units probed per magnitude
_FIT_COLUMNS = 2048
_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if torch.finfo(dtype).eps < 1e-6 else 2e-2


def output_head(lm: nn.Module) -> nn.Linear:
    """The output layer the chunked path multiplies by (tied or untied: the module the forward calls)."""
    head = lm.get_output_embeddings()
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward:
        raise OutputTransformError(
            f"{_model_type(lm)}: the output layer is a {type(head).__name__}, not a plain linear layer, so "
            f"preftune's chunked log-probs cannot apply it (a LoRA adapter on the output layer is not supported: "
            f"leave lm_head out of lora_target_modules)")
    return head


def _model_type(lm: nn.Module) -> str:
    config = getattr(lm, "config", None)
    return f"model type {getattr(config, 'model_type', None) or type(lm).__name__!r}"


@torch.no_grad()
def _probe(lm: nn.Module) -> tuple[Tensor, Tensor]:
    """(a, logits) [probe rows, V]: the output layer's output and the model's logits on designed hidden
    states, float64."""
    head = output_head(lm)
    weight = head.weight
    width = weight.shape[1]
    g = torch.Generator().manual_seed(0)
    units = torch.randperm(width, generator=g)[:_UNITS]
    # No overflow in a narrow dtype (float16): t · |W| and the logits the model makes of it stay finite.
    limit = torch.finfo(weight.dtype).max / 64 / max(float(weight.detach().abs().max()), 1e-30)
    rows = [(2.0 ** e, int(j)) for e in _EXPONENTS if 2.0 ** e <= limit for j in units.repeat(_UNITS)[:_UNITS]]
    hidden = torch.zeros(1, len(rows), width, dtype=weight.dtype, device=weight.device)
    for i, (t, j) in enumerate(rows):
        hidden[0, i, j] = t
    # The decoder the chunked path runs, and the trunk under the model's base-model prefix (the module its
    # forward calls when get_decoder() returns a wrapper or a part of it): whichever the forward calls.
    decoder = lm.get_decoder()
    trunks = {id(m): m for m in (decoder, getattr(lm, getattr(lm, "base_model_prefix", ""), None))
              if isinstance(m, nn.Module) and m is not lm}
    seen = []

    def replace_output(module, args, output):
        seen.append(True)
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        output.last_hidden_state = hidden
        return output

    handles = [m.register_forward_hook(replace_output) for m in trunks.values()]
    was_training = lm.training
    lm.eval()
    try:
        with torch.autocast(weight.device.type, enabled=False):   # a caller's autocast would round both
            ids = torch.zeros(1, len(rows), dtype=torch.long, device=weight.device)
            logits = lm(input_ids=ids, use_cache=False).logits
            raw = F.linear(hidden, weight, head.bias)
    finally:
        for handle in handles:
            handle.remove()
        lm.train(was_training)
    if not seen:
        raise OutputTransformError(f"{_model_type(lm)}: its forward does not call get_decoder() "
                                   f"({type(decoder).__name__}), so its output transform cannot be probed")
    if logits.shape[-1] != weight.shape[0] or logits.shape[1] != len(rows):
        raise OutputTransformError(f"{_model_type(lm)}: logits of shape {tuple(logits.shape)} from an output layer "
                                   f"of {weight.shape[0]} rows: preftune cannot reproduce them")
    return raw[0].double(), logits[0].double()


def _fits(predicted: Tensor, logits: Tensor, tol: float) -> bool:
    return bool(((predicted - logits).abs() <= tol * (logits.abs() + 1)).all())


def _fit_linear(a: Tensor, logits: Tensor) -> tuple[float, float]:
    """Least squares of logits ≈ s·a + k."""
    design = torch.stack([a, torch.ones_like(a)], 1)
    solution = torch.linalg.lstsq(design, logits.unsqueeze(1)).solution.squeeze(1)
    return float(solution[0]), float(solution[1])


def _fit_softcap(a: Tensor, logits: Tensor) -> tuple[float, float] | None:
    """(s, c) of logits ≈ c·tanh(s·a/c): s from the smallest entries (where tanh is linear), c from the
    largest by bisection, then Gauss-Newton on both over every entry."""
    order = a.abs().argsort()
    small = order[: max(len(order) // 10, 1)]
    s = float((logits[small] * a[small]).sum() / (a[small] ** 2).sum().clamp(min=1e-300))
    big = int(order[-1])
    x, y = s * float(a[big]), abs(float(logits[big]))
    x = abs(x)
    if not (0 < y < x):
        return None
    low, high = y, y * 1e6   # c·tanh(x/c) rises with c towards x
    for _ in range(200):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if mid * math.tanh(x / mid) < y else (low, mid)
    c = math.sqrt(low * high)
    for _ in range(50):
        u = s * a / c
        th = torch.tanh(u)
        residual = c * th - logits
        sech2 = 1 - th ** 2
        jac = torch.stack([a * sech2, th - u * sech2], 1)
        step = torch.linalg.lstsq(jac, residual.unsqueeze(1)).solution.squeeze(1)
        s, c = s - float(step[0]), c - float(step[1])
        if c <= 0:
            return None
    return s, c


def derive_output_transform(lm: nn.Module) -> OutputTransform:
    """The transform between ``lm``'s output layer and its logits (module docstring); cached per model.
    ``lm``: a Hugging Face causal LM (unwrapped from peft)."""
    if lm in _DERIVED:
        return _DERIVED[lm]
    a_all, logits_all = _probe(lm)
    # Fit on at most _FIT_COLUMNS vocabulary entries (cheap at any vocabulary size), check on all of them.
    columns = torch.linspace(0, a_all.shape[1] - 1, min(a_all.shape[1], _FIT_COLUMNS)).round().long().unique()
    a, logits = a_all[:, columns].flatten(), logits_all[:, columns].flatten()
    a_all, logits_all = a_all.flatten(), logits_all.flatten()
    tol = _tolerance(lm.get_output_embeddings().weight.dtype)
    s, k = _fit_linear(a, logits)
    if _fits(s * a_all + k, logits_all, tol):
        found = OutputTransform(scale=1.0 if abs(s - 1) <= tol else s)
    else:
        fitted = _fit_softcap(a, logits)
        if fitted is None or not _fits(fitted[1] * torch.tanh(fitted[0] * a_all / fitted[1]), logits_all, tol):
            worst = float((s * a_all + k - logits_all).abs().max())
            raise OutputTransformError(
                f"{_model_type(lm)}: its forward transforms the output layer's logits in a way preftune cannot "
                f"reproduce (neither a scale nor a scale + soft-cap fits; a linear fit is off by {worst:.3g}), so "
                f"its chunked log-probs would differ from the model's own. Please report this model type.")
        s, c = fitted
        found = OutputTransform(scale=1.0 if abs(s - 1) <= tol else s, softcap=c)
    _DERIVED[lm] = found
    return found
