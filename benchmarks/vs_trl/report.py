"""The markdown table and the JSON summary of a comparison run.

Per arm (TRL, preftune, preftune without prefix sharing), medians (min–max) over the repeats of:

* tokens/s, end-to-end: TRL's token count (non-padding tokens of every chosen and rejected sequence, the
  prompt counted in each) over all steps, divided by the training-phase wall time (so it includes the
  reference precompute); the same count for every arm, so the ratios compare speeds;
* tokens/s, steady state: the same over steps 2..N divided by their wall time (step 1 warms up);
* peak memory: peak RSS (CUDA: max_memory_allocated) during the training phase and of the whole process;
* FLOP utilisation: the run's work in FLOPs (``flops.py``: every sequence whole, the same for every arm)
  per second of the training phase, against the matmul peak measured at the run's threads and dtype; for
  prefix sharing also the utilisation of the work it needs (each prompt once);
* both loss curves step by step and their difference.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any

from vs_trl.settings import ARM_TITLES, Settings


def per_step(result: dict[str, Any], grad_accum: int) -> list[tuple[float, int]]:
    """(loss, tokens) per optimizer step; TRL's micro-batch records are averaged per step."""
    if "steps" in result:
        return [(float(loss), int(n)) for loss, n in result["steps"]]
    micro = result["micro"]
    out = []
    for i in range(0, len(micro), grad_accum):
        chunk = micro[i:i + grad_accum]
        out.append((sum(m[0] for m in chunk) / len(chunk), sum(m[1] for m in chunk)))
    return out


def throughput(result: dict[str, Any], grad_accum: int) -> dict[str, float]:
    steps = per_step(result, grad_accum)
    ends, start = result["step_ends"], result["t_start"]
    tokens = [n for _, n in steps]
    n = min(len(ends), len(tokens))
    out = {"phase_s": ends[n - 1] - start, "tokens": float(sum(tokens[:n]))}
    out["tokens_per_s"] = out["tokens"] / out["phase_s"]
    done = result.get("t_reference_done")
    out["reference_s"] = (done - start) if done is not None and result["reference"].startswith("precomputed") else 0.0
    out["first_step_s"] = ends[0] - start - out["reference_s"]
    if n >= 2:
        out["steady_tokens_per_s"] = sum(tokens[1:n]) / (ends[n - 1] - ends[0])
        out["steady_step_s"] = (ends[n - 1] - ends[0]) / (n - 1)
    return out


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _fmt(xs: list[float], digits: int = 1) -> str:
    if not xs or any(x is None or math.isnan(x) for x in xs):
        return "n/a"
    med = _median(xs)
    if len(xs) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def arm_metrics(s: Settings, results: list[dict], flops: dict[str, float] | None) -> dict[str, list[float]]:
    """Per-repeat figures of one arm (None where not measured)."""
    cuda = s.device == "cuda"
    keys = ("tokens_per_s", "steady_tokens_per_s", "phase_s", "reference_s", "first_step_s", "steady_step_s",
            "train_peak", "process_peak", "setup_s", "mfu", "mfu_needed")
    m: dict[str, list[float]] = {k: [] for k in keys}
    for r in results:
        tp = throughput(r, s.grad_accum)
        for k in keys[:6]:
            m[k].append(tp.get(k, float("nan")))
        mem = r["memory"]
        m["train_peak"].append(mem.get("train_peak_cuda_mib" if cuda else "train_peak_rss_mib"))
        m["process_peak"].append(mem.get("process_peak_cuda_mib" if cuda else "process_peak_rss_mib"))
        m["setup_s"].append(r["setup_s"])
        peak = flops.get("peak_flops") if flops else None
        shares = r["framework"] == "preftune" and any(n.startswith("prefix sharing: on") for n in r.get("notes", []))
        if peak:
            m["mfu"].append(flops["nominal"] / tp["phase_s"] / peak)
            m["mfu_needed"].append(flops["shared" if shares else "nominal"] / tp["phase_s"] / peak)
        else:
            m["mfu"].append(float("nan"))
            m["mfu_needed"].append(float("nan"))
    return m


def _pct(xs: list[float]) -> str:
    return "n/a" if not xs or any(x is None or math.isnan(x) for x in xs) else _fmt([100 * x for x in xs], 1) + " %"


def summarise(s: Settings, runs: dict[str, list[dict]], data_stats: dict[str, Any], check: Any,
              versions: dict[str, str], flops: dict[str, float] | None = None) -> tuple[str, dict[str, Any]]:
    """The markdown report and the JSON summary of ``runs`` (arm → one result per repeat)."""
    arms = [a for a in ARM_TITLES if runs.get(a)]
    metrics = {a: arm_metrics(s, runs[a], flops) for a in arms}
    others = [a for a in arms if a != "trl"] if "trl" in arms else []

    def ratio(arm: str, key: str) -> str:
        a, b = metrics[arm][key], metrics["trl"][key]
        if not a or not b or any(x is None or math.isnan(x) for x in a + b):
            return "n/a"
        return f"{_median(a) / _median(b):.2f}×"

    def row(title: str, key: str, digits: int = 1, with_ratio: bool = True, fmt=None) -> str:
        cells = [(fmt or (lambda xs: _fmt(xs, digits)))(metrics[a][key]) for a in arms]
        ratios = [ratio(a, key) if with_ratio else "" for a in others]
        return "| " + " | ".join([title, *cells, *ratios]) + " |"

    cuda = s.device == "cuda"
    mem_what = "CUDA max_memory_allocated" if cuda else "peak RSS"
    ref = {a: runs[a][0]["reference"] for a in arms}
    workload = ("chat-shaped lengths (UltraFeedback-like: log-normal prompts, median "
                f"{data_stats['prompt_median']}, and completions, median {data_stats['completion_median']} "
                "tokens; benchmarks/vs_trl/workload.py)" if s.workload == "chat" else "synthetic lengths")
    lines = [
        f"## preftune vs TRL {versions['trl']} DPOTrainer — {s.model} ({versions['params']})",
        "",
        f"{s.num_pairs} pairs, {workload}: {data_stats['tokens_per_pair']:.0f} tokens per pair on average "
        f"(TRL's count), sequences {data_stats['min_seq']}–{data_stats['max_seq']} tokens, prompts "
        f"{100 * data_stats['prompt_share']:.0f} % of the tokens, {data_stats['tokens_prompt_once']} of "
        f"{data_stats['tokens']} tokens left with each prompt once; no truncation · batch {s.batch} × "
        f"accumulation {s.grad_accum} · {s.steps} step(s) · β {s.beta} · lr {s.lr:g} constant · AdamW (torch, "
        f"non-fused) · max_grad_norm {s.max_grad_norm:g} · {'bf16 autocast' if s.bf16 else 'fp32'} · gradient "
        f"checkpointing {'on' if s.gradient_checkpointing else 'off'} · max_length {s.max_length} · "
        f"{s.device} · {s.threads} thread(s) · torch {versions['torch']} · transformers {versions['transformers']}"
        f" · median (min–max) of {len(runs[arms[0]])} repeat(s), arms alternating in fresh processes",
        "",
        "Reference log-probs — " + "; ".join(f"{ARM_TITLES[a]}: {ref[a]}" for a in arms)
        + (" (each framework's default)." if s.reference == "default" else "."),
        "",
        "preftune settings beyond the shared ones: "
        + (", ".join(f"{k}={v}" for k, v in s.preftune_settings.items()) or "none (its defaults)") + "."
        + "".join(f" {ARM_TITLES[a]}: {'; '.join(runs[a][0].get('notes', [])) or 'no layout note'}."
                  for a in arms if a != "trl"),
        "",
        "| | " + " | ".join(ARM_TITLES[a] for a in arms) + "".join(f" | {ARM_TITLES[a]} / TRL" for a in others) + " |",
        "|---" * (1 + len(arms) + len(others)) + "|",
        row("tokens/s, end-to-end training phase (incl. reference)", "tokens_per_s"),
        row(f"tokens/s, steady state ({f'steps 2..{s.steps}' if s.steps > 1 else 'needs 2+ steps'})",
            "steady_tokens_per_s"),
        row("training phase wall time, s", "phase_s", 2),
        row("… of which reference precompute, s", "reference_s", 2, with_ratio=False),
        row("… first optimizer step, s", "first_step_s", 2),
        row("… later steps, s per step", "steady_step_s", 2),
        row(f"{mem_what} during training phase, MiB", "train_peak", 0),
        row(f"{mem_what} of the whole process (incl. loading), MiB", "process_peak", 0),
        row("set-up before the phase (load model, tokenize), s", "setup_s", 2, with_ratio=False),
    ]
    if flops and flops.get("peak_flops"):
        lines += [
            row("FLOP utilisation, every sequence whole (the same work for all)", "mfu", fmt=_pct),
            row("FLOP utilisation of the work needed (prefix sharing: each prompt once)", "mfu_needed", fmt=_pct,
                with_ratio=False),
        ]
    lines += [
        "",
        "| step | tokens | " + " | ".join(f"{ARM_TITLES[a]} loss" for a in arms) + " | max |Δ| |",
        "|---" * (3 + len(arms)) + "|",
    ]
    curves = {a: per_step(runs[a][0], s.grad_accum) for a in arms}
    first = curves[arms[0]]
    max_diff, order_ok = 0.0, True
    for i, (loss0, n0) in enumerate(first):
        losses = [curves[a][i][0] if i < len(curves[a]) else float("nan") for a in arms]
        counts = {curves[a][i][1] for a in arms if i < len(curves[a])}
        d = max(losses) - min(losses)
        max_diff = max(max_diff, d)
        order_ok &= len(counts) == 1
        lines.append(f"| {i + 1} | {n0}{'' if len(counts) == 1 else ' (counts differ!)'} | "
                     + " | ".join(f"{x:.6f}" for x in losses) + f" | {d:.1e} |")
    # Curves of every repeat against the first arm's (the runs are deterministic up to float noise).
    for results in runs.values():
        for r in results:
            steps = per_step(r, s.grad_accum)
            order_ok &= len(steps) == len(first) and [n for _, n in steps] == [n for _, n in first]
            for (la, _), (lb, _) in zip(first, steps):
                max_diff = max(max_diff, abs(la - lb))
    lines += [
        "",
        f"Loss curves: max |Δ| {max_diff:.1e} over all steps, arms and repeats; per-step token counts "
        f"{'identical (same data order)' if order_ok else 'DIFFER: the runs did not see the same batches'}.",
    ]
    if flops and flops.get("peak_flops"):
        lines += ["", f"Work: {flops['nominal'] / 1e12:.2f} TFLOP with every sequence whole, "
                      f"{flops['shared'] / 1e12:.2f} TFLOP with each prompt once (benchmarks/vs_trl/flops.py); "
                      f"matmul peak {flops['peak_flops'] / 1e9:.0f} GFLOP/s ({flops['peak_what']})."]
    if check is not None:
        lines += ["", "Equivalence check (first batch, live reference):", ""]
        lines += [f"    {line}" for line in check.lines]
    summary = {
        "settings": dataclasses.asdict(s),
        "versions": versions,
        "data": data_stats,
        "flops": flops,
        "medians": {a: {k: _median([x for x in v if x is not None]) for k, v in m.items()} for a, m in metrics.items()},
        "loss_max_abs_diff": max_diff,
        "same_order": order_ok,
        "check": dataclasses.asdict(check) if check is not None else None,
        "runs": runs,
    }
    return "\n".join(lines), summary
