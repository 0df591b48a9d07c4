"""The reference cache's key names everything that changes a reference log-prob: the same weights under an
edited config field, another chat template or another attention implementation miss the cache; the
same model copied to another folder, or run with other chunking / lean layers, hits it."""

import json
import math
import shutil

import pytest

from preftune.modeling.lean_layers import make_lean
from preftune.modeling.reference import cache_key, model_fingerprint
from preftune.stages.dpo import run_dpo
from preftune.testing import tiny_llama
from tests.stages.test_dpo import dpo_config


def _run(model_dir, train, out, capsys, *extra):
    result = run_dpo(dpo_config(model_dir, train, out, "max_steps=1", *extra))
    return result, "cache hit" in capsys.readouterr().out


def test_an_edited_config_field_misses_the_cache(tiny_model_dir, separable_files, tmp_path, capsys):
    train, _ = separable_files
    _, hit = _run(tiny_model_dir, train, tmp_path / "a", capsys)
    assert not hit
    copied = tmp_path / "copied"
    shutil.copytree(tiny_model_dir, copied)
    _, hit = _run(copied, train, tmp_path / "b", capsys, "logprob_chunk_size=7", "lean_activations=false")
    assert hit   # the same model elsewhere, chunked and laid out otherwise: the same numbers
    edited = tmp_path / "edited"
    shutil.copytree(tiny_model_dir, edited)
    config = json.loads((edited / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 500.0          # same weights, other positions
    (edited / "config.json").write_text(json.dumps(config))
    result, hit = _run(edited, train, tmp_path / "c", capsys)
    assert not hit
    # π_θ = π_ref at the first step: with its own reference table the margins are exactly 0 and the loss is
    # log 2; the unedited model's table would leave the two models' differences in them.
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result.history[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_another_chat_template_misses_the_cache(tiny_model_dir, separable_files, tmp_path, capsys):
    train, _ = separable_files
    _run(tiny_model_dir, train, tmp_path / "a", capsys)
    other = tmp_path / "template"
    shutil.copytree(tiny_model_dir, other)
    settings = json.loads((other / "tokenizer_config.json").read_text())
    template = settings.get("chat_template") or (other / "chat_template.jinja").read_text()
    template = template.replace("'\\n'", "'\\n\\n'")
    if "chat_template" in settings:
        settings["chat_template"] = template
        (other / "tokenizer_config.json").write_text(json.dumps(settings))
    else:
        (other / "chat_template.jinja").write_text(template)
    _, hit = _run(other, train, tmp_path / "b", capsys, "use_chat_template=false")
    assert not hit   # not even used to render this data: the key names the tokenizer as a whole


def test_the_key_names_the_attention_implementation_but_not_the_lean_layers():
    sdpa, eager, lean = tiny_llama(96, num_key_value_heads=2), tiny_llama(96, num_key_value_heads=2), \
        tiny_llama(96, num_key_value_heads=2)
    eager.set_attn_implementation("eager")
    assert make_lean(lean)["attention"] == 1     # switched to preftune's grouped-query SDPA: the same math

    def key(model):
        return cache_key(model_fingerprint(model), "tokenizer", "data", "fp32")

    assert key(sdpa) == key(lean) != key(eager)
    assert key(sdpa) != cache_key(model_fingerprint(sdpa), "tokenizer", "data", "bf16")
    assert key(sdpa) != cache_key(model_fingerprint(sdpa), "other tokenizer", "data", "fp32")
    assert key(sdpa) != key(tiny_llama(96, num_key_value_heads=2, seed=1))      # other weights
