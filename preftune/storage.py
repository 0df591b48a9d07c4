"""Disk sizes and failed writes, in words a user can act on (used by checkpoints, caches, the metrics log).

Writers report a full disk in their own words: ``OSError(ENOSPC)`` from Python, ``[enforce fail at
inline_container.cc] ... file write failed`` from torch, an I/O error string from safetensors. A
failed write on a disk with (almost) nothing free is reported as what it is: no space left.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

NEARLY_FULL = 1 << 20   # under 1 MiB free after a failed write: the disk filled up


def format_bytes(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1: '512 B', '3.2 MiB', '1.5 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" or abs(n) >= 100 else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


def free_bytes(path: Path) -> int | None:
    """Free space on the filesystem of ``path`` (or of its nearest existing parent)."""
    try:
        return shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free
    except (OSError, StopIteration):
        return None


def is_out_of_space(error: BaseException, where: Path | None = None) -> bool:
    """True for ENOSPC / EDQUOT anywhere in the exception chain, or a failed write at ``where`` on a
    filesystem with less than 1 MiB left."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "no space left" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    free = free_bytes(where) if where is not None else None
    return free is not None and free < NEARLY_FULL


def describe_write_error(error: BaseException, path: Path) -> str:
    if is_out_of_space(error, path):
        free = free_bytes(path)
        return (f"no space left on the device while writing {path}"
                + (f" ({format_bytes(free)} free)" if free is not None else ""))
    return f"cannot write {path} ({type(error).__name__}: {error})"


def damaged_safetensors(folder: Path) -> str | None:
    """The first ``*.safetensors`` file of ``folder`` whose header does not read or does not cover the
    file (truncated, or not safetensors at all), with the reason; None when all read."""
    from safetensors import safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as e:  # noqa: BLE001 - safetensors' own error type; the message says what is wrong
            return f"{path} is not a complete safetensors file ({e})"
    return None


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename, the text written and fsynced first: a crash leaves
    the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
