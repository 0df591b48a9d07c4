"""The demonstrations: each returns :class:`Check` rows (metric, value, threshold) plus raw numbers.

Every claim is made in the exact world of :mod:`preftune.theory.world`. Unless a demonstration says
"sampled", preference losses are minimised on the *population* pairs (:func:`expected_pairs`), i.e.
the exact infinite-data expectation, so the residual is optimisation error, not sampling noise; the
finite-sample row uses ``Settings.sampled_n`` seeded BT pairs. Likewise REINFORCE and PPO use exact
expectations over completions, except in :func:`sampled_rl`, which draws seeded completions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from preftune.theory.data import (
    bt_prob,
    disjoint_pairs,
    expected_pairs,
    plackett_luce_logprob,
    sample_pairs,
    sample_rankings,
)
from preftune.theory.demos_grpo import PI_STAR, POINT_MASS, VariantRow, rows
from preftune.theory.train import (
    TrainResult,
    standard_monitor,
    train_ppo,
    train_ppo_sampled,
    train_preference,
    train_reinforce,
)
from preftune.theory.world import TabularWorld


@dataclass
class Check:
    """One row of the report: ``value`` must be ``op`` (``"<"`` or ``">"``) ``threshold``."""

    demo: str
    metric: str
    value: float
    threshold: float
    op: str = "<"

    @property
    def passed(self) -> bool:
        return self.value < self.threshold if self.op == "<" else self.value > self.threshold


@dataclass
class Settings:
    """Step counts and sizes; :meth:`quick` is for tests (same claims, fewer steps)."""

    steps: int = 1000  # Adam steps for preference losses and REINFORCE
    lr: float = 0.1
    ppo_iterations: int = 250  # × ppo_epochs gradient steps
    ppo_epochs: int = 4
    ppo_lr: float = 0.05
    sampled_n: int = 1_000_000  # BT pairs in the finite-sample DPO run
    # Sampled RL (K completions per prompt per batch). Not shortened by quick(): with half the steps
    # the sampling-noise floor of KL(π_θ‖π*) comes within 2× of the 1e-2 threshold for some seeds.
    rloo_samples: int = 16
    rloo_steps: int = 1000  # Adam steps, one fresh batch each (lr = ``lr``)
    sampled_ppo_samples: int = 64
    sampled_ppo_iterations: int = 250  # batches, × ppo_epochs steps each (lr = ``ppo_lr``)
    # The GRPO family, REINFORCE++ and online DPO (demos_grpo). quick() halves the sampled rows only
    # (their KL stays ≤ half its threshold); the exact ones need the steps to reach their limit.
    grpo_exact_steps: int = 1000  # exact rows (lr = ``lr``): the reverse-KL ones converge the slowest
    grpo_steps: int = 1000  # sampled rows, one step per batch (lr = ``lr``)
    grpo_multi_steps: int = 2000  # sampled rows with 4 iterations per batch (lr = ``ppo_lr``)
    group_size: int = 8
    reinforce_pp_samples: int = 32
    online_dpo_pairs: int = 256
    binary_beta: float = 0.25  # β of the dynamic-sampling rows (0/1 reward)
    record_every: int = 10
    seed: int = 0

    @classmethod
    def quick(cls) -> Settings:
        return cls(steps=500, ppo_iterations=100, sampled_n=200_000, record_every=20, grpo_steps=500,
                   grpo_multi_steps=1000)


@dataclass
class DemoResult:
    checks: list[Check]
    numbers: dict[str, Any] = field(default_factory=dict)


def _collapse_fraction(probs: Tensor, ref: Tensor, mask: Tensor) -> float:
    """Share of the masked completions whose probability fell below 1e-3 × π_ref (mass has left them)."""
    return float(((probs < 1e-3 * ref) & mask).sum() / mask.sum())


def same_optimum(world: TabularWorld, s: Settings) -> DemoResult:
    """DPO (sigmoid, population and sampled), exact REINFORCE and PPO all reach π* of docs/maths.md §objective.optimum."""
    mon = standard_monitor(world)
    dpo = train_preference(world, expected_pairs(world), "sigmoid", steps=s.steps, lr=s.lr,
                           monitor=mon, record_every=s.record_every)
    sampled = train_preference(world, sample_pairs(world, s.sampled_n, seed=s.seed), "sigmoid",
                               steps=s.steps, lr=s.lr)
    rf = train_reinforce(world, steps=s.steps, lr=s.lr, monitor=mon, record_every=s.record_every)
    ppo = train_ppo(world, iterations=s.ppo_iterations, epochs=s.ppo_epochs, lr=s.ppo_lr,
                    monitor=mon, record_every=s.record_every)
    star = world.optimal_policy()
    name = "DPO and PPO reach the same π*"
    checks = [Check(name, "KL(π_DPO ‖ π*) population", world.mean_kl(dpo.probs, star), 1e-2),
              Check(name, f"KL(π_DPO ‖ π*) {s.sampled_n} sampled pairs", world.mean_kl(sampled.probs, star), 1e-2),
              Check(name, "KL(π_PPO ‖ π*)", world.mean_kl(ppo.probs, star), 1e-2),
              Check(name, "KL(π_REINFORCE ‖ π*)", world.mean_kl(rf.probs, star), 1e-2),
              Check(name, "J(π*) − J(π_DPO)", world.objective(star) - world.objective(dpo.probs), 1e-3),
              Check(name, "J(π*) − J(π_PPO)", world.objective(star) - world.objective(ppo.probs), 1e-3)]
    return DemoResult(checks, {"dpo": dpo, "dpo_sampled": sampled, "reinforce": rf, "ppo": ppo,
                               "objective_star": world.objective(star),
                               "objective_ref": world.objective(world.ref_probs)})


def reward_shift(world: TabularWorld, s: Settings) -> DemoResult:
    """Lemmas 1–2: r and r + f(x) give the same BT / PL probabilities and the same π*, and DPO on
    preferences from r + f(x) lands on π*(r)."""
    gen = torch.Generator().manual_seed(s.seed + 1)
    f = 5.0 * torch.randn(world.n_prompts, 1, generator=gen, dtype=torch.float64)  # large on purpose
    shifted = world.reward + f
    star = world.optimal_policy()
    pi_gap = float((world.optimal_policy(shifted) - star).abs().max())
    pop = expected_pairs(world)
    x, i, j = pop.prompt, pop.chosen, pop.rejected
    bt_gap = float((bt_prob(shifted, x, i, j) - bt_prob(world.reward, x, i, j)).abs().max())
    px, ranking = sample_rankings(world, 200, 4, seed=s.seed)
    pl_gap = float((plackett_luce_logprob(shifted, px, ranking)
                    - plackett_luce_logprob(world.reward, px, ranking)).abs().max())
    trained = train_preference(world, expected_pairs(world, shifted), "sigmoid", steps=s.steps, lr=s.lr)
    name = "r + f(x) is the same class (Lemmas 1–2)"
    checks = [Check(name, "max |π*(r+f) − π*(r)|", pi_gap, 1e-12),
              Check(name, "max |BT(r+f) − BT(r)|", bt_gap, 1e-12),
              Check(name, "max |log PL(r+f) − log PL(r)|", pl_gap, 1e-12),
              Check(name, "KL(π_DPO(r+f) ‖ π*(r))", world.mean_kl(trained.probs, star), 1e-2)]
    return DemoResult(checks, {"f": f.squeeze(-1).tolist()})


def recovered_reward(world: TabularWorld, s: Settings, dpo: TrainResult, sampled: TrainResult) -> DemoResult:
    """Theorem 1: β log π_DPO/π_ref = r* − β log Z(x); errors are measured up to the best f(x)."""
    pop, fin = world.reward_errors(dpo.logps), world.reward_errors(sampled.logps)
    name = "Theorem 1: β log π/π_ref = r* + f(x)"
    checks = [Check(name, "max_y |r̂ − r* − f(x)| population", pop["max_abs"], 1e-3),
              Check(name, f"π*-weighted RMS error, {s.sampled_n} sampled pairs", fin["rmse_pi_star"], 0.1),
              Check(name, f"max_y error, {s.sampled_n} sampled pairs", fin["max_abs"], 1.0)]
    return DemoResult(checks, {"population": pop, "sampled": fin,
                               "r_hat": world.recovered_reward(dpo.logps, is_log=True),
                               "r_hat_sampled": world.recovered_reward(sampled.logps, is_log=True)})


def unlikelihood(world: TabularWorld, s: Settings, dpo: TrainResult) -> DemoResult:
    """The unweighted gradient (docs/maths.md §loss.unlikelihood) degenerates: its loss is unbounded, the margin keeps growing,
    and mass leaves most completions — including ones that are the chosen side of many pairs."""
    pairs = expected_pairs(world)
    ul = train_preference(world, pairs, "unlikelihood", steps=s.steps, lr=s.lr,
                          monitor=standard_monitor(world), record_every=s.record_every)
    chosen = torch.zeros(world.n_prompts, world.tree.n, dtype=torch.bool)
    chosen[pairs.prompt, pairs.chosen] = True
    star, ref = world.optimal_policy(), world.ref_probs
    kl_ul, kl_dpo = world.mean_kl(ul.probs, star), world.mean_kl(dpo.probs, star)
    collapse = {k: _collapse_fraction(p, ref, chosen) for k, p in
                (("unlikelihood", ul.probs), ("dpo", dpo.probs), ("pi_star", star))}
    half = len(ul.history["margin"]) // 2
    name = "unlikelihood degenerates"
    checks = [Check(name, "KL(π_UL ‖ π*)", kl_ul, 0.1, ">"),
              Check(name, "KL(π_UL ‖ π*) / max(KL(π_DPO ‖ π*), 1e-12)", kl_ul / max(kl_dpo, 1e-12), 1e3, ">"),
              Check(name, "chosen completions with π < 1e-3 π_ref (UL)", collapse["unlikelihood"], 0.5, ">"),
              Check(name, "same share under π* (for scale)", collapse["pi_star"], 0.1),
              Check(name, "UL margin growth, 2nd half of training", ul.history["margin"][-1]
                    - ul.history["margin"][half], 0.0, ">")]
    return DemoResult(checks, {"ul": ul, "collapse": collapse})


def ipo_vs_dpo(world: TabularWorld, s: Settings) -> DemoResult:
    """Deterministic preferences (higher r* always wins) on disjoint pairs: DPO's margin grows without
    bound (π(y_l) → 0), IPO's settles at 1/(2β). On BT population data IPO reaches its own optimum
    π_IPO ∝ π_ref exp(p(y ≻ π_ref)/β) (Azar et al. 2023, Ψ = identity), not π* of r*."""
    det = disjoint_pairs(world, per_prompt=4, seed=s.seed)
    ref = world.ref_logps
    out: dict[str, Any] = {"target_margin": 1 / (2 * world.beta)}
    for loss in ("sigmoid", "ipo_sum"):  # IPO as the paper writes it: summed log-probs
        res = train_preference(world, det, loss, steps=s.steps, lr=s.lr, record_every=s.record_every)
        lp = res.logps
        h = (lp[det.prompt, det.chosen] - ref[det.prompt, det.chosen]) - (
            lp[det.prompt, det.rejected] - ref[det.prompt, det.rejected])
        out[loss] = {"result": res, "margin_min": float(h.min()), "margin_max": float(h.max()),
                     "max_pi_rejected": float(res.probs[det.prompt, det.rejected].max()),
                     "margin_half": res.history["margin"][len(res.history["margin"]) // 2]}
    pop = expected_pairs(world)
    ipo_bt = train_preference(world, pop, "ipo_sum", steps=s.steps, lr=s.lr,
                              monitor=standard_monitor(world), record_every=s.record_every)
    win = (torch.sigmoid(world.reward[:, :, None] - world.reward[:, None, :]) * world.ref_probs[:, None, :]).sum(-1)
    ipo_star = world.optimal_policy(reward=win)
    out["ipo_bt"] = ipo_bt
    t, d, i = out["target_margin"], out["sigmoid"], out["ipo_sum"]
    name = "IPO vs DPO, deterministic preferences"
    checks = [Check(name, "IPO max |h − 1/(2β)|", max(abs(i["margin_min"] - t), abs(i["margin_max"] - t)), 1e-3),
              Check(name, "DPO min margin / (1/(2β))", d["margin_min"] / t, 5.0, ">"),
              Check(name, "DPO margin growth, 2nd half", d["result"].history["margin"][-1] - d["margin_half"], 0.0, ">"),
              Check(name, "DPO max π(y_l)", d["max_pi_rejected"], 1e-3),
              Check(name, "IPO min π(y_l) stays > 0", min(float(i["result"].probs[det.prompt, det.rejected].min()), 1.0), 1e-3, ">"),
              Check(name, "KL(π_IPO ‖ π_ref e^{p(y≻π_ref)/β}) on BT data", world.mean_kl(ipo_bt.probs, ipo_star), 1e-2),
              Check(name, "KL(π_IPO ‖ π*) on BT data (a different optimum)", world.mean_kl(ipo_bt.probs, world.optimal_policy()), 0.1, ">")]
    return DemoResult(checks, out)


def sacpo(world: TabularWorld, s: Settings, lam: float = 0.5) -> DemoResult:
    """SACPO (Wachi et al. 2024): DPO for r with β, then DPO for g with β/λ and the stage-1 policy as
    reference, equals π_ref exp((r + λg)/β)/Z: π1 exp(λg/β) ∝ π_ref exp(r/β) exp(λg/β)."""
    beta, target = world.beta, world.optimal_policy(reward=world.reward + lam * world.safety)
    two_step = world.optimal_policy(world.safety, beta / lam, ref_logps=world.optimal_policy().log())
    stage1 = train_preference(world, expected_pairs(world), "sigmoid", steps=s.steps, lr=s.lr)
    stage2 = train_preference(world, expected_pairs(world, world.safety), "sigmoid", beta=beta / lam,
                              steps=s.steps, lr=s.lr, ref_logps=stage1.logps, init_logits=stage1.logits)
    name = f"SACPO two stages = optimum of r + λg (λ = {lam})"
    checks = [Check(name, "exact: max |π*_{β/λ}(g; π*_β(r)) − π*_β(r+λg)|", float((two_step - target).abs().max()), 1e-12),
              Check(name, "KL(π_stage2 ‖ π*(r + λg))", world.mean_kl(stage2.probs, target), 1e-2),
              Check(name, "KL(π_stage1 ‖ π*(r + λg)) (before stage 2)", world.mean_kl(stage1.probs, target), 1e-2, ">")]
    return DemoResult(checks, {"stage1": stage1, "stage2": stage2})


def sampled_rl(world: TabularWorld, s: Settings) -> DemoResult:
    """RLHF as the LM-scale stage runs it, from samples: RLOO (K fresh completions per prompt per step,
    leave-one-out baseline, KL penalty r − β log π/π_ref in the reward) and PPO (K completions per
    prompt from π_old, per-token KL estimates in the reward, leave-one-out baseline, ``ppo_epochs``
    clipped-surrogate steps per batch), all with :mod:`preftune.rl`'s math, reach π* up to sampling
    noise. With k3 in the reward PPO converges elsewhere: k3 estimates the KL's value without bias,
    but as a reward it is not log π/π_ref, so the stationary point (r − β Σ_t k3_t constant over the
    sampled completions) is not π*."""
    mon, star = standard_monitor(world), world.optimal_policy()
    K, Kp, ep = s.rloo_samples, s.sampled_ppo_samples, s.ppo_epochs
    rloo = train_reinforce(world, steps=s.rloo_steps, lr=s.lr, n_samples=K, seed=s.seed, monitor=mon,
                           record_every=s.record_every)
    ppo = {est: train_ppo_sampled(world, iterations=s.sampled_ppo_iterations, epochs=ep, n_samples=Kp,
                                  lr=s.ppo_lr, kl_estimator=est, seed=s.seed, monitor=mon,
                                  record_every=s.record_every)
           for est in ("k1", "k3")}
    checks = [Check(f"RLOO (sampled, K={K}) reaches π*", f"KL(π_RLOO ‖ π*), {s.rloo_steps} steps",
                    world.mean_kl(rloo.probs, star), 1e-2),
              Check(f"PPO (sampled, K={Kp}, {ep} epochs/batch) reaches π*",
                    f"KL(π_PPO ‖ π*), k1 in the reward, {s.sampled_ppo_iterations} batches",
                    world.mean_kl(ppo["k1"].probs, star), 1e-2),
              Check("PPO (sampled) with k3 in the reward misses π*",
                    f"KL(π_PPO-k3 ‖ π*), {s.sampled_ppo_iterations} batches",
                    world.mean_kl(ppo["k3"].probs, star), 0.1, ">")]
    return DemoResult(checks, {"rloo": rloo, "ppo_k1": ppo["k1"], "ppo_k3": ppo["k3"]})


def grpo_family(world: TabularWorld, s: Settings) -> DemoResult:
    """The GRPO family, REINFORCE++ and online DPO: each variant lands on the limit its expected gradient
    predicts (:mod:`preftune.theory.demos_grpo`). Thresholds: exact rows within 1e-3 of their limit
    (max |π − π_limit|), sampled rows within KL 1e-2; a limit other than π* must be ≥ 1e-2 from it in KL,
    and a rival prediction (G → ∞, with / without dynamic sampling) ≥ 2e-2 from the final policy."""
    checks: list[Check] = []
    table: list[VariantRow] = rows(world, s)
    for row in table:
        demo = f"{row.name} [{row.estimate}]"
        if row.limit_label == PI_STAR:
            checks.append(Check(demo, "KL(π ‖ π*)", row.kl_to_star, 1e-2 if row.sampled else 1e-3))
        elif row.limit_label == POINT_MASS:
            checks += [Check(demo, "max_x 1 − max_y π(y|x)", row.distance, 0.1),
                       Check(demo, "KL(π ‖ π*)", row.kl_to_star, 0.1, ">")]
        else:
            near = (Check(demo, "KL(π ‖ predicted fixed point)", world.mean_kl(row.result.probs, row.limit), 1e-2)
                    if row.sampled else Check(demo, "max |π − predicted fixed point|", row.distance, 1e-3))
            checks += [near, Check(demo, "KL(predicted fixed point ‖ π*)", row.limit_kl_to_star, 1e-2, ">")]
        if row.alternative is not None:
            checks.append(Check(demo, f"KL(π ‖ {row.alternative[0]})", row.alternative[1], 2e-2, ">"))
    return DemoResult(checks, {"rows": table})


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread, then restore. The tensors here have ~10³ entries: intra-op threads
    only add synchronisation, and on a shared 2-core machine they made the demos ~6× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_all(world: TabularWorld | None = None, settings: Settings | None = None) -> dict[str, DemoResult]:
    """Every demonstration, sharing the DPO runs between those that need them."""
    world = TabularWorld.make() if world is None else world
    s = Settings() if settings is None else settings
    with single_thread():
        first = same_optimum(world, s)
        dpo, sampled = first.numbers["dpo"], first.numbers["dpo_sampled"]
        return {"same_optimum": first, "reward_shift": reward_shift(world, s),
                "theorem1": recovered_reward(world, s, dpo, sampled),
                "unlikelihood": unlikelihood(world, s, dpo), "ipo_vs_dpo": ipo_vs_dpo(world, s),
                "sacpo": sacpo(world, s), "sampled_rl": sampled_rl(world, s),
                "grpo_family": grpo_family(world, s)}


__all__ = ["Check", "DemoResult", "Settings", "run_all", "same_optimum",
           "reward_shift", "recovered_reward", "unlikelihood", "ipo_vs_dpo", "sacpo",
           "sampled_rl", "grpo_family"]
