"""The KL term of the RLHF objective (docs/maths.md §objective, §rl.kl-estimators): per-token estimators and β control.

    max_π  E_{x, y~π} [ r(x, y) ] − β · KL( π(·|x) ‖ π_ref(·|x) )

A completion is sampled from π token by token, so KL(π‖π_ref) is estimated from the sampled tokens'
log-probs only: log π(y_t|x, y_<t) and log π_ref(y_t|x, y_<t), tensors of shape (B, T) with a
boolean ``mask`` (B, T) marking the completion tokens (True = counts). Everything here is a pure
function of tensors, except the two β controllers, which hold one float of state (and can resume).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) from tokens sampled from π (Schulman 2020, "Approximating
    KL Divergence", http://joschu.net/blog/kl-approx.html). With log ρ = log π − log π_ref and
    r = π_ref/π = exp(−log ρ):

        k1   = log ρ                unbiased; can be negative token by token
        k2   = ½ (log ρ)²           biased (exact to second order near π = π_ref), low variance, ≥ 0
        k3   = (r − 1) − log r      unbiased (E_π[r] = 1), ≥ 0 (log r ≤ r − 1), low variance
        abs  = |log ρ|              biased, ≥ 0: a heuristic penalty, not an estimator of the KL

    ``logprobs``, ``ref_logprobs``: (B, T) log-probs of the sampled tokens under π and π_ref; returns
    (B, T). Entries outside the completion are computed too: reduce with :func:`preftune.rl.masked.masked_mean`.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        # (r − 1) − log r with log r = −log ρ; expm1 keeps the two O(log ρ) terms from cancelling into
        # noise near π = π_ref, where the estimate is O((log ρ)²). The clamp removes only rounding
        # (≤ 1 ulp of expm1) when log ρ is ~1e-8: the exact value is ≥ 0.
        return (torch.expm1(-log_ratio) + log_ratio).clamp_min(0.0)
    if estimator == "abs":
        return log_ratio.abs()
    raise ValueError(f"unknown KL estimator {estimator!r}; known: {', '.join(KL_ESTIMATORS)}")


class FixedKLController:
    """β held constant. Same interface as :class:`AdaptiveKLController` so stages need not branch."""

    def __init__(self, coef: float) -> None:
        if not coef >= 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: a fixed β ignores the observed KL."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """β steered toward a target KL (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", §2.2): a proportional controller in log-space,

        e = clip(KL / target − 1, −0.2, 0.2)
        β ← β · (1 + e · n_steps / horizon)

    The paper writes the gain as K_β (0.1); here it is n_steps / horizon, so the correction per sample
    is the same whatever the batch size: ``n_steps`` is how many samples (or steps) the KL was measured
    over since the last update, ``horizon`` the number of them over which β may move by ~e. The clip
    bounds the change per update, so one outlier batch cannot swing β.

    Only β is state (:meth:`state_dict`); ``target`` and ``horizon`` are hyperparameters and come from
    the constructor, i.e. from the run's config, on resume.
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if not init_coef > 0:
            raise ValueError(f"init_coef must be > 0 (β = 0 cannot grow multiplicatively), got {init_coef}")
        if not target > 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """One controller step from the KL observed over the last ``n_steps`` samples."""
        current_kl = float(current_kl)
        if not math.isfinite(current_kl):
            # NaN would pass through the clip and make β NaN for the rest of the run.
            raise ValueError(f"current_kl must be finite, got {current_kl}")
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        factor = 1.0 + error * n_steps / self.horizon
        if factor <= 0:
            # Only when n_steps ≥ 5·horizon: the gain is meant to be small (the paper's K_β = 0.1).
            raise ValueError(f"n_steps / horizon = {n_steps / self.horizon:g} is too large: β would become <= 0")
        self.value *= factor

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
