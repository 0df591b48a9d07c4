"""What a user hands a stage: the data, the model by name, or model / tokenizer / LoRA objects from Python.

* Data (:func:`resolve_data`): files, folders, Hub datasets, mixtures or in-memory objects, resolved
  and their splits checked right after set-up, before any model is loaded
  (:mod:`preftune.data.sources`); the column mapping and UltraFeedback keys make the row format.
* A model by name: a folder, 'smollm2' or a Hub id at ``model_revision`` (``trust_remote_code`` only
  when set), resolved once to a local snapshot (:func:`~preftune.modeling.load.resolve_model_path`) so
  the tokenizer, the policy and a frozen reference all read the same commit.
* Objects, as TRL's trainers take them: ``model=`` (a causal LM, trained in place), ``tokenizer=`` (or
  TRL's name ``processing_class=``), ``peft_config=`` (a ``peft.LoraConfig``; a model that already is
  a ``PeftModel`` trains its adapter), ``ref_model=`` (a frozen reference). A model object is
  fingerprinted by its config and weights, so resuming with a different one is refused like resuming
  with a different folder.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from preftune.data.formats import RowFormat
from preftune.data.sources import DataSpec, resolve_sources
from preftune.errors import ConfigError

__all__ = ["Objects", "causal_lm_adapter", "frozen_copy", "hub_options", "load_weights_into", "object_fingerprint", "object_source",
           "policy_path", "reference_is_a_copy", "resolve_data", "row_format", "with_adapter", "with_peft_config"]

_ROW_FORMAT_KEYS = ("prompt_field", "chosen_field", "rejected_field", "system_field", "ultrafeedback_score",
                    "ultrafeedback_pairs")
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "use_cache", "dtype", "torch_dtype")


@dataclass(frozen=True)
class Objects:
    """Python objects passed to a stage instead of names in the config (None: not passed)."""

    model: nn.Module | None = None
    tokenizer: Any = None
    peft_config: Any = None
    ref_model: nn.Module | None = None

    @classmethod
    def of(cls, model: Any = None, tokenizer: Any = None, processing_class: Any = None, peft_config: Any = None,
           ref_model: Any = None) -> Objects:
        if tokenizer is not None and processing_class is not None:
            raise ConfigError("tokenizer= and processing_class= are the same thing (TRL's name): pass one")
        for name, value in (("model", model), ("ref_model", ref_model)):
            if value is not None and not isinstance(value, nn.Module):
                kind = "a name" if isinstance(value, str) else type(value).__name__
                raise ConfigError(f"{name}= must be a model object (a torch.nn.Module), got {kind}; a model given "
                                  f"by name goes in the config ({'model' if name == 'model' else 'ref_model'}"
                                  "_name_or_path)")
        return cls(model, tokenizer if tokenizer is not None else processing_class, peft_config, ref_model)

    def check(self, cfg: Any) -> None:
        """The model is given once: by name in the config, or as an object (checked before any work)."""
        if self.model is None and not cfg.model_name_or_path:
            raise ConfigError("model_name_or_path is required (or pass model= from Python)")
        if self.model is not None and cfg.model_name_or_path:
            raise ConfigError(f"model_name_or_path={cfg.model_name_or_path!r} is set and a model object was "
                              "passed: give the model once")


def row_format(cfg: Any) -> RowFormat:
    """The config's column mapping and UltraFeedback keys (defaults where a stage has none of them)."""
    values = {k: getattr(cfg, k) for k in _ROW_FORMAT_KEYS if hasattr(cfg, k)}
    return RowFormat(**values, seed=getattr(cfg, "seed", 0))


def resolve_data(run: Any, train_data: Any = None, eval_data: Any = None) -> None:
    """Find the training and held-out rows (``run.sources``) before any model is loaded: a missing
    file, split or Hub dataset fails here, in seconds."""
    run.sources = resolve_sources(DataSpec.of(run.cfg), train_data, eval_data)


def hub_options(cfg: Any) -> dict[str, Any]:
    """``revision`` / ``trust_remote_code`` for the policy's name (TRL's ModelConfig keys)."""
    return {"revision": getattr(cfg, "model_revision", None),
            "trust_remote_code": bool(getattr(cfg, "trust_remote_code", False))}


def policy_path(cfg: Any) -> str:
    """The local folder of ``model_name_or_path`` at ``model_revision`` (downloaded or from the cache)."""
    from preftune.modeling.load import resolve_model_path

    if not cfg.model_name_or_path:
        raise ConfigError("model_name_or_path is required (or pass model= from Python)")
    return resolve_model_path(cfg.model_name_or_path, **hub_options(cfg))


def with_peft_config(cfg: Any, objects: Objects) -> Any:
    """``cfg`` with ``use_peft`` and the ``lora_*`` keys of a ``peft_config`` object (or of a PeftModel passed
    as ``model``), so config.json, checkpoints and resume checks record the adapter that trains."""
    peft_config = objects.peft_config
    if objects.model is not None and hasattr(objects.model, "peft_config"):
        if peft_config is not None:
            raise ConfigError("model= is already a PeftModel and peft_config= is set too: pass one adapter")
        peft_config = next(iter(objects.model.peft_config.values()))
    if peft_config is None:
        return cfg
    if not hasattr(cfg, "use_peft"):
        raise ConfigError(f"peft_config= is set but {type(cfg).__name__} trains no LoRA adapters")
    lora_keys = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(cfg)}
    set_by_keys = [k for k in lora_keys if hasattr(cfg, k) and getattr(cfg, k) != defaults[k]]
    if set_by_keys:
        raise ConfigError(f"LoRA is set twice: by peft_config= and by {', '.join(set_by_keys)}; keep one")
    targets = peft_config.target_modules
    targets = [targets] if isinstance(targets, str) else sorted(targets or [])
    return dataclasses.replace(cfg, use_peft=True, lora_r=peft_config.r, lora_alpha=peft_config.lora_alpha,
                               lora_dropout=peft_config.lora_dropout, lora_target_modules=targets)


def object_fingerprint(model: nn.Module) -> str:
    """sha256 over a model object's config (bookkeeping keys left out) and every weight's bytes."""
    from preftune.modeling.reference import weights_fingerprint

    config = getattr(model, "config", None)
    config_dict = config.to_dict() if hasattr(config, "to_dict") else {}
    payload = json.dumps({k: v for k, v in config_dict.items() if k not in _VOLATILE_CONFIG_KEYS},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode() + weights_fingerprint(model).encode()).hexdigest()


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model`` (its weights as they are now), for a reference model."""
    from preftune.modeling.load import freeze

    return freeze(copy.deepcopy(model))


def object_source(model: nn.Module) -> str:
    """Where a model object came from (its ``name_or_path``), to load its tokenizer from."""
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if not source:
        raise ConfigError("the model object has no name_or_path to load its tokenizer from: pass tokenizer= too")
    return source


def reference_is_a_copy(cfg: Any, run: Any, resume_dir: Path | None) -> bool:
    """A model object's frozen reference must be copied now, before its weights change: not with LoRA
    (the adapter is switched off), another reference, or a precomputed table the policy scores itself."""
    if cfg.use_peft or getattr(cfg, "ref_model_name_or_path", None) or run.reference_model is not None:
        return False
    return resume_dir is not None or not getattr(cfg, "precompute_ref_log_probs", False)


def with_adapter(cfg: Any, model: nn.Module, peft_config: Any, resume_dir: Path | None,
                 new_adapter: Callable[[Any, nn.Module], nn.Module] | None = None) -> nn.Module:
    """``model`` with the LoRA adapter that trains: a PeftModel's own, the checkpoint's when resuming,
    ``peft_config``'s, else ``new_adapter(cfg, model)`` (the config's lora_* keys; a causal LM's by default)."""
    from preftune.train.checkpoint import is_peft

    if is_peft(model):  # a PeftModel passed from Python: its adapter trains
        if resume_dir is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(resume_dir / "model" / "adapter_model.safetensors"))
        return model
    if resume_dir is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(resume_dir / "model"), is_trainable=True)
    if peft_config is not None:
        from peft import get_peft_model

        return get_peft_model(model, peft_config)
    return (new_adapter or causal_lm_adapter)(cfg, model)


def causal_lm_adapter(cfg: Any, model: nn.Module) -> nn.Module:
    """LoRA on a causal LM from the config's lora_* keys (``modeling.load.apply_lora``)."""
    from preftune.modeling.load import apply_lora

    return apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules,
                      modules_to_save=cfg.lora_modules_to_save, use_rslora=cfg.use_rslora, use_dora=cfg.use_dora)


def load_weights_into(model: nn.Module, folder: Path) -> None:
    """The weights of a saved Hugging Face folder, copied into ``model`` in place (resuming a model
    object). Only weights tied to another one may be absent from the files (save_pretrained writes them once)."""
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    tied = {n for group in names.values() if len(group) > 1 for n in group}
    untied = [k for k in missing if k not in tied]
    if unexpected or untied:
        raise ConfigError(f"resume from {folder}: its weights do not fit the model object passed "
                          f"(missing {untied[:3]}, unexpected {unexpected[:3]})")
