"""Preference data for the tabular world: Bradley–Terry pairs and Plackett–Luce rankings (docs/maths.md §preference).

Pairs are a weighted list ``(prompt, chosen, rejected, weight)``. Two constructions share it:

* :func:`expected_pairs` — the *population*: every ordered pair (y1, y2), y1 ≠ y2, with weight
  ρ(x) π_ref(y1|x) π_ref(y2|x) p(y1 ≻ y2 | x). A loss averaged with these weights is the exact
  infinite-data expectation E_{x, y1, y2 ~ π_ref, BT}[L], so a minimiser is the population optimum with
  no sampling noise (this is how the convergence claims are made exact).
* :func:`sample_pairs` — a finite seeded dataset (weight 1/n each), the realistic setting.

Bradley–Terry: p(y1 ≻ y2 | x) = σ(r(x,y1) − r(x,y2)).
Plackett–Luce: p(τ | x) = Π_k exp(r(x,y_τ(k))) / Σ_{j≥k} exp(r(x,y_τ(j))).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from preftune.theory.world import TabularWorld


@dataclass
class PreferencePairs:
    """Weighted preference pairs; all tensors have shape (M,). Weights sum to 1."""

    prompt: Tensor
    chosen: Tensor
    rejected: Tensor
    weight: Tensor

    def __len__(self) -> int:
        return self.prompt.shape[0]

    def completions(self, n_prompts: int, n: int) -> Tensor:
        """Boolean mask (P, N) of completions that appear in the data (as chosen or rejected)."""
        seen = torch.zeros(n_prompts, n, dtype=torch.bool)
        seen[self.prompt, self.chosen] = True
        seen[self.prompt, self.rejected] = True
        return seen


def bt_prob(reward: Tensor, prompt: Tensor, y1: Tensor, y2: Tensor) -> Tensor:
    """Bradley–Terry p(y1 ≻ y2 | x) = σ(r(x,y1) − r(x,y2)) (docs/maths.md §preference.bt)."""
    return torch.sigmoid(reward[prompt, y1] - reward[prompt, y2])


def expected_pairs(world: TabularWorld, reward: Tensor | None = None, *,
                   deterministic: bool = False) -> PreferencePairs:
    """The population of ordered pairs y1 ≠ y2 ~ π_ref, weighted by ρ π_ref π_ref p(y1 ≻ y2).

    ``deterministic``: the label is 1[r(y1) > r(y2)] instead of the BT probability (the IPO setting:
    p ∈ {0, 1}, under which BT's implied reward gap is infinite).
    """
    reward = world.reward if reward is None else reward
    P, N = reward.shape
    x, i, j = torch.meshgrid(torch.arange(P), torch.arange(N), torch.arange(N), indexing="ij")
    keep = i != j  # identical completions carry no preference information
    x, i, j = x[keep], i[keep], j[keep]
    pref = (reward[x, i] > reward[x, j]).double() if deterministic else bt_prob(reward, x, i, j)
    ref = world.ref_probs
    w = world.prompt_weights[x] * ref[x, i] * ref[x, j] * pref
    nz = w > 0  # drop pairs with zero weight (deterministic losers as chosen)
    return PreferencePairs(x[nz], i[nz], j[nz], w[nz] / w[nz].sum())


def sample_pairs(world: TabularWorld, n: int, seed: int = 0, reward: Tensor | None = None, *,
                 deterministic: bool = False) -> PreferencePairs:
    """n seeded pairs: x ~ ρ, y1, y2 ~ π_ref(·|x) (redrawn until y1 ≠ y2), label ~ BT on ``reward``.

    The result holds the distinct (x, y_w, y_l) triples, each weighted by its frequency in the sample.
    """
    reward = world.reward if reward is None else reward
    gen = torch.Generator().manual_seed(seed)
    x = torch.multinomial(world.prompt_weights, n, replacement=True, generator=gen)
    ref = world.ref_probs[x]
    y1 = torch.multinomial(ref, 1, generator=gen).squeeze(-1)
    y2 = torch.multinomial(ref, 1, generator=gen).squeeze(-1)
    while bool((same := y1 == y2).any()):
        y2[same] = torch.multinomial(ref[same], 1, generator=gen).squeeze(-1)
    if deterministic:
        first = reward[x, y1] > reward[x, y2]
    else:
        first = torch.rand(n, generator=gen, dtype=torch.float64) < bt_prob(reward, x, y1, y2)
    chosen, rejected = torch.where(first, y1, y2), torch.where(first, y2, y1)
    # Merge repeated triples into one weighted row (weight = count / n): the loss is the same sum, and
    # a million samples cost no more than the P·N·(N−1) distinct triples.
    N = reward.shape[1]
    keys, counts = torch.unique(x * N * N + chosen * N + rejected, return_counts=True)
    return PreferencePairs(keys // (N * N), (keys // N) % N, keys % N, counts.double() / n)


def disjoint_pairs(world: TabularWorld, per_prompt: int, seed: int = 0) -> PreferencePairs:
    """``per_prompt`` pairs per prompt over distinct completions, deterministic labels (higher r* wins).

    No completion appears twice, so every margin is a free parameter: an exactly solvable IPO problem
    (every pair can sit at h = 1/(2β)) and one where DPO's loss has no minimiser.
    """
    gen = torch.Generator().manual_seed(seed)
    xs, ws, ls = [], [], []
    for x in range(world.n_prompts):
        ys = torch.multinomial(world.ref_probs[x], 2 * per_prompt, replacement=False, generator=gen)
        a, b = ys[0::2], ys[1::2]
        first = world.reward[x, a] > world.reward[x, b]
        xs.append(torch.full((per_prompt,), x))
        ws.append(torch.where(first, a, b))
        ls.append(torch.where(first, b, a))
    m = per_prompt * world.n_prompts
    return PreferencePairs(torch.cat(xs), torch.cat(ws), torch.cat(ls),
                           torch.full((m,), 1.0 / m, dtype=torch.float64))


def sample_rankings(world: TabularWorld, n: int, k: int, seed: int = 0,
                    reward: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """n seeded Plackett–Luce rankings of k distinct completions ~ π_ref: (prompt (n,), ranking (n, k)),
    best first. Sorting r + Gumbel noise in decreasing order draws exactly from PL (Gumbel-max applied
    to each successive "pick the best of the rest")."""
    reward = world.reward if reward is None else reward
    gen = torch.Generator().manual_seed(seed)
    x = torch.multinomial(world.prompt_weights, n, replacement=True, generator=gen)
    items = torch.multinomial(world.ref_probs[x], k, replacement=False, generator=gen)
    u = torch.rand(n, k, generator=gen, dtype=torch.float64).clamp_min(1e-300)
    gumbel = -torch.log(-torch.log(u))
    order = torch.argsort(reward[x.unsqueeze(-1), items] + gumbel, dim=-1, descending=True)
    return x, torch.gather(items, 1, order)


def plackett_luce_logprob(reward: Tensor, prompt: Tensor, ranking: Tensor) -> Tensor:
    """log p(τ | x) = Σ_k [ r(x,y_τ(k)) − log Σ_{j≥k} exp r(x,y_τ(j)) ] (docs/maths.md §preference.pl); (n,) for (n, k)."""
    r = reward[prompt.unsqueeze(-1), ranking]  # (n, k), best first
    # logsumexp over suffixes: flip, cumulative logsumexp, flip back.
    suffix = torch.logcumsumexp(r.flip(-1), dim=-1).flip(-1)
    return (r - suffix).sum(-1)
