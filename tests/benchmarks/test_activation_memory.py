"""benchmarks/activation_memory.py: packing and the lean layers each keep strictly less for backward."""

from __future__ import annotations

from preftune.modeling.lean_layers import make_lean
from preftune.testing import tiny_llama
from tests.benchmarks._load import load_benchmark

bench = load_benchmark("activation_memory")


def test_packed_keeps_less_than_padded_and_lean_less_than_plain():
    lengths, prompt = [12, 5, 4, 3], 2
    padded, _ = bench.saved_bytes(tiny_llama(96, num_key_value_heads=2), lengths, prompt, packed=False)
    packed, _ = bench.saved_bytes(tiny_llama(96, num_key_value_heads=2), lengths, prompt, packed=True)
    lean_model = tiny_llama(96, num_key_value_heads=2)
    make_lean(lean_model)
    lean, groups = bench.saved_bytes(lean_model, lengths, prompt, packed=True)
    assert lean < packed < padded
    assert groups  # the breakdown the script prints
