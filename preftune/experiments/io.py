"""Small file helpers of the experiment: JSON written atomically (a marker is either whole or absent), and
whether a stage's training run continues or starts again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    tmp.replace(path)
    return path


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def continue_or_restart(folder: Path) -> dict[str, Any]:
    """A stage's training run continues from its checkpoint; without one (it died before its first, or
    its checkpoints were pruned before done.json was written) it starts again, the leftovers moved aside
    (``overwrite_output_dir``: a stage run refuses a folder that holds another run)."""
    from preftune.train.checkpoint import list_checkpoints

    found = bool(list_checkpoints(folder))
    return {"resume": "latest" if found else None, "overwrite_output_dir": not found}
