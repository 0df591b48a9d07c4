"""Step 1 of the data pipeline: read raw records from a file, folder or in-memory object.

Every record carries its *origin* (``path:line``, ``path row N`` or ``dataset[i]``) so that any
later step can report exactly where a bad example came from. Rows in files are numbered from 1,
like an editor or a spreadsheet does (a CSV header is not a row); ``dataset[i]`` is a Python index.

Loading does no validation of the fields themselves: that is render's job, which knows which
fields a task needs. Only structural problems (unreadable JSON, JSON nested deeper than Python can
read, a row that is not an object, bytes that are not UTF-8, an empty file, a record over
``max_row_bytes``) are reported here. The size limit is checked before a JSONL line is parsed, so a
pathological line fails in milliseconds instead of minutes of parsing and tokenizing.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from preftune.data.encoding import first_undecoded, undecoded_error, undecoded_field
from preftune.errors import DataError
from preftune.storage import format_bytes

__all__ = ["DEFAULT_MAX_ROW_BYTES", "Record", "Source", "load_records", "source_name"]

DEFAULT_MAX_ROW_BYTES = 8 << 20


@dataclass(frozen=True)
class Record:
    """One raw example: its fields as read, and where it came from (for error messages).

    ``labels`` maps a field to the column it was read from when the two differ (a mapped column such
    as ``prompt_field=question``, or UltraFeedback's ``completions[2].response``): errors name that.
    """

    fields: Mapping[str, Any]
    origin: str
    labels: Mapping[str, str] = field(default_factory=dict)
    # Every value is the text of a CSV cell, which cannot hold a list: a cell that is a JSON list of
    # messages (or of completions) is read as one. Values from JSON, Parquet or datasets keep their type,
    # and a string there stays the string it is, whatever it looks like.
    text_cells: bool = False

    def label(self, key: str) -> str:
        return self.labels.get(key, key)


@dataclass(frozen=True)
class Source:
    """Rows under a name that logs and errors use, e.g. ``HuggingFaceH4/ultrafeedback_binarized [train_prefs]``.

    ``rows`` is anything :func:`load_records` reads; row N of it is reported as ``<name> row N``.
    """

    rows: Any
    name: str


def load_records(source: str | os.PathLike | Any, *, split: str = "train",
                 max_row_bytes: int | None = DEFAULT_MAX_ROW_BYTES) -> list[Record]:
    """Read all records of ``source`` into memory, each tagged with its origin.

    ``source`` is a ``.jsonl``/``.json``/``.csv``/``.parquet`` file, a folder written by
    ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` folder picks ``split``), an in-memory
    ``datasets.Dataset``/``DatasetDict``, a pandas DataFrame, a sequence of mappings, or a
    :class:`Source` naming one of these. ``split`` only matters for dataset dicts. Raises DataError
    for missing, empty or malformed input, and for a record over ``max_row_bytes`` (None: no limit).
    """
    name = source_name(source, split)
    if isinstance(source, Source):
        inner = source.rows
        if isinstance(inner, (str, os.PathLike)):
            records = _load_path(Path(inner), split, max_row_bytes)
        else:
            records = _from_rows(_in_memory_rows(inner, split, name), name, file_rows=True, limit=max_row_bytes)
    elif isinstance(source, (str, os.PathLike)):
        records = _load_path(Path(source), split, max_row_bytes)
    else:
        records = _from_rows(_in_memory_rows(source, split, name), name, file_rows=False, limit=max_row_bytes)
    if not records:
        raise DataError(f"{name}: no records (the source is empty)")
    return records


def source_name(source: Any, split: str = "train") -> str:
    """How logs and errors name ``source``: the path (with ``[split]`` for a DatasetDict folder),
    the :class:`Source` name, or ``dataset`` for an unnamed in-memory object."""
    if isinstance(source, Source):
        return source.name
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return f"{path} [{split}]" if (path / "dataset_dict.json").is_file() else str(path)
    return "dataset"


def _in_memory_rows(source: Any, split: str, name: str) -> Any:
    if is_hf_dataset(source):
        return _pick_split(source, split, name)
    if _is_dataframe(source):
        # A missing cell is NaN (or None) in a DataFrame; it means what null means in a file.
        return [{k: None if _is_nan(v) else v for k, v in row.items()} for row in source.to_dict("records")]
    if isinstance(source, Sequence) and not isinstance(source, (str, bytes, bytearray)):
        return source
    raise TypeError(
        f"cannot load records from a {type(source).__name__}: expected a file or folder path, a datasets.Dataset "
        "or DatasetDict, a pandas DataFrame, or a list of dicts"
    )


def _load_path(path: Path, split: str, limit: int | None) -> list[Record]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        return _load_hf_folder(path, split, limit)
    suffix = path.suffix.lower()
    readers = {".jsonl": _load_jsonl, ".json": _load_json, ".csv": _load_csv, ".parquet": _load_parquet}
    if suffix not in readers:
        raise DataError(
            f"{path}: unsupported file type '{suffix}' (expected .jsonl, .json, .csv, .parquet "
            "or a folder saved with datasets' save_to_disk)"
        )
    return readers[suffix](path, limit)


def _too_big(origin: str, size: int, limit: int) -> DataError:
    return DataError(f"{origin}: the record is {format_bytes(size)}, over max_row_bytes ({format_bytes(limit)}): "
                     "parsing and tokenizing it would take minutes and gigabytes, only for it to be cut to "
                     "max_length tokens. Shorten it, or raise max_row_bytes (null: no limit)")


def _too_deep(origin: str) -> DataError:
    return DataError(f"{origin}: JSON nested too deeply to read (over {sys.getrecursionlimit()} levels)")


def _size(value: Any, limit: int) -> int:
    """About how many bytes ``value`` holds (its strings' lengths; 8 per other scalar); stops past ``limit``."""
    stack, total = [value], 0
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            total += 8
    return total


def _load_jsonl(path: Path, limit: int | None) -> list[Record]:
    records = []
    # utf-8-sig: files written on Windows often start with a BOM, which json.loads rejects.
    # surrogateescape: a byte that is not UTF-8 must be reported with its line, not as a bare
    # UnicodeDecodeError from deep inside the file iterator.
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            origin = f"{path}:{lineno}"
            if limit is not None and len(line) * 4 > limit:   # a character is at most 4 bytes
                size = len(line.encode("utf-8", "surrogateescape"))
                if size > limit:
                    raise _too_big(origin, size, limit)
            bad = first_undecoded(line)
            try:
                # Without its newline, an error at the end of the line gets this line's column
                # rather than "column 1" of a phantom next line.
                obj = json.loads(line.rstrip())
            except json.JSONDecodeError as e:
                if bad is not None:  # the bad byte is the likelier cause, and the actionable one
                    raise undecoded_error(origin, bad[1], f"at column {bad[0] + 1}", None) from None
                raise DataError(f"{origin}: invalid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise _too_deep(origin) from None
            except ValueError as e:      # e.g. an integer with more digits than Python converts
                raise DataError(f"{origin}: invalid JSON ({e})") from None
            if bad is not None:
                raise undecoded_error(origin, bad[1], f"at column {bad[0] + 1}", undecoded_field(obj))
            if not isinstance(obj, dict):
                raise DataError(f"{origin}: expected a JSON object per line, got {_json_type(obj)}")
            records.append(Record(obj, origin))
    return records


def _load_json(path: Path, limit: int | None) -> list[Record]:
    text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    bad = first_undecoded(text)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if bad is not None:
            raise _json_undecoded(path, text, bad, None) from None
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise _too_deep(str(path)) from None
    except ValueError as e:
        raise DataError(f"{path}: invalid JSON ({e})") from None
    if bad is not None:
        raise _json_undecoded(path, text, bad, obj)
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a top-level JSON list of objects, got {_json_type(obj)}")
    return _from_rows(obj, str(path), file_rows=True, limit=limit)


def _json_undecoded(path: Path, text: str, bad: tuple[int, int], obj: Any) -> DataError:
    index, byte = bad
    line = text.count("\n", 0, index) + 1
    column = index - text.rfind("\n", 0, index)  # rfind gives -1 on the first line: column index + 1
    where = f"at line {line}, column {column}"
    # Name the row and field when the JSON parses; the bad byte may also sit outside any row.
    rows = obj if isinstance(obj, list) else []
    for i, row in enumerate(rows):
        field = undecoded_field(row)
        if field is not None:
            return undecoded_error(f"{path} row {i + 1}", byte, where, field)
    return undecoded_error(f"{path}:{line}", byte, where, None)


def _load_csv(path: Path, limit: int | None) -> list[Record]:
    # The csv module rather than pandas: every cell stays the exact string in the file (pandas
    # would turn "1" into an int and an empty cell into NaN), and no optional dependency is needed.
    # Its own cell limit (128 KiB by default, a bare csv.Error) gives way to max_row_bytes.
    previous = csv.field_size_limit(min(limit + 1, sys.maxsize) if limit is not None else sys.maxsize)
    try:
        return _read_csv(path, limit)
    finally:
        csv.field_size_limit(previous)


def _read_csv(path: Path, limit: int | None) -> list[Record]:
    records = []
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: file is empty")
        for column, cell in enumerate(header, start=1):
            bad = first_undecoded(cell)
            if bad is not None:
                where = f"on line {reader.line_num}"
                raise undecoded_error(str(path), bad[1], where, None, f"the header (column {column})")
        row_no = 0
        while True:
            try:
                cells = next(reader, None)
            except csv.Error as e:
                origin = f"{path} row {row_no + 1} (ending on line {reader.line_num})"
                if "field larger than field limit" in str(e) and limit is not None:
                    raise DataError(f"{origin}: a cell is over max_row_bytes ({format_bytes(limit)}); shorten it, "
                                    "or raise max_row_bytes (null: no limit)") from None
                raise DataError(f"{origin}: not valid CSV ({e})") from None
            if cells is None:
                break
            if not cells:  # a blank line; csv yields [] for it
                continue
            row_no += 1
            origin = f"{path} row {row_no}"
            if limit is not None and sum(len(c) for c in cells) > limit:
                raise _too_big(origin, sum(len(c.encode("utf-8", "surrogateescape")) for c in cells), limit)
            if len(cells) != len(header):
                raise DataError(
                    f"{origin}: has {len(cells)} cells but the header has {len(header)} "
                    f"(columns {header}); a value with a comma must be quoted"
                )
            _check_csv_cells(cells, header, origin, reader.line_num)
            records.append(Record(dict(zip(header, cells)), origin, text_cells=True))
    return records


def _check_csv_cells(cells: list[str], header: list[str], origin: str, line: int) -> None:
    for cell, name in zip(cells, header):
        bad = first_undecoded(cell)
        if bad is not None:
            # line_num is where the row ends: a quoted cell may span several lines.
            raise undecoded_error(origin, bad[1], f"in a row ending on line {line}", name)


def _load_parquet(path: Path, limit: int | None) -> list[Record]:
    pq = require_package("pyarrow.parquet", "pyarrow", "reading Parquet files")
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several unrelated types for a corrupt file
        raise DataError(f"{path}: cannot read as Parquet ({type(e).__name__}: {e})") from None
    return _from_rows(rows, str(path), file_rows=True, limit=limit)


def _load_hf_folder(path: Path, split: str, limit: int | None) -> list[Record]:
    datasets = require_package("datasets", "datasets", "reading a datasets folder")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - FileNotFoundError / ValueError depending on what is missing
        raise DataError(
            f"{path}: not a folder written by datasets' save_to_disk ({type(e).__name__}: {e})"
        ) from None
    name = str(path)
    if isinstance(ds, Mapping):  # a DatasetDict: rows are named after the split too
        ds = _pick_split(ds, split, name)
        name = f"{path} [{split}]"
    return _from_rows(ds, name, file_rows=True, limit=limit)


def _pick_split(ds: Any, split: str, name: str) -> Any:
    if not isinstance(ds, Mapping):
        return ds
    if split not in ds:
        raise DataError(f"{name}: no split '{split}' (available: {', '.join(map(str, ds))})")
    return ds[split]


def _from_rows(rows: Any, name: str, *, file_rows: bool, limit: int | None = DEFAULT_MAX_ROW_BYTES) -> list[Record]:
    records = []
    for i, row in enumerate(rows):
        origin = f"{name} row {i + 1}" if file_rows else f"{name}[{i}]"
        if not isinstance(row, Mapping):
            raise DataError(f"{origin}: expected an object with named fields, got {type(row).__name__}")
        if limit is not None and (size := _size(row, limit)) > limit:
            raise _too_big(origin, size, limit)
        records.append(Record(_plain(row), origin))
    return records


def _plain(value: Any) -> Any:
    """Convert numpy containers/scalars (from pandas, or a numpy-formatted Dataset) to Python.

    Render checks ``isinstance(x, list)`` and ``str``; a numpy array of message dicts would
    otherwise be rejected as a wrong type.
    """
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return _plain(value.tolist())
    return value


def is_hf_dataset(obj: Any) -> bool:
    """A ``datasets`` object, checked by module name so that a plain list never triggers importing ``datasets``."""
    return type(obj).__module__.split(".")[0] == "datasets"


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "pandas" and hasattr(obj, "to_dict")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def require_package(module: str, package: str, purpose: str) -> ModuleType:
    """``module`` imported, or an ImportError saying that ``purpose`` needs ``package`` and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{purpose} needs the optional package '{package}': pip install 'preftune[data]'"
        ) from None


def _json_type(obj: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(obj), "a number")
