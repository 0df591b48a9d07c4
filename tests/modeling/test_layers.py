"""Decoder-layer discovery (torch_compile, FSDP) finds every family's blocks, whatever the path."""

import pytest
from torch import nn

from preftune.modeling.layers import decoder_layers
from preftune.testing import tiny_llama
from preftune.tiny_architectures import ARCHITECTURES, tiny_causal_lm

PATHS = {"gpt2": "transformer.h", "gpt-bigcode": "transformer.h", "falcon-rotary": "transformer.h",
         "falcon-alibi": "transformer.h", "bloom": "transformer.h", "gpt-neox": "gpt_neox.layers",
         "opt": "model.decoder.layers", "mamba": "backbone.layers"}   # every other family: model.layers


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_family_s_decoder_layers_are_found(arch):
    lm = tiny_causal_lm(arch, 96)
    layers = decoder_layers(lm)
    expected = lm.get_submodule(PATHS.get(arch, "model.layers"))
    assert len(layers) == lm.config.num_hidden_layers == 2
    assert all(a is b for a, b in zip(layers, expected, strict=True))


def test_inside_a_peft_wrapper_and_a_classification_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    lm = tiny_llama(96)
    wrapped = get_peft_model(lm, LoraConfig(r=2, target_modules=["q_proj"]))
    assert decoder_layers(wrapped) == list(lm.model.layers)
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    assert decoder_layers(classifier) == list(classifier.model.layers)


def test_a_model_without_blocks_is_an_error_naming_it():
    class NoBlocks(nn.Module):
        def get_decoder(self):
            return nn.Linear(2, 2)

    with pytest.raises(ValueError, match="cannot find the decoder layers of NoBlocks"):
        decoder_layers(NoBlocks())


def test_fsdp_shards_the_same_layers():
    from preftune.train import fsdp

    assert fsdp.decoder_layers is decoder_layers
