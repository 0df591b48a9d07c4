"""Points on the reward-vs-KL plane: the CSV, each method's frontier, and dominance counted point by point.

A point is one policy measured on the held-out prompts: mean r* and KL(π ‖ π_SFT) (one per checkpoint per
run; best-of-N points have the analytic KL). The paper's claim (DPO paper §6.1): DPO's frontier dominates
PPO's. A method's frontier is the upper concave envelope of its points and π_SFT: every point on it is
attainable by mixing two of its policies. This module counts points under frontiers; the verdict per KL
bin with its standard errors is :mod:`preftune.experiments.stats`, the plots :mod:`preftune.experiments.plots`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from preftune.experiments.catalog import METHODS

LABELS = {"sft": "π_SFT", **{m.name: m.label for m in METHODS.values()}, "bon": "best-of-N"}
COLORS = {"sft": "black", **{m.name: m.color for m in METHODS.values()}, "bon": "tab:gray"}
PPO = ("ppo_gt", "ppo_rm")
PHRASES = {"dominates": "dominates", "does not dominate": "does not dominate",
           "mixed": "partly dominates (mixed)", "no data": "cannot be compared with"}


@dataclass(frozen=True)
class Point:
    method: str        # sft, dpo, ipo, ppo_gt, ppo_rm, bon
    run: str           # e.g. dpo_beta0.1; bon for best-of-N
    beta: float        # DPO/IPO β, PPO KL coefficient; nan for sft / bon
    step: int          # optimizer step (DPO/IPO) or rollout (PPO) of the checkpoint; N for best-of-N
    reward: float
    reward_sem: float
    kl: float
    kl_sem: float
    n: int             # completions behind the point
    win_rate: float = float("nan")      # P(r*(its sample) > r*(π_SFT's sample of the same prompt)), ties ½
    win_rate_sem: float = float("nan")


def write_csv(points: list[Point], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([f.name for f in fields(Point)])
        for p in points:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in asdict(p).values()])
    return path


def read_csv(path: Path) -> list[Point]:
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.append(Point(row["method"], row["run"], float(row["beta"] or "nan"), int(row["step"]),
                             float(row["reward"]), float(row["reward_sem"] or "nan"), float(row["kl"]),
                             float(row["kl_sem"] or "nan"), int(row["n"]), float(row.get("win_rate") or "nan"),
                             float(row.get("win_rate_sem") or "nan")))
    return out


def pareto(points: list[Point]) -> list[Point]:
    """The non-dominated points (none has at least its reward at no more KL), by increasing KL."""
    out: list[Point] = []
    for p in sorted(points, key=lambda p: (p.kl, -p.reward)):
        if not out or p.reward > out[-1].reward:
            out.append(p)
    return out


def envelope(points: list[Point]) -> list[Point]:
    """A method's frontier: the vertices of the upper concave hull of its non-dominated points. Every point
    on it is attainable: mixing two policies (pick one per sample) mixes their rewards linearly, and KL is
    convex, so the mixture's KL is at most the same mix of theirs."""
    hull: list[Point] = []
    for p in pareto(points):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (b.kl - a.kl) * (p.reward - a.reward) - (b.reward - a.reward) * (p.kl - a.kl) >= 0:
                hull.pop()  # b lies on or under the segment a–p
            else:
                break
        hull.append(p)
    return hull


def frontier_at(hull: list[Point], kl: float) -> tuple[float, float] | None:
    """(reward, its standard error) of the frontier at ``kl``: interpolated between vertices, flat after
    the last one; None below the first vertex (nothing that close to π_ref was measured)."""
    if not hull or kl < hull[0].kl:
        return None
    for a, b in zip(hull, hull[1:]):
        if kl <= b.kl:
            t = 0.0 if b.kl == a.kl else (kl - a.kl) / (b.kl - a.kl)
            return (a.reward + t * (b.reward - a.reward), _se((1 - t) * _nz(a.reward_sem), t * _nz(b.reward_sem)))
    return hull[-1].reward, _nz(hull[-1].reward_sem)


def _nz(v: float) -> float:
    return 0.0 if math.isnan(v) else v


def _se(*values: float) -> float:
    return math.sqrt(sum(_nz(v) ** 2 for v in values))


@dataclass
class Verdict:
    label: str                 # dominates | does not dominate | mixed | no data
    challenger: str
    baseline: str
    dominated: int             # baseline points on or under the challenger's frontier
    total: int                 # baseline points
    reverse: int               # challenger points on or under the baseline's frontier
    reverse_total: int
    significant: int           # dominated baseline points more than 2 standard errors under it
    rows: list[tuple[Point, float | None, float]]  # baseline point, challenger frontier there, its SE
    text: str

    @property
    def qualifier(self) -> str:
        """Said after the label when the dominance rests on differences within the noise."""
        if self.label in ("dominates", "mixed") and self.significant < self.dominated:
            return (f", but only {self.significant} of the {self.dominated} margins exceed 2 standard errors "
                    "(the rest are within the noise)")
        return ""


def verdict(points: list[Point], challenger: tuple[str, ...] = ("dpo",), baseline: tuple[str, ...] = PPO) -> Verdict:
    """Does the challenger's reward-vs-KL frontier dominate the baseline's?

    A method's frontier is :func:`envelope` of its checkpoints' points plus π_SFT (step 0: every run starts
    there). A baseline point is dominated when the challenger's frontier reaches at least its reward at its
    KL. ``dominates``: every baseline point is; ``does not dominate``: none is; ``mixed``: some are. The
    reverse count (challenger points under the baseline's frontier) is reported next to it."""
    origin = [p for p in points if p.method == "sft"]
    chal = [p for p in points if p.method in challenger and p.step > 0]
    base = [p for p in points if p.method in baseline and p.step > 0]
    names = (" + ".join(LABELS.get(m, m) for m in challenger), " + ".join(LABELS.get(m, m) for m in baseline))
    if not chal or not base:
        return Verdict("no data", *names, 0, len(base), 0, len(chal), 0, [],
                       f"no data: {len(chal)} {names[0]} and {len(base)} {names[1]} points")
    chal_hull, base_hull = envelope(chal + origin), envelope(base + origin)
    rows, dominated, significant = [], 0, 0
    for p in base:
        at = frontier_at(chal_hull, p.kl)
        rows.append((p, None, float("nan")) if at is None else (p, *at))
        if at is not None and at[0] >= p.reward:
            dominated += 1
            significant += at[0] - p.reward > 2 * _se(at[1], p.reward_sem)
    reverse = 0
    for q in chal:
        at = frontier_at(base_hull, q.kl)
        reverse += at is not None and at[0] >= q.reward
    label = "dominates" if dominated == len(base) else "does not dominate" if dominated == 0 else "mixed"
    text = (f"{names[0]} {PHRASES[label]} {names[1]}: {dominated} of {len(base)} {names[1]} points lie on or under "
            f"the {names[0]} frontier ({significant} of them by more than 2 standard errors in reward); "
            f"{reverse} of {len(chal)} {names[0]} points lie on or under the {names[1]} frontier.")
    return Verdict(label, *names, dominated, len(base), reverse, len(chal), significant, rows, text)
