"""Padding-free decoding: the sequences of a right-padded batch packed end to end into fewer rows.

A batch of preference pairs padded to its longest sequence spends much of its compute on padding
(``benchmarks/activation_memory.py``'s batch: 8 rows, 2,246 tokens, padded to 8 × 462 — 39 % of the
positions are padding; packed into 6 rows of 462, 19 % are filler). Here the real tokens of all rows are
laid end to end, first-fit in decreasing length, into rows as long as the longest sequence, and each
token gets its position within its own sequence. Hugging Face decoders (transformers ≥ 4.54) read
sequence boundaries from ``position_ids`` when no attention mask is given — a block-diagonal causal
mask for SDPA/eager attention, variable-length kernels for flash attention — so every token attends to
exactly the tokens it would attend to in its padded row, at the same positions. The result equals the
padded computation up to float rounding; :func:`check_packing` measures that on a model before it is
trusted, since a decoder that ignores ``position_ids`` would silently let sequences see each other, and
also how much a sequence changes when the one packed before it does (a convolution or state-space layer
runs across the boundary whatever the attention mask says: LFM2, Mamba). :func:`resolve_padding_free`
turns the setting (true, false or auto) into a decision for a model.

The plan is made on the host from the attention mask (one small copy per forward on a GPU); the
tokens themselves are gathered on the device.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from preftune.errors import ConfigError


@dataclass
class PackPlan:
    """``source`` [P, C]: index into the flattened padded ``input_ids`` for each packed position (tail
    filler points at index 0); ``position_ids`` [P, C]; ``where`` [R, T]: the flattened packed index of
    every padded position (0 for padding)."""

    source: Tensor
    position_ids: Tensor
    where: Tensor


def plan_packing(attention_mask: Tensor) -> PackPlan:
    """First-fit-decreasing packing of right-padded rows into rows of the longest row's length."""
    mask = attention_mask.detach().to("cpu", torch.long)
    n_rows, width = mask.shape
    lengths = mask.sum(1)
    if not torch.equal(mask.cumprod(1).sum(1), lengths):
        raise ValueError("padding_free needs right-padded rows (real tokens first, then padding)")
    lengths = lengths.tolist()
    capacity = max(max(lengths), 1)
    bins: list[list[int]] = []   # row ids per packed row
    used: list[int] = []
    for r in sorted(range(n_rows), key=lambda i: -lengths[i]):
        for b, u in enumerate(used):
            if u + lengths[r] <= capacity:
                bins[b].append(r)
                used[b] += lengths[r]
                break
        else:
            bins.append([r])
            used.append(lengths[r])
    source = torch.zeros(len(bins), capacity, dtype=torch.long)
    position_ids = torch.empty(len(bins), capacity, dtype=torch.long)
    where = torch.zeros(n_rows, width, dtype=torch.long)
    for b, members in enumerate(bins):
        offset = 0
        for r in members:
            n = lengths[r]
            span = torch.arange(n)
            source[b, offset:offset + n] = r * width + span
            position_ids[b, offset:offset + n] = span
            where[r, :n] = b * capacity + offset + span
            offset += n
        # The filler after the last sequence is a block of its own (positions restart at 0), so no real
        # token attends to it; its outputs are never read.
        position_ids[b, offset:] = torch.arange(capacity - offset)
    return PackPlan(source, position_ids, where)


def packed_hidden(decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``decoder`` on the packed layout; returns (hidden [P·C, H], where [R, T]) on ``input_ids``' device."""
    plan = plan_packing(attention_mask)
    device = input_ids.device
    packed_ids = input_ids.reshape(-1)[plan.source.to(device, non_blocking=True)]
    hidden = decoder(input_ids=packed_ids, position_ids=plan.position_ids.to(device, non_blocking=True),
                     attention_mask=None, use_cache=False).last_hidden_state
    return hidden.reshape(-1, hidden.shape[-1]), plan.where.to(device, non_blocking=True)


@dataclass(frozen=True)
class PackingCheck:
    """How a decoder treats packed rows, on a probe (:func:`check_packing`). ``mismatch``: max |Δ| between
    padded and packed hidden states, relative to the largest |hidden| (catches decoders that ignore
    ``position_ids``: wrong positions, or attention across sequences); ``leak``: the relative change of
    a sequence's packed hidden states when the tokens of the sequence packed before it change (catches
    what attention masks do not govern, such as a convolution or a recurrent state running across the
    boundary, however small its weights). Packing is used only when both are at rounding level."""

    mismatch: float
    leak: float
    tolerance: float

    @property
    def ok(self) -> bool:
        # A sequence's states cannot depend on its packed neighbour at all: the same operations on the same
        # inputs give the same values whatever the masked-out neighbour holds.
        return self.mismatch <= self.tolerance and self.leak <= 1e-6

    def describe(self) -> str:
        return (f"relative error {self.mismatch:.2g} against padded rows, {self.leak:.2g} change when the "
                f"sequence packed before it changes")


@torch.no_grad()
def check_packing(decoder: nn.Module, vocab_size: int, device: torch.device) -> PackingCheck:
    """Three random sequences (7, 4 and 3 tokens: the last two share a packed row), padded and packed, then
    packed again with the 4-token one's tokens changed; in eval mode so dropout cannot differ, without
    autocast. The mismatch tolerance is float32's 1e-5, or 3e-2 for 16-bit weights."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (3, 7), generator=g).to(device)
    other = ids.clone()
    other[1] = torch.randint(0, vocab_size, (7,), generator=g).to(device)
    attention = (torch.arange(7).unsqueeze(0) < torch.tensor([[7], [4], [3]])).long().to(device)
    mismatch = layout_error(decoder, ids, attention, lambda: packed_hidden(decoder, ids, attention))
    was_training = decoder.training
    decoder.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            flat, where = packed_hidden(decoder, ids, attention)
            changed, _ = packed_hidden(decoder, other, attention)
    finally:
        decoder.train(was_training)
    last = flat[where[2, :3]].float()
    leak = float((last - changed[where[2, :3]].float()).abs().max() / last.abs().max().clamp(min=1e-12))
    low_precision = torch.finfo(flat.dtype).eps > 1e-6
    return PackingCheck(mismatch, leak, 3e-2 if low_precision else 1e-5)


def packing_error(decoder: nn.Module, vocab_size: int, device: torch.device) -> float:
    """The mismatch of :func:`check_packing` alone (padded against packed hidden states, relative)."""
    return check_packing(decoder, vocab_size, device).mismatch


@torch.no_grad()
def layout_error(decoder: nn.Module, ids: Tensor, attention: Tensor, layout) -> float:
    """Max |Δ| between the hidden states of padded rows and those ``layout()`` returns as (flat, where),
    relative to the largest |hidden|; in eval mode so dropout cannot differ, without autocast so rounding
    is fp32's."""
    was_training = decoder.training
    decoder.eval()
    try:
        with torch.autocast(ids.device.type, enabled=False):
            padded = decoder(input_ids=ids, attention_mask=attention, use_cache=False).last_hidden_state
            flat, where = layout()
    finally:
        decoder.train(was_training)
    real = attention.bool()
    padded = padded[real].float()
    return float((padded - flat[where[real]].float()).abs().max() / padded.abs().max().clamp(min=1e-12))


_CHECKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # decoder -> PackingCheck


def _checked(decoder: nn.Module, vocab_size: int, device: torch.device) -> PackingCheck:
    if decoder not in _CHECKS:
        _CHECKS[decoder] = check_packing(decoder, vocab_size, device)
    return _CHECKS[decoder]


def _refusal(decoder: nn.Module, check: PackingCheck) -> str:
    return (f"padding_free: this model's decoder ({type(decoder).__name__}) does not keep packed sequences apart "
            f"({check.describe()}; it must read sequence boundaries from position_ids and nothing else may cross "
            f"them)")


def ensure_packing_supported(decoder: nn.Module, vocab_size: int, device: torch.device) -> None:
    """:func:`check_packing` once per decoder; an error naming the fix if packed sequences would mix.
    Call it inside the wrapping module's forward: under FSDP only then are the root's parameters gathered."""
    check = _checked(decoder, vocab_size, device)
    if not check.ok:
        raise ConfigError(_refusal(decoder, check) + ". Set padding_free=false (or auto).")


def resolve_padding_free(model: nn.Module, setting: bool | str, log: Callable[[str], None]) -> bool:
    """Whether to pack for ``setting`` (true, false or 'auto'): 'auto' packs where the model's decoder keeps
    packed sequences apart (checked once on a probe) and otherwise runs padded, saying so through ``log``;
    an explicit true on such a model is an error. ``model``: a causal LM or sequence-classification model
    (peft-wrapped or not), before any FSDP sharding."""
    from preftune.modeling.layers import decoder_of

    if setting is False:
        return False
    get_base = getattr(model, "get_base_model", None)
    hf = get_base() if callable(get_base) else model
    decoder = decoder_of(hf)
    check = _checked(decoder, hf.config.get_text_config().vocab_size, next(hf.parameters()).device)
    if check.ok:
        return True
    if setting is True:
        raise ConfigError(_refusal(decoder, check) + f" (model type {hf.config.model_type!r}). Set padding_free=auto "
                          f"to run such models on padded rows, or false.")
    log(_refusal(decoder, check) + f": model type {hf.config.model_type!r} runs on padded rows (padding_free=auto)")
    return False
