"""``preftune plot RUN_DIR [RUN_DIR ...] [--out DIR]``: the curves of one or more runs, as PNG files.

Reads each run's ``metrics.jsonl`` (one JSON record per logged step: ``step``, ``split`` train or
eval, and the metrics) and draws one figure per quantity, every run on the same axes so runs
compare at a glance: loss, reward accuracy, reward margin, KL, reward (RL stages), learning rate and
gradient norm. Training values are lines; held-out evaluations are dashed lines with markers in the
same colour. A quantity no run logged gets no figure. ``overview.png`` puts them all on one page.

Needs matplotlib (``pip install matplotlib``); it draws with the Agg backend, so no display is needed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from preftune.errors import ConfigError, PreftuneError

__all__ = ["PANELS", "plot_runs", "main"]

# (file stem, axis title, metric keys in the order looked for: the first a run logged is drawn)
PANELS: list[tuple[str, str, tuple[str, ...]]] = [
    ("loss", "loss", ("loss",)),
    ("reward_accuracy", "reward accuracy", ("rewards/accuracies", "accuracy")),
    ("reward_margin", "reward margin (chosen − rejected)", ("rewards/margins", "margin")),
    ("kl", "KL to the reference", ("kl",)),
    ("reward", "reward", ("reward",)),
    ("lr", "learning rate", ("lr",)),
    ("grad_norm", "gradient norm (before clipping)", ("grad_norm",)),
]


def read_run(run_dir: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{split: {metric: [(step, value), ...]}}`` of a run folder's ``metrics.jsonl``.

    Non-finite values (logged as the strings "nan" / "inf") are left out of the curves.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no metrics.jsonl (give the output_dir of a preftune training run)")
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, split = int(record["step"]), str(record["split"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}:{lineno}: not a metrics record (a JSON object with step and split)") from None
        for key, value in record.items():
            if key in ("step", "split", "time"):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                series.setdefault(split, {}).setdefault(key, []).append((step, number))
    if not series:
        raise ConfigError(f"{path}: no metrics logged yet")
    return series


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Write one PNG per quantity (see PANELS) plus ``overview.png`` into ``out_dir``; returns their paths."""
    figure_cls, canvas_cls = _matplotlib()
    runs = [(label, read_run(d)) for label, d in zip(_labels(run_dirs), run_dirs)]
    drawn = [(stem, title, keys) for stem, title, keys in PANELS if any(_pick(data, keys) for _, data in runs)]
    if not drawn:
        raise ConfigError(f"none of {', '.join(map(str, run_dirs))} logged any of "
                          f"{', '.join(k for _, _, keys in PANELS for k in keys)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, title, keys in drawn:
        fig = figure_cls(figsize=(6.4, 4.0), layout="constrained")
        _draw(fig.add_subplot(), title, keys, runs)
        written.append(_save(fig, canvas_cls, out / f"{stem}.png"))
    columns = 2 if len(drawn) > 1 else 1
    rows = math.ceil(len(drawn) / columns)
    overview = figure_cls(figsize=(6.4 * columns, 3.6 * rows), layout="constrained")
    for i, (_, title, keys) in enumerate(drawn):
        _draw(overview.add_subplot(rows, columns, i + 1), title, keys, runs)
    written.append(_save(overview, canvas_cls, out / "overview.png"))
    return written


def _draw(ax: Any, title: str, keys: tuple[str, ...], runs: list[tuple[str, dict]]) -> None:
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for colour, (label, data) in zip(colours, runs):
        key = _pick(data, keys)
        if key is None:
            continue
        for split, style in (("train", {"linestyle": "-"}), ("eval", {"linestyle": "--", "marker": "o"})):
            points = data.get(split, {}).get(key)
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, color=colour, label=f"{label} ({split})", markersize=4, **style)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def _pick(data: dict[str, dict[str, list]], keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if any(k in metrics for metrics in data.values())), None)


def _labels(run_dirs: list[str | Path]) -> list[str]:
    """Each run's folder name; the whole path where two runs share a name."""
    names = [Path(d).resolve().name for d in run_dirs]
    return [name if names.count(name) == 1 else str(d) for name, d in zip(names, run_dirs)]


def _save(fig: Any, canvas_cls: Any, path: Path) -> Path:
    canvas_cls(fig).print_png(str(path))
    return path


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("preftune plot needs matplotlib, which is not installed: pip install matplotlib "
                          "(or pip install 'preftune[plot]')") from None
    return Figure, FigureCanvasAgg


def default_out(run_dirs: list[str]) -> Path:
    """One run: its own ``plots/`` folder. Several: ``./plots``."""
    return Path(run_dirs[0]) / "plots" if len(run_dirs) == 1 else Path("plots")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="preftune plot", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output_dir of a training run")
    parser.add_argument("--out", help="folder for the PNG files (default: RUN_DIR/plots for one run, ./plots "
                                      "for several)")
    args = parser.parse_args(argv)
    try:
        written = plot_runs(args.run_dirs, args.out or default_out(args.run_dirs))
    except PreftuneError as e:
        print(f"preftune plot: error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
