"""Loading Hugging Face causal LMs and tokenizers, and wrapping them in LoRA adapters."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from preftune.errors import ConfigError

EMBEDDED_MODELS = ("smollm2",)


def resolve_model_path(name_or_path: str) -> str:
    """'smollm2' → the embedded SmolLM2-135M-Instruct, converted once into the cache; else unchanged."""
    if name_or_path in EMBEDDED_MODELS:
        from preftune.assets.smollm2 import ensure_smollm2

        return str(ensure_smollm2())
    path = Path(name_or_path)
    if not path.exists():
        raise ConfigError(
            f"model {name_or_path!r}: no such folder. preftune works offline: pass a local Hugging Face "
            f"folder, or 'smollm2' for the embedded SmolLM2-135M-Instruct")
    return str(path)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if tokenizer.pad_token_id is None:
        # Padding positions are excluded by attention and loss masks, so any id works; EOS is standard.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, device: torch.device | str = "cpu") -> nn.Module:
    """Weights in fp32: bf16 enters only through autocast, so optimizer state and updates stay exact."""
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(name_or_path), dtype=torch.float32)
    return model.to(device)


def apply_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str]) -> nn.Module:
    """Wrap ``model`` in LoRA adapters; only adapter weights will require grad.

    With adapters, the reference π_ref is the same model with the adapter disabled, so one copy of
    the weights serves both (see ``preftune.modeling.reference``).
    """
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = "all-linear" if target_modules == ["all-linear"] else target_modules
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available")
    return torch.device(name)


def compile_decoder_layers(model: nn.Module) -> int:
    """``torch.compile`` each decoder layer in place (regional compilation); returns how many.

    Compiling the repeated layer rather than the whole model compiles one graph that every layer reuses
    (seconds, not minutes), and keeps the parts that change shape per batch — the gather of completion
    positions and the chunked output layer — out of the graph. ``dynamic=True`` because sequence length
    changes from batch to batch: without it every new padded length would recompile.
    """
    from preftune.modeling.logprobs import unwrap_causal_lm
    from preftune.train.fsdp import decoder_layers

    layers = decoder_layers(unwrap_causal_lm(model))
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
