"""Sampling completions for online training: a small interface and its default backend.

A *sampler* turns tokenized prompts into completions:

    sampler.generate(prompt_ids, seeds) -> Generated(completion_ids, logprobs, ended)

``prompt_ids`` is a list of token-id sequences (one row per completion wanted: repeat a prompt to get
several samples of it), ``seeds`` one integer per row. Row i's completion must be a function of
(weights, prompt_ids[i], seeds[i]) alone — not of the other rows, the batch size or how the rows were
split into calls — so that resuming a run, changing the process count or the micro-batch split leaves
the samples unchanged. A completion ends with its first EOS token (kept) or after ``max_new_tokens``.
``logprobs`` are the sampler's own log-probabilities of the tokens it drew, under the distribution it
drew them from (temperature, top-k / top-p / min-p applied); a backend that cannot report them returns
None and the trainer recomputes them.

:class:`HFSampler` (the default) runs Hugging Face ``generate`` with the KV cache, on CPU or GPU, in
one batch. It draws each token by inverting the row's cumulative distribution at one uniform number
from a per-row generator seeded by ``seeds[i]``: HF's own sampler draws from one stream shared by the
whole batch, so a row's sample would depend on its neighbours.

A server backend (e.g. vLLM's ``SamplingParams(seed=...)`` per request, or an OpenAI-style endpoint that
accepts a seed and returns token log-probs) plugs in by implementing ``generate`` with the same
contract; the trainer then compares its log-probs with its own (``sampler_logprobs`` in the rollout)
for the importance correction a mismatched sampler needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

__all__ = ["Generated", "HFSampler", "Sampler", "SamplingSettings", "row_seed"]


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                 # 0 = off
    min_p: float | None = None
    repetition_penalty: float = 1.0
    greedy: bool = False           # argmax decoding (evaluation); seeds are then ignored


@dataclass
class Generated:
    completion_ids: list[list[int]]
    logprobs: list[list[float]] | None
    ended: list[bool]              # stopped at EOS (False: cut at max_new_tokens)


class Sampler(Protocol):
    def generate(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int]) -> Generated: ...


def row_seed(*parts: int) -> int:
    """A 63-bit seed from integers (run seed, stream, generation, row, ...): distinct tuples give
    unrelated streams (a splitmix64-style mix, not a sum that (1, 2) and (2, 1) would share)."""
    x = 0x9E3779B97F4A7C15
    for part in parts:
        x = (x ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 29
    return x & 0x7FFFFFFFFFFFFFFF


class _RowSampler:
    """A logits processor that turns HF's greedy search into exact sampling, one generator per row.

    It receives the scores after HF's own processors (repetition penalty, suppressed tokens), applies
    temperature and the truncations, draws u ~ U[0, 1) per row and picks the token whose interval of the
    cumulative distribution holds u (float64; a token of probability 0 has an empty interval, so it is
    never picked). It returns 0 for that token and −inf elsewhere, so HF's argmax takes it, and records
    log p of it (the sampler log-probs). One random number per row and token: no vocabulary-sized noise.
    """

    def __init__(self, settings: SamplingSettings, seeds: Sequence[int], device: torch.device) -> None:
        from transformers.generation.logits_process import (
            MinPLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.settings = settings
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.warpers = []
        if settings.top_k > 0:
            self.warpers.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(settings.top_p))
        if settings.min_p is not None:
            self.warpers.append(MinPLogitsWarper(settings.min_p))
        self.chosen_logprobs: list[Tensor] = []

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        scores = scores.float() / self.settings.temperature
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        logp = torch.log_softmax(scores, dim=-1)
        if self.settings.greedy:
            chosen = logp.argmax(-1, keepdim=True)
        else:
            cdf = logp.double().exp().cumsum(-1)
            u = torch.cat([torch.rand(1, generator=g, device=logp.device, dtype=torch.float64)
                           for g in self.generators])
            chosen = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True)
            chosen = chosen.clamp_(max=logp.shape[-1] - 1)
        self.chosen_logprobs.append(logp.gather(-1, chosen).squeeze(-1))
        return torch.full_like(logp, float("-inf")).scatter_(-1, chosen, 0.0)


@dataclass(eq=False, repr=False)  # a sampler is compared and shown as itself, not by its model
class HFSampler:
    """Batched ``model.generate`` with the KV cache (see the module docstring).

    ``model`` is the causal LM (a peft-wrapped one is unwrapped by the caller); ``synced`` keeps every
    process stepping until all are done (needed when the weights are sharded: each forward is a
    collective). Rows are left-padded so every prompt ends where generation starts.
    """

    model: nn.Module
    eos_token_id: int
    pad_token_id: int
    settings: SamplingSettings
    device: torch.device
    synced: bool = False

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int]) -> Generated:
        from transformers import GenerationConfig

        if len(seeds) != len(prompt_ids):
            raise ValueError(f"{len(seeds)} seeds for {len(prompt_ids)} prompts")
        if not prompt_ids:
            return Generated([], [], [])
        width = max(len(p) for p in prompt_ids)
        ids = torch.tensor([[self.pad_token_id] * (width - len(p)) + list(p) for p in prompt_ids], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=self.device)
        sampling = _RowSampler(self.settings, seeds, self.device)
        # Greedy search over the processor's noisy scores is sampling; temperature and truncation are the
        # processor's (HF applies its own warpers only when do_sample is on).
        config = GenerationConfig(do_sample=False, max_new_tokens=self.settings.max_new_tokens, num_beams=1,
                                  repetition_penalty=self.settings.repetition_penalty,
                                  eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id, use_cache=True)
        out = self.model.generate(input_ids=ids, attention_mask=attention, generation_config=config,
                                  logits_processor=[sampling], synced_gpus=self.synced)
        new = out[:, width:].tolist()
        steps = torch.stack(sampling.chosen_logprobs, dim=1).tolist() if sampling.chosen_logprobs else [[]] * len(new)
        completions, logprobs, ended = [], [], []
        for row, lp in zip(new, steps):
            stop = row.index(self.eos_token_id) + 1 if self.eos_token_id in row else len(row)
            completions.append(row[:stop])
            logprobs.append(lp[:stop])
            ended.append(self.eos_token_id in row)
        return Generated(completions, logprobs, ended)
