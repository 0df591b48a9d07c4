"""Preflight: a resumed run must match its checkpoint; the output folder must have room."""

import json
from collections import namedtuple

import pytest
from torch import nn

from preftune.errors import ConfigError
from preftune.train import preflight
from preftune.train.preflight import (
    check_free_space,
    check_resume,
    checkpoint_bytes,
    peak_bytes,
    resume_differences,
)

SAVED = {"config": {"seed": 0, "beta": 0.1, "loss_type": ["sigmoid"], "logging_steps": 1, "output_dir": "a"},
         "fingerprints": {"train_data": "a" * 64, "tokenizer": "b" * 64}}


def test_every_setting_that_shapes_the_numbers_is_named():
    now = {"seed": 1, "beta": 0.2, "loss_type": ("sigmoid",), "logging_steps": 10, "output_dir": "b"}
    diffs = resume_differences(SAVED, now, SAVED["fingerprints"])
    assert diffs == ["beta: 0.1 → 0.2", "seed: 0 → 1"]   # tuple == saved list; logging and output may change


def test_memory_and_speed_knobs_may_change_on_resume():
    # Chunked log-probs are computed row by row, recomputation replays the same ops, compilation
    # fuses them: how the numbers are computed, not which — and a key the old run did not have yet
    # (torch_compile) is no difference either.
    now = {**SAVED["config"], "logprob_chunk_size": 256, "gradient_checkpointing": True, "torch_compile": True}
    saved = {**SAVED, "config": {**SAVED["config"], "logprob_chunk_size": 1024, "gradient_checkpointing": False}}
    assert resume_differences(saved, now, SAVED["fingerprints"]) == []


def test_fingerprints_are_compared_and_named():
    diffs = resume_differences(SAVED, SAVED["config"], {"train_data": "c" * 64, "tokenizer": "b" * 64})
    assert diffs == ["train_data: fingerprint aaaaaaaaaaaa → cccccccccccc"]


def test_a_new_or_dropped_key_counts_as_a_difference():
    assert resume_differences(SAVED, {**SAVED["config"], "lora_r": 8}, SAVED["fingerprints"]) == ["lora_r: None → 8"]


def test_check_resume_refuses_unless_forced(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps(SAVED))
    changed = {**SAVED["config"], "seed": 7}
    with pytest.raises(ConfigError, match=r"seed: 0 → 7.*force_resume=true"):
        check_resume(tmp_path, changed, SAVED["fingerprints"], force=False)
    said = []
    check_resume(tmp_path, changed, SAVED["fingerprints"], force=True, log=said.append)
    assert said == [f"force_resume: resuming {tmp_path.name} although seed: 0 → 7"]
    check_resume(tmp_path, SAVED["config"], SAVED["fingerprints"], force=False)  # unchanged: silent


def test_a_checkpoint_without_meta_cannot_be_checked(tmp_path):
    with pytest.raises(ConfigError, match="no meta.json"):
        check_resume(tmp_path, {}, {}, force=False)


def test_checkpoint_size_by_hand():
    model = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 5))     # 110 + 55 parameters
    assert checkpoint_bytes(model, "adamw", peft=False) == ((165 + 2 * 165) * 4, 165 * 4)
    assert checkpoint_bytes(model, "rmsprop", peft=False) == ((165 + 165) * 4, 165 * 4)
    model[0].requires_grad_(False)                                 # an adapter-like run: 55 trainable
    assert checkpoint_bytes(model, "adamw", peft=True) == ((55 + 2 * 55) * 4, 165 * 4)


def test_too_little_free_space_is_an_error_in_useful_units(tmp_path, monkeypatch):
    # Old behaviour: "0.00 GB free, but ... need about 0.00 GB" for a small model on a nearly full disk.
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 3 * 2**20, 3 * 2**20))
    with pytest.raises(ConfigError, match=r": 3 MiB free, but this run needs about 4.5 MiB more at its peak "
                                          r"\(the checkpoint\)"):
        check_free_space(tmp_path, 9 * 2**19, "the checkpoint")
    check_free_space(tmp_path, 3 * 2**20, "the checkpoint")


def test_the_peak_counts_the_new_checkpoint_before_the_oldest_is_removed_and_the_final_model():
    c, f = 100, 30
    # keep 2, 5 saves: at the 3rd save three checkpoints exist at once (300) > two + final (230).
    # Old behaviour: one checkpoint + final = 130.
    assert peak_bytes(c, f, saves=5, keep=2)[0] == 300
    assert "3 checkpoint(s) of 100 B at once (save_total_limit=2 plus the new one" in peak_bytes(c, f, 5, 2)[1]
    assert peak_bytes(c, f, saves=1, keep=2)[0] == 130          # only the last checkpoint, then final
    assert peak_bytes(c, 300, saves=5, keep=1)[0] == 400         # a final larger than a checkpoint: 1 + final
    assert peak_bytes(c, f, saves=4, keep=None)[0] == 430        # keep all: every checkpoint + final
    assert peak_bytes(c, f, saves=5, keep=2, kept_already=2)[0] == 100   # a resumed run's two are on disk


def test_another_process_count_may_split_the_same_global_batch_differently():
    saved = {"config": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}, "world_size": 2}
    same = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}
    assert resume_differences(saved, same, {}, world_size=1) == []
    bigger = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4}
    assert resume_differences(saved, bigger, {}, world_size=1) == ["gradient_accumulation_steps: 1 → 4"]
