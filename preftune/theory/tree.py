"""The enumerable completion space of the tabular world, laid out as an autoregressive token tree.

A completion is a sequence of 1..``max_len`` tokens over a vocabulary of ``vocab`` tokens. After each
token shorter than ``max_len`` the model emits either another token or EOS; at ``max_len`` the sequence
ends without an EOS (a forced stop, as a generation length limit does). Hence, like a real LM,

    log π(y|x) = Σ_t log softmax(logits[x, prefix_t])[y_t]      (+ log p(EOS | y) when |y| < max_len)

is a SUM of per-token log-probs (docs/maths.md §notation), and every full-support distribution over completions is
exactly one table of per-prefix logits (the chain rule), so π* (docs/maths.md §objective.optimum) is reachable by training.

Layout: ``logits`` has shape (P, n_nodes, vocab + 1); node 0 is the empty prefix, the last action slot
is EOS. EOS is masked (−inf) at the root, because the empty completion is not a completion.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


class CompletionTree:
    """All completions of length 1..max_len over ``vocab`` tokens, with gather indices for log π(y|x)."""

    def __init__(self, vocab: int = 3, max_len: int = 3) -> None:
        if vocab < 1 or max_len < 1:
            raise ValueError("vocab and max_len must be >= 1")
        self.vocab, self.max_len = vocab, max_len
        self.eos = vocab  # action index of EOS in every node's logit row
        self.n_actions = vocab + 1
        # Interior nodes = prefixes of length 0..max_len-1 (a prefix of length max_len has no choice left).
        prefixes = [()] + [p for n in range(1, max_len) for p in itertools.product(range(vocab), repeat=n)]
        self.node_of: dict[tuple[int, ...], int] = {p: i for i, p in enumerate(prefixes)}
        self.n_nodes = len(prefixes)
        self.completions: list[tuple[int, ...]] = [
            s for n in range(1, max_len + 1) for s in itertools.product(range(vocab), repeat=n)]
        self.n = len(self.completions)

        # Each completion is a path of at most max_len decisions (tokens, then EOS if not truncated).
        node_idx = torch.zeros(self.n, max_len, dtype=torch.long)
        act_idx = torch.zeros(self.n, max_len, dtype=torch.long)
        mask = torch.zeros(self.n, max_len, dtype=torch.float64)
        for i, seq in enumerate(self.completions):
            steps = [(self.node_of[seq[:t]], seq[t]) for t in range(len(seq))]
            if len(seq) < max_len:
                steps.append((self.node_of[seq], self.eos))
            for t, (node, act) in enumerate(steps):
                node_idx[i, t], act_idx[i, t], mask[i, t] = node, act, 1.0
        self.node_idx, self.act_idx, self.step_mask = node_idx, act_idx, mask
        # −inf on EOS at the root; 0 elsewhere. Added to logits before the softmax.
        self.action_mask = torch.zeros(self.n_nodes, self.n_actions, dtype=torch.float64)
        self.action_mask[0, self.eos] = float("-inf")

    def token_logprobs(self, logits: Tensor) -> Tensor:
        """log softmax over each node's actions, EOS masked at the root: (P, n_nodes, A) → same shape."""
        return torch.log_softmax(logits + self.action_mask.to(logits), dim=-1)

    def path_logprobs(self, logits: Tensor) -> Tensor:
        """Each completion's token log-probs in order, EOS included: (P, n_nodes, A) → (P, n, max_len).

        Steps past a completion's end (``step_mask`` 0) are 0: the per-token view an LM's RL stage sees
        (e.g. for per-token KL estimates), with ``step_mask`` as the completion mask.
        """
        logp = self.token_logprobs(logits)
        per_step = logp[:, self.node_idx, self.act_idx]  # (P, n, max_len)
        # Padding steps point at (root, token 0): zero them by the mask (not by −inf, to keep grads finite).
        return per_step * self.step_mask.to(per_step)

    def seq_logprobs(self, logits: Tensor) -> Tensor:
        """log π(y|x) for every completion: (P, n_nodes, A) → (P, n), the sum of the path's token log-probs."""
        return self.path_logprobs(logits).sum(-1)

    def logits_from_probs(self, probs: Tensor) -> Tensor:
        """Inverse of :meth:`seq_logprobs`: the logit table (log conditionals) of a distribution (P, n).

        p(a | prefix) = mass(prefix·a subtree) / mass(prefix subtree), with EOS's subtree being the
        completion ``prefix`` itself. Requires full support (log of zero mass would be −inf).
        """
        P = probs.shape[0]
        subtree = torch.zeros(P, self.n_nodes, self.n_actions, dtype=probs.dtype)
        for i, seq in enumerate(self.completions):
            # Every decision on the path leads into a subtree containing completion i.
            for t in range(len(seq)):
                subtree[:, self.node_of[seq[:t]], seq[t]] += probs[:, i]
            if len(seq) < self.max_len:
                subtree[:, self.node_of[seq], self.eos] += probs[:, i]
        subtree[:, 0, self.eos] = 0.0  # the masked slot holds no mass
        total = subtree.sum(-1, keepdim=True)  # = mass of the prefix's subtree
        out = torch.log(subtree) - torch.log(total)
        out[:, 0, self.eos] = 0.0  # any finite value: the action mask makes it −inf anyway
        return out

    def decode(self, i: int, alphabet: str = "abcdefghijklmnopqrstuvwxyz") -> str:
        """A readable name for completion ``i``, e.g. 'ab$' ($ = EOS) or 'abc' (truncated)."""
        seq = self.completions[i]
        return "".join(alphabet[t] for t in seq) + ("$" if len(seq) < self.max_len else "")
