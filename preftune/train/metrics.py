"""Metrics sinks: JSONL (always), TensorBoard (when installed or asked for), the live progress bar.

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

    def __init__(self, output_dir: str | Path, report_to: str = "auto", enabled: bool = True,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._file = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = ""
        if resume_step is not None and self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = "".join(line for line in lines if line.strip() and json.loads(line)["step"] <= resume_step)
        self._file = self.path.open("w", encoding="utf-8")
        self._file.write(kept)
        if report_to in ("auto", "tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if report_to == "tensorboard":
                    raise RuntimeError("report_to=tensorboard but tensorboard is not installed "
                                       "(pip install tensorboard)") from None
            else:
                self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    @property
    def tensorboard_dir(self) -> Path | None:
        return Path(self._tb.log_dir) if self._tb is not None else None

    def log(self, step: int, metrics: dict[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": step, "split": split, "time": round(time.time(), 3)}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


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
