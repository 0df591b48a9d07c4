"""The GRPO family, REINFORCE++ and online DPO trained in the exact tabular world.

A :class:`Variant` describes one configuration in TRL 1.16's names (loss_type, scale_rewards, where the
KL goes and with which estimator, importance_sampling_level, epsilon / epsilon_high, num_iterations,
dynamic sampling). It is trained two ways:

* :func:`train_grpo_sampled` — as the LM-scale stage runs it: G completions per prompt drawn from π_old,
  rewards (with the KL penalty in them if asked), :func:`preftune.rl.group_advantages`, dynamic sampling
  with :func:`preftune.rl.groups_with_signal` / :func:`preftune.rl.fill_batch`, and
  :func:`preftune.rl.grpo_loss` on the sampled tokens' log-probs, ``num_iterations`` steps per batch.
* :func:`train_grpo_exact` — the expected loss, over every completion weighted by π_old, with the
  per-token pieces of :mod:`preftune.rl.grpo` and the per-completion advantage f(y) and KL weight w(y) of
  :mod:`preftune.theory.fixed_points` (G → ∞ statistics, or the exact finite-G factors where known).

Plus :func:`train_reinforce_pp` (REINFORCE++, sampled) and :func:`train_online_dpo` (exact or sampled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preftune import losses as loss_registry
from preftune.rl import (
    clipped_surrogate,
    fill_batch,
    group_advantages,
    group_rows,
    groups_with_signal,
    grpo_loss,
    importance_log_weights,
    kl_loss_term,
    kl_penalised_scores,
    kl_penalty,
    reinforce_pp_advantages,
)
from preftune.theory.fixed_points import LossShape, per_completion_terms, policy_scalars
from preftune.theory.train import Monitor, TabularPolicy, TrainResult, optimise
from preftune.theory.world import TabularWorld


@dataclass(frozen=True)
class Variant:
    """One GRPO-family configuration (TRL 1.16's GRPOConfig names where they exist)."""

    loss_type: str = "dr_grpo"
    scale_rewards: str = "none"
    kl: str = "reward"  # "reward" (r − β Σ_t kl_t), "loss" (β kl_t per token), "none" (β unused)
    kl_estimator: str = "k1"
    use_bias_correction_kl: bool = False
    importance_sampling_level: str = "token"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    num_iterations: int = 1
    group_size: int = 8
    groups_per_prompt: int = 1  # groups drawn per prompt per batch (the tabular world has few prompts)
    dynamic_sampling: bool = False
    max_rounds: int = 8  # dynamic sampling's generation rounds per batch before training on what there is

    def loss_shape(self, finite_group: bool) -> LossShape:
        """The expected gradient's shape (KL in the loss, k2 or k3 only): see fixed_points."""
        if self.kl != "loss":
            raise ValueError("the myopic fixed points are those of a KL in the loss")
        # k1's expected gradient is 0: no divergence term, so no finite fixed point (solve() refuses it).
        reverse = self.kl_estimator == "k2" or self.use_bias_correction_kl
        divergence = "none" if self.kl_estimator == "k1" else "reverse" if reverse else "forward"
        return LossShape(divergence=divergence,
                         length_normalised=self.loss_type in ("grpo", "sapo"), scale=self.scale_rewards,
                         group_size=self.group_size if finite_group else None,
                         dynamic_sampling=self.dynamic_sampling)


def _sample_groups(gen: torch.Generator, old_seq: Tensor, rounds_prompts: Tensor, G: int) -> tuple[Tensor, Tensor]:
    """G completions ~ π_old for each prompt in ``rounds_prompts``: (prompts (B,), completions (B,))."""
    ys = torch.multinomial(old_seq[rounds_prompts].exp(), G, replacement=True, generator=gen)
    return rounds_prompts.repeat_interleave(G), ys.reshape(-1)


@dataclass
class Batch:
    """A sampled GRPO batch: prompts and completions (B,), advantages (B,), π_old / π_ref token log-probs
    and the completion mask (B, T)."""

    x: Tensor
    y: Tensor
    adv: Tensor
    old: Tensor
    ref: Tensor
    mask: Tensor


def sample_batch(world: TabularWorld, v: Variant, logits: Tensor, gen: torch.Generator, *,
                 reward: Tensor | None = None, beta: float | None = None) -> Batch:
    """G completions per prompt (``groups_per_prompt`` groups each) from the policy with these logits, their
    rewards (the KL penalty folded in when ``v.kl == "reward"``), dynamic sampling's filter and refill, and
    :func:`preftune.rl.group_advantages` — what the LM-scale stage does between generation and the loss."""
    beta = world.beta if beta is None else beta
    reward = world.reward if reward is None else reward
    tree, G = world.tree, v.group_size
    prompts = torch.arange(world.n_prompts).repeat(v.groups_per_prompt)  # one entry per group of a batch
    with torch.no_grad():
        old_path = tree.path_logprobs(logits)
        ref_path = tree.path_logprobs(world.ref_logits)
        old_seq = old_path.sum(-1)

        def draw() -> tuple[Tensor, Tensor, Tensor]:
            x, y = _sample_groups(gen, old_seq, prompts, G)
            r = reward[x, y]
            if v.kl == "reward":
                kl = kl_penalty(old_path[x, y], ref_path[x, y], v.kl_estimator)
                r = kl_penalised_scores(r, kl, tree.step_mask[y].bool(), beta)
            return x, y, r

        x, y, r = draw()
        if v.dynamic_sampling:  # DAPO: keep mixed groups, refill from fresh rounds over all prompts
            keep = groups_with_signal(r, G)
            for round_ in range(1, v.max_rounds + 1):
                chosen = fill_batch(keep, prompts.numel(), final=round_ == v.max_rounds)
                if chosen is not None:
                    break
                x2, y2, r2 = draw()
                x, y, r = torch.cat([x, x2]), torch.cat([y, y2]), torch.cat([r, r2])
                keep = torch.cat([keep, groups_with_signal(r2, G)])
            rows = group_rows(chosen, G)
            x, y, r = x[rows], y[rows], r[rows]
        return Batch(x, y, group_advantages(r, G, v.scale_rewards), old_path[x, y], ref_path[x, y],
                     tree.step_mask[y].bool())


def batch_loss(world: TabularWorld, v: Variant, logits: Tensor, batch: Batch, *, beta: float | None = None) -> Tensor:
    """:func:`preftune.rl.grpo_loss` of the policy with these logits on a sampled batch."""
    beta = world.beta if beta is None else beta
    if batch.x.numel() == 0:  # dynamic sampling found no mixed group: no update
        return logits.sum() * 0.0
    lp = world.tree.path_logprobs(logits)[batch.x, batch.y]
    return grpo_loss(lp, batch.adv, batch.mask, old_logprobs=batch.old, ref_logprobs=batch.ref,
                     loss_type=v.loss_type, beta=beta if v.kl == "loss" else 0.0, epsilon=v.epsilon,
                     epsilon_high=v.epsilon_high, importance_sampling_level=v.importance_sampling_level,
                     kl_estimator=v.kl_estimator, use_bias_correction_kl=v.use_bias_correction_kl,
                     max_completion_length=world.tree.max_len).loss


def train_grpo_sampled(world: TabularWorld, v: Variant, *, reward: Tensor | None = None, beta: float | None = None,
                       steps: int = 1000, lr: float = 0.1, seed: int = 0, monitor: Monitor | None = None,
                       record_every: int = 10) -> TrainResult:
    """GRPO-family training from samples; ``steps`` gradient steps, a fresh batch every ``num_iterations``."""
    policy = TabularPolicy(world)
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Batch] = {}

    def refresh(step: int) -> None:
        if step % v.num_iterations == 0:
            state["batch"] = sample_batch(world, v, policy.logits, gen, reward=reward, beta=beta)

    return optimise(policy, lambda: batch_loss(world, v, policy.logits, state["batch"], beta=beta), steps, lr,
                     monitor, record_every, on_step=refresh)


def expected_loss(world: TabularWorld, v: Variant, logits: Tensor, *, reward: Tensor | None = None,
                  beta: float | None = None, finite_group: bool = False) -> Tensor:
    """The expected on-policy loss of a KL-in-the-loss variant, every completion weighted by π_old:

        L = Σ_x ρ(x) Σ_y π_old(y|x) Σ_t [ surrogate_t(f(y)) + β w(y) kl_t(y) ]

    with f, w from :func:`preftune.theory.fixed_points.per_completion_terms` (the surrogate is positively
    homogeneous in A, so the per-sequence weight u(y) rides in f). ``finite_group`` uses G's exact
    factors ((G − 1)/G, dynamic sampling's P(mixed | y)); otherwise G → ∞. Its gradient at π_old = π_θ
    is the expected gradient of :func:`batch_loss` (the per-token pieces are the same functions).
    k1 in the loss is allowed: its expected gradient is 0, so this is then plain REINFORCE on r.
    """
    beta = world.beta if beta is None else beta
    reward = world.reward if reward is None else reward
    if v.kl != "loss":
        raise ValueError("expected_loss covers the KL-in-the-loss variants (the rest reach π*, see sampled)")
    tree = world.tree
    shape = v.loss_shape(finite_group)
    ref_path = tree.path_logprobs(world.ref_logits).reshape(-1, tree.max_len)
    mask = tree.step_mask.bool().repeat(world.n_prompts, 1)
    path = tree.path_logprobs(logits).reshape(-1, tree.max_len)
    with torch.no_grad():
        old = path.sum(-1).view(world.n_prompts, -1).exp()
        scalars = policy_scalars(world, old, reward, reward if v.dynamic_sampling else None)
        f, w = per_completion_terms(world, reward, shape, scalars)
        weight = (world.prompt_weights[:, None] * old).reshape(-1, 1)
    log_w = importance_log_weights(path, path.detach(), mask)
    per_token = clipped_surrogate(log_w, f.reshape(-1, 1), epsilon_low=v.epsilon,
                                  epsilon_high=v.epsilon if v.epsilon_high is None else v.epsilon_high)
    kl = kl_loss_term(path, ref_path, mask, estimator=v.kl_estimator,
                      log_weights=log_w if v.use_bias_correction_kl else None)
    per_token = per_token + beta * w.reshape(-1, 1) * kl
    return (weight * torch.where(mask, per_token, torch.zeros((), dtype=path.dtype))).sum()


def train_grpo_exact(world: TabularWorld, v: Variant, *, reward: Tensor | None = None, beta: float | None = None,
                     finite_group: bool = False, steps: int = 1000, lr: float = 0.1, monitor: Monitor | None = None,
                     record_every: int = 10) -> TrainResult:
    """Adam on :func:`expected_loss`, one step per π_old (on-policy)."""
    policy = TabularPolicy(world)
    return optimise(policy, lambda: expected_loss(world, v, policy.logits, reward=reward, beta=beta,
                                                   finite_group=finite_group), steps, lr, monitor, record_every)


def train_reinforce_pp(world: TabularWorld, *, baseline: bool, reward: Tensor | None = None,
                       beta: float | None = None, n_samples: int = 8, kl_estimator: str = "k1", steps: int = 1000,
                       lr: float = 0.1, seed: int = 0, monitor: Monitor | None = None,
                       record_every: int = 10) -> TrainResult:
    """REINFORCE++ (Hu 2025): per-token KL in the reward, return to go, normalised over the batch's
    tokens (:func:`preftune.rl.reinforce_pp_advantages`; ``baseline`` = REINFORCE++-baseline, the group
    mean first), then a token-level policy-gradient step (:func:`preftune.rl.grpo_loss`, ``dapo``)."""
    beta = world.beta if beta is None else beta
    reward = world.reward if reward is None else reward
    tree, P = world.tree, world.n_prompts
    ref_path = tree.path_logprobs(world.ref_logits)
    policy = TabularPolicy(world)
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}

    def refresh(step: int) -> None:
        with torch.no_grad():
            old_path = tree.path_logprobs(policy.logits)
            x, y = _sample_groups(gen, old_path.sum(-1), torch.arange(P), n_samples)
            mask = tree.step_mask[y].bool()
            kl = kl_penalty(old_path[x, y], ref_path[x, y], kl_estimator)
            adv = reinforce_pp_advantages(reward[x, y], kl, mask, beta,
                                          num_generations=n_samples if baseline else None)
            state.update(x=x, y=y, adv=adv, mask=mask)

    def loss_fn() -> Tensor:
        lp = tree.path_logprobs(policy.logits)[state["x"], state["y"]]
        return grpo_loss(lp, state["adv"], state["mask"], loss_type="dapo").loss

    return optimise(policy, loss_fn, steps, lr, monitor, record_every, on_step=refresh)


def train_online_dpo(world: TabularWorld, *, labels: str = "bt", exact: bool = True, reward: Tensor | None = None,
                     beta: float | None = None, n_pairs: int = 64, steps: int = 1000, lr: float = 0.1, seed: int = 0,
                     monitor: Monitor | None = None, record_every: int = 10) -> TrainResult:
    """Online DPO: pairs y1, y2 ~ π_θ (the current policy, no gradient through the sampling), the winner
    by r (``labels`` "bt": a Bradley–Terry draw, p = σ(r1 − r2); "deterministic": the higher r), and a
    DPO (sigmoid) step against the frozen π_ref. ``exact``: every ordered pair weighted by
    ρ(x) π(y1) π(y2) p(y1 ≻ y2) (the infinite-sample loss under the current policy); otherwise
    ``n_pairs`` seeded pairs per prompt per step (ties y1 = y2 dropped: no preference)."""
    if labels not in ("bt", "deterministic"):
        raise ValueError(f"labels must be 'bt' or 'deterministic', got {labels!r}")
    beta = world.beta if beta is None else beta
    reward = world.reward if reward is None else reward
    P, N = reward.shape
    ref = world.ref_logps
    dpo = loss_registry.get("sigmoid")
    policy = TabularPolicy(world)
    gen = torch.Generator().manual_seed(seed)
    pref = (reward[:, :, None] > reward[:, None, :]).double() if labels == "deterministic" else \
        torch.sigmoid(reward[:, :, None] - reward[:, None, :])  # (P, N, N): p(y1 ≻ y2)

    def loss_fn() -> Tensor:
        lp = policy.logps()
        pi = lp.detach().exp()
        if exact:
            w = world.prompt_weights[:, None, None] * pi[:, :, None] * pi[:, None, :] * pref
            w = w * (1 - torch.eye(N, dtype=w.dtype))
            x, i, j = torch.nonzero(w > 0, as_tuple=True)
            losses, _, _ = dpo(lp[x, i], lp[x, j], ref[x, i], ref[x, j], beta=beta)
            return (w[x, i, j] * losses).sum()
        x = torch.arange(P).repeat_interleave(n_pairs)
        y1, y2 = (torch.multinomial(pi, n_pairs, replacement=True, generator=gen).reshape(-1) for _ in range(2))
        first = torch.rand(x.shape[0], generator=gen, dtype=torch.float64) < pref[x, y1, y2]
        keep = y1 != y2
        if labels == "deterministic":
            keep = keep & (reward[x, y1] != reward[x, y2])
        win, lose = torch.where(first, y1, y2)[keep], torch.where(first, y2, y1)[keep]
        x = x[keep]
        losses, _, _ = dpo(lp[x, win], lp[x, lose], ref[x, win], ref[x, lose], beta=beta)
        return losses.mean() if losses.numel() else lp.sum() * 0.0

    return optimise(policy, loss_fn, steps, lr, monitor, record_every)
