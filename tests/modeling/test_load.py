"""load_causal_lm: the weights' dtype (auto = the checkpoint's), the attention implementation, model
config overrides, and clear errors for what this machine cannot load — before any weight is read."""

import pytest
import torch

from preftune.errors import ConfigError
from preftune.modeling.load import load_causal_lm, resolve_dtype
from preftune.testing import tiny_llama


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("bf16-llama")
    tiny_llama(96).to(torch.bfloat16).save_pretrained(path)
    return path


@pytest.mark.parametrize("dtype, expected", [("float32", torch.float32), (None, torch.float32),
                                             ("auto", torch.bfloat16), ("bf16", torch.bfloat16),
                                             ("float16", torch.float16), (torch.bfloat16, torch.bfloat16)])
def test_dtype(bf16_checkpoint, dtype, expected):
    model = load_causal_lm(str(bf16_checkpoint), dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_auto_keeps_a_float32_checkpoint_in_float32(tiny_model_dir):
    assert next(load_causal_lm(str(tiny_model_dir), dtype="auto").parameters()).dtype == torch.float32


def test_trl_style_model_init_kwargs_mean_the_same(bf16_checkpoint):
    model = load_causal_lm(str(bf16_checkpoint), torch_dtype="auto", attn_implementation="eager",
                           attention_dropout=0.25)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert model.config.attention_dropout == 0.25


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attention_implementation(tiny_model_dir, impl):
    assert load_causal_lm(str(tiny_model_dir), attn_implementation=impl).config._attn_implementation == impl


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="int8"), "dtype must be auto or one of"),
    (dict(attn_implementation="fast"), "attn_implementation must be one of"),
    (dict(attn_implementation="flash_attention_2"), "flash_attention_2"),
    (dict(quantization="4bit"), "load_in_4bit needs"),
    (dict(quantization="3bit"), "quantization must be one of"),
    (dict(device_map="auto"), "device_map is not accepted"),
    (dict(no_such_setting=1), "model_init_kwargs: .*no_such_setting"),
])
def test_what_cannot_load_here_is_a_clear_error(tiny_model_dir, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        load_causal_lm(str(tiny_model_dir), **kwargs)


def test_four_bit_needs_bitsandbytes_and_cuda(tiny_model_dir):
    import importlib.util

    with pytest.raises(ConfigError) as error:
        load_causal_lm(str(tiny_model_dir), "cpu", quantization="4bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        assert "pip install bitsandbytes" in str(error.value)
    else:
        assert "needs a CUDA device" in str(error.value)


def test_resolve_dtype_names():
    assert resolve_dtype("torch.bfloat16") is torch.bfloat16
    assert resolve_dtype("auto") == "auto"


def test_lora_targets_fall_back_to_all_linear_where_peft_has_no_choice():
    from preftune.modeling.load import lora_targets
    from preftune.tiny_architectures import tiny_causal_lm

    assert lora_targets(tiny_llama(96), None) is None                       # peft's own choice for Llama
    assert lora_targets(tiny_causal_lm("cohere", 96), None) == "all-linear"  # peft lists no modules for Cohere
    assert lora_targets(tiny_causal_lm("cohere", 96), ["q_proj"]) == ["q_proj"]
    assert lora_targets(tiny_llama(96), ["all-linear"]) == "all-linear"
