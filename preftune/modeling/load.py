"""Loading Hugging Face causal LMs and tokenizers, and wrapping them in LoRA adapters."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from preftune.assets import EMBEDDED_MODELS
from preftune.device import pick_device  # noqa: F401  (re-exported: callers that load a model pick its device here)
from preftune.errors import ConfigError
from preftune.storage import damaged_safetensors

# What a model folder needs from a Hub repository: configs, weights, tokenizer files, chat templates.
# Top level only: subfolders hold other formats (onnx/, original/, gguf/) that transformers never reads.
_MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_REMOTE_CODE = ["*.py"]
_TOP_LEVEL_ONLY = ["*/*"]


def resolve_model_path(name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """The local folder of a model: 'smollm2' (embedded), an existing folder, or a Hub id.

    'smollm2' is SmolLM2-135M-Instruct, converted once into the preftune cache. A Hub id
    (``org/name``) is fetched with huggingface_hub at ``revision`` (default: main): downloaded when
    online, read from the Hugging Face cache when offline or ``HF_HUB_OFFLINE=1``; only the files
    transformers reads are fetched (safetensors weights, or ``*.bin`` where a repository has no
    safetensors; Python files only with ``trust_remote_code``). The folder returned is the snapshot
    of one commit, so every later load in the run (tokenizer, reference) reads the same weights.
    """
    if name_or_path in EMBEDDED_MODELS:
        return str(EMBEDDED_MODELS[name_or_path]())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if revision not in (None, "main"):
            raise ConfigError(f"model {name_or_path!r} is a local folder, so revision {revision!r} cannot apply "
                              "to it; drop the revision or name the Hub id")
        return str(path)
    from preftune.hub import is_hub_id

    if not is_hub_id(name_or_path):
        raise ConfigError(f"model {name_or_path!r}: no such folder, and not a Hugging Face Hub id ('org/name'); "
                          "pass a local folder, a Hub id, or 'smollm2' for the embedded SmolLM2-135M-Instruct")
    from preftune.hub import hub_cache_dir

    return str(_hub_snapshot(name_or_path, revision, trust_remote_code, str(hub_cache_dir())))


@functools.lru_cache(maxsize=16)
def _hub_snapshot(repo_id: str, revision: str | None, trust_remote_code: bool, cache: str) -> Path:
    """Resolved once per process, cache and (id, revision): the tokenizer and the reference get the
    policy's commit even if the repository changes during the run."""
    from preftune.hub import download_snapshot, offline

    patterns = _MODEL_FILES + (_REMOTE_CODE if trust_remote_code else [])
    folder = download_snapshot(repo_id, revision=revision, allow_patterns=patterns,
                               ignore_patterns=_TOP_LEVEL_ONLY)
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")) and not offline():
        # An older repository with PyTorch pickles only: fetch those, from the commit just resolved.
        folder = download_snapshot(repo_id, revision=folder.name, allow_patterns=["*.bin"],
                                   ignore_patterns=_TOP_LEVEL_ONLY)
    return folder


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(name_or_path: str, *, revision: str | None = None,
                   trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a model folder, Hub id or 'smollm2' (see :func:`resolve_model_path`).

    A tokenizer without a pad token gets EOS as its pad token: padded positions are excluded by the
    attention and loss masks, so any id works, and EOS is the usual choice.
    """
    folder = resolve_model_path(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if not any((Path(folder) / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"model {name_or_path!r}: {folder} has no tokenizer files (none of "
                          f"{', '.join(TOKENIZER_FILES)}); save the tokenizer next to the weights "
                          "(tokenizer.save_pretrained(folder))")
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    return ensure_pad_token(tokenizer)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
QUANTIZATIONS = ("4bit",)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """'auto' (the checkpoint's own dtype, as ``config.json`` records it), a name ('bfloat16', 'bf16',
    'float32', ...) or a torch dtype → what ``from_pretrained(dtype=...)`` takes. None = float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise ConfigError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[name]


def check_attn_implementation(name: str | None, device: torch.device | str = "cpu") -> None:
    """A clear error for an attention implementation this machine cannot run (before any weight loads)."""
    if name is None:
        return
    if name not in ATTENTION_IMPLEMENTATIONS and not name.startswith("kernels-community/"):
        raise ConfigError(f"attn_implementation must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)} "
                          f"(or a kernels-community/... hub kernel), got {name!r}")
    if name.startswith("flash_attention"):
        package = "flash_attn_interface" if name == "flash_attention_3" else "flash_attn"
        if importlib.util.find_spec(package) is None:
            raise ConfigError(f"attn_implementation={name} needs the {package} package, which is not installed "
                              f"(pip install flash-attn); use sdpa (the default) instead")
        if torch.device(device).type != "cuda":
            raise ConfigError(f"attn_implementation={name} runs on CUDA devices only; this run's device is "
                              f"{torch.device(device).type}: use sdpa (the default) instead")


def quantization_config(quantization: str | None, device: torch.device | str) -> Any:
    """bitsandbytes 4-bit (NF4, bf16 compute, nested quantisation) for LoRA on a CUDA device; None for none."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {', '.join(QUANTIZATIONS)} or null, got {quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("load_in_4bit needs the bitsandbytes package, which is not installed "
                          "(pip install bitsandbytes)")
    if torch.device(device).type != "cuda":
        raise ConfigError(f"load_in_4bit needs a CUDA device (bitsandbytes 4-bit kernels); this run's device is "
                          f"{torch.device(device).type}")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def load_causal_lm(name_or_path: str, device: torch.device | str = "cpu", *,
                   dtype: str | torch.dtype | None = "float32", attn_implementation: str | None = None,
                   quantization: str | None = None, **model_init_kwargs: Any) -> nn.Module:
    """A Hugging Face causal LM on ``device``.

    ``dtype``: the weights' dtype. float32 (the default) keeps optimizer state and updates exact, bf16
    entering only through autocast; ``auto`` keeps the checkpoint's dtype (a bf16 7B model then needs
    14 GB, not 28); any name of :data:`DTYPES`. ``attn_implementation``: sdpa (transformers' default where
    the model supports it), eager, flash_attention_2 (installed flash-attn + CUDA), ...; None = the
    model's default. ``quantization='4bit'``: bitsandbytes NF4 base weights, for LoRA on CUDA only.
    ``model_init_kwargs`` go to ``from_pretrained`` (e.g. ``output_router_logits=True``); a ``dtype`` /
    ``torch_dtype`` or ``attn_implementation`` among them (where TRL recipes put them) takes the place of
    the keyword argument.
    """
    for key in ("quantization_config", "device_map"):
        if key in model_init_kwargs:
            raise ConfigError(f"model_init_kwargs: {key} is not accepted (preftune places the model on its device; "
                              f"4-bit weights come from load_in_4bit)")
    kwargs, placed = pretrained_kwargs(device, dtype, attn_implementation, quantization, model_init_kwargs)
    # A Hub revision picks the snapshot folder; a local folder has no revisions for from_pretrained to apply.
    folder = resolve_model_path(name_or_path, revision=kwargs.pop("revision", None),
                                trust_remote_code=bool(kwargs.get("trust_remote_code", False)))
    damaged = damaged_safetensors(Path(folder))
    if damaged:
        raise ConfigError(f"model {name_or_path!r}: {damaged}")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e) or not model_init_kwargs:
            raise
        raise ConfigError(f"model_init_kwargs: {e} (each key must be a setting of the model's config)") from None
    return model if placed else model.to(device)


def pretrained_kwargs(device: torch.device | str, dtype: str | torch.dtype | None, attn_implementation: str | None,
                      quantization: str | None, model_init_kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``from_pretrained``'s keyword arguments for a model on ``device``, and whether ``from_pretrained`` places
    the model itself (4-bit weights, which must not be moved afterwards). A ``dtype`` / ``torch_dtype`` or
    ``attn_implementation`` in ``model_init_kwargs`` (where a TRL recipe puts them) takes the place of the
    keyword argument; the attention kernel and the quantization are checked against the device."""
    kwargs = dict(model_init_kwargs)
    dtype = kwargs.pop("torch_dtype", kwargs.pop("dtype", dtype))
    attn_implementation = kwargs.pop("attn_implementation", attn_implementation)
    check_attn_implementation(attn_implementation, device)
    quantized = quantization_config(quantization, device)
    kwargs["dtype"] = resolve_dtype(dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantized is not None:
        kwargs.update(quantization_config=quantized, device_map={"": torch.device(device)})
    return kwargs, quantized is not None


def lora_targets(model: nn.Module, target_modules: list[str] | None) -> str | list[str] | None:
    """What LoRA wraps: the given module names, 'all-linear', or for None peft's choice for the architecture —
    and 'all-linear' for the model types peft has no choice for (Qwen3-MoE, Phi-3, SmolLM3, Cohere, Granite,
    Mamba, ...), where peft alone would stop with "specify target_modules"."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    if target_modules == ["all-linear"]:
        return "all-linear"
    if target_modules is None and model.config.model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return "all-linear"
    return target_modules


def apply_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str] | None,
               **lora_options: Any) -> nn.Module:
    """Wrap ``model`` in LoRA adapters; only adapter weights will require grad. ``target_modules``: see
    :func:`lora_targets`; ``lora_options``: more LoraConfig settings (modules_to_save, use_rslora, use_dora).

    With adapters, the reference π_ref is the same model with the adapter disabled, so one copy of
    the weights serves both (see ``preftune.modeling.reference``).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(model, target_modules),
                        task_type="CAUSAL_LM", **lora_options)
    return get_peft_model(model, config)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


