"""Does one method's reward-vs-KL frontier dominate another's? Margins per KL bin with paired bootstrap
standard errors.

**Frontier.** A method's frontier is the upper concave envelope of its measured points and π_SFT
(:func:`preftune.experiments.frontier.envelope`): every point on it is attainable by mixing two of its
policies, since a mixture's reward is the mix of theirs and KL is convex. At a KL between two vertices it
is their linear interpolation; it is only compared where both methods have measured points at that KL or
beyond, so neither curve is extrapolated.

**Bins.** The margin challenger − baseline is computed at fixed KL values (:data:`GRID`, nats per
completion) up to the smaller of the two methods' largest measured KL, and at that KL itself.

**Standard errors.** Every point was measured on the same held-out prompts with the same random numbers
(sample j of prompt i), so the points are correlated, and the honest error of a margin is that of the
whole procedure: resample the held-out prompts with replacement (the same draw for every point, keeping
all of a prompt's samples together), recompute every point's mean r* and KL, both envelopes and the
margin at each bin; the standard deviation over ``resamples`` draws is the standard error. It carries
the noise of the rewards, of the KL estimates (the x position of every vertex), of which points end up
on each envelope, and the pairing (the prompt's effect on r* cancels from the margin). A margin more
than 2 standard errors from 0 is called significant at that bin. Caveat: an envelope is a maximum over
noisy points, biased upwards by the noise; the method with more points near a bin gains more from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from preftune.experiments.frontier import LABELS, Point
from preftune.experiments.sampling import PromptValues

GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
Z = 2.0


def hull_at(kl: np.ndarray, reward: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The upper concave envelope of the points (kl[i], reward[i]) evaluated at ``at``: interpolated between
    vertices, flat after the last one, NaN before the first."""
    order = np.lexsort((-reward, kl))
    hull: list[tuple[float, float]] = []
    best = -np.inf
    for i in order:
        x, y = float(kl[i]), float(reward[i])
        if y <= best:
            continue  # dominated: another point has at least its reward at no more KL
        best = y
        while len(hull) >= 2:
            (ax, ay), (bx, by) = hull[-2], hull[-1]
            if (bx - ax) * (y - ay) - (by - ay) * (x - ax) >= 0:
                hull.pop()
            else:
                break
        hull.append((x, y))
    xs, ys = np.array([h[0] for h in hull]), np.array([h[1] for h in hull])
    out = np.interp(at, xs, ys)  # np.interp is flat beyond both ends
    out[at < xs[0]] = np.nan
    return out


@dataclass(frozen=True)
class Bin:
    kl: float
    challenger: float
    challenger_se: float
    baseline: float
    baseline_se: float
    margin: float
    margin_se: float

    @property
    def z(self) -> float:
        """margin / SE (±inf for a nonzero margin no resample changes, NaN for a zero one)."""
        if self.margin_se > 0:
            return self.margin / self.margin_se
        return math.copysign(math.inf, self.margin) if self.margin else math.nan

    @property
    def call(self) -> str:
        """higher | lower | within noise: the challenger at this KL, by more than 2 standard errors or not."""
        return "higher" if self.z > Z else "lower" if self.z < -Z else "within noise"


@dataclass
class BinnedVerdict:
    challenger: str
    baseline: str
    bins: list[Bin]
    resamples: int
    prompts: int

    @property
    def label(self) -> str:
        """dominates | is dominated by | crosses | no data (by the margins' signs at every bin)."""
        if not self.bins:
            return "no data"
        if all(b.margin >= 0 for b in self.bins):
            return "dominates"
        if all(b.margin <= 0 for b in self.bins):
            return "is dominated by"
        return "crosses"

    def count(self, call: str) -> int:
        return sum(b.call == call for b in self.bins)

    @property
    def text(self) -> str:
        if not self.bins:
            return f"{self.challenger} and {self.baseline}: no KL where both have measured points"
        lo, hi = self.bins[0].kl, self.bins[-1].kl
        return (f"{self.challenger}'s frontier {self.label} {self.baseline}'s over KL {lo:.3g}–{hi:.3g} nats: higher at "
                f"{self.count('higher')}, lower at {self.count('lower')} and within 2 standard errors at "
                f"{self.count('within noise')} of {len(self.bins)} KL bins (paired bootstrap over the "
                f"{self.prompts} held-out prompts, {self.resamples} resamples).")


def _matrices(points: list[Point], values: dict[tuple[str, int], PromptValues], methods: tuple[str, ...]
              ) -> tuple[np.ndarray, np.ndarray]:
    """[points, prompts] per-prompt mean r* and KL of every point of ``methods`` (checkpoints, step > 0)."""
    chosen = [p for p in points if p.method in methods and p.step > 0 and (p.run, p.step) in values]
    if not chosen:
        return np.empty((0, 0)), np.empty((0, 0))
    rewards = [[sum(g) / len(g) for g in values[(p.run, p.step)].rewards] for p in chosen]
    kls = [[sum(g) / len(g) for g in values[(p.run, p.step)].kls] for p in chosen]
    return np.array(rewards, dtype=np.float64), np.array(kls, dtype=np.float64)


def binned_verdict(points: list[Point], values: dict[tuple[str, int], PromptValues],
                   challenger: tuple[str, ...] = ("dpo",), baseline: tuple[str, ...] = ("ppo_gt",), *,
                   resamples: int = 2000, seed: int = 0, grid: tuple[float, ...] = GRID) -> BinnedVerdict:
    names = (" + ".join(LABELS.get(m, m) for m in challenger), " + ".join(LABELS.get(m, m) for m in baseline))
    origin = np.array([sum(g) / len(g) for g in values[("sft", 0)].rewards], dtype=np.float64)
    (cr, ck), (br, bk) = _matrices(points, values, challenger), _matrices(points, values, baseline)
    if not len(cr) or not len(br):
        return BinnedVerdict(*names, [], resamples, len(origin))
    top = min(ck.mean(1).max(), bk.mean(1).max())
    at = np.array(sorted({g for g in grid if g < top} | {round(float(top), 6)}))
    at = at[at > 0]
    if not len(at):
        return BinnedVerdict(*names, [], resamples, len(origin))

    def frontier(r: np.ndarray, k: np.ndarray, r0: np.ndarray) -> np.ndarray:
        # r, k: [points, B]; r0: [B] -> [B, bins]
        return np.stack([hull_at(np.append(k[:, b], 0.0), np.append(r[:, b], r0[b]), at) for b in range(r.shape[1])])

    c_hat = frontier(cr.mean(1, keepdims=True), ck.mean(1, keepdims=True), origin.mean(keepdims=True))[0]
    b_hat = frontier(br.mean(1, keepdims=True), bk.mean(1, keepdims=True), origin.mean(keepdims=True))[0]
    rng = np.random.default_rng(seed)
    n = len(origin)
    c_boot = np.empty((resamples, len(at)))
    b_boot = np.empty((resamples, len(at)))
    chunk = 250  # resamples per batch: [points, chunk, prompts] stays small
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        r0 = origin[idx].mean(-1)
        c_boot[start:start + len(idx)] = frontier(cr[:, idx].mean(-1), ck[:, idx].mean(-1), r0)
        b_boot[start:start + len(idx)] = frontier(br[:, idx].mean(-1), bk[:, idx].mean(-1), r0)
    margin = c_boot - b_boot

    def sd(x: np.ndarray) -> np.ndarray:
        return np.nanstd(x, axis=0, ddof=1)

    bins = [Bin(float(a), float(c), float(cs), float(b), float(bs), float(c - b), float(ms))
            for a, c, cs, b, bs, ms in zip(at, c_hat, sd(c_boot), b_hat, sd(b_boot), sd(margin))]
    return BinnedVerdict(*names, bins, resamples, n)
