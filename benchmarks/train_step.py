"""Forward+backward throughput of the DPO log-prob path on SmolLM2-135M: fp32 vs bf16, full vs LoRA.

    python benchmarks/train_step.py [--threads 2] [--batch 8] [--seq 96] [--modes fp32 bf16 lora-fp32] [--log-sum-sq]

Converts SmolLM2 on first use (see preftune.assets.smollm2). Each mode runs one warm-up step and
then times ``--repeats`` steps of SequenceLogprobModel forward + backward on random token ids,
with the last 60% of each sequence as the completion; prints tokens/s. ``--log-sum-sq`` also computes
WPO's per-token log Σ_v p_v² in the output layer (what ``use_weighting`` adds to a step).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["fp32", "lora-fp32", "bf16"])
    parser.add_argument("--log-sum-sq", action="store_true", help="also compute log Σ_v p_v² (use_weighting)")
    args = parser.parse_args()

    from preftune.assets.smollm2 import ensure_smollm2
    from preftune.modeling.load import apply_lora, load_causal_lm
    from preftune.modeling.logprobs import SequenceLogprobModel

    torch.set_num_threads(args.threads)
    folder = ensure_smollm2()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 49_000, (args.batch, args.seq), generator=g)
    attention = torch.ones_like(ids)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, int(0.4 * args.seq):] = True
    print(f"SmolLM2-135M · batch {args.batch} × {args.seq} tokens · {args.threads} thread(s) · "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
          + (" · with log Σ_v p_v² (use_weighting)" if args.log_sum_sq else ""))
    for mode in args.modes:
        model = load_causal_lm(str(folder))
        if mode.startswith("lora"):
            model = apply_lora(model, 16, 32, 0.0, ["all-linear"])
        wrapped = SequenceLogprobModel(model).train()
        bf16 = mode.endswith("bf16")
        times = []
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = wrapped(ids, attention, loss_mask, log_sum_sq=args.log_sum_sq)
            out.logps.sum().backward()
            model.zero_grad(set_to_none=True)
            if i > 0:
                times.append(time.perf_counter() - start)
        seconds = sum(times) / len(times)
        print(f"{mode:>10}: {ids.numel() / seconds:7.1f} tokens/s  ({seconds:.2f} s per step)")


if __name__ == "__main__":
    main()
