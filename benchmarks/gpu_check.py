"""The GPU check behind ``benchmarks/gpu_check.sh`` (which installs what is missing, then runs this).

    python benchmarks/gpu_check.py --out gpu_check_out [--shape 1b|0.5b] [--steps 8] [--skip-throughput]

On a CUDA device, in order (each part records its figures and a pass/fail; a failing part does not stop
the later ones):

1. log-prob exactness, fp32 and bf16 autocast: chunked log-probs against full logits; prefix-shared rows
   against the padded rows (log-probs, per-token log-probs and every gradient); the largest differences
   recorded, passing within the tolerances in ``TOLERANCES`` (fp32: the CPU suite's 1e-5 is for one
   thread's summation order; a GPU's kernels sum in another order, so 1e-4 relative);
2. dtypes: a bf16-weight model and bf16 autocast give float32 log-probs and values, finite, gradients in
   the parameters' dtype;
3. one DPO step against TRL 1.16 (``vs_trl.check``): same token ids, same first batch, loss and gradients
   on the tiny model, in fp32 and in bf16 autocast;
4. throughput and FLOP utilisation: ``dpo_vs_trl.py`` on a decoder of 0.5–1.5B parameters built from a
   config (random weights: speed does not depend on them), the chat-shaped workload at max_length 1024, TRL
   against preftune with and without prefix sharing, alternating fresh processes, bf16 autocast, against
   the bf16 matmul peak measured on the device.

Writes ``gpu_check.json`` (everything) and ``gpu_check.md`` (one table) into ``--out``. ``--device cpu``
runs parts 1–3 on the CPU (what the test suite does, to keep this script working without a GPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = {
    # Qwen2.5-0.5B's shape (494M parameters, tied embeddings) and Llama-3.2-1B's (1.24B, tied).
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
             "max_position_embeddings": 4096, "rope_theta": 1000000.0},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True,
           "max_position_embeddings": 4096, "rope_theta": 500000.0},
}
TOLERANCES = {
    "float32": {"logps": 1e-4, "grad_rel": 1e-4},
    "bfloat16": {"logps": 0.25, "grad_rel": 5e-2},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--shape", choices=tuple(SHAPES), default="1b", help="the decoder timed in part 4")
    p.add_argument("--steps", type=int, default=8, help="part 4: optimizer steps per arm")
    p.add_argument("--batch", type=int, default=8, help="part 4: pairs per step")
    p.add_argument("--repeats", type=int, default=1, help="part 4: rounds of the alternating arms")
    p.add_argument("--skip-throughput", action="store_true", help="parts 1-3 only")
    p.add_argument("--time-limit", type=float, default=420.0, help="seconds; part 4 is skipped when less than "
                                                                   "its estimate is left")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------
# 1-2. Log-prob exactness and dtypes


def _rows(vocab: int, device: torch.device, seed: int = 0):
    """Three prompts with 3, 1 and 2 completions, shuffled: right-padded ids, attention, loss mask."""
    g = torch.Generator().manual_seed(seed)
    seqs, prompts = [], []
    for prompt_len, lens in ((40, (30, 55, 12)), (25, (60,)), (70, (20, 41))):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=g).tolist()
        for n in lens:
            seqs.append(prompt + torch.randint(3, vocab, (n,), generator=g).tolist())
            prompts.append(prompt_len)
    order = torch.randperm(len(seqs), generator=g).tolist()
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    loss = torch.zeros_like(ids, dtype=torch.bool)
    for r, i in enumerate(order):
        ids[r, :len(seqs[i])] = torch.tensor(seqs[i])
        attention[r, :len(seqs[i])] = 1
        loss[r, prompts[i]:len(seqs[i])] = True
    return ids.to(device), attention.to(device), loss.to(device)


def _model(device: torch.device, seed: int = 0):
    from preftune.testing import tiny_llama

    return tiny_llama(512, hidden_size=128, num_layers=3, num_heads=8, num_key_value_heads=2, intermediate_size=256,
                      seed=seed).to(device)


def _grad_rel(a: torch.nn.Module, b: torch.nn.Module) -> float:
    worst = 0.0
    for p, q in zip(a.parameters(), b.parameters()):
        norm = p.grad.float().norm().item()
        worst = max(worst, (p.grad.float() - q.grad.float()).norm().item() / max(norm, 1e-12))
    return worst


def check_logprobs(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Chunked vs full logits, and prefix-shared vs padded rows, under ``dtype`` autocast (fp32 = none)."""
    from preftune.modeling.logprobs import SequenceLogprobModel, full_logits_logps

    name = str(dtype).removeprefix("torch.")
    tol = TOLERANCES[name]
    ids, attention, loss = _rows(512, device)
    autocast = torch.autocast(device.type, dtype, enabled=dtype != torch.float32)
    out: dict[str, Any] = {"dtype": name}
    # Chunked output layer vs full logits.
    a, b = _model(device), _model(device)
    with autocast:
        chunked = SequenceLogprobModel(a, chunk_size=16)(ids, attention, loss).logps
        full = full_logits_logps(b, ids, attention, loss)
    chunked.sum().backward()
    full.sum().backward()
    out["chunked_vs_full_logps"] = (chunked - full).abs().max().item()
    out["chunked_vs_full_grad_rel"] = _grad_rel(b, a)
    # Prefix-shared vs padded rows.
    a, b = _model(device), _model(device)
    padded = SequenceLogprobModel(a, chunk_size=64)
    shared = SequenceLogprobModel(b, chunk_size=64, padding_free=True, prefix_sharing="true")
    with autocast:
        x = padded(ids, attention, loss, per_token=True)
        y = shared(ids, attention, loss, per_token=True)
    x.logps.sum().backward()
    y.logps.sum().backward()
    out["shared_vs_padded_logps"] = (x.logps - y.logps).abs().max().item()
    out["shared_vs_padded_token_logps"] = (x.tokens - y.tokens).abs().max().item()
    out["shared_vs_padded_grad_rel"] = _grad_rel(a, b)
    out["ok"] = (max(out["chunked_vs_full_logps"], out["shared_vs_padded_logps"]) <= tol["logps"]
                 and max(out["chunked_vs_full_grad_rel"], out["shared_vs_padded_grad_rel"]) <= tol["grad_rel"])
    out["tolerances"] = tol
    return out


def check_dtypes(device: torch.device) -> dict[str, Any]:
    """bf16 weights and bf16 autocast: float32 outputs, finite, gradients in the parameters' dtype."""
    from preftune.modeling.logprobs import SequenceLogprobModel

    ids, attention, loss = _rows(512, device, seed=1)
    out: dict[str, Any] = {}
    for label, weights, auto in (("bf16 weights", torch.bfloat16, False), ("fp32 weights, bf16 autocast",
                                                                           torch.float32, True)):
        model = _model(device).to(weights)
        head = torch.nn.Linear(128, 1).to(device, weights)
        wrapped = SequenceLogprobModel(model, chunk_size=32, value_head=head, padding_free=True, prefix_sharing="true")
        with torch.autocast(device.type, torch.bfloat16, enabled=auto):
            res = wrapped(ids, attention, loss, per_token=True)
        (res.logps.sum() + res.values.sum()).backward()
        grads = [p.grad for p in wrapped.parameters() if p.requires_grad]
        out[label] = {
            "logps_dtype": str(res.logps.dtype), "tokens_dtype": str(res.tokens.dtype),
            "values_dtype": str(res.values.dtype), "finite": bool(res.logps.isfinite().all() and res.values.isfinite().all()),
            "grad_dtypes_match": all(g is not None and g.dtype == p.dtype
                                     for g, p in zip(grads, [p for p in wrapped.parameters() if p.requires_grad])),
        }
        out[label]["ok"] = (out[label]["finite"] and out[label]["grad_dtypes_match"]
                            and {res.logps.dtype, res.tokens.dtype, res.values.dtype} == {torch.float32})
    out["ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict))
    return out


# ----------------------------------------------------------------------------------------------------
# 3. One DPO step against TRL


def check_dpo_vs_trl(device: str, bf16: bool, workdir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer
    from vs_trl.check import equivalence_check
    from vs_trl.settings import Settings
    from vs_trl.workload import make_pairs, prepare_model

    model_dir = prepare_model("tiny", workdir, max_length=128)
    s = Settings(model="tiny", model_dir=str(model_dir), max_length=128, max_prompt_length=64, batch=4, grad_accum=1,
                 steps=1, beta=0.1, lr=1e-3, max_grad_norm=10.0, bf16=bf16, device=device,
                 threads=torch.get_num_threads(), seed=0, gradient_checkpointing=False, reference="live")
    rows = make_pairs(AutoTokenizer.from_pretrained(model_dir), s.num_pairs, s.max_length, s.max_prompt_length, 0)
    result = equivalence_check(s, rows, log=lambda _: None, bf16=bf16)
    return {"ok": result.ok, "lines": result.lines, "details": result.details}


# ----------------------------------------------------------------------------------------------------
# 4. Throughput and FLOP utilisation


def throughput(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from vs_trl.workload import model_from_config

    model_dir = model_from_config(SHAPES[args.shape], workdir / f"decoder-{args.shape}")
    json_path = workdir / "throughput.json"
    cmd = [sys.executable, str(Path(__file__).resolve().parent / "dpo_vs_trl.py"), "--model", str(model_dir),
           "--workload", "chat", "--max-length", "1024", "--max-prompt-length", "512", "--batch", str(args.batch),
           "--steps", str(args.steps), "--repeats", str(args.repeats), "--device", args.device, "--bf16",
           "--threads", "8", "--skip-check", "--frameworks", "trl", "preftune", "preftune-unshared",
           "--json", str(json_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    out: dict[str, Any] = {"command": " ".join(cmd), "returncode": proc.returncode, "table": proc.stdout,
                           "stderr_tail": proc.stderr[-4000:]}
    if proc.returncode == 0 and json_path.is_file():
        summary = json.loads(json_path.read_text())
        out["medians"] = summary["medians"]
        out["flops"] = summary["flops"]
        out["data"] = summary["data"]
    out["ok"] = proc.returncode == 0
    return out


# ----------------------------------------------------------------------------------------------------
# Report


def environment(device: str) -> dict[str, Any]:
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": device}
    try:
        import trl

        env["trl"] = trl.__version__
    except ImportError:
        env["trl"] = None
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def _fmt(x: Any, digits: int = 1) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}e}" if (x != 0 and abs(x) < 1e-2) else f"{x:.{digits}f}"
    return str(x)


def markdown(results: dict[str, Any]) -> str:
    """One table: every part, its key figures, pass/fail; then the throughput table if it ran."""
    env = results["environment"]
    lines = [f"## GPU check — {env.get('gpu', env['device'])} · torch {env['torch']} · transformers "
             f"{env['transformers']} · trl {env.get('trl')}", "",
             "| part | figures | result |", "|---|---|---|"]
    parts = results["parts"]
    for key, part in parts.items():
        if "error" in part:
            figures = f"error: {part['error']}"
        elif key.startswith("logprobs"):
            figures = (f"chunked vs full logits: log-prob |Δ| {_fmt(part['chunked_vs_full_logps'])}, gradient "
                       f"‖Δ‖/‖g‖ {_fmt(part['chunked_vs_full_grad_rel'])}; prefix-shared vs padded: log-prob |Δ| "
                       f"{_fmt(part['shared_vs_padded_logps'])}, per token {_fmt(part['shared_vs_padded_token_logps'])}"
                       f", gradient ‖Δ‖/‖g‖ {_fmt(part['shared_vs_padded_grad_rel'])}")
        elif key == "dtypes":
            figures = "; ".join(f"{k}: log-probs {v['logps_dtype']}, values {v['values_dtype']}, finite {v['finite']}"
                                for k, v in part.items() if isinstance(v, dict))
        elif key.startswith("dpo_vs_trl"):
            figures = " / ".join(line for line in part["lines"] if "loss TRL" in line)[:400] or "; ".join(part["lines"])
        elif key == "throughput":
            med = part.get("medians", {})
            figures = "; ".join(
                f"{arm}: {_fmt(m['tokens_per_s'])} tokens/s, peak {_fmt(m['train_peak'], 0)} MiB"
                + (f", MFU {100 * m['mfu']:.1f} %" if m.get("mfu") == m.get("mfu") and "mfu" in m else "")
                for arm, m in med.items()) or f"exit {part.get('returncode')}"
        else:
            figures = json.dumps(part)[:300]
        lines.append(f"| {key} | {figures} | {'pass' if part.get('ok') else 'FAIL'} |")
    if "throughput" in parts and parts["throughput"].get("table"):
        lines += ["", parts["throughput"]["table"].strip()]
    lines += ["", f"Total {results['seconds']:.0f} s."]
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(results) + "\n")
    return out / "gpu_check.json", out / "gpu_check.md"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        results = {"environment": environment("cpu"), "parts": {"cuda": {"ok": False, "error": "no CUDA device"}},
                   "seconds": 0.0}
        write_report(results, args.out)
        print("no CUDA device visible to torch: nothing to check (see gpu_check.md)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    parts: dict[str, Any] = {}

    def part(name: str, fn, *a) -> None:
        t = time.perf_counter()
        try:
            parts[name] = fn(*a)
        except Exception as exc:  # record and go on: the other parts still say something
            parts[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        parts[name]["seconds"] = time.perf_counter() - t
        print(f"{name}: {'pass' if parts[name].get('ok') else 'FAIL'} ({parts[name]['seconds']:.0f} s)", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        workdir = Path(tmp)
        part("logprobs fp32", check_logprobs, device, torch.float32)
        part("logprobs bf16", check_logprobs, device, torch.bfloat16)
        part("dtypes", check_dtypes, device)
        part("dpo_vs_trl fp32", check_dpo_vs_trl, args.device, False, workdir / "fp32")
        part("dpo_vs_trl bf16", check_dpo_vs_trl, args.device, True, workdir / "bf16")
        if not args.skip_throughput:
            left = args.time_limit - (time.perf_counter() - start)
            if left < 180:
                parts["throughput"] = {"ok": False, "error": f"skipped: {left:.0f} s left of --time-limit"}
            else:
                part("throughput", throughput, args, workdir)
    results = {"environment": environment(args.device), "parts": parts, "seconds": time.perf_counter() - start,
               "args": vars(args)}
    json_path, md_path = write_report(results, args.out)
    print(md_path.read_text())
    return 0 if all(p.get("ok") for p in parts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
