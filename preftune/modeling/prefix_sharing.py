"""Prefix-shared rows: a prompt computed once for all of its completions.

A batch of preference pairs holds every prompt twice (once before the chosen, once before the rejected
completion), a ranking K times, a GRPO/RLOO group G times; on chat data the prompt is often as long as a
completion, so a third to a half of the decoder's work recomputes hidden states that are already known.
Here the rows of a batch are laid end to end in one packed row, each prompt once, followed by the parts
of its rows that differ:

    [prompt A | completion A1 | completion A2 | prompt B | completion B1 | ...]
    positions  0..L_A-1 | L_A.. | L_A.. | 0..L_B-1 | L_B.. | ...

Every completion attends to its own prompt and to itself (causally), never to a sibling, and its
positions continue from its prompt's end: exactly the keys, queries and positions it has in its own
padded row. So each token's hidden state is the one the unshared computation gives (up to float
rounding), and the prompt's hidden states, used by every completion, collect every completion's
gradient through autograd, as if each row had been computed separately and the gradients summed.

Rows share when their prompts (the tokens before the first supervised token) are identical; the shared
part is then extended to the longest prefix the group's rows have in common, and a row identical to an
earlier one (a repeated sample of an RL group) is not computed again at all. Rows with no sibling are
packed the same way, alone.

Attention: a dense [N, N] mask over the packed row would express this (:func:`dense_mask`, kept for
the tests), but it costs N² scores and memory per layer, which on a small model eats what sharing saves.
Instead the model's attention is run once per *segment*: the first completion of a group together with
the prompt as one causal sequence, every further completion as queries over [prompt keys | own keys]
(:func:`segment_attention`). That spends exactly the score work of the unshared rows minus the prompts'
repeats. It runs through transformers' attention interface (the model's ``sdpa`` or ``eager``
implementation is wrapped: calls without a layout still go to it), so it needs a model that passes its
keyword arguments down to the attention function; :func:`sharing_error` checks that on a probe before a
model is trusted, as ``packing.py`` does for ``padding_free``, and the model falls back to separate
packing where it fails.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from preftune.errors import ConfigError
from preftune.modeling.packing import ensure_packing_supported, layout_error, packed_hidden
from preftune.modeling.recompute import heads_last

LAYOUT_KWARG = "preftune_shared_layout"


def sharing_mode(value: bool | str) -> str:
    """The config value (true, false or 'auto') as the mode name :func:`use_prefix_sharing` takes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


@dataclass
class Segment:
    """One attention call: queries ``[start, end)`` of the packed row; keys the same span, preceded by the
    shared prompt ``[prefix_start, prefix_end)`` when the segment is a later completion of a group."""

    start: int
    end: int
    prefix_start: int = 0
    prefix_end: int = 0

    @property
    def prefix_length(self) -> int:
        return self.prefix_end - self.prefix_start


@dataclass
class SharedLayout:
    """``source`` [N]: flat index into the padded ``input_ids`` of every packed token; ``position_ids`` [N];
    ``where`` [R, T]: the packed index of every padded position (0 for padding); ``segments`` tile 0..N in
    order. ``padded_tokens``: the real tokens of the unshared rows, for the logs and benchmarks."""

    source: Tensor
    position_ids: Tensor
    where: Tensor
    segments: list[Segment]
    padded_tokens: int
    groups: int
    _masks: dict = field(default_factory=dict, repr=False)

    @property
    def tokens(self) -> int:
        return int(self.source.shape[0])

    def to(self, device: torch.device) -> SharedLayout:
        return SharedLayout(self.source.to(device, non_blocking=True), self.position_ids.to(device, non_blocking=True),
                            self.where.to(device, non_blocking=True), self.segments, self.padded_tokens, self.groups)

    def mask(self, i: int, dtype: torch.dtype, device: torch.device, window: int | None) -> Tensor | None:
        """Additive mask [q, k] of segment ``i`` (None: plain causal). Built once per layout and reused by
        every layer, so autograd keeps one copy, not one per layer (SDPA keeps its float mask)."""
        seg = self.segments[i]
        if seg.prefix_length == 0 and window is None:
            return None
        key = (i, dtype, device, window)
        if key not in self._masks:
            n, p = seg.end - seg.start, seg.prefix_length
            q_pos = torch.arange(p, p + n, device=device).unsqueeze(1)
            k_pos = torch.arange(p + n, device=device).unsqueeze(0)
            allowed = k_pos <= q_pos
            if window is not None:
                allowed &= (q_pos - k_pos) < window
            self._masks[key] = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(
                ~allowed, torch.finfo(dtype).min)
        return self._masks[key]


def plan_sharing(input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor) -> SharedLayout:
    """The shared layout of right-padded rows (module docstring); on the host."""
    ids = input_ids.detach().to("cpu", torch.long)
    mask = attention_mask.detach().to("cpu", torch.long)
    supervised = loss_mask.detach().to("cpu", torch.bool)
    n_rows, width = ids.shape
    lengths = mask.sum(1)
    if not torch.equal(mask.cumprod(1).sum(1), lengths):
        raise ValueError("prefix sharing needs right-padded rows (real tokens first, then padding)")
    has = supervised.any(1)
    first = torch.where(has, supervised.float().argmax(1), lengths)
    lengths_l = lengths.tolist()
    groups: dict[bytes, list[int]] = {}
    copies: dict[int, int] = {}   # a row identical to an earlier one (an RL group's repeated sample) → that row
    seen: dict[bytes, int] = {}
    for r in range(n_rows):
        whole = ids[r, :lengths_l[r]].numpy().tobytes()   # hidden states depend on the tokens alone
        if whole in seen:
            copies[r] = seen[whole]
            continue
        seen[whole] = r
        key = ids[r, :int(first[r])].numpy().tobytes() if has[r] and first[r] > 0 else b"row%d" % r
        groups.setdefault(key, []).append(r)
    sources: list[Tensor] = []
    positions: list[Tensor] = []
    where = torch.zeros(n_rows, width, dtype=torch.long)
    segments: list[Segment] = []
    offset = 0

    def put(row: int, start: int, end: int) -> int:
        nonlocal offset
        span = torch.arange(start, end)
        sources.append(row * width + span)
        positions.append(span)
        where[row, start:end] = torch.arange(offset, offset + end - start)
        begin, offset = offset, offset + end - start
        return begin

    for members in groups.values():
        lead = members[0]
        # The longest prefix every member has in common (at least their common prompt; never past a row's end).
        shared = lengths_l[lead] if len(members) > 1 else 0
        for m in members[1:]:
            n = min(lengths_l[m], shared)
            shared = int((ids[m, :n] == ids[lead, :n]).long().cumprod(0).sum())
        if not shared:
            for m in members:
                begin = put(m, 0, lengths_l[m])
                segments.append(Segment(begin, offset))
            continue
        prefix = put(lead, 0, shared)
        for m in members:
            where[m, :shared] = torch.arange(prefix, prefix + shared)
        # The first completion runs with its prompt as one causal sequence; later ones see the prompt's keys.
        put(lead, shared, lengths_l[lead])
        segments.append(Segment(prefix, offset))
        for m in members[1:]:
            if lengths_l[m] > shared:
                begin = put(m, shared, lengths_l[m])
                segments.append(Segment(begin, offset, prefix, prefix + shared))
    for r, original in copies.items():
        where[r] = where[original]
    return SharedLayout(torch.cat(sources), torch.cat(positions), where, segments,
                        padded_tokens=int(lengths.sum()), groups=len(groups))


def dense_mask(layout: SharedLayout) -> Tensor:
    """The same attention pattern as a boolean [N, N] mask (True = may attend): for the tests."""
    n = layout.tokens
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for seg in layout.segments:
        allowed[seg.start:seg.end, seg.start:seg.end] = torch.ones(seg.end - seg.start, seg.end - seg.start,
                                                                   dtype=torch.bool).tril()
        allowed[seg.start:seg.end, seg.prefix_start:seg.prefix_end] = True
    return allowed


# ----------------------------------------------------------------------------------------------------
# Attention


def segment_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, layout: SharedLayout,
                      scaling: float | None, dropout: float, window: int | None) -> Tensor:
    """Attention over the packed row, one SDPA call per segment. query [1, H, N, D], key/value
    [1, Hkv, N, D] → [1, N, H, D] (transformers' attention-function output layout)."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1 and query.device.type != "cpu":
        # CUDA's fused kernels take grouped heads only without a mask: repeat as transformers does.
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    gqa = query.shape[1] != key.shape[1]
    outputs = []
    for i, seg in enumerate(layout.segments):
        q = query[:, :, seg.start:seg.end]
        k, v = key[:, :, seg.start:seg.end], value[:, :, seg.start:seg.end]
        if seg.prefix_length:
            k = torch.cat([key[:, :, seg.prefix_start:seg.prefix_end], k], dim=2)
            v = torch.cat([value[:, :, seg.prefix_start:seg.prefix_end], v], dim=2)
        mask = layout.mask(i, query.dtype, query.device, window)
        outputs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                      is_causal=mask is None, scale=scaling, enable_gqa=gqa))
    return heads_last(outputs)


_UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias")


def _wrapping(base: str) -> Callable:
    """An attention function: the segment path when a layout is passed, the model's ``base`` otherwise."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                  **kwargs):
        layout = kwargs.pop(LAYOUT_KWARG, None)
        if layout is None:
            if base == "eager":  # each modeling file defines its own eager function (softcapping and all)
                fn = sys.modules[type(module).__module__].eager_attention_forward
            else:
                fn = ALL_ATTENTION_FUNCTIONS[base]
            return fn(module, query, key, value, attention_mask, **kwargs)
        unsupported = [k for k in _UNSUPPORTED if kwargs.get(k) is not None]
        if unsupported or getattr(module, "sinks", None) is not None or query.shape[0] != 1:
            raise NotImplementedError(f"shared-prefix attention does not implement {unsupported or 'sinks'}")
        window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        dropout = kwargs.get("dropout", 0.0) if module.training else 0.0
        return segment_attention(module, query, key, value, layout, kwargs.get("scaling"), dropout, window), None

    return attention


BASES = ("sdpa", "eager", "preftune_sdpa")


def install(lm: nn.Module) -> str | None:
    """Route ``lm``'s attention through :func:`_wrapping` (calls without a layout still reach its own
    implementation); returns the previous implementation's name, or None if it cannot be wrapped."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    base = getattr(lm.config, "_attn_implementation", None)
    if base is not None and base.startswith("preftune_shared_"):
        return base.removeprefix("preftune_shared_")
    if base not in BASES:
        return None
    name = f"preftune_shared_{base}"
    AttentionInterface.register(name, _wrapping(base))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS["eager" if base == "eager" else "sdpa"])
    lm.set_attn_implementation(name)
    return base


def shared_hidden(decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor,
                  layout: SharedLayout | None = None) -> tuple[Tensor, Tensor]:
    """Run ``decoder`` on the shared layout; returns (hidden [N, H], where [R, T]) like ``packed_hidden``."""
    device = input_ids.device
    layout = (layout or plan_sharing(input_ids, attention_mask, loss_mask)).to(device)
    packed = input_ids.reshape(-1)[layout.source].unsqueeze(0)
    # A 4-D mask makes transformers skip building its own (it is returned as is); a model that does not
    # pass the layout down to its attention would use this one-element mask, attend everywhere, and fail
    # the probe.
    marker = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)
    hidden = decoder(input_ids=packed, position_ids=layout.position_ids.unsqueeze(0), attention_mask=marker,
                     use_cache=False, **{LAYOUT_KWARG: layout}).last_hidden_state
    return hidden[0], layout.where


# ----------------------------------------------------------------------------------------------------
# Probe and decision


@torch.no_grad()
def sharing_error(decoder: nn.Module, vocab_size: int, device: torch.device) -> float:
    """:func:`~preftune.modeling.packing.layout_error` of the shared layout on a probe: a prompt of 5 tokens
    with completions of 3, 4 and 2 tokens (the last two identical in their first token), another prompt alone."""
    g = torch.Generator().manual_seed(0)
    prompt, other = torch.randint(0, vocab_size, (5,), generator=g), torch.randint(0, vocab_size, (3,), generator=g)
    tails = [torch.randint(0, vocab_size, (n,), generator=g) for n in (3, 4, 2, 4)]
    tails[2][0] = tails[1][0]
    seqs = [torch.cat([prompt, tails[0]]), torch.cat([prompt, tails[1]]), torch.cat([other, tails[3]]),
            torch.cat([prompt, tails[2]])]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    loss = torch.zeros_like(ids, dtype=torch.bool)
    for r, s in enumerate(seqs):
        ids[r, :len(s)], attention[r, :len(s)] = s, 1
        loss[r, (3 if r == 2 else 5):len(s)] = True
    ids, attention, loss = ids.to(device), attention.to(device), loss.to(device)
    return layout_error(decoder, ids, attention, lambda: shared_hidden(decoder, ids, attention, loss))


_DECIDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` draws dropout noise in training (LoRA dropout included)."""
    return any((isinstance(m, nn.Dropout) and m.p > 0)
               or (isinstance(getattr(m, "attention_dropout", None), float) and m.attention_dropout > 0)
               for m in model.modules())


def use_prefix_sharing(lm: nn.Module, decoder: nn.Module, mode: str, device: torch.device,
                       log: Callable[[str], None] | None = None) -> bool:
    """Whether ``lm`` runs the shared layout now: decided once per model (probe on first use; one log line).
    ``mode``: 'false' never; 'auto' where the probe passes, else separate packing (logged); 'true' where the
    probe passes, else a ConfigError. Under 'auto' a model with dropout shares only outside training: a shared
    prompt would draw one dropout sample for all of its completions, where separate rows draw one each.
    Call it inside the wrapping module's forward (FSDP: see packing.py)."""
    if mode == "false":
        return False
    if lm not in _DECIDED:
        _DECIDED[lm] = _decide(lm, decoder, mode, device, log)
    exact, dropout = _DECIDED[lm]
    return exact and not (dropout and mode == "auto" and decoder.training)


def _decide(lm: nn.Module, decoder: nn.Module, mode: str, device: torch.device,
            log: Callable[[str], None] | None) -> tuple[bool, bool]:
    base = getattr(lm.config, "_attn_implementation", None)
    reason = None
    previous = install(lm)
    if previous is None:
        reason = f"attn_implementation {base!r} (the shared layout runs through sdpa or eager attention)"
    else:
        try:
            error = sharing_error(decoder, lm.config.vocab_size, device)
            if not error < 1e-4:
                reason = (f"{type(decoder).__name__} does not keep completions apart in the shared layout "
                          f"(relative error {error:.2g} against padded rows on a probe)")
        except Exception as exc:  # a model whose attention cannot take the layout: fall back, say why
            reason = f"{type(decoder).__name__} cannot run the shared layout ({type(exc).__name__}: {exc})"
        if reason is not None:
            lm.set_attn_implementation(previous)
    if reason is not None and mode == "true":
        raise ConfigError(f"prefix_sharing=true: {reason}. Set prefix_sharing=auto (falls back to packing "
                          "each sequence separately) or false.")
    dropout = has_dropout(lm)
    if log is not None:
        if reason is not None:
            log(f"prefix sharing: off, {reason}; sequences are packed separately")
        else:
            log("prefix sharing: on (each prompt computed once for all of its completions; checked against padded "
                "rows)" + ("; not in training passes: this model has dropout, and a shared prompt would draw one "
                           "dropout sample for all of its completions" if dropout and mode == "auto" else ""))
    return reason is None, dropout


def packed_decoder_states(lm: nn.Module, decoder: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                          loss_mask: Tensor, prefix_sharing: str = "auto",
                          log: Callable[[str], None] | None = None) -> tuple[Tensor, Tensor]:
    """(hidden [N, H], where [R, T]) of right-padded rows without padding: the shared layout where
    :func:`use_prefix_sharing` allows it, otherwise each sequence packed separately (``packing.py``)."""
    if use_prefix_sharing(lm, decoder, prefix_sharing, input_ids.device, log):
        return shared_hidden(decoder, input_ids, attention_mask, loss_mask)
    ensure_packing_supported(decoder, lm.config.vocab_size, input_ids.device)
    return packed_hidden(decoder, input_ids, attention_mask)
