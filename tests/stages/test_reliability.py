"""The reliability guarantees end to end (README, "Guarantees"), on real processes that really die.

A run is killed with SIGKILL at a chosen point (``PREFTUNE_FAULT``, see preftune.train.faults),
resumed with ``resume=latest``, and compared with a run that was never interrupted: per-step
losses and final weights must be bitwise equal — with shuffling, dropout and accumulation on.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from preftune.config import DPOConfig, load_config
from preftune.errors import ConfigError
from preftune.stages.dpo import run_dpo
from preftune.train.checkpoint import verify_checkpoint
from preftune.train.loop import TrainingDiverged
from preftune.train.metrics import read_metrics
from tests.conftest import separable_rows, write_jsonl
from tests.stages.conftest import SETTINGS, assert_bitwise_equal_runs, ok, preftune_dpo, train_records


@pytest.mark.parametrize("save_steps, killed_after, where", [
    (4, 7, "mid-epoch: checkpoint at step 4 of 6"),
    (6, 9, "at the epoch boundary: checkpoint at the end of epoch 1"),
])
def test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run(
        dropout_model, train_file, uninterrupted, tmp_path, save_steps, killed_after, where):
    out = tmp_path / "out"
    killed = preftune_dpo(out, dropout_model, train_file, f"save_steps={save_steps}",
                          fault=f"kill_after_step:{killed_after}", cache=tmp_path / "cache")
    assert killed.returncode == -9, where
    assert train_records(out)[-1][0] == killed_after          # it did train past the checkpoint
    ok(preftune_dpo(out, dropout_model, train_file, f"save_steps={save_steps}", "resume=latest",
                    cache=tmp_path / "cache"))
    assert_bitwise_equal_runs(uninterrupted, out)


def test_killed_in_the_middle_of_a_save_resumes_from_the_previous_checkpoint(
        dropout_model, train_file, uninterrupted, tmp_path):
    out = tmp_path / "out"
    killed = preftune_dpo(out, dropout_model, train_file, "save_steps=2", fault="kill_in_save:4",
                          cache=tmp_path / "cache")
    assert killed.returncode == -9
    assert (out / ".checkpoint-4.tmp" / "model" / "model.safetensors").is_file()  # half written ...
    assert not (out / "checkpoint-4").exists()                                    # ... and invisible
    resumed = ok(preftune_dpo(out, dropout_model, train_file, "save_steps=2", "resume=latest",
                              cache=tmp_path / "cache"))
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in resumed.stdout
    assert_bitwise_equal_runs(uninterrupted, out)


def test_a_corrupt_newest_checkpoint_is_refused_and_the_previous_one_used(
        dropout_model, train_file, uninterrupted, tmp_path):
    out = tmp_path / "out"
    assert preftune_dpo(out, dropout_model, train_file, "save_steps=2", fault="kill_after_step:5",
                        cache=tmp_path / "cache").returncode == -9
    weights = out / "checkpoint-4" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01                                        # one flipped bit in the last weights
    weights.write_bytes(bytes(data))
    resumed = ok(preftune_dpo(out, dropout_model, train_file, "save_steps=2", "resume=latest",
                              cache=tmp_path / "cache"))
    assert "checkpoint refused" in resumed.stdout and "model/model.safetensors does not match its sha256" in resumed.stdout
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in resumed.stdout
    assert_bitwise_equal_runs(uninterrupted, out)


# --- resume mismatch: in-process, after one short run with a checkpoint ---------------------------------

def cfg(model, data, out, *extra):
    return load_config(DPOConfig, None, [f"model_name_or_path={model}", f"train_file={data}", f"output_dir={out}",
                                         *SETTINGS, "max_steps=2", "save_steps=1", *extra])


@pytest.fixture
def saved_run(tiny_model_dir, train_file, tmp_path):
    run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "out"))   # checkpoint-1 and checkpoint-2
    return tmp_path / "out"


def _changed_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _edit_json(path: Path, key: str, value) -> None:
    data = json.loads(path.read_text())
    data[key] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, named", [
    ("seed", "seed: 3 → 4"),
    ("beta", "beta: 0.1 → 0.5"),
    ("data", "train_data: fingerprint"),
    ("tokenizer", "tokenizer: fingerprint"),
    ("model_config", "model_config: fingerprint"),
])
def test_resuming_with_a_changed_setting_is_an_error_naming_it(tiny_model_dir, train_file, saved_run, tmp_path,
                                                               change, named):
    model, data, extra = tiny_model_dir, train_file, []
    if change == "seed":
        extra = ["seed=4"]
    elif change == "beta":
        extra = ["beta=0.5"]
    elif change == "data":
        data = write_jsonl(separable_rows(48, seed=5)[:-1] + separable_rows(1, seed=99), tmp_path / "train.jsonl")
        extra = [f"train_file={data}"]
    elif change == "tokenizer":
        model = _changed_copy(tiny_model_dir, tmp_path / "m",
                              lambda d: (d / "chat_template.jinja").write_text(
                                  "{# v2 #}" + (d / "chat_template.jinja").read_text()))
    else:
        model = _changed_copy(tiny_model_dir, tmp_path / "m", lambda d: _edit_json(d / "config.json", "rms_norm_eps", 1e-3))
    with pytest.raises(ConfigError, match="force_resume=true") as err:
        run_dpo(cfg(model, data, saved_run, "resume=latest", *extra))
    assert named in str(err.value)


def test_changing_only_bookkeeping_resumes_and_force_resume_overrides(tiny_model_dir, train_file, saved_run, capsys):
    result = run_dpo(cfg(tiny_model_dir, train_file, saved_run, f"resume={saved_run / 'checkpoint-1'}",
                         "logging_steps=2", "save_total_limit=5", "threads=2"))
    assert [h["step"] for h in result.history] == [2]
    forced = run_dpo(cfg(tiny_model_dir, train_file, saved_run, "resume=latest", "seed=4", "max_steps=3",
                         "force_resume=true"))
    assert "force_resume: resuming checkpoint-2 although max_steps: 2 → 3" in capsys.readouterr().out
    assert [h["step"] for h in forced.history] == [3]


# --- the NaN guard inside a real stage -------------------------------------------------------------------

def test_non_finite_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(
        tiny_model_dir, train_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_FAULT", "nan_loss:3-12")
    with pytest.raises(TrainingDiverged, match=r"stopped at step 5: 3 optimizer steps in a row.*checkpoint-2"):
        run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "out", "max_steps=12", "save_steps=2",
                    "max_consecutive_skips=3"))
    assert verify_checkpoint(tmp_path / "out" / "checkpoint-2") is None
    assert not (tmp_path / "out" / "final").exists()
    logged = read_metrics(tmp_path / "out" / "metrics.jsonl", "train")
    assert [r["skipped_steps"] for r in logged] == [0, 0, 1, 2, 3]


def test_one_non_finite_step_is_skipped_and_the_run_goes_on(tiny_model_dir, train_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_FAULT", "nan_loss:2")
    result = run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "out", "max_steps=4"))
    assert [h["skipped_steps"] for h in result.history] == [0, 1, 1, 1]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for i, h in enumerate(result.history) if i != 1)


# --- the output folder is checked before any work -------------------------------------------------------

def test_an_unwritable_output_folder_fails_before_any_work(tiny_model_dir, train_file, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match="not writable"):
        run_dpo(cfg(tiny_model_dir, train_file, blocker / "out"))


def test_the_writability_probe_only_touches_a_file_of_its_own(tiny_model_dir, train_file, tmp_path):
    # Two processes started on one folder at once each probe it; a shared probe name let one delete the
    # other's probe mid-check, so the second run failed "not writable" instead of "in use by PID ...".
    out = tmp_path / "out"
    out.mkdir()
    (out / ".write_test").write_text("another process's probe")
    run_dpo(cfg(tiny_model_dir, train_file, out, "max_steps=1"))
    assert (out / ".write_test").read_text() == "another process's probe"
    assert not list(out.glob(".write_test-*"))


@pytest.mark.parametrize(("setting", "calls"), [("false", 0), ("true", 2 * 2 * 4)])
def test_release_host_memory_trims_after_every_forward_and_backward(setting, calls, tiny_model_dir, train_file,
                                                                     tmp_path, monkeypatch):
    from preftune.train import loop

    trims = []
    monkeypatch.setattr(loop, "release_freed_memory", lambda device: trims.append(device.type))
    run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "out", "gradient_accumulation_steps=4",
                f"release_host_memory={setting}"))
    assert trims == ["cpu"] * calls     # 2 steps × 4 micro-batches × (after forward, after backward)


def test_a_full_disk_fails_before_any_work(tiny_model_dir, train_file, tmp_path, monkeypatch):
    from collections import namedtuple

    from preftune.train import preflight

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(ConfigError, match=r": 1000 B free, but this run needs about [0-9.]+ MiB more at its peak "
                                          r"\(2 checkpoint\(s\) of [0-9.]+ KiB at once, and the final model of"):
        run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "out"))
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
