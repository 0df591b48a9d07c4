"""The experiment's figures: ``frontier.png`` (every method's points and frontier, ±1 standard error bars)
and ``training.png`` (one panel per method: each run's checkpoints in training order, from π_SFT)."""

from __future__ import annotations

import math
from pathlib import Path

from preftune.experiments.catalog import METHODS
from preftune.experiments.frontier import COLORS, LABELS, Point, envelope

MARKERS = "osD^vP*Xh<>"
KL_LABEL = "KL(π ‖ π_SFT), nats per completion (sampled, held-out prompts)"
R_LABEL = "mean r* = P(positive), held-out prompts"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(values: list[float]) -> list[float]:
    return [0.0 if math.isnan(v) else v for v in values]


def _runs(points: list[Point], method: str) -> list[list[Point]]:
    mine = [p for p in points if p.method == method]
    return [sorted((p for p in mine if p.run == run), key=lambda p: p.step)
            for run in sorted({p.run for p in mine}, key=lambda r: next(p.beta for p in mine if p.run == r))]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    _plt().close(fig)
    tmp.replace(path)
    return path


def plot_frontier(points: list[Point], path: Path, title: str) -> Path:
    """Every point with ±1 SE bars (reward and KL), each run's checkpoints joined in step order (thin), each
    method's frontier (:func:`envelope`, thick), best-of-N labelled with N."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    sft = [p for p in points if p.method == "sft"]
    for method in METHODS:
        runs = _runs(points, method)
        if not runs:
            continue
        color = COLORS[method]
        for i, pts in enumerate(runs):
            line = sft + pts
            ax.plot([p.kl for p in line], [p.reward for p in line], color=color, lw=0.6, alpha=0.4)
            ax.errorbar([p.kl for p in pts], [p.reward for p in pts], xerr=_err([p.kl_sem for p in pts]),
                        yerr=_err([p.reward_sem for p in pts]), fmt=MARKERS[i % len(MARKERS)], color=color, ms=4,
                        lw=0.7, capsize=1.5)
        front = envelope([p for pts in runs for p in pts] + sft)
        values = ", ".join(f"{pts[0].beta:g}" for pts in runs)
        ax.plot([p.kl for p in front], [p.reward for p in front], color=color, lw=2.2, alpha=0.9,
                label=f"{LABELS[method]}: {METHODS[method].symbol} {values}")
    bon = sorted((p for p in points if p.method == "bon"), key=lambda p: p.step)
    if bon:
        ax.errorbar([p.kl for p in bon], [p.reward for p in bon], yerr=_err([p.reward_sem for p in bon]), fmt="--s",
                    color=COLORS["bon"], ms=4, lw=1.2, capsize=2, label=LABELS["bon"] + " (analytic KL)")
        for p in bon:
            ax.annotate(f"N={p.step}", (p.kl, p.reward), textcoords="offset points", xytext=(4, -10), fontsize=7,
                        color=COLORS["bon"])
    for p in sft:
        ax.plot([p.kl], [p.reward], marker="*", color="black", ms=13, ls="none", label="π_SFT (reference)")
    ax.set_xlabel(KL_LABEL)
    ax.set_ylabel(R_LABEL)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_training(points: list[Point], path: Path, title: str) -> Path:
    """Reward vs KL along training: one panel per method, each run from π_SFT through its checkpoints
    (last one labelled with its step), ±1 SE bars; the method's frontier dashed."""
    plt = _plt()
    methods = [m for m in METHODS if any(p.method == m for p in points)]
    cols = min(3, max(1, len(methods)))
    rows = max(1, math.ceil(len(methods) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), dpi=110, squeeze=False)
    sft = [p for p in points if p.method == "sft"]
    cmap = plt.get_cmap("viridis")
    for ax, method in zip(axes.flat, methods):
        runs = _runs(points, method)
        for i, pts in enumerate(runs):
            color = cmap(i / max(1, len(runs) - 1) * 0.9)
            line = sft + pts
            ax.errorbar([p.kl for p in line], [p.reward for p in line], xerr=_err([p.kl_sem for p in line]),
                        yerr=_err([p.reward_sem for p in line]), fmt="-" + MARKERS[i % len(MARKERS)], color=color,
                        ms=3.5, lw=1.0, capsize=1.5, label=f"{METHODS[method].symbol} = {pts[0].beta:g}")
            ax.annotate(f"{pts[-1].step}", (pts[-1].kl, pts[-1].reward), textcoords="offset points", xytext=(3, 3),
                        fontsize=6, color=color)
        front = envelope([p for pts in runs for p in pts] + sft)
        ax.plot([p.kl for p in front], [p.reward for p in front], "--", color="black", lw=1.0, alpha=0.6)
        ax.set_title(LABELS[method], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.supxlabel(KL_LABEL, fontsize=8)
    fig.supylabel(R_LABEL, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
