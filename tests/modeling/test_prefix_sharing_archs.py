"""Prefix sharing across architectures: where the probe lets a model run the shared layout, its log-probs
and gradients equal the padded rows' (sliding windows, partial rotary, QK norms, MoE, learned positions
included); where it does not (attention soft-capping, a model that cannot swap its attention), the model
falls back to separate packing, also exact; a model with dropout shares only outside training."""

from __future__ import annotations

import pytest
import torch
import transformers

from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.modeling.prefix_sharing import use_prefix_sharing
from tests.modeling.test_prefix_sharing import _random_rows, assert_exact

COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=128)
SHARES = {
    "qwen2": dict(num_key_value_heads=2),
    "qwen3": dict(num_key_value_heads=2, head_dim=8),
    "mistral": dict(num_key_value_heads=2, sliding_window=5),
    "gemma": dict(num_key_value_heads=2, head_dim=8),
    "gemma3_text": dict(num_key_value_heads=2, head_dim=8, sliding_window=4),
    "phi3": dict(num_key_value_heads=2, pad_token_id=0),
    "gpt_neox": dict(),
    "olmo2": dict(num_key_value_heads=2),
    "starcoder2": dict(num_key_value_heads=2),
    "cohere": dict(num_key_value_heads=2),
    "phi": dict(),
    "mixtral": dict(num_key_value_heads=2, num_local_experts=4),
    "gpt2": dict(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=128),
    "opt": dict(vocab_size=96, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                word_embed_proj_dim=32, max_position_embeddings=128),
}
FALLS_BACK = {
    "gemma2": (dict(num_key_value_heads=2, head_dim=8), "softcap"),
    "stablelm": (dict(num_key_value_heads=2), "does not keep completions apart"),
}


def _pair(arch: str, kw: dict):
    config = transformers.AutoConfig.for_model(arch, **(kw if arch in ("gpt2", "opt") else {**COMMON, **kw}))
    torch.manual_seed(0)
    a = transformers.AutoModelForCausalLM.from_config(config).eval()   # eval: GPT-2 and OPT have dropout
    b = transformers.AutoModelForCausalLM.from_config(config).eval()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("arch", sorted(SHARES))
def test_the_shared_layout_is_exact(arch):
    a, b = _pair(arch, SHARES[arch])
    assert use_prefix_sharing(b, b.get_decoder(), "true", torch.device("cpu"))
    assert_exact(SequenceLogprobModel(a, chunk_size=8),
                 SequenceLogprobModel(b, chunk_size=8, padding_free=True, prefix_sharing="true"), _random_rows(96))


@pytest.mark.parametrize("arch", sorted(FALLS_BACK))
def test_a_model_that_cannot_share_falls_back_exactly(arch):
    kw, why = FALLS_BACK[arch]
    a, b = _pair(arch, kw)
    lines: list[str] = []
    assert not use_prefix_sharing(b, b.get_decoder(), "auto", torch.device("cpu"), lines.append)
    assert lines[0].startswith("prefix sharing: off") and why in lines[0]
    assert_exact(SequenceLogprobModel(a, chunk_size=8),
                 SequenceLogprobModel(b, chunk_size=8, padding_free=True, prefix_sharing="auto"), _random_rows(96))


def test_a_model_with_dropout_shares_only_outside_training():
    _, model = _pair("gpt2", SHARES["gpt2"])
    lines: list[str] = []
    decoder = model.get_decoder()
    assert use_prefix_sharing(model, decoder, "auto", torch.device("cpu"), lines.append)   # eval mode
    assert "not in training passes: this model has dropout" in lines[0]
    model.train()
    assert not use_prefix_sharing(model, decoder, "auto", torch.device("cpu"))
    assert use_prefix_sharing(model, decoder, "true", torch.device("cpu"))   # asked for explicitly
