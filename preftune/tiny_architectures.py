"""Tiny random causal LMs of every decoder family preftune is tested on, built from transformers' own
config classes: a few thousand parameters each, real Hugging Face objects (the same forward code, masks,
caches and output transforms as a real checkpoint of the family, only small).

``ARCHITECTURES`` is the architecture matrix (``tests/architectures``): a new family is one line here.
Each entry is (transformers model type, config overrides on top of :data:`SMALL`). Overrides set what
makes the family itself: grouped-query heads, sliding windows, experts, logit scaling and soft-capping,
ALiBi, linear-attention or convolution layers, state-space blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

# Token ids of preftune.testing.tiny_tokenizer: <|endoftext|> 0, <|im_end|> 2 (EOS), <pad> 3.
SMALL: dict[str, Any] = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=4, max_position_embeddings=64, bos_token_id=0,
                             eos_token_id=2, pad_token_id=3)
_GPT2_STYLE = dict(n_embd=16, n_layer=2, n_head=4, n_positions=64, head_dim=None)
_MOE = dict(output_router_logits=True, router_aux_loss_coef=0.02)

ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-gqa-tied": ("llama", dict(tie_word_embeddings=True)),
    "llama-gqa": ("llama", dict(tie_word_embeddings=False)),
    "mistral-sliding": ("mistral", dict(sliding_window=4)),
    "qwen2-sliding": ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=0)),
    "qwen3": ("qwen3", {}),
    "qwen3-moe": ("qwen3_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8, **_MOE)),
    "qwen2-moe": ("qwen2_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                                    shared_expert_intermediate_size=8, **_MOE)),
    "mixtral": ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=8, **_MOE)),
    "gemma": ("gemma", {}),
    "gemma2": ("gemma2", dict(final_logit_softcapping=3.0, sliding_window=4)),
    "gemma3": ("gemma3_text", dict(final_logit_softcapping=3.0, sliding_window=4,
                                   layer_types=["sliding_attention", "full_attention"])),
    "gemma4": ("gemma4_text", dict(final_logit_softcapping=3.0, sliding_window=4, global_head_dim=8,
                                   layer_types=["sliding_attention", "full_attention"],
                                   vocab_size_per_layer_input=None, hidden_size_per_layer_input=4)),
    "phi": ("phi", dict(head_dim=None)),
    "phi3": ("phi3", {}),
    "olmo2": ("olmo2", {}),
    "smollm3": ("smollm3", {}),
    "stablelm": ("stablelm", {}),
    "gpt2": ("gpt2", dict(_GPT2_STYLE)),
    "gpt-neox": ("gpt_neox", {}),
    "gpt-bigcode": ("gpt_bigcode", dict(_GPT2_STYLE)),
    "falcon-rotary": ("falcon", dict(alibi=False, head_dim=None)),
    "falcon-alibi": ("falcon", dict(alibi=True, head_dim=None)),
    "opt": ("opt", dict(ffn_dim=32, word_embed_proj_dim=16, head_dim=None)),
    "bloom": ("bloom", dict(n_layer=2, n_head=4, head_dim=None)),
    "granite": ("granite", dict(logits_scaling=4.0, embedding_multiplier=2.0, residual_multiplier=0.5,
                                attention_multiplier=0.3)),
    "cohere": ("cohere", dict(logit_scale=0.25)),
    "qwen3.5": ("qwen3_5_text", dict(layer_types=["linear_attention", "full_attention"], linear_key_head_dim=4,
                                     linear_value_head_dim=4, linear_num_key_heads=2, linear_num_value_heads=4)),
    "lfm2": ("lfm2", dict(layer_types=["conv", "full_attention"])),
    "mamba": ("mamba", dict(state_size=4, expand=2, conv_kernel=4, head_dim=None)),
    # Families beyond the list that users fine-tune.
    "gpt-oss": ("gpt_oss", dict(num_local_experts=4, num_experts_per_tok=2, **_MOE)),
    "deepseek-v3": ("deepseek_v3", dict(kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=2, v_head_dim=4,
                                        qk_nope_head_dim=2, n_routed_experts=4, n_shared_experts=1,
                                        num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1,
                                        moe_intermediate_size=8, head_dim=None, num_key_value_heads=4)),
    "olmo3": ("olmo3", {}),
    "starcoder2": ("starcoder2", {}),
    "cohere2": ("cohere2", dict(sliding_window=4)),
    "glm4": ("glm4", {}),
}


def tiny_config(name: str, vocab_size: int) -> Any:
    """The transformers config of architecture ``name`` at test size."""
    model_type, overrides = ARCHITECTURES[name]
    values = {**SMALL, "vocab_size": vocab_size, **overrides}
    if model_type == "gemma4_text" and values.get("vocab_size_per_layer_input") is None:
        values["vocab_size_per_layer_input"] = vocab_size
    return AutoConfig.for_model(model_type, **{k: v for k, v in values.items() if v is not None})


def tiny_causal_lm(name: str, vocab_size: int, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised causal LM of architecture ``name`` (seeded; the global RNG is left alone)."""
    config = tiny_config(name, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)
