"""Nested Python values holding tensors, stored as ``<name>.safetensors`` + ``<name>.json``.

Optimizer states, counters, RNG states and the like are trees of dicts, lists, tuples, numbers,
strings and tensors. ``torch.save`` would pickle them, and unpickling a file can run any code its
author chose; a checkpoint folder is exactly the kind of file people pass around. Here the tensors go
to a safetensors file (raw bytes plus a JSON header) and everything else to JSON, with a few tagged
objects for what JSON lacks (tuples, dicts with non-string keys, non-finite floats, numpy arrays).
Reading either file can only produce data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from preftune.errors import PreftuneError

FORMAT = 1
_TAGS = ("$tensor", "$tuple", "$items", "$float", "$ndarray")


class StateFileError(PreftuneError):
    """A state file is missing, unreadable or not in this format; the message names the file."""


def encode(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able structure, tensors by key) for ``tree``; a value of another type is a TypeError."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}

    def walk(x: Any, where: str) -> Any:
        if isinstance(x, torch.Tensor):
            key = str(len(tensors))
            t = x.detach().cpu().contiguous()
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if ident in seen:                  # safetensors refuses tensors that share memory
                t = t.clone()
            seen[ident] = key
            tensors[key] = t
            return {"$tensor": key}
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, (float, np.floating)):
            return float(x) if math.isfinite(x) else {"$float": repr(float(x))}
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "biuf":
                raise TypeError(f"{where}: cannot store a numpy array of dtype {x.dtype}")
            return {"$ndarray": x.tolist(), "dtype": str(x.dtype)}
        if isinstance(x, tuple):
            return {"$tuple": [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, dict):
            if all(isinstance(k, str) and k not in _TAGS for k in x):
                return {k: walk(v, f"{where}.{k}") for k, v in x.items()}
            return {"$items": [[walk(k, f"{where} key"), walk(v, f"{where}[{k!r}]")] for k, v in x.items()]}
        raise TypeError(f"{where}: cannot store a {type(x).__name__} (only tensors, numbers, strings, "
                        "None, lists, tuples, dicts and numpy number arrays)")

    return walk(tree, "state"), tensors


def decode(structure: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode`; an unknown tag or a missing tensor is a ValueError."""
    if isinstance(structure, list):
        return [decode(v, tensors) for v in structure]
    if not isinstance(structure, dict):
        return structure
    if "$tensor" in structure:
        return tensors[structure["$tensor"]]
    if "$tuple" in structure:
        return tuple(decode(v, tensors) for v in structure["$tuple"])
    if "$items" in structure:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in structure["$items"]}
    if "$float" in structure:
        return float(structure["$float"])
    if "$ndarray" in structure:
        return np.asarray(structure["$ndarray"], dtype=np.dtype(structure["dtype"]))
    if any(k.startswith("$") for k in structure):
        raise ValueError(f"unknown tag in {sorted(structure)}")
    return {k: decode(v, tensors) for k, v in structure.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, (list, dict)):
        raise ValueError(f"a dict key cannot be a {type(key).__name__}")
    return key


def save_tree(tree: Any, folder: Path, name: str) -> list[Path]:
    """Write ``folder/name.json`` and ``folder/name.safetensors``; returns both paths."""
    from safetensors.torch import save_file

    structure, tensors = encode(tree)
    json_path, tensor_path = folder / f"{name}.json", folder / f"{name}.safetensors"
    save_file(tensors, str(tensor_path), metadata={"format": f"preftune-tree-{FORMAT}"})
    json_path.write_text(json.dumps({"format": FORMAT, "tree": structure}))
    return [json_path, tensor_path]


def load_tree(folder: Path, name: str) -> Any:
    """Read what :func:`save_tree` wrote. Never unpickles; every failure names its file."""
    from safetensors.torch import load_file

    json_path, tensor_path = folder / f"{name}.json", folder / f"{name}.safetensors"
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise StateFileError(f"{path} is missing")
    try:
        payload = json.loads(json_path.read_text(encoding="utf-8"))
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"not a preftune state file of format {FORMAT}")
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise StateFileError(f"{json_path} is unreadable ({type(e).__name__}: {e})") from None
    try:
        tensors = load_file(str(tensor_path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged header
        raise StateFileError(f"{tensor_path} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    try:
        return decode(payload["tree"], tensors)
    except (KeyError, ValueError, TypeError) as e:
        raise StateFileError(f"{json_path} does not match {tensor_path.name} ({type(e).__name__}: {e})") from None
