"""Peak memory of loading a causal LM with preftune's ``load_causal_lm`` at each ``dtype``.

    python benchmarks/load_memory.py [MODEL] [--dtypes float32 bfloat16 auto] [--device cpu|cuda]
                                     [--checkpoint-dtype bfloat16|float16|float32]

MODEL: a Hugging Face folder, Hub id or 'smollm2' (the default: SmolLM2-135M-Instruct as preftune embeds
it, converted from a GGUF file into a float32 checkpoint). ``--checkpoint-dtype`` first saves a copy of
MODEL's weights in that dtype (a temporary folder, not measured) and measures loading that copy: with
``bfloat16`` it is the checkpoint a user gets from the Hub (SmolLM2's is bf16, as most published
models). Each dtype is loaded in a fresh Python process (so no allocation of one load is reused by the
next), after importing torch and transformers; the figure is the process's peak resident memory during
the load and one read of every weight (a memory-mapped checkpoint's pages count once touched) minus its
resident memory before it (CPU, Linux: the peak is reset through ``/proc/self/clear_refs``), or
``torch.cuda.max_memory_allocated`` (CUDA). Also printed: the dtype the weights came out in and their own
size, the floor any load of them must pay. ``auto`` keeps the checkpoint's dtype (``config.json``);
float32 upcasts a bf16 checkpoint and needs twice its memory, and a float32 checkpoint loaded as bfloat16
pays for the float32 weights it casts from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

DTYPES = ("float32", "bfloat16", "auto")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak_rss() -> int:
    """Reset the process's peak resident memory to its current value (Linux ``clear_refs``); returns it in
    bytes. Importing transformers can peak above the steady state, which would hide a small load's peak."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def _peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


def measure_in_this_process(model: str, dtype: str, device: str) -> dict[str, object]:
    """Load ``model`` at ``dtype`` on ``device`` and return the peak memory of the load (see module docstring)."""
    import torch
    import transformers  # noqa: F401  (imported before the baseline is taken)

    from preftune.modeling.load import load_causal_lm, resolve_model_path

    folder = resolve_model_path(model)   # a conversion or download is not part of loading
    before = _reset_peak_rss()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    lm = load_causal_lm(folder, device, dtype=dtype)
    with torch.no_grad():   # read every weight once: a memory-mapped checkpoint's pages count once touched
        for p in lm.parameters():
            p.sum()
    after = _peak_rss()
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else after - before
    weights = sum(t.numel() * t.element_size() for t in {p.data_ptr(): p for p in lm.parameters()}.values())
    return {"dtype": dtype, "weights_dtype": str(next(lm.parameters()).dtype).removeprefix("torch."),
            "weights_mib": weights / 2**20, "peak_mib": peak / 2**20}


def measure(model: str, dtype: str, device: str = "cpu") -> dict[str, object]:
    """:func:`measure_in_this_process` in a fresh interpreter."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[4]); import load_memory as m; "
            "print(json.dumps(m.measure_in_this_process(sys.argv[1], sys.argv[2], sys.argv[3])))")
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", code, model, dtype, device, here], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def save_copy(model: str, dtype: str, folder: str) -> str:
    """``model``'s weights saved in ``dtype`` into ``folder`` (config.json records the dtype, so ``auto``
    loads them in it); done in a fresh process, so this process stays small."""
    code = ("import sys, torch; from transformers import AutoModelForCausalLM; "
            "from preftune.modeling.load import resolve_model_path; "
            "AutoModelForCausalLM.from_pretrained(resolve_model_path(sys.argv[1]), dtype=getattr(torch, sys.argv[2]))"
            ".save_pretrained(sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, model, dtype, folder], check=True)
    return folder


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| dtype | weights come out in | weights (MiB) | peak memory of the load (MiB) |", "|---|---|---|---|"]
    lines += [f"| {r['dtype']} | {r['weights_dtype']} | {r['weights_mib']:.0f} | {r['peak_mib']:.0f} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--checkpoint-dtype", choices=("bfloat16", "float16", "float32"),
                        help="measure a copy of MODEL saved in this dtype (e.g. bfloat16: a Hub checkpoint)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = save_copy(args.model, args.checkpoint_dtype, tmp) if args.checkpoint_dtype else args.model
        print(table([measure(model, d, args.device) for d in args.dtypes]))


if __name__ == "__main__":
    main()
