"""Training a tabular autoregressive softmax policy in the exact world: DPO-family losses and RLHF.

The policy is a table of logits per (prompt, prefix) — :class:`TabularPolicy` — initialised at π_ref.
log π(y|x) is the sum of token log-probs (docs/maths.md §notation), computed by :class:`CompletionTree`, so the
losses see exactly what they would see from a language model. Optimiser: Adam, full batch; everything
is deterministic (no sampling inside training unless ``n_samples`` asks for Monte Carlo).

* :func:`train_preference` — any registered pairwise loss, ``preftune.losses.get(name)``, averaged
  with the weights of a :class:`PreferencePairs` (exact population expectation or a finite sample).
* :func:`train_reinforce` — policy gradient on J(π) = E_π[r] − β KL(π‖π_ref) (docs/maths.md §objective, §rl). Exact
  estimator by default: ∇J = Σ_y π(y) ∇log π(y) (R̃(y) − b(x)), R̃ = r − β log π/π_ref, b = E_π R̃
  (the baseline does not change the exact sum, Σ π ∇log π = 0, it is what the estimator would use).
  With ``n_samples`` = K: K draws per prompt from π_θ and the leave-one-out (RLOO) baseline.
* :func:`train_ppo` — PPO's clipped surrogate (docs/maths.md §rl.ppo) with the KL penalty folded into the reward,
  sequence-level ratio ρ = π_θ(y|x)/π_old(y|x), exact expectation over y ~ π_old
  (:func:`exact_ppo_loss`, via :func:`preftune.rl.surrogate.ppo_policy_loss`), ``epochs`` Adam
  steps per π_old, advantage A = R̃_old − V_old(x) with the exact value V_old = E_{π_old} R̃_old.
* :func:`train_ppo_sampled` — the same from K samples per prompt, as the LM-scale stage runs it:
  per-token KL estimates in the reward, leave-one-out baseline, clipped surrogate, ``epochs`` steps
  per batch, all from :mod:`preftune.rl`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from preftune import losses as loss_registry
from preftune.rl.advantages import rloo_advantages, token_level_rewards
from preftune.rl.kl import kl_penalty
from preftune.rl.masked import masked_sum
from preftune.rl.surrogate import ppo_policy_loss
from preftune.theory.data import PreferencePairs
from preftune.theory.world import TabularWorld

Monitor = Callable[[Tensor], dict[str, float]]


class TabularPolicy(nn.Module):
    """π_θ(y|x): one logit per (prompt, prefix, next action); exactly representable π* (chain rule)."""

    def __init__(self, world: TabularWorld, init_logits: Tensor | None = None) -> None:
        super().__init__()
        self.tree = world.tree
        init = world.ref_logits if init_logits is None else init_logits
        self.logits = nn.Parameter(init.detach().clone().to(torch.float64))

    def logps(self) -> Tensor:
        """log π_θ(y|x) for all (x, y): (P, N), a sum of token log-probs."""
        return self.tree.seq_logprobs(self.logits)


@dataclass
class TrainResult:
    """Final sequence log-probs (P, N) and the recorded curves (``history[name]`` aligned with
    ``history['step']``)."""

    logps: Tensor
    history: dict[str, list[float]] = field(default_factory=dict)
    logits: Tensor | None = None  # the trained table, e.g. to start a next stage from

    @property
    def probs(self) -> Tensor:
        return self.logps.exp()


def standard_monitor(world: TabularWorld, target: Tensor | None = None, reward: Tensor | None = None,
                     beta: float | None = None) -> Monitor:
    """Records KL(π_θ ‖ target) (target defaults to π* of r, β) and the objective J(π_θ)."""
    target = world.optimal_policy(reward, beta) if target is None else target

    def monitor(logps: Tensor) -> dict[str, float]:
        p = logps.exp()
        return {"kl_to_target": world.mean_kl(p, target), "objective": world.objective(p, reward, beta)}
    return monitor


def optimise(policy: TabularPolicy, loss_fn: Callable[[], Tensor], steps: int, lr: float,
              monitor: Monitor | None, record_every: int,
              on_step: Callable[[int], None] | None = None, cosine: bool = True) -> TrainResult:
    """Full-batch Adam for ``steps`` steps; records ``monitor`` every ``record_every`` steps and at the end."""
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    # Cosine decay to 0: Adam's steps are ~lr in size whatever the gradient, so a constant lr leaves
    # a noise floor around the optimum (visible for PPO, whose surrogate moves with π_old).
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1)) if cosine else None
    history: dict[str, list[float]] = {"step": [], "loss": []}

    def record(step: int, loss: float) -> None:
        history["step"].append(step)
        history["loss"].append(loss)
        if monitor is not None:
            with torch.no_grad():
                for k, v in monitor(policy.logps()).items():
                    history.setdefault(k, []).append(v)

    for step in range(steps):
        if on_step is not None:
            on_step(step)
        opt.zero_grad()
        loss = loss_fn()
        if step % record_every == 0:
            record(step, loss.item())
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    with torch.no_grad():
        record(steps, float(loss_fn()))
        return TrainResult(policy.logps().detach(), history, policy.logits.detach().clone())


def train_preference(world: TabularWorld, pairs: PreferencePairs, loss: str = "sigmoid", *,
                     beta: float | None = None, steps: int = 1000, lr: float = 0.05,
                     ref_logps: Tensor | None = None, init_logits: Tensor | None = None,
                     monitor: Monitor | None = None, record_every: int = 10,
                     **hp: float) -> TrainResult:
    """Minimise Σ_m w_m L(x_m, y_w, y_l) for the loss registered as ``loss`` (docs/maths.md §dpo, §family).

    ``ref_logps`` (P, N) is the reference the loss sees (default π_ref; SACPO stage 2 passes the stage-1
    policy); ``init_logits`` the starting policy (default π_ref's logits). Besides ``monitor``'s metrics,
    history holds ``margin`` = the weighted mean log-ratio margin h = log π/π_ref(y_w) − log π/π_ref(y_l)
    and ``data_mass`` = E_x π_θ(completions appearing in the data | x).
    """
    beta = world.beta if beta is None else beta
    ref = (world.ref_logps if ref_logps is None else ref_logps).detach()
    fn = loss_registry.get(loss)
    policy = TabularPolicy(world, init_logits)
    x, yw, yl, w = pairs.prompt, pairs.chosen, pairs.rejected, pairs.weight
    # Flat indices: index_select's backward (index_add) is far cheaper than 2-D advanced indexing's.
    iw, il = x * world.tree.n + yw, x * world.tree.n + yl
    ref_w, ref_l = ref.reshape(-1)[iw], ref.reshape(-1)[il]
    # Length-normalised losses (SimPO, ORPO, ...) ask for token counts: here tokens incl. EOS.
    extra: dict[str, Tensor] = {}
    if "chosen_lengths" in inspect.signature(fn).parameters:
        n_tokens = world.tree.step_mask.sum(-1)
        extra = {"chosen_lengths": n_tokens[yw], "rejected_lengths": n_tokens[yl]}
    seen = pairs.completions(world.n_prompts, world.tree.n).double()

    def loss_fn() -> Tensor:
        lp = policy.logps().reshape(-1)
        losses, _, _ = fn(lp[iw], lp[il], ref_w, ref_l, beta=beta, **extra, **hp)
        return (w * losses).sum()

    def full_monitor(logps: Tensor) -> dict[str, float]:
        out = monitor(logps) if monitor is not None else {}
        h = (logps[x, yw] - ref[x, yw]) - (logps[x, yl] - ref[x, yl])
        out["margin"] = float((w * h).sum())
        out["data_mass"] = float((world.prompt_weights * (logps.exp() * seen).sum(-1)).sum())
        return out

    return optimise(policy, loss_fn, steps, lr, full_monitor, record_every)


def _shaped_reward(reward: Tensor, logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """R̃(x,y) = r(x,y) − β log π(y|x)/π_ref(y|x): the KL-penalised reward of RLHF (docs/maths.md §rl.reward)."""
    return reward - beta * (logps - ref_logps)


def train_reinforce(world: TabularWorld, *, reward: Tensor | None = None, beta: float | None = None,
                    steps: int = 1000, lr: float = 0.05, n_samples: int | None = None, seed: int = 0,
                    monitor: Monitor | None = None, record_every: int = 10) -> TrainResult:
    """Maximise J(π) = E_x[E_π r − β KL(π‖π_ref)] by REINFORCE with a baseline (see module docstring)."""
    beta = world.beta if beta is None else beta
    reward = world.reward if reward is None else reward
    ref, rho = world.ref_logps, world.prompt_weights
    policy = TabularPolicy(world)
    gen = torch.Generator().manual_seed(seed)

    def loss_fn() -> Tensor:
        lp = policy.logps()
        shaped = _shaped_reward(reward, lp.detach(), ref, beta)
        if n_samples is None:
            # Exact: −Σ_x ρ Σ_y π(y) (R̃ − b) log π, gradient = −∇J with π, R̃, b held fixed.
            pi = lp.detach().exp()
            adv = shaped - (pi * shaped).sum(-1, keepdim=True)
            return -(rho * (pi * adv * lp).sum(-1)).sum()
        ys = torch.multinomial(lp.detach().exp(), n_samples, replacement=True, generator=gen)  # (P, K)
        r_k = torch.gather(shaped, 1, ys)
        # RLOO baseline (mean of the other K − 1 draws of the same prompt): the shipped RL-stage math.
        adv = rloo_advantages(r_k.reshape(-1), n_samples).view_as(r_k)
        return -(rho * (adv * torch.gather(lp, 1, ys)).mean(-1)).sum()

    if n_samples is not None and n_samples < 2:
        raise ValueError("RLOO needs n_samples >= 2")
    return optimise(policy, loss_fn, steps, lr, monitor, record_every)


def exact_ppo_loss(logps: Tensor, old_logps: Tensor, advantages: Tensor, prompt_weights: Tensor,
                   clip: float) -> Tensor:
    """−Σ_x ρ(x) Σ_y π_old(y|x) min(ρA, clip(ρ, 1−ε, 1+ε)A), ρ = π_θ(y|x)/π_old(y|x): PPO's clipped
    surrogate in exact expectation over y ~ π_old, computed by the shipped
    :func:`preftune.rl.surrogate.ppo_policy_loss` (each completion one "token", mask of ones).

    That function takes an unweighted mean over the P·N completions; the weights enter exactly through
    the advantages, since the clipped objective is positively homogeneous in A:
    w·min(ρA, clip(ρ)A) = min(ρ·wA, clip(ρ)·wA) for w ≥ 0, so A' = P·N·ρ(x)·π_old(y|x)·A gives the
    weighted sum (value and gradient). ``logps``, ``old_logps``, ``advantages`` (P, N); ρ (P,).
    """
    weight = logps.numel() * prompt_weights[:, None] * old_logps.detach().exp()
    ones = torch.ones(logps.numel(), 1, dtype=torch.bool)
    loss, _ = ppo_policy_loss(logps.reshape(-1, 1), old_logps.reshape(-1, 1),
                              (weight * advantages).reshape(-1, 1), ones, clip)
    return loss


def train_ppo(world: TabularWorld, *, reward: Tensor | None = None, beta: float | None = None,
              iterations: int = 200, epochs: int = 4, clip: float = 0.2, lr: float = 0.05,
              monitor: Monitor | None = None, record_every: int = 10) -> TrainResult:
    """PPO: maximise E_{y~π_old}[min(ρ A, clip(ρ, 1−ε, 1+ε) A)] for ``epochs`` steps per π_old.

    A = R̃_old − V_old with R̃_old = r − β log π_old/π_ref (per-sequence KL penalty in the reward, as in
    RLHF). At π_θ = π_old the surrogate's gradient is the exact ∇J, so π* is PPO's fixed point.
    ``record_every`` counts gradient steps (iterations × epochs in total).
    """
    beta = world.beta if beta is None else beta
    reward = world.reward if reward is None else reward
    ref, rho = world.ref_logps, world.prompt_weights
    policy = TabularPolicy(world)
    state: dict[str, Tensor] = {}

    def refresh(step: int) -> None:
        if step % epochs:
            return  # same π_old for ``epochs`` consecutive steps
        with torch.no_grad():
            old = policy.logps()
            shaped = _shaped_reward(reward, old, ref, beta)
            pi_old = old.exp()
            state["old"] = old
            state["adv"] = shaped - (pi_old * shaped).sum(-1, keepdim=True)

    def loss_fn() -> Tensor:
        return exact_ppo_loss(policy.logps(), state["old"], state["adv"], rho, clip)

    refresh(0)
    return optimise(policy, loss_fn, iterations * epochs, lr, monitor, record_every, on_step=refresh)


def train_ppo_sampled(world: TabularWorld, *, reward: Tensor | None = None, beta: float | None = None,
                      iterations: int = 250, epochs: int = 4, n_samples: int = 16, clip: float = 0.2,
                      lr: float = 0.05, kl_estimator: str = "k1", seed: int = 0,
                      monitor: Monitor | None = None, record_every: int = 10) -> TrainResult:
    """PPO from samples, as the LM-scale stage runs it, with the shipped :mod:`preftune.rl` math.

    Per iteration: ``n_samples`` = K completions per prompt drawn from π_old; per-token KL estimates
    ``kl_estimator`` (:func:`~preftune.rl.kl.kl_penalty`) of π_old against π_ref on the sampled tokens
    folded into the reward (:func:`~preftune.rl.advantages.token_level_rewards`), so the return is
    r(x, y) − β Σ_t kl_t; advantages from the leave-one-out baseline over the K samples
    (:func:`~preftune.rl.advantages.rloo_advantages`, no value head); then ``epochs`` Adam steps on
    the sequence-level clipped surrogate (:func:`~preftune.rl.surrogate.ppo_policy_loss`, each
    completion one "token", ratio π_θ(y|x)/π_old(y|x)) over that fixed batch.

    With k1 (Σ_t kl_t = log π_old(y)/π_ref(y)) the gradient at π_θ = π_old is an unbiased estimate of
    ∇J, so π* is the fixed point. k3 is an unbiased estimate of the KL's *value*, but as a reward it
    is not log π/π_ref, and the fixed point (r − β Σ_t k3_t constant over the completions that keep
    mass) is not π*.
    ``record_every`` counts gradient steps (iterations × epochs in total).
    """
    if n_samples < 2:
        raise ValueError("the leave-one-out baseline needs n_samples >= 2")
    beta = world.beta if beta is None else beta
    reward = world.reward if reward is None else reward
    tree, rho, P, K = world.tree, world.prompt_weights, world.n_prompts, n_samples
    ref_path = tree.path_logprobs(world.ref_logits)  # (P, N, T)
    policy = TabularPolicy(world)
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(P)[:, None]
    ones = torch.ones(P * K, 1, dtype=torch.bool)
    # Prompt weights P·ρ(x) (1 for uniform ρ) make the batch mean an estimate of E_{x~ρ}.
    prompt_weight = (P * rho).repeat_interleave(K)
    state: dict[str, Tensor] = {}

    def refresh(step: int) -> None:
        if step % epochs:
            return  # same batch (and π_old) for ``epochs`` consecutive steps
        with torch.no_grad():
            old_path = tree.path_logprobs(policy.logits)  # (P, N, T)
            old = old_path.sum(-1)
            ys = torch.multinomial(old.exp(), K, replacement=True, generator=gen)  # (P, K)
            mask = tree.step_mask[ys].bool().reshape(P * K, -1)  # (P·K, T): the sampled tokens
            kl = kl_penalty(old_path[rows, ys].reshape(P * K, -1), ref_path[rows, ys].reshape(P * K, -1),
                            kl_estimator)
            token_rewards = token_level_rewards(reward[rows, ys].reshape(-1), kl, mask, beta)
            returns = masked_sum(token_rewards, mask, dim=-1)  # r − β Σ_t kl_t, (P·K,)
            adv = rloo_advantages(returns, K) * prompt_weight
            state["ys"], state["old"], state["adv"] = ys, old[rows, ys].reshape(-1, 1), adv.reshape(-1, 1)

    def loss_fn() -> Tensor:
        lp = policy.logps()[rows, state["ys"]].reshape(-1, 1)
        loss, _ = ppo_policy_loss(lp, state["old"], state["adv"], ones, clip)
        return loss

    # optimise calls refresh before every step, the first sample included.
    return optimise(policy, loss_fn, iterations * epochs, lr, monitor, record_every, on_step=refresh)
