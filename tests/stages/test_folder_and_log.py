"""One run per output folder and a metrics log that survives crashes, on real runs.

Old behaviour, for each: a second run in a used folder truncated metrics.jsonl, overwrote config.json and
rotated away its own checkpoints; two runs at once deleted each other's temporary checkpoints and
interleaved the log; a SIGKILL right after "resumed from" left metrics.jsonl empty; one torn line made
every later resume fail with a JSONDecodeError traceback.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from preftune.config import DPOConfig, load_config
from preftune.stages.dpo import run_dpo
from preftune.train.checkpoint import list_checkpoints, verify_checkpoint
from preftune.train.metrics import read_metrics
from preftune.train.run_folder import OutputDirError
from tests.stages.conftest import (
    SETTINGS,
    assert_bitwise_equal_runs,
    dpo_command,
    ok,
    preftune_dpo,
    preftune_env,
    train_records,
)


def cfg(model, data, out, *extra):
    return load_config(DPOConfig, None, [f"model_name_or_path={model}", f"train_file={data}", f"output_dir={out}",
                                         *SETTINGS, "max_steps=3", "save_steps=1", *extra])


def test_a_new_run_in_a_used_folder_is_refused_and_overwrite_moves_the_old_run_aside(tiny_model_dir, train_file,
                                                                                       tmp_path):
    out = tmp_path / "out"
    run_dpo(cfg(tiny_model_dir, train_file, out))
    before = {name: (out / name).read_bytes() for name in ("metrics.jsonl", "config.json", "summary.json")}
    with pytest.raises(OutputDirError) as err:
        run_dpo(cfg(tiny_model_dir, train_file, out, "learning_rate=1e-2"))
    for part in ("checkpoint-2", "checkpoint-3", "metrics.jsonl", "final", "resume=latest", "another output_dir",
                 "overwrite_output_dir=true"):
        assert part in str(err.value)
    assert {name: (out / name).read_bytes() for name in before} == before          # nothing touched
    run_dpo(cfg(tiny_model_dir, train_file, out, "learning_rate=1e-2", "overwrite_output_dir=true"))
    (old,) = tmp_path.glob("out.previous-*")
    assert {name: (old / name).read_bytes() for name in before} == before          # moved whole, not deleted
    assert [p.name for p in list_checkpoints(old)] == ["checkpoint-2", "checkpoint-3"]
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]   # the new run's own
    assert json.loads((out / "config.json").read_text())["learning_rate"] == 1e-2


def test_two_runs_started_on_one_folder_at_once_one_is_refused_and_the_other_is_whole(
        dropout_model, train_file, uninterrupted, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    procs = [subprocess.Popen(dpo_command(out, dropout_model, train_file, "save_steps=2"),
                              env=preftune_env(cache / str(i)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, e[-1500:]) for p, _, e in results]
    (winner, _, _), (loser, _, err) = sorted(results, key=lambda r: r[0].returncode)
    assert f"is in use by PID {winner.pid} on host" in err and "Traceback" not in err
    assert [r[0] for r in train_records(out)] == list(range(1, 13))               # one log, every step once
    assert_bitwise_equal_runs(uninterrupted, out)
    assert all(verify_checkpoint(p) is None for p in list_checkpoints(out))


def test_a_kill_right_after_resuming_keeps_the_log_and_a_torn_last_line_is_dropped(
        dropout_model, train_file, uninterrupted, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    assert preftune_dpo(out, dropout_model, train_file, "save_steps=4", fault="kill_after_step:6",
                        cache=cache).returncode == -9
    killed = preftune_dpo(out, dropout_model, train_file, "save_steps=4", "resume=latest",
                          fault="kill_after_resume:4", cache=cache)
    assert killed.returncode == -9
    assert [r[0] for r in train_records(out)] == [1, 2, 3, 4]                    # history up to the checkpoint
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "split": "train", "lo')                              # a write cut off by a crash
    resumed = ok(preftune_dpo(out, dropout_model, train_file, "save_steps=4", "resume=latest", cache=cache))
    assert "metrics.jsonl: line 5 is torn" in resumed.stdout
    assert_bitwise_equal_runs(uninterrupted, out)
    assert not [r for r in read_metrics(out / "metrics.jsonl") if r["split"] not in ("train", "eval")]
