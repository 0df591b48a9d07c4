"""Measured matmul throughput per dtype and thread count: is bf16 autocast a speed lever here?

    python benchmarks/matmul_peak.py [--threads 1 2] [--sizes 576x576x1536 2048x2048x2048]

Shapes default to one of SmolLM2-135M's MLP projections (tokens × hidden × intermediate) and a
large square product. Prints GFLOP/s for F.linear (x @ Wᵀ, what nn.Linear runs) in fp32 and bf16.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F


def gflops(m: int, k: int, n: int, dtype: torch.dtype, repeats: int = 5, device: str = "cpu") -> float:
    x = torch.randn(m, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device)
    F.linear(x, w)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        F.linear(x, w)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / repeats
    return 2 * m * k * n / seconds / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", nargs="+", default=["768x576x1536", "2048x2048x2048"])
    args = parser.parse_args()
    print(f"torch {torch.__version__} · {platform.processor() or platform.machine()} · "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'M×K×N':>16} {'threads':>7} {'fp32 GFLOP/s':>13} {'bf16 GFLOP/s':>13}")
    for size in args.sizes:
        m, k, n = (int(v) for v in size.split("x"))
        for threads in args.threads:
            torch.set_num_threads(threads)
            print(f"{size:>16} {threads:>7} {gflops(m, k, n, torch.float32):>13.0f} "
                  f"{gflops(m, k, n, torch.bfloat16):>13.0f}")


if __name__ == "__main__":
    main()
