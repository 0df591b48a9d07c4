"""An exact tabular world: a few prompts, every completion enumerable, everything of docs/maths.md §objective computable.

Notation (docs/maths.md §tabular): prompts x ~ ρ (uniform), completions y from :class:`CompletionTree`,
reference π_ref (an autoregressive softmax with its own logits), ground-truth reward r*(x, y) and a
second reward g(x, y) (a "safety" score, for SACPO). All distributions are tensors of shape (P, N):
one row per prompt, one column per completion, float64 so that identities hold to ~1e-12.

    objective   J(π) = E_{x~ρ} [ E_{y~π} r(x,y) − β KL(π(·|x) ‖ π_ref(·|x)) ]   (docs/maths.md §objective)
    optimum     π*(y|x) = π_ref(y|x) exp(r(x,y)/β) / Z(x)   (docs/maths.md §objective.optimum)
    inverse     r(x,y) = β log π*(y|x)/π_ref(y|x) + β log Z(x)   (docs/maths.md §objective.inverse)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preftune.theory.tree import CompletionTree


def optimal_policy_from(ref_logps: Tensor, reward: Tensor, beta: float) -> Tensor:
    """π* = π_ref exp(r/β)/Z per prompt (docs/maths.md §objective.optimum), from reference log-probs (P, N); returns probs (P, N).

    Computed as a softmax of log π_ref + r/β, i.e. with Z(x) via logsumexp, so that large r/β does not
    overflow.
    """
    return torch.softmax(ref_logps + reward / beta, dim=-1)


def kl(p: Tensor, q: Tensor) -> Tensor:
    """KL(p ‖ q) per prompt: Σ_y p log p/q, shape (P, N) → (P,). 0·log 0 = 0 (xlogy).

    Clamped at 0: KL ≥ 0 (Gibbs), so a negative value is only float rounding (~1e-16) at p = q.
    """
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1).clamp_min(0.0)


def constant_free_error(r_hat: Tensor, r: Tensor) -> Tensor:
    """max_y |r̂(x,y) − r(x,y) − c(x)| minimised over a per-prompt constant c(x); shape (P,).

    Rewards are only identified up to f(x) (Lemmas 1–2), so this is the L∞ distance between the two
    equivalence classes. The minimising c(x) is the midrange of the difference (Chebyshev centre).
    """
    d = r_hat - r
    c = 0.5 * (d.max(-1, keepdim=True).values + d.min(-1, keepdim=True).values)
    return (d - c).abs().max(-1).values


def constant_free_rmse(r_hat: Tensor, r: Tensor, weights: Tensor) -> Tensor:
    """√ E_w [(r̂ − r − c(x))²] with the best c(x) (the w-weighted mean difference); shape (P,).

    ``weights`` (P, N) rows sum to 1 (e.g. π* or π_ref): errors on completions a policy never
    produces matter less than the L∞ error of :func:`constant_free_error` suggests.
    """
    d = r_hat - r
    c = (weights * d).sum(-1, keepdim=True)
    return (weights * (d - c) ** 2).sum(-1).sqrt()


@dataclass
class TabularWorld:
    """Prompts × enumerable completions with r*, g and π_ref; see the module docstring for the maths."""

    tree: CompletionTree
    reward: Tensor  # r*(x, y), (P, N)
    safety: Tensor  # g(x, y), (P, N): a second reward for the stepwise (SACPO) demonstration
    ref_logits: Tensor  # (P, n_nodes, A): the autoregressive reference policy
    beta: float = 0.5

    @classmethod
    def make(cls, seed: int = 0, n_prompts: int = 3, vocab: int = 3, max_len: int = 3,
             beta: float = 0.5, reward_scale: float = 1.0, ref_scale: float = 0.5) -> TabularWorld:
        """A seeded random world. r* ~ N(0, reward_scale²) i.i.d. per (x, y): no structure the policy
        could exploit beyond the table, so agreement with π* is not an accident of the design.
        g rewards short completions (a stand-in safety score: −0.5 per extra token, plus noise)."""
        gen = torch.Generator().manual_seed(seed)
        tree = CompletionTree(vocab, max_len)
        shape = (n_prompts, tree.n)
        reward = reward_scale * torch.randn(shape, generator=gen, dtype=torch.float64)
        lengths = torch.tensor([len(s) for s in tree.completions], dtype=torch.float64)
        safety = -0.5 * (lengths - 1) + 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
        ref_logits = ref_scale * torch.randn(n_prompts, tree.n_nodes, tree.n_actions, generator=gen,
                                             dtype=torch.float64)
        return cls(tree, reward, safety, ref_logits, beta)

    # ----- basic quantities -------------------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        return self.reward.shape[0]

    @property
    def prompt_weights(self) -> Tensor:
        """ρ(x): uniform over prompts, (P,)."""
        return torch.full((self.n_prompts,), 1.0 / self.n_prompts, dtype=torch.float64)

    @property
    def ref_logps(self) -> Tensor:
        """log π_ref(y|x), (P, N): the sum of the reference's token log-probs."""
        return self.tree.seq_logprobs(self.ref_logits)

    @property
    def ref_probs(self) -> Tensor:
        return self.ref_logps.exp()

    # ----- exact solutions (docs/maths.md §objective) ------------------------------------
    def optimal_policy(self, reward: Tensor | None = None, beta: float | None = None,
                       ref_logps: Tensor | None = None) -> Tensor:
        """π*(y|x) = π_ref(y|x) exp(r(x,y)/β) / Z(x); defaults: r = r*, β = self.beta, π_ref = ours."""
        reward = self.reward if reward is None else reward
        beta = self.beta if beta is None else beta
        ref_logps = self.ref_logps if ref_logps is None else ref_logps
        return optimal_policy_from(ref_logps, reward, beta)

    def log_partition(self, reward: Tensor | None = None, beta: float | None = None) -> Tensor:
        """log Z(x) = log Σ_y π_ref(y|x) exp(r(x,y)/β), (P,)."""
        reward = self.reward if reward is None else reward
        beta = self.beta if beta is None else beta
        return torch.logsumexp(self.ref_logps + reward / beta, dim=-1)

    def kl_to_ref(self, probs: Tensor) -> Tensor:
        """KL(π ‖ π_ref) per prompt, (P,)."""
        return kl(probs, self.ref_probs)

    def mean_kl(self, p: Tensor, q: Tensor) -> float:
        """E_{x~ρ} KL(p(·|x) ‖ q(·|x)): the number the demonstrations threshold."""
        return float((self.prompt_weights * kl(p, q)).sum())

    def objective(self, probs: Tensor, reward: Tensor | None = None, beta: float | None = None) -> float:
        """J(π) = E_x [E_{y~π} r − β KL(π ‖ π_ref)] (docs/maths.md §objective). At π*, J = β E_x log Z(x)."""
        reward = self.reward if reward is None else reward
        beta = self.beta if beta is None else beta
        per_prompt = (probs * reward).sum(-1) - beta * self.kl_to_ref(probs)
        return float((self.prompt_weights * per_prompt).sum())

    def recovered_reward(self, probs_or_logps: Tensor, beta: float | None = None, *,
                         is_log: bool = False) -> Tensor:
        """r̂(x,y) = β log π(y|x)/π_ref(y|x) (Theorem 1): equals r* − β log Z(x) when π = π*."""
        beta = self.beta if beta is None else beta
        logps = probs_or_logps if is_log else probs_or_logps.log()
        return beta * (logps - self.ref_logps)

    def reward_errors(self, logps: Tensor, beta: float | None = None,
                      reward: Tensor | None = None) -> dict[str, float]:
        """Distance between β log π/π_ref and r (default r*) up to f(x): L∞ over all completions and
        π*-weighted RMS, each worst over prompts."""
        reward = self.reward if reward is None else reward
        r_hat = self.recovered_reward(logps, beta, is_log=True)
        star = self.optimal_policy(reward, beta)
        return {"max_abs": float(constant_free_error(r_hat, reward).max()),
                "rmse_pi_star": float(constant_free_rmse(r_hat, reward, star).max())}
