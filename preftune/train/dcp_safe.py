"""Reading a sharded (``torch.distributed.checkpoint``) checkpoint without arbitrary unpickling.

DCP stores its index (``.metadata``) as a pickle and loads non-tensor values (the optimizer's
hyperparameters) through torch's full, unrestricted unpickler; either would run code planted in a
checkpoint folder. Here the index is read by an unpickler that can build only DCP's own metadata records (and
torch sizes, dtypes, layouts, paths), and non-tensor values go through ``torch.load(weights_only=True)``.
Anything else in the file is refused, naming it.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem

from preftune.errors import PreftuneError

_ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
            ("pathlib", "PurePosixPath"), ("torch.distributed.checkpoint.filesystem", "_StorageInfo")}


class UnsafeCheckpoint(PreftuneError):
    """A sharded checkpoint's files hold something other than checkpoint data."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == dcp_metadata.__name__ and isinstance(getattr(dcp_metadata, name, None), type):
            return getattr(dcp_metadata, name)
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


class SafeReader(FileSystemReader):
    """DCP's file reader with the restricted unpickler for the index."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        path = Path(self.path) / (".metadata" if kwargs.get("rank") is None else f"__{kwargs['rank']}.metadata")
        try:
            metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
        except Exception as e:  # noqa: BLE001 - whatever the bytes are, they are not a usable index
            raise UnsafeCheckpoint(f"{path}: not a checkpoint index ({type(e).__name__}: {e})") from None
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise UnsafeCheckpoint(f"{path}: not a checkpoint index (holds a {type(metadata).__name__})")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner, with non-tensor values read by ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as e:  # noqa: BLE001 - weights_only refuses anything but data
            raise UnsafeCheckpoint(f"sharded checkpoint value {read_item.dest_index.fqn}: refused "
                                   f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
        if self.flatten_state_dict:    # what the parent class does with the value it unpickled
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def load(state: dict[str, Any], folder: Path) -> None:
    """``dcp.load`` of ``state`` from ``folder``, with the safe reader and planner."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.load(state, storage_reader=SafeReader(str(folder)), planner=SafeLoadPlanner())
    except CheckpointException as e:   # DCP wraps every rank's error: keep only what each says
        reasons = sorted({str(error).splitlines()[-1] for error, _ in e.failures.values()})
        raise UnsafeCheckpoint(f"cannot load the sharded checkpoint {folder}: {'; '.join(reasons)}") from None
