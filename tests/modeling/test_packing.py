"""Padding-free packing: the plan by hand, equality with padded rows, and the guard against decoders
that would let packed sequences see each other."""

import pytest
import torch
from torch import nn

from preftune.errors import ConfigError
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.modeling.packing import packing_error, plan_packing
from preftune.testing import tiny_llama


def _mask(lengths, width):
    return (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()


def test_plan_by_hand():
    # Lengths 5, 2, 3 in rows of 5: first-fit decreasing puts 5 alone, then 3 and 2 together.
    plan = plan_packing(_mask([5, 2, 3], 5))
    assert plan.source.shape[0] == 2
    assert plan.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert plan.source.tolist() == [[0, 1, 2, 3, 4], [10, 11, 12, 5, 6]]
    assert plan.where.tolist() == [[0, 1, 2, 3, 4], [8, 9, 0, 0, 0], [5, 6, 7, 0, 0]]


def test_filler_after_the_last_sequence_is_its_own_block():
    plan = plan_packing(_mask([4, 1], 4))   # 4 alone, 1 + 3 filler positions
    assert plan.position_ids.tolist() == [[0, 1, 2, 3], [0, 0, 1, 2]]


def test_left_padding_is_refused():
    with pytest.raises(ValueError, match="right-padded"):
        plan_packing(torch.tensor([[0, 1, 1], [1, 1, 1]]))


def _batch(lengths, width, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (len(lengths), width), generator=g)
    attention = _mask(lengths, width)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    for r, n in enumerate(lengths):
        loss_mask[r, n // 2:n] = True
    return ids, attention, loss_mask


def test_packed_logps_values_and_gradients_equal_the_padded_ones():
    torch.manual_seed(0)
    padded_model = tiny_llama(96)
    packed_model = tiny_llama(96)
    packed_model.load_state_dict(padded_model.state_dict())
    batch = _batch([12, 5, 7, 3, 9, 4], 12, 96)
    a = SequenceLogprobModel(padded_model, chunk_size=4)(*batch, per_token=True)
    b = SequenceLogprobModel(packed_model, chunk_size=4, padding_free=True, prefix_sharing="false")(*batch,
                                                                                                 per_token=True)
    assert torch.allclose(a.logps, b.logps, atol=1e-5)
    assert torch.allclose(a.tokens, b.tokens, atol=1e-5)
    assert torch.equal(a.lengths, b.lengths)
    a.logps.sum().backward()
    b.logps.sum().backward()
    for (name, p), q in zip(padded_model.named_parameters(), packed_model.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_a_llama_decoder_keeps_packed_sequences_apart():
    assert packing_error(tiny_llama(96).model, 96, torch.device("cpu")) < 1e-5


class _IgnoresPositions(nn.Module):
    """A decoder that drops position_ids: packed sequences would attend to each other."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_a_decoder_that_ignores_positions_is_refused_on_first_use():
    model = tiny_llama(96)
    broken = _IgnoresPositions(model.model)
    model.get_decoder = lambda: broken
    with pytest.raises(ConfigError, match="padding_free.*Set padding_free=false"):
        SequenceLogprobModel(model, padding_free=True)(*_batch([6, 3, 2], 6, 96))
    # Without packing the same model works.
    SequenceLogprobModel(model)(*_batch([6, 3, 2], 6, 96))
