"""The repeated decoder blocks of a causal LM, whatever the family calls them, for compile and FSDP.

Families name them differently: ``model.layers`` (Llama, Qwen, Gemma, ...), ``transformer.h`` (GPT-2,
GPT-BigCode, Falcon, BLOOM), ``gpt_neox.layers``, ``model.decoder.layers`` (OPT), ``backbone.layers``
(Mamba). Rather than list paths, :func:`decoder_layers` looks inside the model's own decoder
(``get_decoder()``) for the ``ModuleList`` whose members are the classes the model declares as its
unsplittable blocks (``_no_split_modules``, the list accelerate and FSDP auto-wrapping use).
"""

from __future__ import annotations

from torch import nn


def decoder_of(lm: nn.Module) -> nn.Module:
    """The decoder trunk (no output layer) of a causal LM or of a sequence-classification model."""
    get_decoder = getattr(lm, "get_decoder", None)
    if callable(get_decoder):
        return get_decoder()
    prefix = getattr(lm, "base_model_prefix", "")   # a sequence-classification model: its trunk
    return getattr(lm, prefix, lm)


def decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The decoder blocks of a Hugging Face causal LM (or sequence-classification model), in order."""
    get_base = getattr(lm, "get_base_model", None)   # a peft wrapper
    lm = get_base() if callable(get_base) else lm
    blocks = set(getattr(lm, "_no_split_modules", None) or ())
    lists = [m for m in decoder_of(lm).modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    declared = [m for m in lists if all(type(layer).__name__ in blocks for layer in m)]
    found = max(declared or lists, key=len, default=None)
    if found is None:
        model_type = getattr(getattr(lm, "config", None), "model_type", type(lm).__name__)
        raise ValueError(f"cannot find the decoder layers of {type(lm).__name__} (model type {model_type!r}): its "
                         f"decoder holds no list of blocks; fsdp and torch_compile work per decoder layer")
    return list(found)


def compile_decoder_layers(model: nn.Module) -> int:
    """``torch.compile`` each decoder layer in place (regional compilation); returns how many.

    Compiling the repeated layer rather than the whole model compiles one graph that every layer reuses
    (seconds, not minutes), and keeps the parts that change shape per batch — the gather of completion
    positions and the chunked output layer — out of the graph. ``dynamic=True`` because sequence length
    changes from batch to batch: without it every new padded length would recompile.
    """
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
