"""One run per output folder: the refusal, overwrite_output_dir (moves, never deletes), the lock."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from preftune.train.run_folder import FolderLock, OutputDirError, claim_output_dir


def _old_run(folder, run_id="old-run"):
    (folder / "checkpoint-4").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 0.7}\n')
    (folder / "config.json").write_text('{"seed": 1}')
    (folder / "run.json").write_text(json.dumps({"run_id": run_id}))
    return folder


def test_a_fresh_run_in_a_folder_holding_another_run_is_refused_naming_what_and_the_ways_on(tmp_path):
    out = _old_run(tmp_path / "out")
    with pytest.raises(OutputDirError) as err:
        claim_output_dir(out, resume=None, overwrite=False, stage="DPOConfig")
    message = str(err.value)
    assert "checkpoint-4" in message and "metrics.jsonl" in message
    assert "resume=latest" in message and "another output_dir" in message and "overwrite_output_dir=true" in message
    assert (out / "metrics.jsonl").read_text().startswith('{"step": 1')          # untouched
    assert not (out / ".preftune.lock").exists()                                 # the lock was given back


def test_overwrite_output_dir_moves_the_earlier_run_aside_and_deletes_nothing(tmp_path):
    out = _old_run(tmp_path / "out")
    logs = []
    claim = claim_output_dir(out, resume=None, overwrite=True, stage="DPOConfig", log=logs.append)
    claim.lock.release()
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("out.previous-")]
    assert len(moved) == 1 and str(moved[0]) in logs[0]
    assert (moved[0] / "checkpoint-4").is_dir() and (moved[0] / "metrics.jsonl").read_text().startswith('{"step": 1')
    assert json.loads((moved[0] / "run.json").read_text())["run_id"] == "old-run"
    assert not (out / "checkpoint-4").exists() and not (out / "metrics.jsonl").exists()
    assert json.loads((out / "run.json").read_text())["run_id"] == claim.run_id != "old-run"


def test_a_folder_with_only_the_settings_of_a_run_that_saved_nothing_is_reused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "run.json").write_text(json.dumps({"run_id": "crashed-at-start"}))
    (out / "metrics.jsonl").write_text("")
    claim = claim_output_dir(out, resume=None, overwrite=False, stage="SFTConfig")
    claim.lock.release()
    assert claim.run_id != "crashed-at-start"


def test_resume_latest_continues_the_folders_run_and_resuming_another_folders_checkpoint_here_is_refused(tmp_path):
    out = _old_run(tmp_path / "out")
    claim = claim_output_dir(out, resume="latest", overwrite=False, stage="DPOConfig")
    claim.lock.release()
    assert claim.run_id == "old-run"
    elsewhere = tmp_path / "b" / "checkpoint-2"
    elsewhere.mkdir(parents=True)
    (elsewhere / "manifest.json").write_text(json.dumps({"run_id": "other-run", "files": {}}))
    with pytest.raises(OutputDirError, match="already holds another run"):
        claim_output_dir(out, resume=str(elsewhere), overwrite=False, stage="DPOConfig")
    fresh = tmp_path / "c"
    claim = claim_output_dir(fresh, resume=str(elsewhere), overwrite=False, stage="DPOConfig")
    claim.lock.release()
    assert claim.run_id == "other-run"                     # an empty folder continues that run


def test_a_second_holder_is_refused_naming_the_owner_and_a_released_lock_is_free_again(tmp_path):
    first = FolderLock(tmp_path / ".preftune.lock")
    first.acquire()
    with pytest.raises(OutputDirError, match=rf"in use by PID {os.getpid()} on host {socket.gethostname()}"):
        FolderLock(tmp_path / ".preftune.lock").acquire()
    first.release()
    logs = []
    again = FolderLock(tmp_path / ".preftune.lock")
    again.acquire(logs.append)
    again.release()
    assert logs == []                                        # a clean release leaves nothing to take over


HOLD = """
import sys, time
from pathlib import Path
from preftune.train.run_folder import FolderLock
FolderLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_live_process_keeps_others_out_and_its_lock_is_taken_over_once_it_is_killed(tmp_path):
    lock = tmp_path / ".preftune.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirError, match=rf"in use by PID {holder.pid} "):
            FolderLock(lock).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    logs = []
    mine = FolderLock(lock)
    mine.acquire(logs.append)
    mine.release()
    assert f"taking over the stale lock {lock} of PID {holder.pid}" in logs[0]


def test_a_lock_naming_a_reused_pid_is_stale(tmp_path):
    # The PID is alive (our parent) but started at another time than the lock records: not the owner.
    lock = tmp_path / ".preftune.lock"
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "process_start": "1",
                                "since": time.ctime()}))
    logs = []
    mine = FolderLock(lock)
    mine.acquire(logs.append)
    mine.release()
    assert "taking over the stale lock" in logs[0]
