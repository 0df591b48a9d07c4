"""Which torch device a run uses: the one place ``device=auto|cpu|cuda|cuda:N|...`` is interpreted.

A module of its own, below every layer that needs it (modeling, train, the stages, experiments), so that
choosing a device imports nothing else of preftune.
"""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a CUDA device is an error rather than
    a silent fall-back to CPU; any other name is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available")
    return torch.device(name)
