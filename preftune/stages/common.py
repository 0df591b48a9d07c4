"""Pieces every stage script wires together before its model: run set-up, tokenizer and data, the data
order, and the checks made before any expensive work. The model is ``policy.py``'s, batches and held-out
evaluation ``offline.py``'s (``online.py``'s for sampled data), and what the run writes ``run_io.py``'s.

Stages call these as plain functions (composition, not a base class), so each stage script still
reads top to bottom.
"""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from preftune.config import TrainingConfig, to_dict
from preftune.data.dataset import BuiltDataset, DataSettings
from preftune.data.example import num_tokens as data_num_tokens
from preftune.data.load import DEFAULT_MAX_ROW_BYTES
from preftune.errors import ConfigError
from preftune.stages.inputs import (
    Objects,
    policy_path,
    resolve_data,
    row_format,
)
from preftune.stages.lifecycle import Run, hold
from preftune.stages.policy import policy_tokenizer
from preftune.stages.publish import prepare_push
from preftune.stages.startup import apply_runtime_settings, check_before_model, ignored_lines
from preftune.train import signals
from preftune.train.cadence import Cadence
from preftune.train.checkpoint import (
    checkpoint_run_id,
    folder_run_id,
    list_checkpoints,
    resolve_resume,
)
from preftune.train.distributed import barrier, init_distributed
from preftune.train.preflight import (
    check_free_space,
    check_resume,
    checkpoint_bytes,
    peak_bytes,
    run_fingerprints,
)
from preftune.train.reporters import open_reporters
from preftune.train.run_folder import claim_output_dir
from preftune.train.sampler import StepSampler, total_steps
from preftune.train.seeding import seed_everything


def start_process(cfg: Any, output_dir: Path) -> Run:
    """What every stage sets up first, ``preftune eval`` included: threads, runtime switches, the process
    group, seeds."""
    started = time.perf_counter()
    quiet_transformers()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    apply_runtime_settings(cfg)
    info = init_distributed(cfg.device)
    seed_everything(cfg.seed)
    return Run(cfg=cfg, info=info, output_dir=output_dir, started=started)


def start_run(cfg: TrainingConfig) -> Run:
    """:func:`start_process`, then an output folder that is writable, locked for this process and not another
    run's (``preftune.train.run_folder``), all before any work; SIGTERM/SIGINT stop cleanly. Last, the
    checkpoint to resume from (``run.resume_dir``)."""
    run = start_process(cfg, Path(cfg.output_dir))
    info, output_dir = run.info, run.output_dir
    if info.is_main:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            # A name of our own: two processes started on one folder must not delete each other's probe
            # (the folder lock, taken next, is what tells the second one the folder is busy).
            with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write_test-"):
                pass
        except OSError as e:
            raise ConfigError(f"output_dir {output_dir}: not writable ({e})") from None
        claim = claim_output_dir(output_dir, resume=cfg.resume, overwrite=cfg.overwrite_output_dir,
                                 stage=type(cfg).__name__, log=run.log)
        hold(claim.lock.release)
        (output_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    barrier(info)
    run.run_id = claim.run_id if info.is_main else folder_run_id(output_dir)
    hold(signals.install())
    run.log(f"{type(cfg).__name__} · {info.world_size} process(es) · device {info.device} · "
            f"threads {torch.get_num_threads()} · output {output_dir} · run {run.run_id}")
    for line in ignored_lines(cfg):
        run.log(line)
    if info.is_main:
        run.reporters = open_reporters(cfg.report_to, output_dir, run_name=cfg.run_name, project=cfg.project,
                                       config=to_dict(cfg))
        run.publisher = prepare_push(cfg)
        if run.publisher is not None:
            run.log(f"push_to_hub: {run.publisher.repo_id} (checked: reachable, token accepted)")
    run.resume_dir = resolve_resume(cfg.resume, cfg.output_dir, run.log)
    return run


def quiet_transformers() -> None:
    """transformers' own per-shard progress bars would interleave with ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def data_settings(cfg: Any) -> DataSettings:
    """Online stages have no max_length: their completions are sampled, with their own length limit."""
    return DataSettings(max_length=getattr(cfg, "max_length", None), max_prompt_length=cfg.max_prompt_length,
                        use_chat_template=cfg.use_chat_template, row_format=row_format(cfg),
                        max_completion_length=getattr(cfg, "max_completion_length", None),
                        truncation_mode=getattr(cfg, "truncation_mode", "keep_start"),
                        max_row_bytes=getattr(cfg, "max_row_bytes", DEFAULT_MAX_ROW_BYTES))


def split_off_eval(train: BuiltDataset, eval_size: int, seed: int) -> tuple[BuiltDataset, BuiltDataset]:
    """Hold out ``eval_size`` examples (seeded) that no training step will see."""
    if eval_size >= len(train):
        raise ConfigError(f"eval_size={eval_size} leaves no training examples ({len(train)} in total)")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held = set(order[:eval_size])
    keep = [ex for i, ex in enumerate(train.examples) if i not in held]
    out = [ex for i, ex in enumerate(train.examples) if i in held]
    # Drop and cut counts stay with the training part: they describe the file as it was read.
    return (BuiltDataset(keep, train.dropped, train.source, train.settings, train.truncated),
            BuiltDataset(out, type(train.dropped)(), f"{train.source} (held out {eval_size})", train.settings))


def tokenizer_and_data(run: Run, build, train_data: Any, eval_data: Any, objects: Objects | None = None,
                       **kw: Any) -> tuple[Any, BuiltDataset, BuiltDataset | None]:
    """The data's sources first (a missing file, split or Hub dataset fails in seconds, before anything
    loads), then the policy's tokenizer, then the train (and held-out) datasets ``build`` (a
    ``preftune.data.dataset`` builder) makes with it. ``train_data``/``eval_data``: objects passed from
    Python, or None for the config's data; ``objects``: a tokenizer or model object passed from Python."""
    cfg = run.cfg
    resolve_data(run, train_data, eval_data)
    tokenizer = policy_tokenizer(run, objects)
    train_source, eval_source = run.sources
    settings = data_settings(cfg)
    train = build(train_source, tokenizer, settings, **kw)
    run.data_report.append(f"train data: {train.summary()}")
    run.log(run.data_report[-1])
    evaluation = None
    if eval_source is not None:
        evaluation = build(eval_source, tokenizer, settings, **kw)
    elif cfg.eval_size > 0:
        train, evaluation = split_off_eval(train, cfg.eval_size, cfg.seed)
    if evaluation is not None:
        run.data_report.append(f"eval data: {evaluation.summary()}")
        run.log(run.data_report[-1])
    check_before_model(cfg, len(train), evaluation is not None, run.info.world_size, run.log)
    return tokenizer, train, evaluation


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Evaluation mode (no dropout) inside the block, the previous mode after it."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def num_tokens(examples: list[Any]) -> int:
    """Non-padding tokens the policy runs over for these examples; each layout counts its own."""
    return data_num_tokens(examples)


def plan_steps(run: Run, train: BuiltDataset) -> tuple[StepSampler, int]:
    """The data order and the number of optimizer steps."""
    cfg = run.cfg
    lengths = [num_tokens([ex]) for ex in train.examples] if cfg.group_by_length else None
    accumulation = getattr(cfg, "gradient_accumulation_steps", 1)  # RL: one batch per rollout
    seed = cfg.seed if getattr(cfg, "data_seed", None) is None else cfg.data_seed
    sampler = StepSampler(len(train), cfg.per_device_train_batch_size, accumulation,
                          run.info.world_size, run.info.rank, seed, lengths=lengths)
    steps = total_steps(sampler.steps_per_epoch, cfg.num_train_epochs, cfg.max_steps)
    run.log(f"data order: {sampler.describe()}; {steps} optimizer steps")
    return sampler, steps


def planned_saves(cfg: Any, num_examples: int, world_size: int) -> int:
    """Checkpoints the run will write: its save strategy over the steps its sampler will count (at least
    one, which a SIGTERM / SIGINT writes even with save_strategy=no). Fewer examples than one global
    batch is a ConfigError here, before any expensive work."""
    sampler = StepSampler(num_examples, cfg.per_device_train_batch_size, getattr(cfg, "gradient_accumulation_steps", 1),
                          world_size)
    steps = total_steps(sampler.steps_per_epoch, cfg.num_train_epochs, cfg.max_steps)
    cadence = Cadence.of(cfg, steps, sampler.steps_per_epoch)
    return max(sum(cadence.save(step) for step in range(1, steps + 1)), 1)


def preflight(run: Run, model: nn.Module, tokenizer: Any, train: BuiltDataset) -> dict[str, Any]:
    """Before any expensive work: a resumed run must match its checkpoint (seed, data, tokenizer, model
    config, settings), and the output folder must have room. Returns the meta every checkpoint stores."""
    cfg, resume_dir = run.cfg, run.resume_dir
    fingerprints = run_fingerprints(None if run.model_fingerprint else policy_path(cfg), tokenizer, train,
                                    model_config=run.model_fingerprint)
    meta = {"config": to_dict(cfg), "fingerprints": fingerprints, "world_size": run.info.world_size}
    if resume_dir is not None:
        check_resume(resume_dir, meta["config"], meta["fingerprints"], cfg.force_resume, run.log,
                     run.info.world_size)
    saves = planned_saves(cfg, len(train), run.info.world_size)   # every rank: too little data fails everywhere
    if run.info.is_main:
        one, final = checkpoint_bytes(model, cfg.optim, cfg.use_peft)
        ours = [p for p in list_checkpoints(run.output_dir) if checkpoint_run_id(p) == run.run_id]
        need, how = peak_bytes(one, final, saves, cfg.save_total_limit, kept_already=len(ours))
        check_free_space(run.output_dir, need, how)
    return meta
