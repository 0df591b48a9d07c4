"""``report_to``: where metrics go besides metrics.jsonl: TensorBoard, Weights & Biases, Trackio, MLflow.

Each reporter is opened on rank 0 when the run starts and gets every record ``MetricsLogger`` writes,
keyed ``<split>/<metric>`` at the optimizer step (as transformers' integrations key them). They run in
the mode their own library picks from the environment: ``WANDB_MODE=offline``, ``TRACKIO_DIR`` (local
SQLite), ``MLFLOW_TRACKING_URI`` (a local ``./mlruns`` folder when unset). A chosen reporter whose package
is missing is a config error before any work (``preftune.config.run``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Protocol

from preftune.config.run import REPORTERS
from preftune.errors import ConfigError


class Reporter(Protocol):
    def log(self, step: int, metrics: dict[str, float], split: str) -> None: ...

    def close(self) -> None: ...


def chosen(report_to: str | list[str]) -> list[str]:
    """The reporters ``report_to`` names: ``all`` = every installed one, ``none`` = none, ``auto`` (preftune's
    older value) = TensorBoard when installed."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if names in (["all"], ["auto"]):
        pool = list(REPORTERS) if names == ["all"] else ["tensorboard"]
        return [n for n in pool if importlib.util.find_spec(REPORTERS[n][0]) is not None]
    return [n for n in names if n != "none"]


def _scalars(metrics: dict[str, float], split: str) -> dict[str, float]:
    return {f"{split}/{k}": float(v) for k, v in metrics.items()}


class TensorBoardReporter:
    def __init__(self, output_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))
        self.log_dir = Path(self.writer.log_dir)

    def log(self, step: int, metrics: dict[str, float], split: str) -> None:
        for key, value in _scalars(metrics, split).items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbReporter:
    def __init__(self, output_dir: Path, name: str, project: str, config: dict[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=name, config=config, dir=str(output_dir), reinit="finish_previous")

    def log(self, step: int, metrics: dict[str, float], split: str) -> None:
        self.run.log(_scalars(metrics, split), step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioReporter:
    def __init__(self, name: str, project: str, config: dict[str, Any]) -> None:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=project, name=name, config=config, embed=False)

    def log(self, step: int, metrics: dict[str, float], split: str) -> None:
        self.trackio.log(_scalars(metrics, split), step=step)

    def close(self) -> None:
        self.trackio.finish()


class MLflowReporter:
    def __init__(self, name: str, config: dict[str, Any]) -> None:
        import mlflow

        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name)
        # MLflow params are short strings: the whole config goes in as one JSON artifact instead.
        mlflow.log_dict(config, "preftune_config.json")

    def log(self, step: int, metrics: dict[str, float], split: str) -> None:
        self.mlflow.log_metrics(_scalars(metrics, split), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def open_reporters(report_to: str | list[str], output_dir: str | Path, *, run_name: str | None = None,
                   project: str = "huggingface", config: dict[str, Any] | None = None) -> list[Reporter]:
    """The reporters ``report_to`` names, opened (rank 0 only: call it there, when the run starts); one that
    cannot start is a ConfigError naming it."""
    output_dir = Path(output_dir)
    name = run_name or output_dir.resolve().name
    config = json.loads(json.dumps(config or {}, default=str))
    opened: list[Reporter] = []
    for reporter in chosen(report_to):
        if reporter not in REPORTERS:
            raise ConfigError(f"report_to: unknown reporter {reporter!r}; known: none, all, {', '.join(REPORTERS)}")
        module, extra = REPORTERS[reporter]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to {reporter}: the {module} package is not installed "
                              f"(pip install 'preftune[{extra}]')")
        try:
            if reporter == "tensorboard":
                opened.append(TensorBoardReporter(output_dir))
            elif reporter == "wandb":
                opened.append(WandbReporter(output_dir, name, project, config))
            elif reporter == "trackio":
                opened.append(TrackioReporter(name, project, config))
            else:
                opened.append(MLflowReporter(name, config))
        except Exception as e:  # its own configuration (a tracking URI, a login): said before any work
            for r in opened:
                r.close()
            raise ConfigError(f"report_to {reporter}: it could not start ({type(e).__name__}: {e})") from None
    return opened
