"""One run per output folder: a run id, a lock, and no silent reuse of another run's folder.

A run that starts writes ``run.json`` (its run id) into ``output_dir``; every checkpoint's manifest
carries the same id, and only checkpoints with it are resumed from or rotated out. A fresh run in a
folder that already holds another run's checkpoints, metrics, final model or summary refuses to start
and names what is there and the three ways on (``resume=latest``, another ``output_dir``, or
``overwrite_output_dir=true``, which moves the old run into a sibling folder, never deletes it).

``.preftune.lock`` keeps a second live process out: it is held with ``flock`` for the life of the
run (the kernel drops it when the process dies, even by SIGKILL) and holds the owner's PID, host and
start time for the message a second process prints. A lock left by a dead process is taken over
with a log line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from preftune.errors import ConfigError
from preftune.storage import write_text_atomic
from preftune.train.checkpoint import RUN_FILE, checkpoint_run_id, folder_run_id, list_checkpoints

LOCK_FILE = ".preftune.lock"
# What a run leaves behind; config.json and run.json alone mean a run that saved nothing.
RUN_OUTPUTS = ("metrics.jsonl", "summary.json", "final", "tensorboard")
SETTINGS_FILES = ("config.json", RUN_FILE)


class OutputDirError(ConfigError):
    """The output folder belongs to another run, or another process is using it."""


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(4)


def previous_run(output_dir: Path) -> list[str]:
    """What of an earlier run ``output_dir`` holds (empty: nothing worth keeping)."""
    if not output_dir.is_dir():
        return []
    found = [p.name for p in list_checkpoints(output_dir)] + sorted(p.name for p in output_dir.glob(".checkpoint-*.tmp"))
    for name in RUN_OUTPUTS:
        path = output_dir / name
        if path.is_file() and path.stat().st_size > 0 or path.is_dir() and any(path.iterdir()):
            found.append(name)
    return found


def move_aside(output_dir: Path, what: list[str]) -> Path:
    """Move an earlier run's files into ``<output_dir>.previous-<time>`` (never deleted); returns it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = output_dir.with_name(f"{output_dir.name}.previous-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = output_dir.with_name(f"{output_dir.name}.previous-{stamp}-{n}")
    target.mkdir(parents=True)
    for name in [*what, *SETTINGS_FILES]:
        if (output_dir / name).exists():
            shutil.move(str(output_dir / name), str(target / name))
    return target


@dataclass
class Claim:
    run_id: str
    lock: FolderLock


def claim_output_dir(output_dir: Path, *, resume: str | None, overwrite: bool, stage: str,
                     log: Callable[[str], None] = print) -> Claim:
    """Lock ``output_dir`` for this process and decide the run id (module docstring). Raises
    OutputDirError, before any work, when the folder is busy or holds another run."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(output_dir / LOCK_FILE)
    lock.acquire(log)
    try:
        here = folder_run_id(output_dir)
        if resume == "latest":   # continue the folder's own run (without a run record, resolve_resume says so)
            return Claim(here or new_run_id(), lock)
        run_id = (checkpoint_run_id(Path(resume)) if resume is not None else None) or new_run_id()
        what = previous_run(output_dir)
        if what and here != run_id:
            if not overwrite:
                raise OutputDirError(_occupied(output_dir, what))
            moved = move_aside(output_dir, what)
            log(f"overwrite_output_dir: the earlier run in {output_dir} ({', '.join(what)}) was moved to {moved}")
        if here != run_id:
            write_text_atomic(output_dir / RUN_FILE, json.dumps({"format": 1, "run_id": run_id, "stage": stage}))
    except BaseException:
        lock.release()
        raise
    return Claim(run_id, lock)


def _occupied(output_dir: Path, what: list[str]) -> str:
    shown = ", ".join(what[:6]) + (f" and {len(what) - 6} more" if len(what) > 6 else "")
    return (f"output_dir {output_dir} already holds another run ({shown}); a new run there would overwrite its "
            f"metrics and checkpoints. Continue that run with resume=latest, choose another output_dir, or set "
            f"overwrite_output_dir=true to move the earlier run aside (to {output_dir.name}.previous-<time>; "
            "nothing is deleted)")


# ----------------------------------------------------------------------------------------------------
# The lock


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused PID from the original), if /proc has it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)


class FolderLock:
    """An exclusive lock on a folder for the life of this process's run (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, log: Callable[[str], None] = print) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                raise OutputDirError(self._busy(holder)) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:   # the holder released (and removed) it between our open and our lock: try again
                os.close(fd)
                continue
            previous = _read(fd)
            if previous.get("pid") not in (None, os.getpid()) and _alive(previous):
                os.close(fd)   # a filesystem without working flock: fall back on the PID
                raise OutputDirError(self._busy(previous))
            if previous:
                log(f"taking over the stale lock {self.path} of PID {previous.get('pid')} on "
                    f"{previous.get('host')} (that process is no longer running)")
            me = {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            os.fsync(fd)
            self.fd = fd
            return

    def _busy(self, holder: dict) -> str:
        who = (f"PID {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')})" if holder
               else "another process")
        return (f"output_dir {self.path.parent} is in use by {who}: two runs in one folder would overwrite each "
                f"other's checkpoints and metrics. Wait for it to finish, stop it, or choose another output_dir")

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def _read(fd: int) -> dict:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {"pid": None, "host": "?"}
    return data if isinstance(data, dict) else {}
