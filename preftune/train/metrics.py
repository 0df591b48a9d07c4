"""Metrics sinks: JSONL (always), the reporters of ``report_to`` (train/reporters.py), the progress bar.

Only rank 0 writes. Values arrive as plain floats: the loop reduces device tensors once per logging
step, so nothing here forces a host sync.

``metrics.jsonl`` is only ever appended to, one flushed line per record. Resuming never rewrites it in
place: the records up to the checkpoint are copied to a temporary file that replaces the log in one
rename, so a crash at any moment leaves the old log or the new one, never a truncated one. A crash in
the middle of a write leaves at most a torn last line, which readers drop and report; a damaged line
anywhere else is an error naming the file and line.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from preftune.errors import DataError, PreftuneError
from preftune.storage import describe_write_error, write_text_atomic
from preftune.train import faults


class MetricsLogger:
    """``resume_step`` None starts ``metrics.jsonl`` afresh (the output folder holds no other run: see
    ``preftune.train.run_folder``); on resume the records after ``resume_step`` — logged by the run that
    was interrupted after its last checkpoint — are dropped, since they are about to be logged again."""

    def __init__(self, output_dir: str | Path, report_to: str | list[str] = "none", enabled: bool = True,
                 resume_step: int | None = None, reporters: list | None = None,
                 log: Callable[[str], None] = print) -> None:
        """``reporters``: opened ``preftune.train.reporters`` (else opened here from ``report_to``)."""
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._file = None
        self._reporters: list = []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            records, torn = parse_metrics(self.path)
            if torn:
                log(f"{self.path}: {torn}; dropped")
            kept = [r for r in records if r["step"] <= resume_step]
            if len(kept) < len(records) or torn or not _ends_with_newline(self.path):
                write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            self._file = self.path.open("a", encoding="utf-8")
            faults.kill_if("kill_after_resume", resume_step)
        else:
            self._file = self.path.open("w", encoding="utf-8")
        if reporters is None:
            from preftune.train.reporters import open_reporters

            reporters = open_reporters(report_to, output_dir)
        self._reporters = list(reporters)

    @property
    def tensorboard_dir(self) -> Path | None:
        return next((r.log_dir for r in self._reporters if hasattr(r, "log_dir")), None)

    def log(self, step: int, metrics: dict[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step, "split": split, "time": round(time.time(), 3)}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as e:
            raise MetricsWriteError(f"{describe_write_error(e, self.path)}; the records before step {step} are "
                                    "intact") from e
        for reporter in self._reporters:
            reporter.log(step, metrics, split)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for reporter in self._reporters:
            reporter.close()
        self._reporters = []


class MetricsWriteError(PreftuneError):
    """metrics.jsonl could not be appended to (a full disk)."""


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def parse_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """(records, what was wrong with the last line or None). A last line that is not a valid record is
    what a crash mid-write leaves: dropped and described. Any other bad line is a DataError naming the
    file and line."""
    lines = path.read_bytes().split(b"\n")
    if lines[-1] == b"":                           # the file ends with a newline
        lines.pop()
    records, torn = [], None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        last = number == len(lines)
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with an integer 'step'")
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            if last:
                torn = f"line {number} is torn (cut off by a crash while it was written: {e})"
                break
            raise DataError(f"{path}:{number}: damaged record ({type(e).__name__}: {e}); lines after it are "
                            "intact, so this is not a crash mid-write: repair or remove that line") from None
        records.append(record)
    return records, torn


def read_metrics(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (those of ``split`` when given); a torn last line is dropped with a
    warning, a damaged line elsewhere is a DataError naming file and line."""
    rows, torn = parse_metrics(Path(path))
    if torn:
        warnings.warn(f"{path}: {torn}; dropped", stacklevel=2)
    return [r for r in rows if split is None or r["split"] == split]


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    """tqdm bar (shows elapsed and ETA itself); a do-nothing stand-in on other ranks or when disabled."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True,
                unit="step", mininterval=0.5)


def format_postfix(metrics: dict[str, float]) -> dict[str, str]:
    short = {"loss": "loss", "rewards/accuracies": "acc", "rewards/margins": "margin", "tokens_per_s": "tok/s",
             "grad_norm": "gnorm"}
    out = {}
    for key, name in short.items():
        if key in metrics:
            v = metrics[key]
            out[name] = f"{v:.0f}" if key == "tokens_per_s" else f"{v:.3f}"
    return out
