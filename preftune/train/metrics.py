"""Metrics sinks: JSONL (always), the reporters of ``report_to`` (train/reporters.py), the progress bar.

Only rank 0 writes. Values arrive as plain floats: the loop reduces device tensors once per logging
step, so nothing here forces a host sync.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLogger:
    """``resume_step`` None starts ``metrics.jsonl`` afresh (a new run in an old folder must not mix
    its curve with the old one); on resume the records after ``resume_step`` — logged by the run that
    was interrupted after its last checkpoint — are dropped, since they are about to be logged again."""

    def __init__(self, output_dir: str | Path, report_to: str | list[str] = "none", enabled: bool = True,
                 resume_step: int | None = None, reporters: list | None = None) -> None:
        """``reporters``: opened ``preftune.train.reporters`` (else opened here from ``report_to``)."""
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._file = None
        self._reporters: list = []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = ""
        if resume_step is not None and self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = "".join(line for line in lines if line.strip() and json.loads(line)["step"] <= resume_step)
        self._file = self.path.open("w", encoding="utf-8")
        self._file.write(kept)
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
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for reporter in self._reporters:
            reporter.log(step, metrics, split)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for reporter in self._reporters:
            reporter.close()
        self._reporters = []


def read_metrics(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
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
