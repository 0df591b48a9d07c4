"""Nothing a run reads back is unpickled: a pickle payload planted in any file a resume or a cache read
touches runs nothing, and the run stops with an error naming the file (or, for a cache, says it is
damaged and computes it again).

The attacker here also regenerates the checkpoint's manifest, so hash verification passes: what is
tested is the format, not the checksum. Old behaviour: ``trainer_state.pt`` and ``rng_rank0.pt`` were
read with ``torch.load(weights_only=False)`` and a payload in them ran a shell command on
``resume=latest``; the sentiment and r* caches were read with ``joblib.load``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from preftune.config import DPOConfig, load_config
from preftune.errors import PreftuneError
from preftune.stages.dpo import run_dpo
from preftune.train.checkpoint import checkpoint_run_id, write_manifest
from tests.conftest import pickle_payload
from tests.stages.conftest import SETTINGS

CHECKPOINT_FILES = ["manifest.json", "meta.json", "trainer_state.json", "trainer_state.safetensors", "rng_rank0.json",
                    "rng_rank0.safetensors", "model/config.json", "model/generation_config.json",
                    "model/model.safetensors", "model/tokenizer.json", "model/tokenizer_config.json",
                    "model/chat_template.jinja"]
# A resume does not need these: it takes the tokenizer from model_name_or_path (whose fingerprint the
# checkpoint's meta.json must match), and transformers ignores an unreadable generation_config.json (it
# only sets sampling defaults). They are written for whoever takes the checkpoint's model folder elsewhere.
NOT_NEEDED_ON_RESUME = {"model/tokenizer.json", "model/tokenizer_config.json", "model/chat_template.jinja",
                        "model/generation_config.json"}
FOLDER_FILES = ["run.json", "metrics.jsonl", ".preftune.lock"]


def cfg(model, data, out, *extra):
    return load_config(DPOConfig, None, [f"model_name_or_path={model}", f"train_file={data}", f"output_dir={out}",
                                         *SETTINGS, "max_steps=3", "save_steps=2", *extra])


@pytest.fixture(scope="module")
def finished(tiny_model_dir, train_file, tmp_path_factory):
    """A finished 3-step run (checkpoint-2, checkpoint-3) and its reference cache."""
    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFTUNE_CACHE", str(root / "cache"))
        run_dpo(cfg(tiny_model_dir, train_file, root / "out"))
    (root / "out" / ".preftune.lock").write_text("{}")     # as a process killed mid-run leaves it
    return root


def test_the_list_covers_every_file_a_checkpoint_holds(finished):
    ckpt = finished / "out" / "checkpoint-3"
    assert sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()) == sorted(CHECKPOINT_FILES)


def _attempt(finished, tiny_model_dir, train_file, tmp_path, capsys, target: Path, cache: Path | None = None):
    """Plant the payload in ``target`` (inside a copy of the finished run), resume, return (error, output)."""
    marker = tmp_path / "payload-ran"
    target.write_bytes(pickle_payload(marker))
    error = None
    try:
        run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "out", "resume=latest"))
    except PreftuneError as e:
        error = str(e)
    assert not marker.exists(), "the payload ran"
    return error, capsys.readouterr().out


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_payload_in_a_checkpoint_file_runs_nothing_and_is_named(finished, tiny_model_dir, train_file, tmp_path,
                                                                  capsys, monkeypatch, name):
    monkeypatch.setenv("PREFTUNE_CACHE", str(finished / "cache"))
    shutil.copytree(finished / "out", tmp_path / "out")
    ckpt = tmp_path / "out" / "checkpoint-3"
    planted = ckpt / name
    if name == "manifest.json":
        error, output = _attempt(finished, tiny_model_dir, train_file, tmp_path, capsys, planted)
        assert f"{ckpt} — manifest.json is unreadable" in output          # refused; checkpoint-2 is used instead
        assert error is None and "resumed from" in output and "checkpoint-2" in output
        return
    run_id = checkpoint_run_id(ckpt)
    marker = tmp_path / "payload-ran"
    planted.write_bytes(pickle_payload(marker))
    write_manifest(ckpt, 3, run_id)                                       # the attacker fixes the hashes
    error, output = _attempt(finished, tiny_model_dir, train_file, tmp_path, capsys, planted)
    if name in NOT_NEEDED_ON_RESUME:
        assert error is None, error
    else:
        assert error is not None and Path(name).name in error, (error, output[-2000:])


@pytest.mark.parametrize("name", FOLDER_FILES)
def test_a_payload_in_a_run_folder_file_runs_nothing_and_is_named(finished, tiny_model_dir, train_file, tmp_path,
                                                                  capsys, monkeypatch, name):
    monkeypatch.setenv("PREFTUNE_CACHE", str(finished / "cache"))
    shutil.copytree(finished / "out", tmp_path / "out")
    error, output = _attempt(finished, tiny_model_dir, train_file, tmp_path, capsys, tmp_path / "out" / name)
    assert name in (error or output), (error, output[-2000:])


def test_a_payload_in_the_reference_cache_runs_nothing_is_named_and_recomputed(finished, tiny_model_dir, train_file,
                                                                               tmp_path, capsys, monkeypatch):
    from preftune.assets.cache import write_verified

    shutil.copytree(finished / "cache", tmp_path / "cache")
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    (table,) = (tmp_path / "cache" / "reference_logps").glob("*.safetensors")
    marker = tmp_path / "payload-ran"
    write_verified(table, lambda tmp: tmp.write_bytes(pickle_payload(marker)))   # with a matching checksum
    run_dpo(cfg(tiny_model_dir, train_file, tmp_path / "out"))
    output = capsys.readouterr().out
    assert not marker.exists()
    assert f"the cache file {table} is damaged (it cannot be read" in output and "cached at" in output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == {**json.loads((finished / "out" / "summary.json").read_text()), "seconds": summary["seconds"],
                       "final_dir": summary["final_dir"]}
