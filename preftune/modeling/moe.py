"""The router load-balancing loss of mixture-of-experts models, added to every stage's training loss.

A transformers MoE causal LM whose config has ``output_router_logits`` true adds
``router_aux_loss_coef × load_balancing_loss_func(router logits, num_experts, top_k, attention_mask)``
to its language-model loss (Switch Transformer, eqs. 4–6). TRL 1.16's trainers switch it on for every
model whose config declares ``output_router_logits`` (an MoE model), whatever its value, unless the
coefficient — the model's ``router_aux_loss_coef``, or the trainer's setting of that name — is 0, and
then set ``output_router_logits`` to match; :func:`configure_router_aux` applies the same rule.
preftune computes log-probs through the
decoder and its own chunked output layer, never the model's forward with labels, so it takes the
router logits from the decoder's output and calls the model's own ``load_balancing_loss_func`` (from
the model's module) with the model's own expert counts. :func:`router_aux` checks once, on a probe,
that this equals the ``aux_loss`` of the model's forward.

The mask follows transformers': padding positions are excluded. A packed batch (``packing.py``) has
no attention mask; its filler positions are excluded through a mask over the packed positions, and a
prompt computed once for several rows (``prefix_sharing.py``) counts as often as rows hold it: the mask
is each position's multiplicity (:func:`token_weights`), which ``load_balancing_loss_func`` takes as
weights, so the loss is the padded batch's (a mean over the same tokens, in another order).
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from preftune.errors import ConfigError


@dataclass(frozen=True)
class RouterAux:
    """What the model's forward uses: ``coef × loss_fn(router_logits, num_experts, top_k, mask)``."""

    coef: float
    loss_fn: Callable
    num_experts: int
    top_k: int

    def __call__(self, router_logits: tuple[Tensor, ...], mask: Tensor | None) -> Tensor:
        """The (unweighted) auxiliary loss; ``mask`` [B, T] over the positions the router saw."""
        return self.loss_fn(tuple(router_logits), self.num_experts, self.top_k, mask)


_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _text_config(lm: nn.Module):
    """The config holding the language model's settings (a multimodal config keeps them in a sub-config)."""
    config = lm.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _model_type(lm: nn.Module) -> str:
    return repr(getattr(lm.config, "model_type", type(lm).__name__))


def has_router(lm: nn.Module) -> bool:
    """Whether ``lm`` is a mixture-of-experts model that can return its router logits."""
    return hasattr(_text_config(lm), "output_router_logits")


def configure_router_aux(lm: nn.Module, coef: float | None) -> str | None:
    """TRL's rule: on an MoE model the router loss is on unless its coefficient is 0; ``coef`` (the
    ``router_aux_loss_coef`` setting) replaces the model's own when given. Sets the model config's
    ``output_router_logits`` and ``router_aux_loss_coef`` to match and returns a log line (None for a
    dense model). A non-zero ``coef`` on a dense model is an error."""
    config = _text_config(lm)
    if not has_router(lm):
        if coef:
            raise ConfigError(f"router_aux_loss_coef is {coef} but model type {_model_type(lm)} is not a "
                              f"mixture-of-experts model that returns router logits: there is no loss to weight")
        return None
    coef = float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0) if coef is None else float(coef)
    config.output_router_logits = coef != 0.0
    config.router_aux_loss_coef = coef
    _FOUND.pop(lm, None)
    aux = router_aux(lm)
    if aux is None:
        return (f"router load-balancing loss: off (model type {_model_type(lm)}, router_aux_loss_coef 0)")
    return (f"router load-balancing loss: on, × {aux.coef:g} (router_aux_loss_coef; {aux.num_experts} experts, "
            f"top {aux.top_k}), logged as aux_loss")


def router_aux(lm: nn.Module) -> RouterAux | None:
    """The router auxiliary loss of ``lm`` (a Hugging Face causal LM or sequence-classification model), or
    None when its config does not ask for one (``output_router_logits`` false, or a zero
    ``router_aux_loss_coef``: when transformers' own forward would not add it); cached per model."""
    if lm in _FOUND:
        return _FOUND[lm]
    config = _text_config(lm)
    coef = float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0)
    found = None
    if getattr(config, "output_router_logits", False) and coef != 0.0:
        loss_fn = getattr(sys.modules[type(lm).__module__], "load_balancing_loss_func", None)
        num_experts = getattr(lm, "num_experts", None) or next(
            (getattr(config, k) for k in ("num_experts", "num_local_experts", "n_routed_experts")
             if getattr(config, k, None)), None)
        top_k = getattr(lm, "num_experts_per_tok", None) or getattr(config, "num_experts_per_tok", None)
        if loss_fn is None or not num_experts or not top_k:
            raise ConfigError(f"model type {_model_type(lm)}: output_router_logits is true but preftune cannot find "
                              f"its router loss (load_balancing_loss_func, number of experts, top-k); set "
                              f"output_router_logits=false in model_init_kwargs to train without it")
        found = RouterAux(coef, loss_fn, int(num_experts), int(top_k))
        if callable(getattr(lm, "get_output_embeddings", None)) and lm.get_output_embeddings() is not None:
            _check_against_forward(lm, found)   # a causal LM: its forward returns aux_loss to compare with
    _FOUND[lm] = found
    return found


@torch.no_grad()
def _check_against_forward(lm: nn.Module, aux: RouterAux) -> None:
    """The model's own ``aux_loss`` on a padded probe equals :class:`RouterAux` on its decoder's router logits."""
    device = next(lm.parameters()).device
    vocab = _text_config(lm).vocab_size
    ids = torch.randint(0, vocab, (2, 6), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], device=device)
    was_training = lm.training
    lm.eval()
    try:
        expected = lm(input_ids=ids, attention_mask=mask, use_cache=False).aux_loss
        outputs = lm.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        lm.train(was_training)
    router_logits = getattr(outputs, "router_logits", None)
    if expected is None or router_logits is None:
        raise ConfigError(f"model type {_model_type(lm)}: output_router_logits is true but its forward returns no "
                          f"aux_loss or router logits preftune can read; set output_router_logits=false")
    got = aux(router_logits, mask)
    if not torch.allclose(torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64),
                          rtol=1e-5, atol=1e-7):
        raise ConfigError(f"model type {_model_type(lm)}: preftune's router loss {float(got):.6g} differs from the "
                          f"model's own {float(expected):.6g}; set output_router_logits=false")


@contextlib.contextmanager
def recorded_router_logits(decoder: nn.Module, enabled: bool) -> Iterator[list[tuple[Tensor, ...]]]:
    """The router logits of every forward of ``decoder`` inside the block, in order (nothing when not
    ``enabled`` or the decoder records none). A probe run before the real forward (packing, prefix
    sharing) is recorded too: the real forward's are the last."""
    found: list[tuple[Tensor, ...]] = []
    if not enabled:
        yield found
        return

    def record(module, args, output):
        logits = getattr(output, "router_logits", None)
        if logits is not None:
            found.append(logits)

    handle = decoder.register_forward_hook(record)
    try:
        yield found
    finally:
        handle.remove()


def token_weights(where: Tensor, attention_mask: Tensor, positions: int) -> Tensor:
    """How many of the padded batch's real tokens each of the decoder's ``positions`` computed: ``where``
    [R, T] maps padded positions to them (1 per real token packed, k for a prompt shared by k rows or a
    row computed once for k copies, 0 for padding or filler) — the weights :class:`RouterAux` needs."""
    real = where[attention_mask.bool()]
    return torch.bincount(real, minlength=positions).to(torch.float32).unsqueeze(0)


def with_router_aux(loss: Tensor, sums: dict[str, Tensor], aux_losses: list[Tensor | None], coef: float
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """``loss`` + coef × (mean of the forwards' aux losses; Nones skipped), and ``aux_loss`` in the logged sums
    (a per-item sum like every other entry, so its logged mean is the micro-batches' aux loss weighted by
    their counts). Unchanged when there is none."""
    aux_losses = [a for a in aux_losses if a is not None]
    if not aux_losses:
        return loss, sums
    aux = torch.stack([a.float() for a in aux_losses]).mean()
    return loss + coef * aux, {**sums, "aux_loss": aux.detach() * sums["count"]}
