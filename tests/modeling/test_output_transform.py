"""The output transform is found from the model's own forward: Granite's and Cohere's logit scales and
Gemma's soft-cap come out as the numbers in their configs (which the code never reads), a family doing
both is reproduced, one doing something else is an error naming it, and the RL sampler (``generate``,
which samples from the model's own logits) agrees with the chunked log-probs."""

import pytest
import torch
from transformers import LlamaForCausalLM

from preftune.modeling.logprobs import SequenceLogprobModel, full_logits_logps
from preftune.modeling.output_transform import OutputTransform, OutputTransformError, derive_output_transform
from preftune.testing import tiny_llama
from preftune.tiny_architectures import tiny_causal_lm


@pytest.mark.parametrize("arch, scale, softcap", [
    ("llama-gqa", 1.0, None), ("llama-gqa-tied", 1.0, None), ("granite", 1 / 4.0, None), ("cohere", 0.25, None),
    ("cohere2", 0.0625, None), ("gemma2", 1.0, 3.0), ("gemma3", 1.0, 3.0), ("gemma4", 1.0, 3.0),
])
def test_the_transform_found_is_the_configs(arch, scale, softcap):
    found = derive_output_transform(tiny_causal_lm(arch, 96))
    assert found.scale == pytest.approx(scale, rel=1e-6)
    assert (found.softcap is None) == (softcap is None)
    if softcap is not None:
        assert found.softcap == pytest.approx(softcap, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("arch, scale, softcap", [("granite", 0.25, None), ("gemma2", 1.0, 3.0)])
def test_a_16_bit_model_is_read_within_its_precision(arch, scale, softcap, dtype):
    # float16 overflows at 65504: the probe's largest hidden states (2^16) would be inf there.
    found = derive_output_transform(tiny_causal_lm(arch, 96).to(dtype))
    assert found.scale == pytest.approx(scale, rel=1e-2)
    assert found.softcap == (None if softcap is None else pytest.approx(softcap, rel=1e-2))


def test_found_the_same_under_a_callers_bf16_autocast():
    # The probe's own output-layer product must not be autocast while the model's logits are not.
    lm = tiny_llama(512, hidden_size=128, num_layers=1)
    with torch.autocast("cpu", torch.bfloat16):
        assert derive_output_transform(lm) == OutputTransform()


class _ScaledAndCapped(LlamaForCausalLM):
    """A family that scales its logits and then soft-caps them (neither is a Llama config setting)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = 5.0 * torch.tanh(out.logits * 3.0 / 5.0)
        return out


class _Squared(LlamaForCausalLM):
    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * out.logits.abs()
        return out


class _VocabularyBias(LlamaForCausalLM):
    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits + torch.linspace(-1, 1, out.logits.shape[-1])
        return out


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 96, (3, 10), generator=g)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, 5:] = True
    return ids, torch.ones_like(ids), loss_mask


def test_a_new_family_that_scales_and_caps_is_reproduced_exactly():
    base = tiny_llama(96)
    model = _ScaledAndCapped(base.config)
    model.load_state_dict(base.state_dict())
    found = derive_output_transform(model)
    assert found.scale == pytest.approx(3.0, rel=1e-6) and found.softcap == pytest.approx(5.0, rel=1e-6)
    ids, attention, loss_mask = _batch()
    ours = SequenceLogprobModel(model, chunk_size=4)(ids, attention, loss_mask).logps
    assert torch.allclose(ours, full_logits_logps(model, ids, attention, loss_mask), atol=1e-5)
    # Without the transform the numbers are off: the difference the probe exists to catch.
    plain = SequenceLogprobModel(model, chunk_size=4, output_transform=OutputTransform())(ids, attention, loss_mask)
    assert (plain.logps - ours).abs().max() > 1e-2


@pytest.mark.parametrize("family", [_Squared, _VocabularyBias])
def test_a_transform_outside_the_family_is_an_error_naming_the_model_type(family):
    model = family(tiny_llama(96).config)
    with pytest.raises(OutputTransformError, match="model type 'llama'.*cannot reproduce"):
        SequenceLogprobModel(model)


def test_a_lora_adapter_on_the_output_layer_is_refused():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(96), LoraConfig(r=2, target_modules=["lm_head", "q_proj"]))
    with pytest.raises(OutputTransformError, match="leave lm_head out of lora_target_modules"):
        SequenceLogprobModel(model)


@pytest.mark.parametrize("arch", ["granite", "cohere", "gemma2"])
def test_the_rl_sampler_samples_from_the_distribution_the_log_probs_describe(arch):
    # generate() samples from softmax(model logits / T): its scores at the sampled tokens are the per-token
    # log-probs the RL stage computes for the same completions (temperature 0.7, no top-k / top-p).
    torch.manual_seed(0)
    lm = tiny_causal_lm(arch, 96).eval()
    prompts = torch.randint(4, 96, (3, 5), generator=torch.Generator().manual_seed(1))
    out = lm.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=0.7,
                      top_k=0, top_p=1.0, max_new_tokens=6, min_new_tokens=6, return_dict_in_generate=True,
                      output_scores=True, pad_token_id=3, eos_token_id=None)
    sampled = out.sequences[:, 5:]
    sampler = torch.stack([s.log_softmax(-1).gather(1, sampled[:, i:i + 1]).squeeze(1)
                           for i, s in enumerate(out.scores)], 1)
    loss_mask = torch.zeros_like(out.sequences, dtype=torch.bool)
    loss_mask[:, 5:] = True
    ours = SequenceLogprobModel(lm, temperature=0.7)(out.sequences, torch.ones_like(out.sequences), loss_mask,
                                                     per_token=True).tokens[:, 5:]
    assert torch.allclose(ours, sampler, atol=1e-5)
