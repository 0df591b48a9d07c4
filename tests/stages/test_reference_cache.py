"""The reference cache is verified like a checkpoint (its sha256 beside it): a damaged file is named and
recomputed, so a run never trains on a wrong reference; a cache that cannot be written is a warning.

Old behaviour: one flipped bit trained silently on a wrong reference (step-3 loss 1.597 instead of 0.591),
a truncated file crashed every rerun without naming its path, and a cache that could not be written
ended a run whose reference was already computed.
"""

from __future__ import annotations

import errno
import os

import pytest

from preftune.config import DPOConfig, load_config
from preftune.stages.dpo import run_dpo

SETTINGS = ["max_length=48", "max_prompt_length=16", "per_device_train_batch_size=8", "logging_steps=1",
            "progress_bar=false", "report_to=none", "seed=0", "max_steps=3", "learning_rate=1e-3"]


def run(model, data, out):
    return run_dpo(load_config(DPOConfig, None, [f"model_name_or_path={model}", f"train_file={data}",
                                                 f"output_dir={out}", *SETTINGS]))


def losses(result):
    return [h["loss"] for h in result.history]


@pytest.fixture
def cached(tiny_model_dir, separable_files, tmp_path):
    train, _ = separable_files
    first = run(tiny_model_dir, train, tmp_path / "first")
    (table,) = (tmp_path / "preftune-cache" / "reference_logps").glob("*.safetensors")
    return first, table


@pytest.mark.parametrize("damage", ["flipped bit", "truncated"])
def test_a_damaged_cache_file_is_named_and_recomputed(tiny_model_dir, separable_files, tmp_path, capsys, cached,
                                                      damage):
    first, table = cached
    data = bytearray(table.read_bytes())
    if damage == "flipped bit":
        data[-3] ^= 0x10                                     # inside the last log-prob
        table.write_bytes(bytes(data))
    else:
        table.write_bytes(bytes(data[:len(data) // 2]))
    capsys.readouterr()
    again = run(tiny_model_dir, separable_files[0], tmp_path / "again")
    output = capsys.readouterr().out
    assert f"the cache file {table} is damaged (its sha256 does not match the one saved beside it)" in output
    assert "cached at" in output                             # recomputed and written afresh
    assert losses(again) == losses(first)                    # trained on the right reference


@pytest.mark.parametrize("how", ["unwritable folder", "full disk"])
def test_a_cache_that_cannot_be_written_is_a_warning_and_the_run_goes_on(tiny_model_dir, separable_files, tmp_path,
                                                                         capsys, monkeypatch, how):
    cache = tmp_path / "preftune-cache"
    cache.mkdir()
    if how == "unwritable folder":
        (cache / "reference_logps").write_text("a file where the cache folder should be")
    else:
        from preftune.modeling import reference

        def full(table, path):
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(reference, "_write_table", full)
    result = run(tiny_model_dir, separable_files[0], tmp_path / "out")
    output = capsys.readouterr().out
    assert "warning: the cache was not saved — " in output and "the run goes on with the values in memory" in output
    if how == "full disk":
        assert "no space left on the device while writing" in output
    assert len(result.history) == 3 and (result.final_dir / "model.safetensors").is_file()
