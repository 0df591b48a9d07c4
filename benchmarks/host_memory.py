"""Peak resident memory of DPO-shaped training micro-batches on CPU, under each host-memory policy.

Each arm is a fresh process (alternating over repeats) that loads SmolLM2-135M-Instruct (fp32, lean
activations, prefix sharing), then runs ``--steps`` optimizer steps of ``--accum`` micro-batches; each
micro-batch is one pair: a random prompt of ``--prompt`` tokens and two completions of ``--completion``
tokens (1,540 packed tokens at the defaults: the longest pairs of the chat-shaped workload in
``vs_trl/workload.py``), back-propagated, then AdamW (torch, non-fused). Arms:

    trim       ``release_host_memory=true``: ``malloc_trim(0)`` after each forward and each backward
               (``preftune/train/host_memory.py``)
    no-trim    preftune's default: no trim (glibc keeps what was freed)
    keep-all   no trim, and every activation kept for backward (``modeling/recompute.py`` off)
    mmap       no trim; glibc returns every block over 64 KiB at once (``MALLOC_MMAP_THRESHOLD_=65536``)
    thp        no trim; glibc asks for transparent huge pages (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``)
    mmap-thp   both of the last two (do huge pages make the mmap arm's page faults cheaper?)
    keep-grads no trim; the gradients allocated (zeros) before the first forward and zeroed in place after
               each step instead of freed, so they never interleave with the activations in the heap

Reported per arm: peak RSS (VmHWM) over the whole process, RSS after the last step, and seconds per
micro-batch after the first step (median over repeats). Run it on a quiet machine:

    python benchmarks/host_memory.py --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

ARMS = {"trim": {}, "no-trim": {"PREFTUNE_NO_TRIM": "1"}, "keep-all": {"PREFTUNE_NO_TRIM": "1", "KEEP_ALL": "1"},
        "mmap": {"PREFTUNE_NO_TRIM": "1", "MALLOC_MMAP_THRESHOLD_": "65536"},
        "thp": {"PREFTUNE_NO_TRIM": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
        "mmap-thp": {"PREFTUNE_NO_TRIM": "1", "MALLOC_MMAP_THRESHOLD_": "65536",
                     "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
        "keep-grads": {"PREFTUNE_NO_TRIM": "1", "KEEP_GRADS": "1"}}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) // 1024


def worker(args: argparse.Namespace) -> dict:
    import torch

    from preftune.assets.smollm2 import ensure_smollm2
    from preftune.modeling import lean_layers
    from preftune.modeling.lean_layers import make_lean
    from preftune.modeling.load import load_causal_lm
    from preftune.modeling.logprobs import SequenceLogprobModel
    from preftune.train.host_memory import release_freed_memory

    torch.set_num_threads(args.threads)
    if os.environ.get("KEEP_ALL"):
        lean_layers.keep_less = contextlib.nullcontext
    trim = not os.environ.get("PREFTUNE_NO_TRIM")
    cpu = torch.device("cpu")
    lm = load_causal_lm(str(ensure_smollm2()))
    make_lean(lm)
    lm.train()
    for m in lm.modules():   # as the stages do by default (TRL's disable_dropout)
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model = SequenceLogprobModel(lm, 512, padding_free=True, prefix_sharing="auto")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, foreach=False)
    keep_grads = bool(os.environ.get("KEEP_GRADS"))
    if keep_grads:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
    g = torch.Generator()

    def pair(seed: int):
        g.manual_seed(seed)
        prompt = torch.randint(100, 40_000, (args.prompt,), generator=g)
        rows = [torch.cat([prompt, torch.randint(100, 40_000, (args.completion,), generator=g)]) for _ in range(2)]
        ids = torch.stack(rows)
        loss_mask = torch.zeros_like(ids, dtype=torch.bool)
        loss_mask[:, args.prompt:] = True
        return ids, torch.ones_like(ids), loss_mask

    seconds = []
    for step in range(args.steps):
        for micro in range(args.accum):
            started = time.perf_counter()
            out = model(*pair(step * args.accum + micro))
            if trim:
                release_freed_memory(cpu)
            (out.logps * torch.tensor([1.0, -1.0])).sum().backward()
            del out
            if trim:
                release_freed_memory(cpu)
            if step > 0:
                seconds.append(time.perf_counter() - started)
        optimizer.step()
        optimizer.zero_grad(set_to_none=not keep_grads)
    return {"peak_rss_mib": _status("VmHWM"), "end_rss_mib": _status("VmRSS"),
            "s_per_micro_batch": statistics.median(seconds) if seconds else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--accum", type=int, default=2)
    p.add_argument("--prompt", type=int, default=500)
    p.add_argument("--completion", type=int, default=520)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    passed = [f"--{k}={v}" for k, v in vars(args).items() if k in ("steps", "accum", "prompt", "completion", "threads")]
    for r in range(args.repeats):
        for arm in args.arms:
            out = subprocess.run([sys.executable, __file__, "--worker", *passed], env={**os.environ, **ARMS[arm]},
                                 capture_output=True, text=True, check=True)
            results[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"repeat {r + 1} {arm}: {results[arm][-1]}", file=sys.stderr)
    print("| arm | peak RSS, MiB | RSS after the last step, MiB | s per micro-batch (after step 1) |")
    print("|---|---|---|---|")
    for arm, runs in results.items():
        def med(key: str) -> float:
            return statistics.median(run[key] for run in runs)
        print(f"| {arm} | {med('peak_rss_mib'):,.0f} | {med('end_rss_mib'):,.0f} | {med('s_per_micro_batch'):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
