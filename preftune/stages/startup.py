"""What a run settles before any model loads: runtime switches, what was ignored, and the checks that
need only the data (the batch fits it, held-out data exists when evaluation is asked for).

A problem found here is a ConfigError (exit code 2), reported before minutes of loading and reference
log-probs, never as a traceback after them.
"""

from __future__ import annotations

from typing import Any

import torch

from preftune.errors import ConfigError


def apply_runtime_settings(cfg: Any) -> None:
    """``tf32`` and ``full_determinism``, as transformers applies them."""
    if getattr(cfg, "tf32", None) is not None:
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    if getattr(cfg, "full_determinism", False):
        from transformers.trainer_utils import enable_full_determinism

        enable_full_determinism(cfg.seed)


def ignored_lines(cfg: Any) -> list[str]:
    """One line per TRL / transformers setting this run accepted but does not use, and why."""
    from preftune.config.keymap import IGNORED, UNSUPPORTED

    lines = []
    for key, value in getattr(cfg, "ignored_keys", {}).items():
        why = IGNORED.get(key) or (UNSUPPORTED[key].reason if key in UNSUPPORTED else "only used with use_vllm")
        lines.append(f"ignored: {key}={value!r} ({why})")
    return lines


def check_before_model(cfg: Any, num_train: int, has_held_out: bool, world_size: int, log: Any) -> None:
    """Checks on the built data, before the model loads: every problem at once."""
    problems = []
    accumulation = getattr(cfg, "gradient_accumulation_steps", 1)
    global_batch = cfg.per_device_train_batch_size * accumulation * world_size
    if num_train < global_batch:
        problems.append(f"per_device_train_batch_size: the {num_train} training examples are fewer than one global "
                        f"batch ({cfg.per_device_train_batch_size} per device × {accumulation} accumulation × "
                        f"{world_size} process(es) = {global_batch}); lower the batch size or add data")
    wants_eval = cfg.eval_strategy != "no" or cfg.eval_on_start
    if wants_eval and not has_held_out:
        what = f"eval_strategy={cfg.eval_strategy}" if cfg.eval_strategy != "no" else "eval_on_start=true"
        problems.append(f"{what} needs held-out data: give eval_file (or dataset_test_split), or eval_size to hold "
                        "out part of the training data")
    if problems:
        raise ConfigError(problems)
    if has_held_out and not wants_eval:
        log("held-out data is given but eval_strategy is no and eval_on_start false: it will not be evaluated "
            "(set eval_strategy=steps or epoch)")
