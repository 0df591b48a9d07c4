"""SIGTERM and SIGINT to a real ``python -m preftune`` process: stop at the next step boundary, save,
one line on how to continue, exit 143 / 130; the resumed run ends bitwise equal to one never stopped.

``PREFTUNE_FAULT=pause_after_step:3`` holds the process after step 3 (until a signal arrives), so the
signal lands at a known step on a machine of any speed.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from preftune.train.checkpoint import list_checkpoints, verify_checkpoint
from preftune.train.metrics import read_metrics
from tests.stages.conftest import (
    assert_bitwise_equal_runs,
    dpo_command,
    ok,
    preftune_dpo,
    preftune_env,
    train_records,
)


def start(out: Path, model: Path, data: Path, cache: Path, fault: str) -> subprocess.Popen:
    return subprocess.Popen(dpo_command(out, model, data), env=preftune_env(cache, fault), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, out: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and any(r["step"] == step for r in read_metrics(metrics, "train")):
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"step {step} was not logged within {timeout} s")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_after_the_step_saves_says_how_to_resume_and_the_resumed_run_is_bitwise_equal(
        dropout_model, train_file, uninterrupted, tmp_path, signum, code):
    # Old behaviour: SIGTERM exited 143 with nothing saved; Ctrl-C printed an 80-line KeyboardInterrupt
    # traceback and no hint that resume=latest continues.
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = start(out, dropout_model, train_file, cache, "pause_after_step:3")
    wait_for_step(proc, out, 3)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stdout[-2000:] + stderr[-2000:]
    name = signal.Signals(signum).name
    assert f"stopped by {name} after step 3; checkpoint-3 is saved. Continue with the same command plus " \
           f"resume=latest" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3"]
    assert verify_checkpoint(out / "checkpoint-3") is None
    assert [r[0] for r in train_records(out)] == [1, 2, 3]
    ok(preftune_dpo(out, dropout_model, train_file, "resume=latest", cache=cache))
    assert_bitwise_equal_runs(uninterrupted, out)


def test_a_second_signal_stops_at_once_without_saving(dropout_model, train_file, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    # A checkpoint at step 2; after step 3 the process waits for a signal, then its save of checkpoint-3
    # stalls half written, where the second signal arrives.
    proc = subprocess.Popen(dpo_command(out, dropout_model, train_file, "save_steps=2"),
                            env=preftune_env(cache, "pause_after_step:3,pause_in_save:3"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_step(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 120
    while not (out / ".checkpoint-3.tmp" / "model").is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    stdout, stderr = proc.communicate(timeout=300)
    assert time.monotonic() - started < 60                                    # not after the 120 s stall
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "second signal (SIGINT): stopping now without saving" in stderr
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]        # the half-written one is not one
    assert verify_checkpoint(out / "checkpoint-2") is None
