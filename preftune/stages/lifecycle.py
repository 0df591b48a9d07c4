"""What a run takes and gives back, saves and restores: the pieces of a stage that make a run safe to
stop, kill and resume.

- ``Run`` / ``RunResult``: what a stage knows about the process it runs in, and what it returns.
- ``@stage``: the folder lock and the signal handlers ``start_run`` takes are given back when the stage
  returns or raises (also inside a notebook or a test).
- ``checkpoint_saver`` / ``restore_state``: a checkpoint holds the optimizer, counters, RNG and the
  held-out evaluations already made, so a resumed run neither loses ``eval_before`` nor logs its last
  evaluation twice (``eval_before`` / ``eval_after``).
- ``reading_checkpoint``: a checkpoint's model files that do not load are an error naming them.
- ``publish``: push_to_hub of a saved model folder.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from preftune.config import to_dict
from preftune.errors import ConfigError, PreftuneError
from preftune.train.checkpoint import CheckpointError, load_trainer_state, save_checkpoint
from preftune.train.distributed import DistInfo
from preftune.train.loop import LoopState
from preftune.train.seeding import set_rng_state


@dataclass
class Run:
    """What a stage knows about the process it runs in."""

    cfg: Any
    info: DistInfo
    output_dir: Path
    run_id: str | None = None      # in run.json and every checkpoint's manifest (preftune.train.run_folder)
    resume_dir: Path | None = None  # the checkpoint this run resumes from (``resume``), None on a fresh run
    started: float = 0.0            # time.perf_counter() when the stage started, for summary.json's seconds
    resumed: tuple[int, str] | None = None      # (step, evaluations) of the checkpoint resumed from
    data_report: list[str] = field(default_factory=list)   # repeated at the end: drops and cuts, counted
    sources: tuple[Any, Any] | None = None                  # (train, held-out) rows, see stages/inputs.py
    model_fingerprint: str | None = None                    # of a model object passed from Python
    reference_model: nn.Module | None = None                # a frozen reference object (ref_model=, or a copy)
    publisher: Any = None                                   # push_to_hub (stages/publish.py), checked at start
    reporters: list[Any] = field(default_factory=list)      # report_to (train/reporters.py), opened at start
    _noted: set[str] = field(default_factory=set)

    def log(self, message: str) -> None:
        if self.info.is_main:
            print(f"[preftune] {message}", flush=True)

    def note(self, message: str) -> None:
        """Log ``message`` the first time only (a fallback that policy and reference both take)."""
        if message not in self._noted:
            self._noted.add(message)
            self.log(message)


@dataclass
class RunResult:
    output_dir: Path
    final_dir: Path | None
    metrics_file: Path
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0



# What start_run takes (the folder lock, the signal handlers), given back when the stage returns or fails.
_TAKEN: list[Callable[[], None]] = []


def hold(release: Callable[[], None]) -> None:
    """Call ``release`` when the current ``@stage`` function returns or raises."""
    _TAKEN.append(release)


def stage(run_fn: Callable[..., RunResult]) -> Callable[..., RunResult]:
    """Decorate a stage's ``run_*`` function: the output folder's lock and the signal handlers that
    ``start_run`` installs are released when it returns or raises (also inside a notebook or a test)."""
    @functools.wraps(run_fn)
    def wrapper(*args: Any, **kwargs: Any) -> RunResult:
        depth = len(_TAKEN)
        try:
            return run_fn(*args, **kwargs)
        finally:
            while len(_TAKEN) > depth:
                _TAKEN.pop()()
    return wrapper


@contextlib.contextmanager
def reading_checkpoint(resume_dir: Path) -> Iterator[None]:
    """A checkpoint's model files that do not load are a CheckpointError naming the checkpoint (the
    loader's own message, kept, names the file), not a traceback from inside transformers or peft."""
    try:
        yield
    except PreftuneError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers / peft / safetensors raise many types
        raise CheckpointError(f"cannot load the model of {resume_dir}: {type(e).__name__}: {e}") from None


def restore_state(run: Run, resume_dir: Path | None, optimizer: torch.optim.Optimizer,
                  root: nn.Module | None = None, extra: Callable[[dict[str, Any]], None] | None = None) -> LoopState:
    """Optimizer, counters, evaluations and RNG from a checkpoint; on a fresh run, per-rank dropout
    streams. ``root``: the (possibly FSDP-sharded) module whose weights a sharded checkpoint holds;
    ``extra(saved)`` restores what a stage saved besides (see ``checkpoint_saver``)."""
    if resume_dir is None:
        torch.manual_seed(run.cfg.seed + run.info.rank)  # same init everywhere, distinct dropout per rank
        return LoopState()
    saved = load_trainer_state(resume_dir, run.info)
    if getattr(run.cfg, "fsdp", False):
        from preftune.train.fsdp import load_sharded

        load_sharded(resume_dir / "dcp", root, optimizer)
    else:
        require_optimizer_state(saved, resume_dir)
        optimizer.load_state_dict(saved["optimizer"])
    set_rng_state(saved["rng"])
    if extra is not None:
        extra(saved)
    state = LoopState(step=saved["step"], tokens_seen=saved["tokens_seen"], skipped_steps=saved["skipped_steps"],
                      evals=saved.get("evals", {}))
    run.resumed = (state.step, _snapshot(state))
    run.log(f"resumed from {resume_dir} at step {state.step}")
    return state


def require_optimizer_state(saved: dict[str, Any], resume_dir: Path) -> None:
    if saved.get("optimizer") is None:
        raise ConfigError(f"{resume_dir} was saved with save_only_model=true: it holds no optimizer state, so a run "
                          "cannot resume from it (start a new run from its model/ folder)")


def _snapshot(state: LoopState) -> str:
    return json.dumps(state.evals, sort_keys=True)


def eval_before(state: LoopState, evaluate: Callable[[int], dict[str, float]]) -> dict[str, float]:
    """The held-out evaluation before training: run (and logged) on a fresh run, read from the
    checkpoint on a resumed one, so summary.json keeps it across resumes."""
    if "before" not in state.evals and state.step == 0:
        state.evals["before"] = {"step": 0, "metrics": evaluate(0)}
    return state.evals.get("before", {}).get("metrics", {})


def eval_after(state: LoopState, evaluate: Callable[[int], dict[str, float]]) -> dict[str, float]:
    """The held-out evaluation after training; a run killed after its final checkpoint (which holds it)
    and resumed does not evaluate, nor log it, a second time."""
    done = state.evals.get("after")
    if done is None or done.get("step") != state.step:
        state.evals["after"] = done = {"step": state.step, "metrics": evaluate(state.step)}
    return done["metrics"]


def checkpoint_saver(run: Run, model: nn.Module, tokenizer: Any, optimizer: torch.optim.Optimizer,
                     meta: dict[str, Any] | None = None, root: nn.Module | None = None,
                     extra_models: dict[str, nn.Module] | None = None,
                     extra: Callable[[LoopState], dict[str, Any]] | None = None) -> Callable[[LoopState], None]:
    """``save(state)``, called on every process: a checkpoint of this run. ``extra(state) -> dict``: more
    trainer state a stage keeps (online stages: the KL controller, a rollout in progress); ``extra_models``:
    more weights saved with the checkpoint (TR-DPO's moving reference, PPO's value head). Saving a state
    that is already on disk (the step resumed from, or one just saved) is a no-op."""
    sharded_root = root if getattr(run.cfg, "fsdp", False) else None
    last = run.resumed

    def save(state: LoopState) -> None:
        nonlocal last
        if last == (state.step, _snapshot(state)):
            return
        trainer_state = {"tokens_seen": state.tokens_seen, "skipped_steps": state.skipped_steps,
                         "evals": state.evals, "config": to_dict(run.cfg),
                         **(extra(state) if extra is not None else {})}
        path = save_checkpoint(run.output_dir, state.step, model, tokenizer,
                               None if run.cfg.save_only_model else optimizer, trainer_state, run.info,
                               run.cfg.save_total_limit, meta, sharded_root=sharded_root, run_id=run.run_id,
                               extra_models=extra_models)
        last = (state.step, _snapshot(state))
        run.log(f"checkpoint saved: {path}" + (" (model only: save_only_model)" if run.cfg.save_only_model else ""))
        publish(run, path / "model", f"Training in progress, step {state.step}", final=False)
    return save


def publish(run: Run, folder: Path, message: str, final: bool) -> None:
    """push_to_hub: the final model at the end; with hub_strategy every_save, each saved model too."""
    publisher = run.publisher
    if publisher is None or not run.info.is_main or not (final or publisher.every_save):
        return
    if not folder.is_dir():
        run.log(f"push_to_hub: {folder} holds no plain model folder (a sharded checkpoint); pushed at the end")
        return
    try:
        run.log(f"pushed to the Hub: {publisher.push(folder, message)}")
    except Exception as e:
        raise PreftuneError(f"push_to_hub: uploading {folder} to {publisher.repo_id} failed ({type(e).__name__}: "
                            f"{e}); the model is saved there: upload it later with `hf upload "
                            f"{publisher.repo_id} {folder}`") from None
