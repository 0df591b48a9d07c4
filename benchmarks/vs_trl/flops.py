"""The work of a DPO run in FLOPs, for the utilisation against the matmul peak (``benchmarks/matmul_peak.py``).

Per sequence of n tokens of which c are completion tokens, one forward pass of a decoder with W weights in
its decoder layers' matrices, ℓ layers, attention width A (query heads × head dim), hidden size d and
vocabulary V:

    forward(n, c) = 2·W·n                    every token through every layer's matrices
                  + 4·A·ℓ · n(n+1)/2         scores q·k and the weighted sum of v over the causal pairs
                  + 2·d·V·c                  the output layer where a log-prob is needed

A training step is forward + backward ≈ 3 forwards; the reference adds one forward per sequence (once per
pair over the run, precomputed or live). So a run over pairs (prompt p, chosen c, rejected r) is

    nominal = Σ 4·(forward(p + c, c) + forward(p + r, r))

which counts every sequence whole, as TRL's token count does: the same work for every framework, so the
utilisation it gives compares speeds (it is tokens/s in other units). With the prompt computed once per
pair (prefix sharing) the work actually needed is smaller:

    shared  = Σ 4·(2·W·(p + c + r) + 4·A·ℓ·(p(p+1)/2 + c·p + c(c+1)/2 + r·p + r(r+1)/2) + 2·d·V·(c + r))

Neither counts padding, the dense score blocks of a packed row or the output layer's recomputation in
backward: those are overheads of an implementation, not work of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Shape:
    layer_weights: int   # W: entries of the decoder layers' weight matrices
    layers: int          # ℓ
    attention_width: int  # A
    hidden: int          # d
    vocab: int           # V

    @classmethod
    def of(cls, model_dir: str | Path) -> Shape:
        """From a Hugging Face folder's config, counting the matrices on the meta device (no weights loaded)."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        layers = model.get_decoder().layers
        weights = sum(p.numel() for p in layers.parameters() if p.ndim == 2)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(weights, len(layers), config.num_attention_heads * head_dim, config.hidden_size,
                   config.vocab_size)

    def forward(self, n: int, c: int) -> float:
        return 2.0 * self.layer_weights * n + 2.0 * self.attention_width * self.layers * n * (n + 1) \
            + 2.0 * self.hidden * self.vocab * c

    def nominal(self, lengths: list[tuple[int, int, int]]) -> float:
        """FLOPs of training on these pairs plus one reference forward each, every sequence whole."""
        return sum(4 * (self.forward(p + c, c) + self.forward(p + r, r)) for p, c, r in lengths)

    def shared(self, lengths: list[tuple[int, int, int]]) -> float:
        """The same with each pair's prompt computed once."""
        total = 0.0
        for p, c, r in lengths:
            pairs = p * (p + 1) / 2 + c * p + c * (c + 1) / 2 + r * p + r * (r + 1) / 2
            total += 4 * (2.0 * self.layer_weights * (p + c + r) + 4.0 * self.attention_width * self.layers * pairs
                          + 2.0 * self.hidden * self.vocab * (c + r))
        return total


def measure_peak_gflops(device: str, bf16: bool, threads: int, size: int = 2048) -> float:
    """The matmul peak the utilisation is taken against: ``matmul_peak.gflops`` at the run's threads and dtype."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from matmul_peak import gflops

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if bf16 else torch.float32
    if device == "cuda":
        size = max(size, 8192)
    return max(gflops(size, size, size, dtype, device=device) for _ in range(2))
