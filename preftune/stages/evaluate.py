"""Held-out preference evaluation: implicit-reward accuracy and margin of a policy against π_ref.

    1. threads and process group     2. tokenizer and data     3. policy and reference (frozen)
    4. score every pair once (strided shards across ranks), report and optionally save the metrics
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from preftune.config import EvalConfig
from preftune.data.sources import DataSpec, eval_source
from preftune.modeling.reference import FrozenReference
from preftune.objectives import objective_for
from preftune.stages.common import data_settings, start_process
from preftune.stages.inputs import policy_path
from preftune.stages.offline import evaluate_objective, make_batches, scorer
from preftune.stages.policy import load_frozen, logprob_model, policy_tokenizer
from preftune.train.distributed import shutdown


def run_eval(cfg: EvalConfig, *, eval_data=None) -> dict[str, float]:
    # 1. Set-up: threads, runtime switches, process group, seeds (no output folder: one file at most).
    run = start_process(cfg, Path(cfg.output_file or ".").parent)
    info = run.info

    # 2. Data, tokenized as in training (loss_type picks the layout: pairs, unpaired labels, rankings).
    objective = objective_for(cfg.loss_type)
    source = eval_source(DataSpec.of(cfg), eval_data)  # a DatasetDict: its dataset_test_split
    tokenizer = policy_tokenizer(run)
    dataset = objective.layout.build(source, tokenizer, data_settings(cfg))
    dataset = objective.prepare(dataset, cfg.seed)
    run.log(f"eval data: {dataset.summary()}")

    # 3. Models, both frozen.
    policy = logprob_model(run, load_frozen(run, policy_path(cfg)))
    reference = FrozenReference(logprob_model(run, load_frozen(run, cfg.ref_model_name_or_path)),
                                objective.reference_reduce(cfg))

    # 4. Score.
    metrics = evaluate_objective(run, policy, objective, scorer(policy), reference, dataset,
                                 make_batches(objective.layout.collate, dataset, tokenizer.pad_token_id, info.device))
    run.log("  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    if cfg.output_file and info.is_main:
        Path(cfg.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output_file).write_text(json.dumps(metrics, indent=2))
    shutdown(info)
    return metrics


# What a policy is evaluated with, read from the run that trained it (a value given to eval wins).
FROM_RUN = ("max_length", "max_prompt_length", "max_completion_length", "truncation_mode", "use_chat_template",
            "padding_free", "logprob_chunk_size", "dtype", "attn_implementation", "prompt_field", "system_field",
            "chosen_field", "rejected_field", "ultrafeedback_score", "ultrafeedback_pairs")


def run_settings(raw: dict[str, Any], log: Any = print) -> dict[str, Any]:
    """``raw`` eval settings completed from the training run's saved config: when model_name_or_path is a
    run's output_dir (or its final/ folder), β, the loss and its settings, the data settings and the
    reference (the run's ref_model_name_or_path, else the model it started from) come from the run's
    config.json, unless ``raw`` sets them."""
    import dataclasses

    from preftune.config.loss import LossGroup

    model = raw.get("model_name_or_path")
    if not model:
        return raw
    found = [d for d in (Path(str(model)), Path(str(model)).parent) if _run_config(d) is not None]
    if not found:
        return raw
    run_dir = found[0]
    saved = _run_config(run_dir)
    out = dict(raw)
    if run_dir == Path(str(model)):               # the run folder itself: its final model is the policy
        out["model_name_or_path"] = str(run_dir / "final")
    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    keys = [k for k in [f.name for f in dataclasses.fields(LossGroup)] + list(FROM_RUN) if k in fields]
    if saved.get("loss_type") == ["kto"]:          # kto's KL partners are drawn with the run's seed
        keys.append("seed")
    taken = [k for k in keys if k in saved and k not in raw]
    out.update({k: saved[k] for k in taken})
    if "ref_model_name_or_path" not in raw:
        out["ref_model_name_or_path"] = saved.get("ref_model_name_or_path") or saved["model_name_or_path"]
        taken.append("ref_model_name_or_path")
    log(f"[preftune] eval settings from the run {run_dir}: " + ", ".join(f"{k}={out[k]!r}" for k in taken))
    return out


def _run_config(folder: Path) -> dict[str, Any] | None:
    """The preftune config a training run saved in ``folder`` (None if it holds none)."""
    path = folder / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and "loss_type" in saved and "beta" in saved else None


def main(config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, float]:
    from preftune.config import from_dict, read_settings

    return run_eval(from_dict(EvalConfig, run_settings(read_settings(config_path, overrides))))
