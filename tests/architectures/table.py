"""Print the architecture matrix as a markdown table, measured now:

    PYTHONPATH=. python -m tests.architectures.table [--compile] [--no-stages] [--out FILE]

For every family of ``preftune.tiny_architectures`` and every setting of ``tests.architectures.matrix``:
max |Δ log-prob| / max |Δ grad| against the model's own forward (or what happened instead: refused when
asked for by name), what the defaults became, and which stages ran two steps (``rm`` says whether the
saved folder is a transformers classification model or preftune's own head).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
from pathlib import Path

from tests.architectures.matrix import ARCHS, COMPILE, SETTINGS, Matrix, run_stages, save_tiny


def _cell(measured) -> str:
    if "refused" in measured.applied:
        return "refused"
    return f"{measured.logp:.0e} / {measured.grad:.0e}"


def _stages(arch: str) -> str:
    from preftune.modeling.reward_head import HEAD_FILE

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):  # the runs' logs
        results = run_stages(save_tiny(arch, Path(tmp) / "model"), tmp)
        ok = [name for name, r in results.items() if len(r.history) == 2
              and all(math.isfinite(h["reward" if name == "rl" else "loss"]) for h in r.history)]
        head = "own head" if (results["rm"].final_dir / HEAD_FILE).is_file() else "HF class"
        moe = " · aux_loss" if "aux_loss" in results["sft"].history[0] else ""
    return " ".join(ok).replace("rm", f"rm ({head})") + moe


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="add the torch_compile column (slow)")
    parser.add_argument("--no-stages", action="store_true", help="leave out the stage runs")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    settings = list(SETTINGS.values()) + ([COMPILE] if args.compile else [])
    header = ["architecture", *(s.name for s in settings), "defaults became"] + ([] if args.no_stages else ["stages"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    matrix = Matrix()
    for arch in ARCHS:
        measured = {s.name: matrix.measure(arch, s) for s in settings}
        row = [arch, *(_cell(measured[s.name]) for s in settings), measured["default"].applied]
        if not args.no_stages:
            row.append(_stages(arch))
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
