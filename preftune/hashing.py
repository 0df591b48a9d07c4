"""Content hashes of files: the one place a file's sha256 is computed.

A module of its own, below every layer that needs it (checkpoint manifests in train, verified cache
files and the converted SmolLM2 in assets), so that hashing a file imports nothing else of preftune.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 4 MiB blocks (model weights do not fit comfortably in one read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
