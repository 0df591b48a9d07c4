"""What a checkpoint contains, how it is written, and how a run resumes from it.

Layout of ``<output_dir>/checkpoint-<step>/``:
    model/               Hugging Face folder (safetensors + config + tokenizer); a LoRA run stores
                         its adapter here (peft format) — the base model is named in the config
    reference/           TR-DPO (sync_ref_model) only: the reference as updated so far (Hugging Face folder)
    meta.json            the run's config and fingerprints (data, tokenizer, model config)
    trainer_state.{json,safetensors}
                         optimizer state, step, token and skip counters, evaluations, the config,
                         rank-0 RNG
    rng_rank<r>.{json,safetensors}
                         every rank's RNG state (python, numpy, torch), for dropout after resume
    manifest.json        every other file with its size and sha256, and the run id; written last
Nothing is pickled: state is tensors in safetensors plus JSON (``preftune.train.tensor_tree``), so
resuming from a folder someone handed you cannot run code. Saving writes everything under
``.checkpoint-<step>.tmp``, fsyncs the files, writes the manifest, renames the folder atomically and
fsyncs the parent, so a crash at any moment leaves either the complete checkpoint or none. Resuming
verifies the manifest (sizes and hashes), so a checkpoint that was damaged afterwards is refused by
name and the previous one is used. Only checkpoints whose manifest carries the folder's run id
(``run.json``, see ``preftune.train.run_folder``) are resumed from or rotated out: another run's
folder, or one planted there, is neither trusted nor deleted. ``final/`` holds the trained model
alone (LoRA merged in).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from preftune.errors import PreftuneError
from preftune.hashing import file_sha256
from preftune.storage import describe_write_error
from preftune.train import faults
from preftune.train.distributed import DistInfo, barrier
from preftune.train.seeding import rng_state
from preftune.train.tensor_tree import StateFileError, load_tree, save_tree

_CKPT = re.compile(r"^checkpoint-(\d+)$")
MANIFEST = "manifest.json"
TRAINER_STATE = "trainer_state"
RUN_FILE = "run.json"


class CheckpointError(PreftuneError):
    """No usable checkpoint where one was asked for."""


class SaveError(PreftuneError):
    """A checkpoint or the final model could not be written (the message says why and what is intact)."""


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def folder_run_id(output_dir: str | Path) -> str | None:
    """The run id ``run.json`` of ``output_dir`` names (None: no run record there)."""
    try:
        return json.loads((Path(output_dir) / RUN_FILE).read_text())["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def checkpoint_run_id(path: Path) -> str | None:
    """The run id in a checkpoint's manifest (None: none, or the manifest is unreadable)."""
    try:
        value = json.loads((path / MANIFEST).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def save_checkpoint(output_dir: str | Path, step: int, model: nn.Module, tokenizer: Any,
                    optimizer: torch.optim.Optimizer | None, trainer_state: dict[str, Any], info: DistInfo,
                    total_limit: int | None = None, meta: dict[str, Any] | None = None,
                    sharded_root: nn.Module | None = None, run_id: str | None = None,
                    extra_models: dict[str, nn.Module] | None = None) -> Path:
    """Save a resumable checkpoint atomically (see the module docstring); ``meta`` (the run's config and
    fingerprints, JSON) is what a later resume is checked against. With ``sharded_root`` (an FSDP2 run,
    or a run in its checkpoint format) model and optimizer state go to ``dcp/``, written by every rank,
    instead of ``model/`` and trainer_state. ``extra_models``: other models the run changes (folder name →
    Hugging Face model), saved beside ``model/``. ``run_id`` goes into the manifest; keep-last-``total_limit``
    rotation only removes checkpoints of that run. A write that fails (a full disk) removes the partial
    folder and raises :class:`SaveError`, naming the path and the previous checkpoint, which is intact."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp"
    with _write_errors_reported(tmp, output_dir, run_id):
        if info.is_main:
            for stale in output_dir.glob(".checkpoint-*.tmp"):  # left by a crash mid-save (the folder is ours: locked)
                shutil.rmtree(stale, ignore_errors=True)
            tmp.mkdir(parents=True)
            if sharded_root is None:
                model.save_pretrained(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")
            for name, extra in (extra_models or {}).items():
                extra.save_pretrained(tmp / name)
            faults.kill_if("kill_in_save", step, info.rank)
            faults.pause_if("pause_in_save", step, info.rank)
            if meta is not None:
                (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            # No optimizer: save_only_model (the checkpoint cannot be resumed from).
            optimizer_state = optimizer.state_dict() if sharded_root is None and optimizer is not None else None
            save_tree({**trainer_state, "step": step, "optimizer": optimizer_state, "rng": rng_state()},
                      tmp, TRAINER_STATE)
        barrier(info)
        if sharded_root is not None:
            from preftune.train.fsdp import save_sharded

            save_sharded(tmp / "dcp", sharded_root, optimizer)
        save_tree(rng_state(), tmp, f"rng_rank{info.rank}")
        barrier(info)
        if info.is_main:
            write_manifest(tmp, step, run_id)
    if info.is_main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if total_limit is not None:
            ours = [p for p in list_checkpoints(output_dir) if checkpoint_run_id(p) == run_id]
            for old in ours[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    barrier(info)
    return final


@contextlib.contextmanager
def _write_errors_reported(tmp: Path, output_dir: Path, run_id: str | None) -> Iterator[None]:
    """Turn a failed write under ``tmp`` into a SaveError that says what happened and what is intact."""
    try:
        yield
    except PreftuneError:
        raise
    except Exception as error:  # noqa: BLE001 - every writer (torch, safetensors, tokenizers) has its own type
        shutil.rmtree(tmp, ignore_errors=True)        # a half-written folder would only eat more space
        ours = [p for p in list_checkpoints(output_dir) if checkpoint_run_id(p) == run_id]
        if ours:
            problem = verify_checkpoint(ours[-1])
            kept = (f"the previous checkpoint {ours[-1]} is intact (verified), and resume=latest continues from it"
                    if problem is None else f"the previous checkpoint {ours[-1]} does not verify either: {problem}")
        else:
            kept = "no earlier checkpoint of this run exists"
        raise SaveError(f"{describe_write_error(error, tmp)}; the partial {tmp.name} was removed; {kept}") from error


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, step: int, run_id: str | None = None) -> None:
    """Hash and fsync every file of ``folder``, then write (and fsync) ``manifest.json`` last."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / MANIFEST):
        _fsync_file(path)
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    for sub in sorted({p.parent for p in folder.rglob("*")} | {folder}):
        _fsync_dir(sub)
    (folder / MANIFEST).write_text(json.dumps({"format": 2, "step": step, "run_id": run_id, "files": files},
                                              indent=1))
    _fsync_file(folder / MANIFEST)
    _fsync_dir(folder)


def verify_checkpoint(path: Path) -> str | None:
    """What is wrong with the checkpoint at ``path`` (None: complete, every file's size and sha256 as saved)."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no manifest.json (the save did not finish)"
    try:
        files = json.loads(manifest.read_text())["files"]
        items = [(str(name), int(expected["bytes"]), str(expected["sha256"])) for name, expected in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        return f"manifest.json is unreadable ({type(e).__name__}: {e})"
    for name, size, sha in items:
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, the manifest says {size}"
        if file_sha256(file) != sha:
            return f"{name} does not match its sha256 in the manifest (damaged after saving)"
    listed = {name for name, _, _ in items} | {MANIFEST}
    extra = sorted(q.relative_to(path).as_posix() for q in path.rglob("*") if q.is_file()
                   and q.relative_to(path).as_posix() not in listed)
    if extra:   # a loader might read it (e.g. a pytorch_model.bin beside the safetensors)
        return f"{extra[0]} is not in the manifest: added after saving"
    return None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CKPT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: str | Path, log: Any = print) -> Path | None:
    """The checkpoint to resume from: ``latest`` is the newest checkpoint of the folder's run (the run id
    in ``run.json``) that verifies; each refused or foreign one is reported with its reason. A named
    folder must verify itself."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise CheckpointError(f"resume=latest but {output_dir} holds no checkpoint-<step> folder")
        run_id = folder_run_id(output_dir)
        if run_id is None:
            raise CheckpointError(f"resume=latest: {output_dir} has no {RUN_FILE} naming the run it belongs to, so "
                                  "none of its checkpoints is known to be this folder's; name one with resume=<path>")
        refused = []
        for path in reversed(found):
            owner = checkpoint_run_id(path)
            if owner == run_id:
                problem = verify_checkpoint(path)
            elif owner is None:   # a damaged manifest says so; an intact one without a run id is foreign
                problem = verify_checkpoint(path) or f"its manifest names no run, so it is not this folder's run {run_id}"
            else:
                problem = f"written by run {owner}, not by this folder's run {run_id}; ignored"
            if problem is None:
                if refused:
                    log(f"resuming from {path.name}, the newest complete checkpoint of this run")
                return path
            refused.append(f"{path.name}: {problem}")
            log(f"checkpoint refused: {path} — {problem}; trying the one before")
        raise CheckpointError(f"resume=latest: no usable checkpoint in {output_dir} ({'; '.join(refused)})")
    path = Path(resume)
    if not (path / f"{TRAINER_STATE}.json").is_file():
        legacy = (path / "trainer_state.pt").is_file()
        raise CheckpointError(
            f"resume={resume}: " + ("saved by an older preftune in torch's pickle format, which is no longer read "
                                    "(unpickling a file can run code); resume it with that version, or start afresh"
                                    if legacy else f"not a checkpoint folder (no {TRAINER_STATE}.json)"))
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"resume={resume}: checkpoint refused — {problem}")
    return path


def load_trainer_state(path: Path, info: DistInfo) -> dict[str, Any]:
    """The trainer state and this rank's RNG state; a damaged or foreign file is a CheckpointError naming it."""
    try:
        state = load_tree(path, TRAINER_STATE)
        rank_file = f"rng_rank{info.rank}"
        if (path / f"{rank_file}.json").is_file():
            state["rng"] = load_tree(path, rank_file)
    except StateFileError as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    if not isinstance(state, dict) or "step" not in state or "rng" not in state:
        raise CheckpointError(f"cannot resume from {path}: {path / (TRAINER_STATE + '.json')} holds no trainer state")
    return state


def save_final(path: str | Path, model: nn.Module, tokenizer: Any) -> Path:
    """A plain Hugging Face folder of the trained model; adapters are merged into a copy."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if is_peft(model):
        model = copy.deepcopy(model).merge_and_unload()
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except Exception as e:  # noqa: BLE001 - any writer's failure, reported with the path
        shutil.rmtree(tmp, ignore_errors=True)
        raise SaveError(f"{describe_write_error(e, tmp)}; the final model was not written, the last checkpoint "
                        "is intact and resume=latest writes it again") from e
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path
