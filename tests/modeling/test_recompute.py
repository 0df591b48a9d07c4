"""Norm and attention outputs kept as recipes (modeling/recompute.py): the same gradients, bitwise, and
exactly the declared hidden-size vectors per position and layer fewer kept for backward."""

import contextlib

import pytest
import torch

from preftune.modeling import lean_layers
from preftune.modeling.lean_layers import make_lean
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.modeling.recompute import _RECIPES, keep_less, recomputable
from preftune.testing import tiny_llama

HIDDEN, LAYERS = 32, 3


def pair_batch(vocab: int = 97):
    """A prompt of 7 tokens with completions of 5 and 9 tokens (right-padded)."""
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, vocab, (7,), generator=g)
    rows = [torch.cat([prompt, torch.randint(3, vocab, (n,), generator=g)]) for n in (5, 9)]
    ids = torch.zeros(2, 16, dtype=torch.long)
    attention, loss = torch.zeros_like(ids), torch.zeros(2, 16, dtype=torch.bool)
    for r, row in enumerate(rows):
        ids[r, :len(row)], attention[r, :len(row)], loss[r, 7:len(row)] = row, 1, True
    return ids, attention, loss


def lean_policy(prefix_sharing: str, kv_heads: int = 2) -> SequenceLogprobModel:
    lm = tiny_llama(97, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=4, num_key_value_heads=kv_heads,
                    attn_implementation="sdpa")
    counts = make_lean(lm)
    assert counts["norms"] == 2 * LAYERS + 1 and counts["mlps"] == LAYERS
    return SequenceLogprobModel(lm, 8, padding_free=True, prefix_sharing=prefix_sharing)


def grads(policy: SequenceLogprobModel) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    policy.zero_grad(set_to_none=True)
    out = policy(*pair_batch())
    (out.logps * torch.tensor([1.0, -0.7])).sum().backward()
    return out.logps.detach(), {n: p.grad.clone() for n, p in policy.named_parameters()}


@pytest.mark.parametrize("prefix_sharing", ["false", "true"])
def test_gradients_are_bitwise_those_of_keeping_the_activations(prefix_sharing, monkeypatch):
    policy = lean_policy(prefix_sharing)
    logps, got = grads(policy)
    monkeypatch.setattr(lean_layers, "keep_less", contextlib.nullcontext)   # keep every activation
    logps_kept, expected = grads(policy)
    assert torch.equal(logps, logps_kept)
    for name, grad in expected.items():
        assert torch.equal(got[name], grad), name


def retained_bytes(policy: SequenceLogprobModel) -> int:
    """Bytes still allocated after the forward (the graph's saved tensors and the outputs), from the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = policy(*pair_batch())
    kept = sum(e.cpu_memory_usage for e in prof.events())   # + allocations, − frees, over the forward
    del out
    return kept


# Packed separately: rows of 12 and 16 tokens in two packed rows of the longest row's 16 (32 positions);
# attention goes through transformers' own SDPA function, so the norms' two outputs per layer are saved.
# Prefix-shared: one row of 7 + 5 + 9 = 21 positions; the shared-layout attention also hands o_proj a recipe.
@pytest.mark.parametrize(("prefix_sharing", "positions", "vectors"), [("false", 32, 2), ("true", 21, 3)])
def test_hidden_vectors_per_token_and_layer_are_not_kept(prefix_sharing, positions, vectors, monkeypatch):
    policy = lean_policy(prefix_sharing)
    policy(*pair_batch())                       # the first forward probes the layout once (kept caches)
    less = retained_bytes(policy)
    monkeypatch.setattr(lean_layers, "keep_less", contextlib.nullcontext)
    more = retained_bytes(policy)
    assert more - less == vectors * positions * HIDDEN * 4 * LAYERS   # fp32


def test_a_recipe_matches_only_its_own_live_tensor():
    x = torch.randn(4, 3, requires_grad=True)
    with keep_less():
        y = recomputable(x * 2, lambda: x * 2)
        ptr = y.untyped_storage().data_ptr()
        assert ptr in _RECIPES
        del y                                   # freed: its address may be reused, the recipe must go
        assert ptr not in _RECIPES
    assert not _RECIPES
    with torch.no_grad(), keep_less():          # no autograd: nothing to declare
        recomputable(x * 2, lambda: x * 2)
        assert not _RECIPES
