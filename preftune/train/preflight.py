"""Checks made before any training work, so a run fails in seconds rather than after hours.

- Resuming: the checkpoint's settings and fingerprints (data, tokenizer, model config) must match the
  run's, or the resumed run would silently be a different experiment; each difference is named.
- Disk: the output folder must have room for what the run holds at its peak: a new checkpoint is
  written in full before the oldest one is rotated out, and the final model comes on top.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from preftune.errors import ConfigError
from preftune.storage import format_bytes

# Settings a resumed run may change: where and how often it reports, on what hardware it runs, and
# how it computes the same numbers.
# Everything else (seed, data, model, loss, batch, schedule, ...) decides the numbers of the run.
CHANGEABLE_ON_RESUME = frozenset({
    "output_dir", "overwrite_output_dir", "resume", "force_resume", "max_row_bytes", "logging_steps", "eval_steps", "save_steps",
    "save_total_limit",
    "progress_bar", "report_to", "threads", "device", "per_device_eval_batch_size", "max_consecutive_skips",
    "logprob_chunk_size", "gradient_checkpointing", "torch_compile", "padding_free", "prefix_sharing",
    "lean_activations", "release_host_memory",
})
_VOLATILE_MODEL_KEYS = ("_name_or_path", "transformers_version", "use_cache", "dtype", "torch_dtype")


def _sha(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The vocabulary, special tokens and chat template: what decides the token ids."""
    return _sha({"vocab": sorted(tokenizer.get_vocab().items()), "special": tokenizer.special_tokens_map,
                 "template": getattr(tokenizer, "chat_template", None)})


def model_config_fingerprint(name_or_path: str) -> str:
    """The architecture of the base model (its config.json, without bookkeeping keys)."""
    from transformers import AutoConfig

    from preftune.modeling.load import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(name_or_path)).to_dict()
    return _sha({k: v for k, v in config.items() if k not in _VOLATILE_MODEL_KEYS})


def run_fingerprints(model_name_or_path: str | None, tokenizer: Any, train: Any, *,
                     model_config: str | None = None) -> dict[str, str]:
    """``model_config``: the fingerprint of a model object passed from Python (config and weights),
    instead of the config of ``model_name_or_path``."""
    return {"train_data": train.fingerprint(), "tokenizer": tokenizer_fingerprint(tokenizer),
            "model_config": model_config or model_config_fingerprint(model_name_or_path)}


def _global_batch(config: dict[str, Any], world_size: int) -> int | None:
    per_device, accumulation = config.get("per_device_train_batch_size"), config.get("gradient_accumulation_steps")
    return per_device * accumulation * world_size if per_device and accumulation else None


def resume_differences(saved: dict[str, Any], config: dict[str, Any], fingerprints: dict[str, str],
                       world_size: int = 1) -> list[str]:
    """Each setting or fingerprint of ``saved`` (a checkpoint's meta.json) that the new run changes.

    Another process count may split the same global batch differently (the data order is a function
    of the global batch), so per-device batch and accumulation may change when their product with
    the process count does not.
    """
    now = json.loads(json.dumps(config))  # the same JSON types as the saved copy (tuples → lists)
    before = saved.get("config", {})
    changeable = set(CHANGEABLE_ON_RESUME)
    old_batch, new_batch = _global_batch(before, saved.get("world_size", 1)), _global_batch(now, world_size)
    if old_batch is not None and old_batch == new_batch:
        changeable |= {"per_device_train_batch_size", "gradient_accumulation_steps"}
    diffs = [f"{k}: {before.get(k)!r} → {now.get(k)!r}" for k in sorted(set(before) | set(now))
             if k not in changeable and before.get(k) != now.get(k)]
    for name, value in fingerprints.items():
        old = saved.get("fingerprints", {}).get(name)
        if old != value:
            diffs.append(f"{name}: fingerprint {str(old)[:12]} → {value[:12]}")
    return diffs


def check_resume(checkpoint: Path, config: dict[str, Any], fingerprints: dict[str, str], force: bool,
                 log: Any = print, world_size: int = 1) -> None:
    """Refuse to resume ``checkpoint`` with different settings, naming each, unless ``force``."""
    meta_file = checkpoint / "meta.json"
    if not meta_file.is_file():
        diffs = ["the checkpoint has no meta.json to compare with (saved by an older preftune)"]
    else:
        try:
            saved = json.loads(meta_file.read_text(encoding="utf-8"))
            if not isinstance(saved, dict) or not all(isinstance(saved.get(k, {}), dict)
                                                      for k in ("config", "fingerprints")):
                raise ValueError("not an object with 'config' and 'fingerprints' objects")
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise ConfigError(f"resume from {checkpoint}: {meta_file} is not a valid meta.json ({type(e).__name__}: "
                              f"{str(e)[:200]}); this checkpoint cannot be checked against the run") from None
        diffs = resume_differences(saved, config, fingerprints, world_size)
    if not diffs:
        return
    if force:
        for d in diffs:
            log(f"force_resume: resuming {checkpoint.name} although {d}")
        return
    raise ConfigError(f"resume from {checkpoint}: this run differs from the one that saved it — "
                      + "; ".join(diffs) + ". Undo the change, or set force_resume=true to resume anyway.")


def checkpoint_bytes(model: nn.Module, optimizer: str, peft: bool) -> tuple[int, int]:
    """(bytes of one resumable checkpoint, bytes of the final model folder), fp32 weights."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4
    everything = sum(p.numel() for p in model.parameters()) * 4
    optimizer_states = {"adamw": 2, "rmsprop": 1}.get(optimizer, 2)
    weights = trainable if peft else everything
    return weights + optimizer_states * trainable, everything


def peak_bytes(checkpoint: int, final: int, saves: int, keep: int | None, kept_already: int = 0) -> tuple[int, str]:
    """(bytes a run must still find free at its peak, how that was counted).

    ``saves`` checkpoints are written (the last at the end), at most ``keep`` of this run are kept
    (None: all). The new checkpoint is complete before the oldest kept one is removed, so up to
    keep + 1 exist at once; the final model is written after the last checkpoint. ``kept_already``
    checkpoints of a resumed run are on disk now and need no new space.
    """
    at_once = saves if keep is None else min(saves, keep + 1)
    with_final = (saves if keep is None else min(saves, keep)) * checkpoint + final
    peak = max(at_once * checkpoint, with_final)
    need = max(peak - kept_already * checkpoint, 0)
    how = (f"{at_once} checkpoint(s) of {format_bytes(checkpoint)} at once"
           + (f" (save_total_limit={keep} plus the new one, written before the oldest is removed)"
              if keep is not None and at_once == keep + 1 else "")
           + f", and the final model of {format_bytes(final)}")
    return need, how


def check_free_space(output_dir: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(output_dir).free
    if free < need:
        raise ConfigError(f"output_dir {output_dir}: {format_bytes(free)} free, but this run needs about "
                          f"{format_bytes(need)} more at its peak ({what}); free some space, lower "
                          "save_total_limit, or point output_dir elsewhere")
