"""What a checkpoint contains, how it is written, and how a run resumes from it.

Layout of ``<output_dir>/checkpoint-<step>/``:
    model/               Hugging Face folder (safetensors + config + tokenizer); a LoRA run stores
                         its adapter here (peft format) — the base model is named in the config
    trainer_state.pt     optimizer state, step, token and skip counters, the config, rank-0 RNG
    rng_rank<r>.pt       every rank's RNG state (python, numpy, torch), for dropout after resume
The folder is written under a temporary name and renamed when complete, so a crash mid-save never
leaves a folder that looks finished. ``final/`` holds the trained model alone (LoRA merged in).
"""

from __future__ import annotations

import copy
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from preftune.train.distributed import DistInfo, barrier

_CKPT = re.compile(r"^checkpoint-(\d+)$")


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
                    optimizer: torch.optim.Optimizer, trainer_state: dict[str, Any], info: DistInfo,
                    total_limit: int | None = None) -> Path:
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        torch.save({**trainer_state, "step": step, "optimizer": optimizer.state_dict(), "rng": rng_state()},
                   tmp / "trainer_state.pt")
    barrier(info)
    torch.save(rng_state(), tmp / f"rng_rank{info.rank}.pt")
    barrier(info)
    if info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CKPT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"resume=latest but {output_dir} holds no checkpoint-<step> folder")
        return found[-1]
    path = Path(resume)
    if not (path / "trainer_state.pt").is_file():
        raise FileNotFoundError(f"resume={resume}: not a checkpoint folder (no trainer_state.pt)")
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
