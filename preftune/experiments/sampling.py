"""Sampling from a policy, scoring with r*, and the sequence-level KL estimate every point is made of.

    KL(π ‖ π_ref)(x) = E_{y~π(·|x)} [ log π(y|x) − log π_ref(y|x) ]

estimated from the same samples the reward is measured on: plain ancestral sampling at temperature 1
(``top_k=0``, ``top_p=1``: no truncation), so the sample mean is unbiased; log π(y|x) is the sum of the
completion's token log-probs under each model (:class:`~preftune.modeling.logprobs.SequenceLogprobModel`),
on the exact token ids sampled. A completion ends at its first EOS or after ``max_new_tokens`` tokens, so
the KL is that of the distributions over such (possibly cut) completions, for both models alike.

Standard errors are over prompts (the mean over a prompt's samples is one observation), since samples
of one prompt are not independent of each other in what they measure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from preftune.data.prompts import TokenizedPrompt
from preftune.modeling.generation import HFSampler, SamplingSettings, row_seed
from preftune.modeling.load import freeze, load_causal_lm
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.rewards import RewardFn, score
from preftune.stages.online import make_rows
from preftune.train.loop import autocast


@dataclass
class Samples:
    """``k`` completions per prompt, grouped: ``completions[i]`` are prompt i's."""

    prompts: list[Any]
    completions: list[list[str]]
    rewards: list[list[float]]
    kl: list[list[float]] | None
    lengths: list[list[int]]
    ended: list[list[bool]]


def mean_sem(groups: list[list[float]]) -> tuple[float, float]:
    """Mean over all values, and its standard error over the per-group (per-prompt) means."""
    flat = [v for g in groups for v in g]
    if not flat:
        return float("nan"), float("nan")
    means = [sum(g) / len(g) for g in groups if g]
    m = sum(flat) / len(flat)
    if len(means) < 2:
        return m, float("nan")
    mu = sum(means) / len(means)
    var = sum((v - mu) ** 2 for v in means) / (len(means) - 1)
    return m, math.sqrt(var / len(means))


@torch.no_grad()
def sample(policy: nn.Module, tokenizer: Any, prompts: list[TokenizedPrompt], k: int, reward_fn: RewardFn, *,
           max_new_tokens: int, batch_size: int, seed: int, device: torch.device, bf16: bool = False,
           reference: SequenceLogprobModel | None = None, progress: Any = None) -> Samples:
    """``k`` samples per prompt from ``policy`` (a causal LM), scored; with ``reference`` also the KL
    estimate per sample. Sample j of prompt i is seeded by (seed, i, j), so a result never depends on what
    else ran before it or on the batch size (the same noise for every checkpoint: common random numbers)."""
    policy.eval()
    scorer = SequenceLogprobModel(policy) if reference is not None else None
    sampler = HFSampler(policy, tokenizer.eos_token_id, tokenizer.pad_token_id,
                        SamplingSettings(max_new_tokens=max_new_tokens), device)
    flat = [(i, j, ex) for i, ex in enumerate(prompts) for j in range(k)]
    texts: list[str] = []
    rewards: list[float] = []
    kls: list[float] = []
    lengths: list[int] = []
    ended: list[bool] = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        ids = [ex.prompt_ids for _, _, ex in chunk]
        with autocast(bf16, device):
            completions = sampler.generate(ids, [row_seed(seed, i, j) for i, j, _ in chunk]).completion_ids
        decoded = tokenizer.batch_decode(completions, skip_special_tokens=True)
        texts += decoded
        rewards += score(reward_fn, [ex.prompt for _, _, ex in chunk], decoded).tolist()
        lengths += [len(c) for c in completions]
        ended += [bool(c) and c[-1] == tokenizer.eos_token_id for c in completions]
        if scorer is not None:
            rows = make_rows(ids, completions, tokenizer.pad_token_id, device)
            with autocast(bf16, device):
                logp = scorer(rows.input_ids, rows.attention_mask, rows.loss_mask).logps.float()
                ref = reference(rows.input_ids, rows.attention_mask, rows.loss_mask).logps.float()
            kls += (logp - ref).tolist()
        if progress is not None:
            progress.update(len(chunk))

    def group(values: list) -> list[list]:
        return [values[i * k:(i + 1) * k] for i in range(len(prompts))]

    return Samples([ex.prompt for ex in prompts], group(texts), group(rewards), group(kls) if scorer else None,
                   group(lengths), group(ended))


@dataclass(frozen=True)
class PromptValues:
    """One point's samples on the held-out prompts: ``rewards[i][j]``, ``kls[i][j]`` of prompt i, sample j
    (sample j of prompt i drew the same random numbers at every point: common random numbers)."""

    rewards: list[list[float]]
    kls: list[list[float]]


def win_rate(rewards: list[list[float]], baseline: list[list[float]]) -> tuple[float, float]:
    """How often a sample beats the baseline's sample of the same prompt and index (a tie counts ½), and the
    standard error over prompts."""
    if [len(g) for g in rewards] != [len(g) for g in baseline]:
        raise ValueError("win_rate: the two points were measured on different prompts or sample counts")
    return mean_sem([[float(a > b) + 0.5 * float(a == b) for a, b in zip(g, h)] for g, h in zip(rewards, baseline)])


def point_metrics(s: Samples) -> dict[str, float]:
    """reward, reward_sem, kl, kl_sem, n (samples), length, eos_fraction."""
    reward, reward_sem = mean_sem(s.rewards)
    kl, kl_sem = mean_sem(s.kl) if s.kl is not None else (0.0, 0.0)
    n = sum(len(g) for g in s.rewards)
    return {"reward": reward, "reward_sem": reward_sem, "kl": kl, "kl_sem": kl_sem, "n": n,
            "length": sum(map(sum, s.lengths)) / max(n, 1), "eos_fraction": sum(map(sum, s.ended)) / max(n, 1)}


def best_of_n_kl(n: int) -> float:
    """KL(π_BoN ‖ π_ref) = log N − (N − 1)/N for N i.i.d. samples with distinct rewards (Stiennon et al.
    2020; an upper bound when rewards tie)."""
    return math.log(n) - (n - 1) / n


def best_of_n(rewards: list[list[float]], n: int) -> dict[str, float]:
    """Mean r* of the best of ``n`` samples: each prompt's samples are cut into ⌊k/n⌋ disjoint groups of
    ``n`` and each group contributes its maximum."""
    groups = []
    for rs in rewards:
        if len(rs) < n:
            raise ValueError(f"best-of-{n} needs >= {n} samples per prompt, got {len(rs)}")
        groups.append([max(rs[j:j + n]) for j in range(0, len(rs) - n + 1, n)])
    reward, sem = mean_sem(groups)
    return {"reward": reward, "reward_sem": sem, "kl": best_of_n_kl(n), "kl_sem": 0.0,
            "n": sum(len(g) for g in groups)}


def load_policy_folder(folder: Path, base: Path, device: torch.device):
    """A checkpoint's model folder (a full model, or a LoRA adapter over ``base``, merged)."""
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_causal_lm(str(base), device), str(folder)).merge_and_unload()
    else:
        model = load_causal_lm(str(folder), device)
    return freeze(model)
