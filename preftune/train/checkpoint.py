"""What a checkpoint contains, how it is written, and how a run resumes from it.

Layout of ``<output_dir>/checkpoint-<step>/``:
    model/               Hugging Face folder (safetensors + config + tokenizer); a LoRA run stores
                         its adapter here (peft format) — the base model is named in the config
    reference/           TR-DPO (sync_ref_model) only: the reference as updated so far (Hugging Face folder)
    meta.json            the run's config and fingerprints (data, tokenizer, model config)
    trainer_state.pt     optimizer state, step, token and skip counters, the config, rank-0 RNG
    rng_rank<r>.pt       every rank's RNG state (python, numpy, torch), for dropout after resume
    manifest.json        every other file with its size and sha256, written last
Saving writes everything under ``.checkpoint-<step>.tmp``, fsyncs the files, writes the manifest,
renames the folder atomically and fsyncs the parent, so a crash at any moment leaves either the
complete checkpoint or none. Resuming verifies the manifest (sizes and hashes), so a checkpoint that
was damaged afterwards is refused by name and the previous one is used. ``final/`` holds the trained
model alone (LoRA merged in).
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from preftune.assets.cache import file_sha256
from preftune.errors import PreftuneError
from preftune.train import faults
from preftune.train.distributed import DistInfo, barrier

_CKPT = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "manifest.json"


class CheckpointError(PreftuneError):
    """No usable checkpoint where one was asked for."""


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Same seed on every rank, so any random initialisation agrees; stages reseed torch with
    seed + rank before training for distinct dropout streams."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_checkpoint(output_dir: str | Path, step: int, model: nn.Module, tokenizer: Any,
                    optimizer: torch.optim.Optimizer | None, trainer_state: dict[str, Any], info: DistInfo,
                    total_limit: int | None = None, meta: dict[str, Any] | None = None,
                    sharded_root: nn.Module | None = None, extra_models: dict[str, nn.Module] | None = None
                    ) -> Path:
    """Save a resumable checkpoint atomically (see the module docstring); ``meta`` (the run's config and
    fingerprints, JSON) is what a later resume is checked against. With ``sharded_root`` (an FSDP2 run,
    or a run in its checkpoint format) model and optimizer state go to ``dcp/``, written by every rank,
    instead of ``model/`` and trainer_state.pt. ``extra_models``: other models the run changes (folder name →
    Hugging Face model), saved beside ``model/``."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    if info.is_main:
        for stale in output_dir.glob(".checkpoint-*.tmp"):  # left by a crash mid-save
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
        if sharded_root is None:
            model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        for name, extra in (extra_models or {}).items():
            extra.save_pretrained(tmp / name)
        faults.kill_if("kill_in_save", step, info.rank)
        if meta is not None:
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        # No optimizer: save_only_model (the checkpoint cannot be resumed from).
        optimizer_state = optimizer.state_dict() if sharded_root is None and optimizer is not None else None
        torch.save({**trainer_state, "step": step, "optimizer": optimizer_state, "rng": rng_state()},
                   tmp / "trainer_state.pt")
    barrier(info)
    if sharded_root is not None:
        from preftune.train.fsdp import save_sharded

        save_sharded(tmp / "dcp", sharded_root, optimizer)
    torch.save(rng_state(), tmp / f"rng_rank{info.rank}.pt")
    barrier(info)
    if info.is_main:
        write_manifest(tmp, step)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return final


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, step: int) -> None:
    """Hash and fsync every file of ``folder``, then write (and fsync) ``manifest.json`` last."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        _fsync_file(path)
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    for sub in sorted({p.parent for p in folder.rglob("*")} | {folder}):
        _fsync_dir(sub)
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "step": step, "files": files}, indent=1))
    _fsync_file(folder / MANIFEST)
    _fsync_dir(folder)


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with the checkpoint at ``path`` (None: complete, every file's size and sha256 as saved)."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no manifest.json (the save did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"manifest.json is unreadable ({e})"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"]:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if file_sha256(file) != expected["sha256"]:
            return f"{name} does not match its sha256 in the manifest (damaged after saving)"
    return None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CKPT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: str | Path, log: Any = print) -> Path | None:
    """The checkpoint to resume from: ``latest`` is the newest that verifies (each refused one is
    reported with its reason); a named folder must verify itself."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(f"resume=latest but {output_dir} holds no checkpoint-<step> folder")
        refused = []
        for path in reversed(found):
            problem = verify_checkpoint(path)
            if problem is None:
                if refused:
                    log(f"resuming from {path.name}, the newest complete checkpoint")
                return path
            refused.append(f"{path.name}: {problem}")
            log(f"checkpoint refused: {path} — {problem}; trying the one before")
        raise CheckpointError(f"resume=latest: no usable checkpoint in {output_dir} ({'; '.join(refused)})")
    path = Path(resume)
    if not (path / "trainer_state.pt").is_file():
        raise CheckpointError(f"resume={resume}: not a checkpoint folder (no trainer_state.pt)")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"resume={resume}: checkpoint refused — {problem}")
    return path


def load_trainer_state(path: Path, info: DistInfo) -> dict[str, Any]:
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    rank_file = path / f"rng_rank{info.rank}.pt"
    if rank_file.is_file():
        state["rng"] = torch.load(rank_file, map_location="cpu", weights_only=False)
    return state


def save_final(path: str | Path, model: nn.Module, tokenizer: Any) -> Path:
    """A plain Hugging Face folder of the trained model; adapters are merged into a copy."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if is_peft(model):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path
