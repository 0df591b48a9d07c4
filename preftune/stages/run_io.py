"""A run's input and output once its model is built, written once for every stage: the state resumed
from (or a fresh one), metrics.jsonl, the checkpoint saver, the held-out evaluation logged before and
after training, and the end of the run (final folder, summary.json).

A stage script opens it after its optimizer and calls it at its numbered steps::

    io = open_io(run, optimizer, model, tokenizer, meta)                  # resume, logger, saver
    evaluate = io.evaluation(held_out, measure, describe)               # None without held-out data
    io.eval_before(evaluate)
    state = train_loop(..., state=io.state, logger=io.logger, evaluate=evaluate, save=io.save)
    return io.finish(state, evaluate, model, tokenizer)                 # eval after, final save
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from preftune.stages.lifecycle import (
    Run,
    RunResult,
    checkpoint_saver,
    eval_after,
    eval_before,
    publish,
    restore_state,
)
from preftune.train import faults
from preftune.train.checkpoint import save_final
from preftune.train.distributed import shutdown
from preftune.train.loop import LoopState
from preftune.train.metrics import MetricsLogger

Evaluate = Callable[[int], dict[str, float]]   # step -> held-out metrics (logged)


@dataclass
class RunIO:
    """What :func:`open_io` set up: ``state`` (resumed or fresh), ``logger`` (metrics.jsonl and the
    reporters), ``result`` (what the stage returns) and ``save(state)`` (a checkpoint)."""

    run: Run
    state: LoopState
    logger: MetricsLogger
    result: RunResult
    save: Callable[[LoopState], None]

    def evaluation(self, held_out: Any, measure: Evaluate, describe: Callable[[int, dict[str, float]], str]
                   ) -> Evaluate | None:
        """``evaluate(step)``: ``measure(step)``'s metrics, logged to metrics.jsonl (split eval) and as the
        line ``describe(step, metrics)``; None when there is no held-out data."""
        if held_out is None:
            return None

        def evaluate(step: int) -> dict[str, float]:
            metrics = measure(step)
            self.logger.log(step, metrics, split="eval")
            self.run.log(describe(step, metrics))
            return metrics
        return evaluate

    def eval_before(self, evaluate: Evaluate | None) -> None:
        """The held-out evaluation before training (``eval_on_start``), kept across resumes."""
        if evaluate is not None and self.run.cfg.eval_on_start:
            self.result.eval_before = eval_before(self.state, evaluate)

    def finish(self, state: LoopState, evaluate: Evaluate | None, model: nn.Module, tokenizer: Any,
               root: nn.Module | None = None) -> RunResult:
        """The held-out evaluation after training (unless ``eval_strategy=no``), then :func:`finish`."""
        if evaluate is not None and self.run.cfg.eval_strategy != "no":
            self.result.eval_after = eval_after(state, evaluate)
        return finish(self.run, self.result, state, self.logger, model, tokenizer, self.save, root=root)


def open_io(run: Run, optimizer: torch.optim.Optimizer, model: nn.Module, tokenizer: Any, meta: dict[str, Any],
            *, root: nn.Module | None = None, restore: Callable[[dict[str, Any]], None] | None = None,
            extra: Callable[[LoopState], dict[str, Any]] | None = None,
            extra_models: dict[str, nn.Module] | None = None) -> RunIO:
    """The loop state from ``run.resume_dir`` (``restore(saved)`` reads what ``extra(state)`` saved besides),
    the metrics log continued from it, and the saver of ``model`` (``root``: the FSDP-sharded module holding
    it; ``extra_models``: more weights in each checkpoint), see :func:`~preftune.stages.lifecycle.checkpoint_saver`."""
    state = restore_state(run, run.resume_dir, optimizer, root, restore)
    logger = metrics_logger(run, resume_step=state.step if run.resume_dir is not None else None)
    result = RunResult(output_dir=run.output_dir, final_dir=None, metrics_file=logger.path)
    save = checkpoint_saver(run, model, tokenizer, optimizer, meta, root=root, extra_models=extra_models, extra=extra)
    return RunIO(run, state, logger, result, save)


def metrics_logger(run: Run, resume_step: int | None) -> MetricsLogger:
    """metrics.jsonl and the reporters of ``report_to`` (rank 0 writes; the others hold a silent logger)."""
    return MetricsLogger(run.output_dir, enabled=run.info.is_main, resume_step=resume_step, reporters=run.reporters,
                         log=run.log)


def finish(run: Run, result: RunResult, state: LoopState, logger: MetricsLogger, model: nn.Module,
           tokenizer: Any, save: Any, root: nn.Module | None = None) -> RunResult:
    """Last checkpoint, the final Hugging Face folder, summary.json; leaves the process group.
    ``root``: the FSDP-sharded module holding ``model`` (as attribute ``model``), if sharded."""
    result.history = state.history
    for line in run.data_report:   # what was dropped or cut, again where the user reads last
        run.log(line)
    if state.skipped_steps:
        run.log(f"{state.skipped_steps} step(s) skipped for a non-finite loss or gradient")
    if run.cfg.save_strategy != "no":
        save(state)
    faults.kill_if("kill_before_final", state.step, run.info.rank)
    from preftune.train.fsdp import gather_full_state, is_fsdp

    if root is not None and is_fsdp(root):
        full = gather_full_state(root, "model.")          # a collective: every rank takes part
        if run.info.is_main:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(model.config)
            model.load_state_dict(full)
    if run.info.is_main:
        result.final_dir = save_final(run.output_dir / "final", model, tokenizer)
        run.log(f"final model: {result.final_dir} · metrics: {logger.path}"
                + (f" · TensorBoard: {logger.tensorboard_dir}" if logger.tensorboard_dir else ""))
        run.log(f"curves: preftune plot {run.output_dir}")
        publish(run, result.final_dir, "End of training", final=True)
    logger.close()
    result.seconds = time.perf_counter() - run.started
    write_summary(run, result)
    shutdown(run.info)
    return result


def write_summary(run: Run, result: RunResult) -> None:
    if not run.info.is_main:
        return
    payload = {"eval_before": result.eval_before, "eval_after": result.eval_after, "seconds": result.seconds,
               "final_dir": str(result.final_dir) if result.final_dir else None}
    (run.output_dir / "summary.json").write_text(json.dumps(payload, indent=2))
