"""report_to: each reporter in its offline / local mode writes the curves metrics.jsonl holds."""

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from preftune.config import DPOConfig
from preftune.errors import ConfigError
from preftune.train.reporters import chosen

SCRIPT = """
import sys
from preftune.train.reporters import open_reporters
reporters = open_reporters(sys.argv[2].split(","), sys.argv[1], run_name="r1", project="proj", config={"beta": 0.1})
for step in (1, 2, 3):
    for r in reporters:
        r.log(step, {"loss": 1.0 / step}, "train")
for r in reporters:
    r.log(3, {"loss": 0.5}, "eval")
    r.close()
"""


def run_reporters(tmp_path, names: str) -> None:
    # Each library reads its local-mode settings from the environment when imported: a fresh process.
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TRACKIO_DIR": str(tmp_path / "trackio"),
           "MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}", "MLFLOW_ALLOW_FILE_STORE": "true",
           "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "out"), names], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_tensorboard_and_mlflow_hold_every_value(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_reporters(tmp_path, "tensorboard,mlflow")
    events = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    (run,) = client.search_runs(["0"])
    assert run.info.run_name == "r1"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "eval/loss")] == [0.5]


def test_trackio_and_wandb_offline_hold_the_curves(tmp_path):
    run_reporters(tmp_path, "trackio,wandb")
    with sqlite3.connect(tmp_path / "trackio" / "proj.db") as db:
        rows = db.execute("select step, metrics from metrics where run_name = 'r1' order by id").fetchall()
    assert [(step, json.loads(m)) for step, m in rows] == [
        (1, {"train/loss": 1.0}), (2, {"train/loss": 0.5}), (3, {"train/loss": 1 / 3}), (3, {"eval/loss": 0.5})]
    (run_file,) = (tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb")
    data = run_file.read_bytes()   # wandb's offline log (protobuf records): every key was written
    assert b"train/loss" in data and b"eval/loss" in data


def test_all_means_every_installed_reporter_and_none_means_none():
    assert chosen(["all"]) == ["tensorboard", "wandb", "trackio", "mlflow"]   # all four are test extras
    assert chosen(["none"]) == [] and chosen("none") == [] and chosen(["tensorboard", "wandb"]) == ["tensorboard",
                                                                                                     "wandb"]


def test_a_reporter_whose_package_is_missing_is_a_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"report_to wandb: the wandb package is not installed \(pip install "
                                          r"'preftune\[wandb\]'\)"):
        DPOConfig(model_name_or_path="m", report_to=["tensorboard", "wandb"])
    with pytest.raises(ConfigError, match="none, all and auto stand alone"):
        DPOConfig(model_name_or_path="m", report_to=["none", "wandb"])
