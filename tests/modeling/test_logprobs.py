"""Chunked completion log-probs equal the naive full-logits computation, values and gradients."""

import pytest
import torch

from preftune.modeling.logprobs import SequenceLogprobModel, chunked_token_logps, full_logits_logps
from preftune.testing import tiny_llama, tiny_tokenizer


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (4, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[2, 9:] = 0                     # right padding on one row
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, 5:9] = True                 # completion tokens 5..8
    loss_mask[3, 5:7] = False                # a shorter completion
    return ids, attention, loss_mask


@pytest.mark.parametrize("chunk", [1, 3, 1024])
def test_chunked_equals_full_logits_values_and_grads(chunk):
    model = tiny_llama(96)
    ids, attention, loss_mask = _batch(96)
    out = SequenceLogprobModel(model, chunk_size=chunk)(ids, attention, loss_mask)
    reference = full_logits_logps(model, ids, attention, loss_mask)
    assert torch.allclose(out.logps, reference, atol=1e-5)
    assert out.lengths.tolist() == [4.0, 4.0, 4.0, 2.0]

    out.logps.sum().backward()
    chunked_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full_logits_logps(model, ids, attention, loss_mask).sum().backward()
    for a, (name, p) in zip(chunked_grads, model.named_parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5), name


def test_hand_computed_token_logps():
    # hidden rows pick out vocabulary rows of an identity head: logits = e_i, so
    # log p(target) = [target == i] − log(e + V − 1) for V = 3.
    head = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))
    hidden = torch.eye(3)[[0, 1, 2, 0]]
    targets = torch.tensor([0, 2, 2, 1])
    z = torch.log(torch.tensor(torch.e + 2))
    expected = torch.tensor([1.0, 0.0, 1.0, 0.0]) - z
    assert torch.allclose(chunked_token_logps(hidden, head, targets, chunk_size=3), expected, atol=1e-6)


def test_padding_does_not_change_logps():
    model = tiny_llama(96).eval()
    ids, attention, loss_mask = _batch(96, seed=1)
    wrapped = SequenceLogprobModel(model)
    base = wrapped(ids, attention, loss_mask).logps
    pad = 7
    ids2 = torch.cat([ids, torch.full((4, pad), 3)], 1)
    att2 = torch.cat([attention, torch.zeros(4, pad, dtype=attention.dtype)], 1)
    mask2 = torch.cat([loss_mask, torch.zeros(4, pad, dtype=torch.bool)], 1)
    assert torch.allclose(wrapped(ids2, att2, mask2).logps, base, atol=1e-6)


def test_mean_logps_divide_by_completion_length():
    model = tiny_llama(96)
    ids, attention, loss_mask = _batch(96)
    out = SequenceLogprobModel(model)(ids, attention, loss_mask)
    assert torch.allclose(out.mean, out.logps / torch.tensor([4.0, 4.0, 4.0, 2.0]))


def test_no_vocabulary_sized_tensor_is_saved_for_backward():
    """What autograd keeps between forward and backward holds no [rows, vocab] logits: chunks are
    recomputed in backward. The naive path, for contrast, saves the full [N, T, V] logits."""
    vocab = 512
    model = tiny_llama(vocab, hidden_size=16)
    ids, attention, loss_mask = _batch(vocab)
    saved: list[torch.Size] = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        SequenceLogprobModel(model, chunk_size=4)(ids, attention, loss_mask).logps.sum()
    assert saved and not any(s[-1] == vocab for s in saved)

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        full_logits_logps(model, ids, attention, loss_mask).sum()
    assert any(s[-1] == vocab and s.numel() >= ids.shape[0] * (ids.shape[1] - 1) * vocab for s in saved)


def test_per_token_log_probs_and_values_sit_at_completion_positions():
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer)).eval()
    head = torch.nn.Linear(model.config.hidden_size, 1)
    wrapped = SequenceLogprobModel(model, chunk_size=3, value_head=head)
    ids = torch.randint(3, 50, (2, 7))
    attention = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    out = wrapped(ids, attention, loss_mask, per_token=True)
    logits = model(input_ids=ids, attention_mask=attention).logits.log_softmax(-1)
    hidden = model.model(input_ids=ids, attention_mask=attention).last_hidden_state
    for n in range(2):
        for t in range(7):
            if loss_mask[n, t]:
                assert out.tokens[n, t].item() == pytest.approx(logits[n, t - 1, ids[n, t]].item(), abs=1e-5)
                assert out.values[n, t].item() == pytest.approx(head(hidden[n, t - 1]).item(), abs=1e-5)
            else:
                assert out.tokens[n, t].item() == 0 and out.values[n, t].item() == 0
    assert torch.allclose(out.tokens.sum(1), out.logps, atol=1e-5)
    out.values.sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
