"""Crash-safe checkpoints: the manifest, verification, fall-back to the previous one, rotation."""

import errno
import json
import os
import shutil
import subprocess

import pytest
import torch

from preftune.testing import tiny_llama, tiny_tokenizer
from preftune.train.checkpoint import (
    CheckpointError,
    SaveError,
    list_checkpoints,
    resolve_resume,
    save_checkpoint,
    verify_checkpoint,
)
from preftune.train.distributed import DistInfo
from tests.conftest import pickle_payload

ONE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


RUN = "run-a"


@pytest.fixture
def saved(tmp_path):
    """checkpoint-1, -2, -3 of a tiny model (keep-last 3), written by run ``RUN`` (named in run.json)."""
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters())
    (tmp_path / "run.json").write_text(json.dumps({"run_id": RUN}))
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, tokenizer, optimizer, {"tokens_seen": step}, ONE, total_limit=3,
                        meta={"config": {"seed": 0}}, run_id=RUN)
    return tmp_path, model, tokenizer, optimizer


def test_manifest_lists_every_file_with_size_and_hash(saved):
    out, *_ = saved
    ckpt = out / "checkpoint-3"
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(files) == on_disk
    assert {"model/model.safetensors", "trainer_state.json", "trainer_state.safetensors", "rng_rank0.json",
            "rng_rank0.safetensors", "meta.json"} <= on_disk
    assert not [name for name in on_disk if name.endswith((".pt", ".bin", ".pkl"))]   # nothing pickled
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in files.values())
    assert verify_checkpoint(ckpt) is None


def test_keep_last_n_rotation_deletes_only_after_a_complete_save(saved):
    out, model, tokenizer, optimizer = saved
    save_checkpoint(out, 4, model, tokenizer, optimizer, {}, ONE, total_limit=2, run_id=RUN)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3", "checkpoint-4"]


@pytest.mark.parametrize("damage, reason", [
    (lambda c: (c / "model" / "model.safetensors").write_bytes(
        _flip((c / "model" / "model.safetensors").read_bytes())), "does not match its sha256"),
    (lambda c: (c / "trainer_state.safetensors").write_bytes((c / "trainer_state.safetensors").read_bytes()[:100]),
     "has 100 bytes"),
    (lambda c: (c / "rng_rank0.json").unlink(), "rng_rank0.json is missing"),
    (lambda c: (c / "manifest.json").unlink(), "no manifest.json"),
    (lambda c: (c / "manifest.json").write_text("{not json"), "manifest.json is unreadable"),
    (lambda c: (c / "model" / "pytorch_model.bin").write_bytes(b"planted"),
     "model/pytorch_model.bin is not in the manifest: added after saving"),
])
def test_a_damaged_newest_checkpoint_is_refused_by_name_and_the_previous_one_used(saved, damage, reason):
    out, *_ = saved
    damage(out / "checkpoint-3")
    assert reason in verify_checkpoint(out / "checkpoint-3")
    messages = []
    assert resolve_resume("latest", out, messages.append) == out / "checkpoint-2"
    assert "checkpoint-3" in messages[0] and reason in messages[0]
    with pytest.raises(CheckpointError, match=reason):   # named explicitly, it is refused outright
        resolve_resume(str(out / "checkpoint-3"), out)


def test_no_usable_checkpoint_is_an_error_listing_each_reason(saved):
    out, *_ = saved
    for step in (1, 2, 3):
        (out / f"checkpoint-{step}" / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="checkpoint-3: no manifest.json.*checkpoint-1: no manifest"):
        resolve_resume("latest", out, lambda m: None)
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resolve_resume("latest", out / "empty")


def test_a_half_written_save_is_invisible_and_cleaned_up_by_the_next(saved):
    out, model, tokenizer, optimizer = saved
    stale = out / ".checkpoint-4.tmp"
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "model.safetensors").write_bytes(b"partial")
    assert list_checkpoints(out)[-1].name == "checkpoint-3"
    assert resolve_resume("latest", out) == out / "checkpoint-3"
    save_checkpoint(out, 5, model, tokenizer, optimizer, {}, ONE, total_limit=3, run_id=RUN)
    assert not stale.exists()


def _flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


# --- only this run's checkpoints are trusted or deleted ----------------------------------------------------

def test_rotation_only_deletes_checkpoints_of_the_run_that_saves(tmp_path):
    # Old behaviour: keep-last-N by step number, so another run's checkpoint-9 outranked and deleted the new
    # run's own checkpoints as they were written.
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 9, model, tokenizer, optimizer, {}, ONE, total_limit=2, run_id="earlier-run")
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, tokenizer, optimizer, {}, ONE, total_limit=2, run_id="this-run")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3", "checkpoint-9"]


def test_a_planted_checkpoint_999_is_not_resumed_from(saved):
    out, *_ = saved
    shutil.copytree(out / "checkpoint-3", out / "checkpoint-999")
    manifest = json.loads((out / "checkpoint-999" / "manifest.json").read_text())
    manifest["run_id"] = "someone-else"
    (out / "checkpoint-999" / "manifest.json").write_text(json.dumps(manifest))
    messages = []
    assert resolve_resume("latest", out, messages.append) == out / "checkpoint-3"
    assert "checkpoint-999" in messages[0] and "not by this folder's run run-a" in messages[0]
    del manifest["run_id"]                                     # no run id at all: not trusted either
    (out / "checkpoint-999" / "manifest.json").write_text(json.dumps(manifest))
    assert resolve_resume("latest", out, messages.append) == out / "checkpoint-3"


def test_a_checkpoint_in_the_old_pickle_format_is_refused_not_unpickled(tmp_path):
    old = tmp_path / "checkpoint-2"
    old.mkdir()
    marker = tmp_path / "payload-ran"
    (old / "trainer_state.pt").write_bytes(pickle_payload(marker))
    with pytest.raises(CheckpointError, match="older preftune in torch's pickle format"):
        resolve_resume(str(old), tmp_path)
    assert not marker.exists()


# --- a full disk -----------------------------------------------------------------------------------------------

def _assert_reported_and_previous_intact(err, out):
    message = str(err.value)
    assert f"no space left on the device while writing {out / '.checkpoint-4.tmp'}" in message
    assert f"the previous checkpoint {out / 'checkpoint-3'} is intact (verified)" in message
    assert not (out / ".checkpoint-4.tmp").exists() and not (out / "checkpoint-4").exists()
    assert verify_checkpoint(out / "checkpoint-3") is None


def test_a_save_that_runs_out_of_space_says_so_and_leaves_the_previous_checkpoint_verified(saved, monkeypatch):
    # Old behaviour: torch's "RuntimeError: [enforce fail at inline_container.cc] ... file write failed".
    out, model, tokenizer, optimizer = saved
    from preftune.train import checkpoint

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_tree", full_disk)
    with pytest.raises(SaveError) as err:
        save_checkpoint(out, 4, model, tokenizer, optimizer, {}, ONE, total_limit=3, run_id=RUN)
    _assert_reported_and_previous_intact(err, out)


@pytest.fixture
def small_filesystem(tmp_path):
    """A real 3 MiB tmpfs (needs root and mount rights; skipped where the machine gives none)."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the patched-writer test covers the logic")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_filesystem_mid_save_is_reported_and_the_previous_checkpoint_survives(small_filesystem):
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters())
    out = small_filesystem / "out"
    (out).mkdir()
    save_checkpoint(out, 3, model, tokenizer, optimizer, {}, ONE, total_limit=3, run_id=RUN)
    free = shutil.disk_usage(out).free
    (small_filesystem / "filler").write_bytes(b"\0" * (free - 64 * 1024))   # 64 KiB left: not enough for another
    with pytest.raises(SaveError) as err:
        save_checkpoint(out, 4, model, tokenizer, optimizer, {}, ONE, total_limit=3, run_id=RUN)
    _assert_reported_and_previous_intact(err, out)
