"""The command line of ``benchmarks/dpo_vs_trl.py`` (its docstring is the help text)."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from vs_trl.settings import ARMS, Settings


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="tiny (built here), smollm2, or a Hugging Face model folder")
    p.add_argument("--workload", choices=("synthetic", "chat"), default="synthetic",
                   help="pair lengths: synthetic, or chat-shaped like UltraFeedback's (benchmarks/vs_trl/workload.py)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--max-prompt-length", type=int, default=None, help="default: max_length // 2")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 tiny, 1e-6 otherwise")
    p.add_argument("--max-grad-norm", type=float, default=10.0)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--reference", choices=("default", "live", "precompute"), default="default",
                   help="default: TRL live, preftune precomputed (their defaults); or the same for both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--grad-rtol", type=float, default=1e-3,
                   help="check: max per-tensor ||Δ||/||g|| that still counts as fp32 rounding")
    p.add_argument("--strict", action="store_true", help="check: every difference within --tol, absolute")
    p.add_argument("--exact", action="store_true",
                   help="check: also compare both with a float64 full-logits computation (slow)")
    p.add_argument("--check-only", action="store_true", help="run the equivalence check, then stop")
    p.add_argument("--skip-check", action="store_true")
    p.add_argument("--preftune", nargs="*", default=[], metavar="KEY=VALUE",
                   help="preftune DPO settings beyond the shared ones, e.g. torch_compile=true padding_free=false "
                        "(YAML values; the equivalence check uses them too where they touch the log-prob path)")
    p.add_argument("--frameworks", nargs="+", choices=tuple(ARMS), default=["trl", "preftune"],
                   help="the arms to time: trl, preftune (its defaults, prefix sharing on where exact), "
                        "preftune-release (release_host_memory=true), preftune-unshared (prefix_sharing=false); one "
                        "alone: its figures, no comparison table")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="matmul peak for the FLOP utilisation (default: measured with matmul_peak.py at --threads; "
                        "0 = leave the utilisation out)")
    p.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    p.add_argument("--keep-workdir", action="store_true", help="keep the worker logs, data and tiny model")
    p.add_argument("--worker", choices=tuple(ARMS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def _log_check(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _check_in_child(s: Settings, rows: list[dict], options: dict):
    from vs_trl.check import equivalence_check

    torch.set_num_threads(s.threads)
    return equivalence_check(s, rows, log=_log_check, **options)


def main(description: str = "", argv: list[str] | None = None) -> int:
    args = parser(description).parse_args(argv)
    if args.worker:
        from vs_trl.workers import worker_main

        worker_main(args.worker, args.spec, args.result)
        return 0
    try:
        import trl
    except ImportError:
        raise SystemExit("trl is not installed: pip install -e .[bench]") from None
    import transformers
    from transformers import AutoTokenizer

    from preftune.config import read_settings
    from vs_trl.flops import Shape, measure_peak_gflops
    from vs_trl.report import summarise, throughput
    from vs_trl.workers import run_worker
    from vs_trl.workload import build_pairs, data_stats, pair_lengths, prepare_model

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="dpo_vs_trl-"))
    model_dir = prepare_model(args.model, workdir, args.max_length, args.seed)
    s = Settings(
        model=args.model, model_dir=str(model_dir), max_length=args.max_length,
        max_prompt_length=args.max_prompt_length or args.max_length // 2, batch=args.batch,
        grad_accum=args.grad_accum, steps=args.steps, beta=args.beta,
        lr=args.lr if args.lr is not None else (1e-3 if args.model == "tiny" else 1e-6),
        max_grad_norm=args.max_grad_norm, bf16=args.bf16, device=args.device, threads=args.threads, seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing, reference=args.reference,
        preftune_settings=read_settings(None, args.preftune), workload=args.workload)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = build_pairs(s, tokenizer)
    lengths = pair_lengths(tokenizer, rows)
    stats = data_stats(lengths)
    shape = Shape.of(model_dir)
    params = None
    with contextlib.suppress(Exception):
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(model_dir)).parameters())
    versions = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                "params": f"{params / 1e6:.1f}M parameters" if params else "?"}
    print(f"workdir {workdir} · model {model_dir} · {versions['params']} · {len(rows)} pairs", file=sys.stderr)

    check = None
    if not args.skip_check:
        print("equivalence check ...", file=sys.stderr)
        # In a child process, so that what the check allocates (both frameworks' models and gradients) goes
        # back to the system before the timed workers start: kept resident here, it plus TRL's worker at two
        # pairs per micro-batch outgrew the 23 GiB machine (the kernel killed TRL's worker).
        options = {"tol": args.tol, "grad_rtol": args.grad_rtol, "strict": args.strict, "exact": args.exact}
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            check = pool.submit(_check_in_child, s, rows, options).result()
        if not check.ok:
            print("\nThe two frameworks do not compute the same thing on the same input: comparison void.")
            print("\n".join(check.lines))
            return 1
        if args.check_only:
            print("\n".join(check.lines))
            if not args.keep_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            return 0

    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps({"settings": dataclasses.asdict(s), "rows": rows}))
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS if arm in args.frameworks}
    for r in range(args.repeats):
        for arm in runs:
            print(f"repeat {r + 1}/{args.repeats}: {arm} ...", file=sys.stderr)
            out = run_worker(arm, spec_path, workdir, f"{arm}-{r}")
            tp = throughput(out, s.grad_accum)
            print(f"  {tp['tokens_per_s']:.1f} tokens/s end-to-end, {tp.get('steady_tokens_per_s', float('nan')):.1f}"
                  f" steady, peak {out['memory'].get('train_peak_rss_mib') or 0:.0f} MiB RSS, "
                  f"process {out['process_s']:.1f} s", file=sys.stderr)
            runs[arm].append(out)
    peak = args.peak_gflops
    if peak is None:
        print("matmul peak ...", file=sys.stderr)
        peak = measure_peak_gflops(s.device, s.bf16, s.threads)
    flops = {"nominal": shape.nominal(lengths), "shared": shape.shared(lengths), "peak_flops": peak * 1e9,
             "peak_what": f"matmul_peak.py, {'bf16' if s.bf16 else 'fp32'}, {s.device}, {s.threads} thread(s)"
                          + (" (measured)" if args.peak_gflops is None else " (given)")} if peak else None
    table, summary = summarise(s, runs, stats, check, versions, flops)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.keep_workdir:
        print(f"worker logs and data: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0
