"""What autograd keeps for backward in one DPO forward on SmolLM2-135M: padded vs packed, plain vs lean.

    python benchmarks/activation_memory.py [--lengths 462 300 280 250 330 200 224 200] [--prompt 60]

One batch of rows (default: 8 sequences of the given lengths, right-padded, the first ``--prompt`` tokens
of each the prompt) goes through ``SequenceLogprobModel`` forward with gradients on, under
``torch.autograd.graph.saved_tensors_hooks``; the bytes of every distinct storage saved for backward are
summed (parameters excluded). No timing, no backward: this is the activation memory the peak of a
training step is made of, independent of allocator behaviour. Rows:

* ``padded, plain``: transformers' modules, rows padded to the longest;
* ``packed, plain``: ``padding_free=true``;
* ``packed, lean``: ``padding_free=true`` and ``lean_activations=true`` (the defaults);

plus the largest saved tensor groups of the last variant.
"""

from __future__ import annotations

import argparse
import collections

import torch


def saved_bytes(model: torch.nn.Module, lengths: list[int], prompt: int, packed: bool
                ) -> tuple[int, collections.Counter]:
    """Bytes of the distinct storages ``model`` saves for backward in one forward (parameters excluded),
    and the same grouped by tensor shape."""
    from preftune.modeling.logprobs import SequenceLogprobModel

    width = max(lengths)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.vocab_size, (len(lengths), width), generator=g)
    attention = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    loss_mask = attention.bool().clone()
    loss_mask[:, :prompt] = False
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, tuple[tuple[int, ...], int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = (tuple(t.shape), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        SequenceLogprobModel(model, padding_free=packed, prefix_sharing="false")(ids, attention, loss_mask)
    groups: collections.Counter = collections.Counter()
    for shape, nbytes in seen.values():
        groups[shape] += nbytes
    return sum(n for _, n in seen.values()), groups


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[462, 300, 280, 250, 330, 200, 224, 200])
    p.add_argument("--prompt", type=int, default=60)
    a = p.parse_args()
    print(f"SmolLM2-135M · {len(a.lengths)} rows, {sum(a.lengths)} tokens (longest {max(a.lengths)}) · fp32")
    print()
    print("| variant | saved for backward, MiB | ÷ padded plain |")
    print("|---|---|---|")
    base = None
    groups = None
    from preftune.assets.smollm2 import ensure_smollm2
    from preftune.modeling.lean_layers import make_lean
    from preftune.modeling.load import load_causal_lm

    for label, packed, lean in (("padded, plain", False, False), ("packed, plain", True, False),
                                ("packed, lean (defaults)", True, True)):
        model = load_causal_lm(str(ensure_smollm2()))
        if lean:
            make_lean(model)
        total, groups = saved_bytes(model, a.lengths, a.prompt, packed)
        base = base or total
        print(f"| {label} | {total / 2**20:.0f} | {total / base:.2f} |")
    print()
    print("Largest groups (packed, lean): " + "; ".join(
        f"{list(shape)} {n / 2**20:.0f} MiB" for shape, n in groups.most_common(6)))


if __name__ == "__main__":
    main()
