"""Held-out preference evaluation: implicit-reward accuracy and margin of a policy against π_ref.

    1. threads and process group     2. tokenizer and data     3. policy and reference (frozen)
    4. score every pair once (strided shards across ranks), report and optionally save the metrics
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from preftune.config import EvalConfig
from preftune.data.sources import DataSpec, eval_source
from preftune.modeling.load import freeze, load_causal_lm, load_tokenizer
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.modeling.reference import FrozenReference
from preftune.objectives import objective_for
from preftune.stages.common import Run, data_settings, packing, quiet_transformers
from preftune.stages.dpo import evaluate, make_batches, scorer
from preftune.stages.inputs import policy_path
from preftune.train.distributed import init_distributed, shutdown


def run_eval(cfg: EvalConfig, *, eval_data=None) -> dict[str, float]:
    # 1. Set-up.
    quiet_transformers()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    info = init_distributed(cfg.device)
    run = Run(cfg=cfg, info=info, output_dir=Path(cfg.output_file or ".").parent)

    # 2. Data, tokenized as in training (loss_type picks the layout: pairs, unpaired labels, rankings).
    objective = objective_for(cfg.loss_type)
    source = eval_source(DataSpec.of(cfg), eval_data)  # a DatasetDict: its dataset_test_split
    tokenizer = load_tokenizer(policy_path(cfg))
    dataset = objective.build(source, tokenizer, data_settings(cfg))
    dataset = objective.prepare(dataset, cfg.seed)
    run.log(f"eval data: {dataset.summary()}")

    # 3. Models.
    def load(path: str) -> SequenceLogprobModel:
        return SequenceLogprobModel(freeze(load_causal_lm(path, info.device)), cfg.logprob_chunk_size,
                                    **packing(run))

    policy = load(policy_path(cfg))
    reference = FrozenReference(load(cfg.ref_model_name_or_path), objective.reference_reduce(cfg))

    # 4. Score.
    policy.eval()
    metrics = evaluate(run, objective, scorer(policy), reference, dataset,
                       make_batches(objective, dataset, tokenizer.pad_token_id, info.device))
    run.log("  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
    if cfg.output_file and info.is_main:
        Path(cfg.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.output_file).write_text(json.dumps(metrics, indent=2))
    shutdown(info)
    return metrics


def main(config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, float]:
    from preftune.config import load_config

    return run_eval(load_config(EvalConfig, config_path, overrides))
