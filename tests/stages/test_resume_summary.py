"""Small resume guarantees: summary.json keeps eval_before across resumes, the last evaluation is logged
once even when a run dies between its last checkpoint and final/, and reward=module:function never
imports from the working directory ahead of installed packages.

A crash is emulated in-process by making the fault point raise (``PREFTUNE_FAULT``'s SIGKILL would end
the test process); the real-SIGKILL versions are in tests/stages/test_reliability.py and the trial script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from preftune.config import DPOConfig, load_config
from preftune.stages.dpo import run_dpo
from preftune.train import faults
from preftune.train.metrics import read_metrics
from tests.conftest import PRE_TRL_EVAL
from tests.stages.conftest import SETTINGS


class Crash(Exception):
    pass


@pytest.fixture
def crash_at(monkeypatch):
    def arm(spec: str) -> None:
        monkeypatch.setenv(faults.ENV, spec)
        monkeypatch.setattr(faults.os, "kill", lambda pid, sig: (_ for _ in ()).throw(Crash(spec)))
    return arm


def cfg(model, data, out, *extra):
    return load_config(DPOConfig, None, [f"model_name_or_path={model}", f"train_file={data}", f"output_dir={out}",
                                         *SETTINGS, "max_steps=4", "save_steps=2", "eval_size=8", *PRE_TRL_EVAL, *extra])


def test_eval_before_survives_a_resume_in_summary_json(tiny_model_dir, train_file, tmp_path, crash_at, monkeypatch):
    # Old behaviour: a resumed run skipped the evaluation before training and wrote eval_before = {}.
    full = run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "full"))
    crash_at("kill_after_step:3")
    with pytest.raises(Crash):
        run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "out"))
    monkeypatch.delenv(faults.ENV)
    resumed = run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "out", "resume=latest"))
    assert resumed.eval_before == full.eval_before != {}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["eval_before"] == full.eval_before


def test_a_run_killed_between_its_last_checkpoint_and_final_logs_the_last_eval_once(tiny_model_dir, train_file,
                                                                                  tmp_path, crash_at, monkeypatch):
    # Old behaviour: the resumed run evaluated and logged step 4 again.
    crash_at("kill_before_final:4")
    with pytest.raises(Crash):
        run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "out"))
    assert not (tmp_path / "out" / "final").exists()
    monkeypatch.delenv(faults.ENV)
    resumed = run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "out", "resume=latest"))
    evals = [r["step"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl", "eval")]
    assert evals == [0, 4]
    assert [r["step"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl", "train")] == [1, 2, 3, 4]
    assert resumed.eval_after and resumed.final_dir.is_dir()


STRAY_TENSORBOARD = "open({marker!r}, 'w').write('imported from the working directory')\n"
LOCAL_REWARD = "def length(prompts, completions):\n    return [float(len(c)) for c in completions]\n"


def test_reward_from_a_local_file_without_the_working_directory_ahead_of_installed_packages(tiny_model_dir,
                                                                                          tmp_path):
    # Old behaviour: load_reward put '' first on sys.path, so a stray tensorboard.py in the working directory
    # replaced the installed package in a ppo run.
    cwd = tmp_path / "work"
    cwd.mkdir()
    marker = tmp_path / "stray-imported"
    (cwd / "tensorboard.py").write_text(STRAY_TENSORBOARD.format(marker=str(marker)))
    (cwd / "my_rewards.py").write_text(LOCAL_REWARD)
    prompts = cwd / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Review {i}:"}) + "\n" for i in range(8)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.getcwd()}
    common = [sys.executable, "-m", "preftune", "rloo", f"model_name_or_path={tiny_model_dir}",
              f"train_file={prompts}", "max_new_tokens=4", "max_prompt_length=8",
              "per_device_train_batch_size=2", "num_generations=2", "max_steps=1", "threads=1",
              "progress_bar=false", "report_to=auto"]
    proc = subprocess.run([*common, "output_dir=out", "reward=./my_rewards.py:length"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists()
    # A module name is looked up among installed packages first; the working directory only after them.
    by_name = subprocess.run([*common, "output_dir=out2", "reward=my_rewards:length"], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=600)
    assert by_name.returncode == 0, by_name.stderr[-3000:]
    assert not marker.exists()
