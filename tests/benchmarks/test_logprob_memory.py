"""benchmarks/logprob_memory.py: every variant computes the same log-probs, loss and gradients as the
naive full-logits computation (so its memory/time table compares equals)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.benchmarks._load import load_benchmark

bench = load_benchmark("logprob_memory")

VARIANTS = ["chunked-7", "chunked-64", "chunked-1024", "checkpointed-7"]
if importlib.util.find_spec("trl") is not None:
    VARIANTS.append("trl")


@pytest.mark.parametrize("completion_frac", [1.0, 0.6])
def test_variants_match_naive(completion_frac):
    x = bench.make_inputs(pairs=2, seq=40, hidden=16, vocab=300, completion_frac=completion_frac, seed=1)
    loss0, logps0 = bench.one_pass(bench.logps_naive, x)
    grad_h, grad_w = x.hidden.grad.clone(), x.weight.grad.clone()
    for name in VARIANTS:
        loss, logps = bench.one_pass(bench.variant_fn(name), x)
        torch.testing.assert_close(logps, logps0, atol=1e-4, rtol=1e-6, msg=name)
        torch.testing.assert_close(loss, loss0, atol=1e-6, rtol=1e-6, msg=name)
        torch.testing.assert_close(x.hidden.grad, grad_h, atol=1e-6, rtol=1e-5, msg=name)
        torch.testing.assert_close(x.weight.grad, grad_w, atol=1e-6, rtol=1e-5, msg=name)
