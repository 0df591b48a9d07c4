"""torch_compile: compiled decoder layers compute the same log-probs and gradients, across lengths."""

import pytest
import torch

from preftune.modeling.layers import compile_decoder_layers
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.testing import tiny_llama


def _batch(length: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 96, (2, length), generator=g)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, length // 2:] = True
    return ids, torch.ones_like(ids), loss_mask


@pytest.mark.slow  # about a minute of inductor compilation on 2 cores
def test_compiled_layers_give_the_same_logps_and_gradients_at_two_lengths():
    torch.manual_seed(0)
    eager = tiny_llama(96)
    compiled = tiny_llama(96)
    compiled.load_state_dict(eager.state_dict())
    assert compile_decoder_layers(compiled) == len(compiled.model.layers)
    for length, seed in ((9, 0), (14, 1)):   # a second padded length must not need another model
        batch = _batch(length, seed)
        a = SequenceLogprobModel(eager)(*batch)
        b = SequenceLogprobModel(compiled)(*batch)
        assert torch.allclose(a.logps, b.logps, atol=1e-5)
        a.logps.sum().backward()
        b.logps.sum().backward()
        for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-5), name
        eager.zero_grad()
        compiled.zero_grad()
