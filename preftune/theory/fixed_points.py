"""Where the GRPO family's KL-in-the-loss variants converge, solved without training: backward induction
over the completion tree plus a few per-prompt scalars made self-consistent.

The expected gradient of a GRPO-style loss, on samples from π, with a per-token KL term in the loss
(k2, or k3 × ρ: reverse; k3 alone: forward, see :func:`preftune.rl.grpo.kl_loss_term`) is, for the
logits z(s) of prefix s (d(s) the probability of reaching s):

    d(s) Σ_a π(a|s) ∇log π(a|s) · [ F(s, a) − β W(s, a) D(a|s) ]

with F(s, a) = E[f(y) | s, a] the advantage-to-go, W(s, a) = E[w(y) | s, a] the KL weight-to-go
(both expectations over the completions below s·a under π), and D the per-token divergence term
(log π/π_ref for reverse, 1 − π_ref/π for forward). Per completion:

    f(y) = c(x) · (r(x, y) − V(x)) · u(y)      u = 1/|y| for loss_type grpo (per-sequence mean), else 1
    w(y) = u(y) · q(y)                          q = 1, or dynamic sampling's P(group mixed | y)

c(x) is the advantage scale: 1 (G → ∞, no std), (G − 1)/G (the group mean of G samples includes the
sample itself), 1/(σ(x) + 1e-4) (std of the group, G → ∞), 1/(σ_batch + 1e-4). Setting the bracket
to a constant over a gives the stationary conditionals in closed form up to one scalar per node:

    reverse   π(a|s) = π_ref(a|s) exp( (F − κ_s) / (β W) )          κ_s ∈ [min F, max F]
    forward   π(a|s) = β W π_ref(a|s) / (λ_s + β W − F)             λ_s ∈ (max(F − βW), max F]

each fixed by Σ_a π(a|s) = 1 (bisection). Nodes are solved deepest first, so F and W below are known;
the scalars V(x), σ(x), p(x) of f and w depend on the whole policy and are iterated to a fixed point.
The true optimum π* solves instead π(a|s) ∝ π_ref(a|s) exp(Q_soft(s, a)/β) with the *future KL* in
Q_soft: a per-token KL in the loss does not see it ("myopic"), which is why these fixed points differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preftune.theory.world import TabularWorld

_BISECT = 80  # halvings: 2^-80 of the bracket, below float64 resolution of its ends


@dataclass(frozen=True)
class LossShape:
    """What the expected gradient of a KL-in-the-loss variant looks like (see the module docstring)."""

    divergence: str = "reverse"  # "reverse" (k2, k3 × ρ), "forward" (k3 without the ratio), "none" (k1)
    length_normalised: bool = False  # loss_type grpo: u(y) = 1/|y|
    scale: str = "none"  # advantage scale c(x): "none", "group" (1/σ(x)), "batch" (1/σ_batch)
    group_size: int | None = None  # finite G: c(x) × (G − 1)/G, and dynamic sampling's P(mixed)
    dynamic_sampling: bool = False  # needs a 0/1 reward and group_size
    std_eps: float = 1e-4


@dataclass(frozen=True)
class _Level:
    """The interior nodes of one depth and where each of their actions leads: another node (``child``
    ≥ 0), a completion (``completion`` ≥ 0), or nowhere (EOS at the root: ``allowed`` False)."""

    nodes: Tensor  # (n,)
    child: Tensor  # (n, A), −1 where the action ends the completion
    completion: Tensor  # (n, A), −1 where the action leads to a node (or is not allowed)
    allowed: Tensor  # (n, A) bool


def _levels(world: TabularWorld) -> list[_Level]:
    """Nodes grouped by depth, deepest first: nodes of one depth are independent given the deeper ones."""
    tree = world.tree
    index = {seq: i for i, seq in enumerate(tree.completions)}
    levels = []
    for depth in reversed(range(tree.max_len)):
        prefixes = [p for p in tree.node_of if len(p) == depth]
        child = torch.full((len(prefixes), tree.n_actions), -1)
        completion = torch.full((len(prefixes), tree.n_actions), -1)
        for i, prefix in enumerate(prefixes):
            for a in range(tree.vocab):
                nxt = prefix + (a,)
                if nxt in tree.node_of:
                    child[i, a] = tree.node_of[nxt]
                else:
                    completion[i, a] = index[nxt]
            if prefix:  # EOS ends the completion `prefix` (not allowed at the root)
                completion[i, tree.eos] = index[prefix]
        levels.append(_Level(torch.tensor([tree.node_of[p] for p in prefixes]), child, completion,
                             (child >= 0) | (completion >= 0)))
    return levels


def _solve_node(log_ref: Tensor, F: Tensor, W: Tensor, beta: float, divergence: str) -> Tensor:
    """log π(·|s) for a batch of nodes; log_ref, F, W (..., A), log_ref = −inf on disallowed actions
    (whose F, W must still be finite: they are kept out of the brackets below)."""
    allowed = torch.isfinite(log_ref)
    big = torch.finfo(F.dtype).max
    if divergence == "reverse":
        lo = torch.where(allowed, F, big).min(-1).values
        hi = torch.where(allowed, F, -big).max(-1).values

        def log_pi(k: Tensor) -> Tensor:
            return log_ref + (F - k[..., None]) / (beta * W)
    elif divergence == "forward":
        lo = torch.where(allowed, F - beta * W, -big).max(-1).values
        hi = torch.where(allowed, F, -big).max(-1).values

        def log_pi(k: Tensor) -> Tensor:
            return torch.log(beta * W) + log_ref - torch.log((k[..., None] + beta * W - F).clamp_min(1e-300))
    else:
        raise ValueError(f"no finite fixed point for divergence {divergence!r} (k1's expected gradient is 0); "
                         "solve 'reverse' or 'forward'")
    for _ in range(_BISECT):  # Σ π decreases in the scalar: move the bracket toward Σ π = 1
        mid = 0.5 * (lo + hi)
        too_big = torch.logsumexp(log_pi(mid), -1) > 0
        lo, hi = torch.where(too_big, mid, lo), torch.where(too_big, hi, mid)
    out = log_pi(0.5 * (lo + hi)).masked_fill(~allowed, float("-inf"))
    return out - torch.logsumexp(out, -1, keepdim=True)  # remove the last ~1e-16 of normalisation error


def policy_scalars(world: TabularWorld, probs: Tensor, reward: Tensor, correct: Tensor | None) -> dict[str, Tensor]:
    """The per-prompt scalars f and w depend on: V(x) = E_π r, σ(x) (population std), σ_batch, and
    p(x) = P_π(correct) when ``correct`` (a 0/1 reward) is given; each (P,)."""
    V = (probs * reward).sum(-1)
    sigma = (probs * (reward - V[:, None]) ** 2).sum(-1).sqrt()
    rho = world.prompt_weights
    mean_b = (rho * V).sum()
    sigma_b = (rho * (probs * (reward - mean_b) ** 2).sum(-1)).sum().sqrt()
    out = {"V": V, "sigma": sigma, "sigma_batch": sigma_b.expand_as(V)}
    if correct is not None:
        out["p"] = (probs * correct).sum(-1)
    return out


def per_completion_terms(world: TabularWorld, reward: Tensor, shape: LossShape,
                         scalars: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """f(y) and w(y) of the module docstring, (P, N) each, from the per-prompt scalars of the policy."""
    lengths = world.tree.step_mask.sum(-1).to(reward)
    u = 1.0 / lengths if shape.length_normalised else torch.ones_like(lengths)
    c = torch.ones_like(scalars["V"])
    if shape.scale == "group":
        c = 1.0 / (scalars["sigma"] + shape.std_eps)
    elif shape.scale == "batch":
        c = 1.0 / (scalars["sigma_batch"] + shape.std_eps)
    elif shape.scale != "none":
        raise ValueError(f"scale must be none, group or batch, got {shape.scale!r}")
    if shape.group_size is not None:
        c = c * (shape.group_size - 1) / shape.group_size
    f = c[:, None] * (reward - scalars["V"][:, None]) * u
    w = u.expand_as(f)
    if shape.dynamic_sampling:
        w = w * dynamic_sampling_weight(reward, scalars["p"], shape.group_size)
    return f, w


def dynamic_sampling_weight(correct: Tensor, p: Tensor, group_size: int | None) -> Tensor:
    """P(the other G − 1 members of y's group make it mixed | y): 1 − p^{G−1} if y is correct (0/1
    reward), 1 − (1 − p)^{G−1} if not, p = P_π(correct | x). A completion's KL term survives dynamic
    sampling only in a mixed group; its policy-gradient term is 0 in an all-equal group anyway."""
    if group_size is None:
        raise ValueError("dynamic sampling needs a finite group_size")
    g = group_size - 1
    return torch.where(correct > 0.5, 1 - p[:, None] ** g, 1 - (1 - p[:, None]) ** g)


def solve(world: TabularWorld, shape: LossShape, *, reward: Tensor | None = None, beta: float | None = None,
          iterations: int = 500, damping: float = 1.0, tol: float = 1e-13) -> Tensor:
    """The stationary policy (P, N) of a KL-in-the-loss GRPO variant of the given :class:`LossShape`.
    Plain iteration on the per-prompt scalars (``damping`` < 1 mixes old and new); raises if they have
    not settled to ``tol`` after ``iterations`` rounds rather than return an unconverged policy."""
    reward = world.reward if reward is None else reward
    beta = world.beta if beta is None else beta
    if shape.dynamic_sampling and not bool(((reward == 0) | (reward == 1)).all()):
        raise ValueError("dynamic sampling's closed form needs a 0/1 reward")
    correct = reward if shape.dynamic_sampling else None
    log_ref = world.tree.token_logprobs(world.ref_logits)  # (P, n_nodes, A), −inf for EOS at the root
    levels = _levels(world)
    probs = world.optimal_policy(reward, beta)
    s = policy_scalars(world, probs, reward, correct)
    for _ in range(iterations):
        f, w = per_completion_terms(world, reward, shape, s)
        probs = _backward_induction(world, levels, log_ref, f, w, beta, shape.divergence)
        new = policy_scalars(world, probs, reward, correct)
        change = max(float((new[k] - s[k]).abs().max()) for k in s)
        s = {k: (1 - damping) * s[k] + damping * new[k] for k in s}
        if change < tol:
            return probs
    raise RuntimeError(f"fixed point of {shape} not reached in {iterations} iterations (last change {change:.2e})")


def _backward_induction(world: TabularWorld, levels: list[_Level], log_ref: Tensor, f: Tensor, w: Tensor,
                        beta: float, divergence: str) -> Tensor:
    tree = world.tree
    P = f.shape[0]
    F_node = torch.zeros(P, tree.n_nodes, dtype=f.dtype)
    W_node = torch.zeros(P, tree.n_nodes, dtype=f.dtype)
    logits = torch.zeros(P, tree.n_nodes, tree.n_actions, dtype=f.dtype)
    for lv in levels:
        is_child = lv.child >= 0
        # F, W of each action: the child's value if it leads to a node, else the completion's (P, n, A).
        F = torch.where(is_child, F_node[:, lv.child.clamp_min(0)], f[:, lv.completion.clamp_min(0)])
        W = torch.where(is_child, W_node[:, lv.child.clamp_min(0)], w[:, lv.completion.clamp_min(0)])
        log_pi = _solve_node(log_ref[:, lv.nodes], F, W, beta, divergence)
        pi = log_pi.exp()
        F_node[:, lv.nodes], W_node[:, lv.nodes] = (pi * F).sum(-1), (pi * W).sum(-1)
        logits[:, lv.nodes] = torch.where(lv.allowed, log_pi, torch.zeros((), dtype=f.dtype))
    return tree.seq_logprobs(logits).exp()


def kl_loss_myopic_optimum(world: TabularWorld, reward: Tensor | None = None, beta: float | None = None) -> Tensor:
    """Convenience: reverse per-token KL, no scaling, G → ∞: π(a|s) ∝ π_ref(a|s) exp(Q_r(s, a)/β) with
    Q_r the expected *reward* to go (no future KL). Equals π* when completions are one token long."""
    return solve(world, LossShape(), reward=reward, beta=beta)


def argmax_policy_mass(world: TabularWorld, probs: Tensor, reward: Tensor | None = None) -> float:
    """E_x π(argmax_y r(x, y) | x): the mass on the best completion (the limit of unregularised RL)."""
    reward = world.reward if reward is None else reward
    best = reward.argmax(-1)
    return float((world.prompt_weights * probs[torch.arange(probs.shape[0]), best]).sum())


__all__ = ["LossShape", "argmax_policy_mass", "dynamic_sampling_weight", "kl_loss_myopic_optimum",
           "per_completion_terms", "policy_scalars", "solve"]
