"""Padding-free packing: the plan by hand, equality with padded rows, and the guard against decoders
that would let packed sequences see each other."""

import pytest
import torch

from preftune.errors import ConfigError
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.modeling.packing import check_packing, plan_packing, resolve_padding_free
from preftune.testing import tiny_llama
from preftune.tiny_architectures import tiny_causal_lm


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
    check = check_packing(tiny_llama(96).model, 96, torch.device("cpu"))
    assert check.ok and check.mismatch < 1e-6 and check.leak == 0.0


def test_a_decoder_that_ignores_positions_is_refused_when_asked_for_and_padded_on_auto():
    # OPT reads positions from the attention mask's running count, not from position_ids: packed
    # sequences would attend to each other.
    opt = tiny_causal_lm("opt", 96)
    assert check_packing(opt.get_decoder(), 96, torch.device("cpu")).mismatch > 1e-2
    with pytest.raises(ConfigError, match="padding_free.*does not keep packed sequences apart.*Set padding_free"):
        SequenceLogprobModel(opt, padding_free=True, prefix_sharing="false")(*_batch([6, 3, 2], 6, 96))
    with pytest.raises(ConfigError, match="model type 'opt'.*Set padding_free=auto"):
        resolve_padding_free(opt, True, print)
    said = []
    assert resolve_padding_free(opt, "auto", said.append) is False
    assert len(said) == 1 and "'opt' runs on padded rows (padding_free=auto)" in said[0]
    assert resolve_padding_free(opt, False, said.append) is False and len(said) == 1
    # Without packing the same model works.
    SequenceLogprobModel(opt)(*_batch([6, 3, 2], 6, 96))


def test_a_convolution_across_the_boundary_is_caught_however_small():
    # LFM2's short convolution sees the last tokens of the sequence packed before: in a tiny random model
    # that moves the hidden states by ~1e-5 only, below any float tolerance, but it is not zero.
    check = check_packing(tiny_causal_lm("lfm2", 96).get_decoder(), 96, torch.device("cpu"))
    assert check.leak > 1e-6 and not check.ok


def test_auto_packs_a_model_that_keeps_sequences_apart():
    said = []
    assert resolve_padding_free(tiny_llama(96), "auto", said.append) is True and said == []
