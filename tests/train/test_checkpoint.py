"""Crash-safe checkpoints: the manifest, verification, fall-back to the previous one, rotation."""

import json

import pytest
import torch

from preftune.testing import tiny_llama, tiny_tokenizer
from preftune.train.checkpoint import (
    CheckpointError,
    list_checkpoints,
    resolve_resume,
    save_checkpoint,
    verify_checkpoint,
)
from preftune.train.distributed import DistInfo

ONE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture
def saved(tmp_path):
    """checkpoint-1, -2, -3 of a tiny model (keep-last 3)."""
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, tokenizer, optimizer, {"tokens_seen": step}, ONE, total_limit=3,
                        meta={"config": {"seed": 0}})
    return tmp_path, model, tokenizer, optimizer


def test_manifest_lists_every_file_with_size_and_hash(saved):
    out, *_ = saved
    ckpt = out / "checkpoint-3"
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(files) == on_disk
    assert {"model/model.safetensors", "trainer_state.pt", "rng_rank0.pt", "meta.json"} <= on_disk
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in files.values())
    assert verify_checkpoint(ckpt) is None


def test_keep_last_n_rotation_deletes_only_after_a_complete_save(saved):
    out, model, tokenizer, optimizer = saved
    save_checkpoint(out, 4, model, tokenizer, optimizer, {}, ONE, total_limit=2)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-3", "checkpoint-4"]


@pytest.mark.parametrize("damage, reason", [
    (lambda c: (c / "model" / "model.safetensors").write_bytes(
        _flip((c / "model" / "model.safetensors").read_bytes())), "does not match its sha256"),
    (lambda c: (c / "trainer_state.pt").write_bytes((c / "trainer_state.pt").read_bytes()[:100]), "has 100 bytes"),
    (lambda c: (c / "rng_rank0.pt").unlink(), "rng_rank0.pt is missing"),
    (lambda c: (c / "manifest.json").unlink(), "no manifest.json"),
    (lambda c: (c / "manifest.json").write_text("{not json"), "manifest.json is unreadable"),
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
    save_checkpoint(out, 5, model, tokenizer, optimizer, {}, ONE, total_limit=3)
    assert not stale.exists()


def _flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
