"""Where the GRPO family, REINFORCE++ and online DPO converge in the exact tabular world.

Each row trains one variant from π_ref and compares the final policy with π* = π_ref e^{r/β}/Z (the
optimum of J, the KL-regularised objective) and with the limit its expected gradient predicts: π* itself,
a "myopic" fixed point solved by :func:`preftune.theory.fixed_points.solve`, or the point mass on
argmax_y r (no finite fixed point). The verdict is what the numbers show; every one is a :class:`Check`.

The derivations, in brief (docs/theory has them in full):

* KL in the reward (r − β log π/π_ref of the sampling policy): at π* every completion of a prompt has
  the same shaped reward β log Z(x), so every group-centred advantage is exactly 0 — π* is a fixed point
  of every surrogate (clip, clip-higher, GSPO, CISPO), every aggregation, std scaling (0/(0 + 1e-4)) and
  any number of iterations per batch. Length normalisation (1/|y|) does not move it either: stationarity
  needs (R̃(y) − V)/|y| constant, and E_π[R̃ − V] = 0 forces the constant to 0.
* KL in the loss, per token: its gradient regularises each token's conditional, not the sequence
  (E∇k1 = 0; E∇k2 = E∇(ρ k3) = ∇KL(π‖π_ref) per token; E∇k3 = ∇KL(π_ref‖π) per token), so the
  future KL never enters the value of a token: a different, "myopic" fixed point. Std scaling then
  divides the policy gradient but not the KL term: β_eff(x) = β(σ_π(x) + 1e-4). A finite group's mean
  includes the sample: the policy gradient shrinks by (G − 1)/G, β_eff = β G/(G − 1). Dynamic sampling
  drops the KL term of all-equal groups: completion y keeps it with probability P(group mixed | y).
* β = 0 (TRL's default), k1 in the loss, and deterministic-label online DPO have no regulariser left:
  the policy collapses onto one completion (argmax_y r, if the gradient has time to find it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from preftune.theory.fixed_points import LossShape, solve
from preftune.theory.grpo import (
    Variant,
    train_grpo_exact,
    train_grpo_sampled,
    train_online_dpo,
    train_reinforce_pp,
)
from preftune.theory.train import TrainResult, standard_monitor
from preftune.theory.world import TabularWorld

PI_STAR, POINT_MASS = "π*", "a point mass (argmax_y r, given time)"


@dataclass
class VariantRow:
    """One line of the GRPO-family table; ``limit`` is the predicted limit policy (P, N)."""

    name: str
    estimate: str
    kl_to_star: float
    objective_gap: float  # J(π*) − J(π_final), with the row's own r and β
    limit_label: str
    limit: Tensor
    distance: float  # max over (x, y) of |π_final − π_limit|; for a point mass, max_x 1 − max_y π(y|x)
    verdict: str
    result: TrainResult
    limit_kl_to_star: float  # KL(π_limit ‖ π*): how far the predicted limit is from π*
    sampled: bool
    beta: float
    alternative: tuple[str, float] | None = None  # (a rival prediction, KL(π_final ‖ it)) to rule out


def binary_reward(world: TabularWorld, quantile: float = 0.8) -> Tensor:
    """A verifiable 0/1 reward: correct iff r* is in the top (1 − quantile) of the prompt's completions."""
    return (world.reward >= torch.quantile(world.reward, quantile, dim=-1, keepdim=True)).to(world.reward.dtype)


def point_mass_on_best(reward: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(reward.argmax(-1), reward.shape[-1]).to(reward.dtype)


def _row(world: TabularWorld, name: str, estimate: str, result: TrainResult, limit: Tensor, limit_label: str,
         reward: Tensor, beta: float, alternative: tuple[str, Tensor] | None, verdict: str | None) -> VariantRow:
    star = world.optimal_policy(reward, beta)
    p = result.probs
    distance = float((p - limit).abs().max())
    if limit_label == PI_STAR:
        verdict = "converges to π*"
    elif limit_label == POINT_MASS:
        # Unregularised: a point mass, on argmax_y r in the limit of exact gradients; in finite time (or
        # with sampled groups, which stop learning once all G samples agree) possibly on another completion.
        distance = float((1 - p.max(-1).values).max())
        on_best = bool((p.argmax(-1) == reward.argmax(-1)).all())
        verdict = f"no finite fixed point: collapses onto {'argmax_y r' if on_best else 'one completion'}"
    elif verdict is None:
        verdict = "converges to another fixed point"
    return VariantRow(name, estimate, world.mean_kl(p, star),
                      world.objective(star, reward, beta) - world.objective(p, reward, beta), limit_label, limit,
                      distance, verdict, result, world.mean_kl(limit, star), estimate.startswith("sampled"), beta,
                      None if alternative is None else (alternative[0], world.mean_kl(p, alternative[1])))


def rows(world: TabularWorld, s) -> list[VariantRow]:
    """Train every variant; ``s`` is :class:`preftune.theory.demos.Settings`."""
    beta, G, rec = world.beta, s.group_size, s.record_every
    r_bin, beta_bin = binary_reward(world), s.binary_beta
    mon = standard_monitor(world)
    mon_bin = standard_monitor(world, reward=r_bin, beta=beta_bin)
    star = world.optimal_policy()
    out: list[VariantRow] = []

    def sampled(v: Variant, multi: bool = False, monitor=mon, **kw) -> Callable[[], TrainResult]:
        steps, lr = (s.grpo_multi_steps, s.ppo_lr) if multi else (s.grpo_steps, s.lr)
        return lambda: train_grpo_sampled(world, v, steps=steps, lr=lr, seed=s.seed, record_every=rec,
                                          monitor=monitor, **kw)

    def exact(v: Variant, monitor=mon, **kw) -> Callable[[], TrainResult]:
        return lambda: train_grpo_exact(world, v, steps=s.grpo_exact_steps, lr=s.lr, record_every=rec, monitor=monitor,
                                        **kw)

    def add(name: str, estimate: str, train: Callable[[], TrainResult], limit: Tensor, label: str,
            reward: Tensor | None = None, b: float | None = None,
            alternative: tuple[str, Tensor] | None = None, verdict: str | None = None) -> None:
        out.append(_row(world, name, estimate, train(), limit, label, world.reward if reward is None else reward,
                        beta if b is None else b, alternative, verdict))

    # KL in the reward: π* is a fixed point of every variant (all advantages vanish there).
    in_reward = f"sampled, G = {G}, 2 groups/prompt"
    multi = f"sampled, G = {G}, 4 groups/prompt, 4 iterations/batch"
    for name, v, est, m in (
        ("Dr. GRPO (dr_grpo, no std), k1 KL in the reward", Variant(groups_per_prompt=2), in_reward, False),
        ("std scaling (scale_rewards=group), KL in the reward",
         Variant(scale_rewards="group", groups_per_prompt=2), in_reward, False),
        ("length normalisation (loss_type=grpo), KL in the reward",
         Variant(loss_type="grpo", groups_per_prompt=2), in_reward, False),
        ("token-level aggregation (loss_type=dapo), KL in the reward",
         Variant(loss_type="dapo", groups_per_prompt=2), in_reward, False),
        ("GSPO (importance_sampling_level=sequence), KL in the reward",
         Variant(loss_type="grpo", importance_sampling_level="sequence", num_iterations=4, groups_per_prompt=4),
         multi, True),
        ("clip-higher (epsilon_high=0.28), KL in the reward",
         Variant(epsilon_high=0.28, num_iterations=4, groups_per_prompt=4), multi, True),
        ("CISPO (epsilon_high=5), KL in the reward",
         Variant(loss_type="cispo", epsilon_high=5.0, num_iterations=4, groups_per_prompt=4), multi, True),
    ):
        add(name, est, sampled(v, multi=m), star, PI_STAR)
    K = s.reinforce_pp_samples
    for baseline in (False, True):
        add(f"REINFORCE++{'-baseline' if baseline else ''}, k1 per token in the reward",
            f"sampled, {K}/prompt", lambda b=baseline: train_reinforce_pp(
                world, baseline=b, n_samples=K, steps=s.grpo_steps, lr=s.lr, seed=s.seed, monitor=mon,
                record_every=rec), star, PI_STAR)
    add("online DPO, Bradley–Terry labels", "exact (all pairs ~ π_θ)",
        lambda: train_online_dpo(world, steps=s.grpo_exact_steps, lr=s.lr, monitor=mon, record_every=rec), star,
        PI_STAR)
    add("online DPO, Bradley–Terry labels", f"sampled, {s.online_dpo_pairs} pairs/prompt",
        lambda: train_online_dpo(world, exact=False, n_pairs=s.online_dpo_pairs, steps=s.grpo_steps, lr=s.lr,
                                 seed=s.seed, monitor=mon, record_every=rec), star, PI_STAR)

    # KL in the loss, per token: myopic fixed points (or none).
    ex = "exact (G → ∞)"
    best = point_mass_on_best(world.reward)
    add("k1 KL in the loss", ex, exact(Variant(kl="loss", kl_estimator="k1")), best, POINT_MASS)
    for name, v, label in (
        ("k2 KL in the loss", Variant(kl="loss", kl_estimator="k2"), "myopic, reverse KL per token"),
        ("k3 KL in the loss (DeepSeekMath's estimator, no ratio)", Variant(kl="loss", kl_estimator="k3"),
         "myopic, forward KL per token"),
        ("k3 × ρ KL in the loss (use_bias_correction_kl)",
         Variant(kl="loss", kl_estimator="k3", use_bias_correction_kl=True), "myopic, reverse KL per token"),
        ("DeepSeekMath GRPO: loss_type=grpo, std scaling, k3 in the loss",
         Variant(loss_type="grpo", scale_rewards="group", kl="loss", kl_estimator="k3"),
         "myopic forward, 1/|y| weights, β(σ(x) + 1e-4)"),
        ("std scaling + k3 × ρ in the loss (TRL with beta > 0)",
         Variant(loss_type="dapo", scale_rewards="group", kl="loss", kl_estimator="k3", use_bias_correction_kl=True),
         "myopic reverse, β(σ(x) + 1e-4): collapses as σ → 0"),
    ):
        collapse = "collapses: the fixed point is a near point mass (β_eff → β · 1e-4)" if "σ → 0" in label else None
        add(name, ex, exact(v), solve(world, v.loss_shape(False)), label, verdict=collapse)
    g4 = Variant(loss_type="dapo", kl="loss", kl_estimator="k3", use_bias_correction_kl=True, group_size=4,
                 groups_per_prompt=16)
    add("k3 × ρ in the loss, finite group", "sampled, G = 4, 16 groups/prompt", sampled(g4),
        solve(world, g4.loss_shape(True)), "myopic reverse, β G/(G − 1)",
        alternative=("the G → ∞ fixed point", solve(world, g4.loss_shape(False))))

    # Dynamic sampling: a 0/1 reward and a smaller β, so that near-solved prompts exist.
    ds = Variant(loss_type="dapo", kl="loss", kl_estimator="k3", use_bias_correction_kl=True, group_size=G,
                 groups_per_prompt=4, dynamic_sampling=True)
    no_ds = Variant(loss_type="dapo", kl="loss", kl_estimator="k3", use_bias_correction_kl=True, group_size=G,
                    groups_per_prompt=4)
    fp_ds = solve(world, ds.loss_shape(True), reward=r_bin, beta=beta_bin)
    fp_no = solve(world, no_ds.loss_shape(True), reward=r_bin, beta=beta_bin)
    tag = f"0/1 reward, β = {beta_bin}, G = {G}"
    add(f"dynamic sampling + k3 × ρ in the loss ({tag})", "exact (finite G)",
        exact(ds, reward=r_bin, beta=beta_bin, finite_group=True, monitor=mon_bin), fp_ds,
        "myopic reverse, KL × P(group mixed | y)", r_bin, beta_bin)
    add(f"dynamic sampling + k3 × ρ in the loss ({tag})", "sampled, 4 groups/prompt, refill ≤ 8 rounds",
        sampled(ds, reward=r_bin, beta=beta_bin, monitor=mon_bin), fp_ds,
        "myopic reverse, KL × P(group mixed | y)", r_bin, beta_bin, ("the fixed point without it", fp_no))
    add(f"same without dynamic sampling ({tag})", "sampled, 4 groups/prompt",
        sampled(no_ds, reward=r_bin, beta=beta_bin, monitor=mon_bin), fp_no, "myopic reverse, β G/(G − 1)",
        r_bin, beta_bin, ("the fixed point with it", fp_ds))

    # Nothing regularises.
    add("TRL 1.16 defaults: loss_type=dapo, scale_rewards=group, beta=0", f"sampled, G = {G}, 2 groups/prompt",
        sampled(Variant(loss_type="dapo", scale_rewards="group", kl="none", groups_per_prompt=2)), best, POINT_MASS)
    add("online DPO, deterministic ranking by r (a judge)", "exact (all pairs ~ π_θ)",
        lambda: train_online_dpo(world, labels="deterministic", steps=s.grpo_exact_steps, lr=s.lr, monitor=mon,
                                 record_every=rec), best, POINT_MASS)
    return out


__all__ = ["POINT_MASS", "PI_STAR", "LossShape", "VariantRow", "binary_reward", "point_mass_on_best", "rows"]
