"""The models and the pairs both frameworks train on.

Two workloads, each deterministic for a seed and sized so that nothing is truncated (both sides see every
token):

* ``synthetic``: per pair a total budget uniform in [max_length/4, max_length] tokens, a prompt of at most
  half of it, chosen and rejected filling random parts of the rest (``make_pairs``).
* ``chat``: lengths shaped like UltraFeedback's (``HuggingFaceH4/ultrafeedback_binarized``, the usual DPO
  chat set): log-normal prompt lengths with median 160 tokens and σ 0.9 (mean ≈ 240, 90th percentile
  ≈ 510: most prompts are one or two paragraphs, a long tail pastes documents or code), and each
  completion, chosen and rejected drawn independently, log-normal with median 300 and σ 0.6 (mean ≈ 360,
  90th percentile ≈ 650: answers are longer and less spread than prompts). Prompts are clipped to
  max_prompt_length − 1, completions to what max_length leaves (the usual max_length 1024 cuts the tail,
  as TRL's default truncation would). These are approximations from the dataset's published length
  statistics (prompt median ~150–200 and completion median ~250–350 SmolLM2/Zephyr tokens), not a fit:
  the set itself is not downloaded here. What matters for speed is the shape: prompts as long as half a
  completion or more, repeated once per completion. At another max_length the medians scale by
  max_length / 1024, so a short test run has the same shape.

Text is random words from fixed pools, letters only and joined by single spaces, so every word after the
first is its own pre-token (" word") for byte-level BPE tokenizers and a completion starting with " word"
tokenizes the same alone as after its prompt.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

from vs_trl.settings import Settings

PROMPT_WORDS = (
    "the a this that film movie story plot scene actor actress director camera music sound script "
    "character ending beginning middle review viewer audience night theater screen picture show series "
    "season episode role cast writer producer studio budget effect light color voice dialogue line moment "
    "question answer reason idea world city house road river mountain summer winter morning evening was is "
    "and but with about from into over under after before while because"
).split()
CHOSEN_WORDS = (
    "good great excellent fine wonderful brilliant lovely superb clever warm funny moving honest bright "
    "charming strong gentle rich vivid fresh elegant smart kind generous careful beautiful delightful "
    "memorable thoughtful inspiring solid"
).split()
REJECTED_WORDS = (
    "bad awful poor terrible boring dull weak flat messy silly cheap lazy tired noisy clumsy empty cold "
    "harsh bland stale shallow sloppy slow confusing painful forgettable tedious annoying wooden hollow"
).split()

CHAT_PROMPT = (160, 0.9)       # log-normal (median tokens, σ) at max_length 1024 (module docstring)
CHAT_COMPLETION = (300, 0.6)


def prepare_model(kind: str, workdir: Path, max_length: int, seed: int = 0) -> Path:
    """A Hugging Face folder: a tiny random Llama + BPE tokenizer built here, the converted SmolLM2, or an
    existing folder given by path."""
    if kind == "smollm2":
        from preftune.assets.smollm2 import ensure_smollm2

        return ensure_smollm2(log=lambda m: print(m, file=sys.stderr))
    if kind != "tiny":
        path = Path(kind)
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model {kind!r}: not tiny, smollm2 or a Hugging Face model folder")
        return path
    from preftune.testing import tiny_llama, tiny_tokenizer

    path = workdir / "tiny-llama"
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer), hidden_size=128, num_layers=4, num_heads=4, intermediate_size=256,
                       max_position_embeddings=max(512, max_length), seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def model_from_config(config: dict[str, Any], path: Path, seed: int = 0) -> Path:
    """A Llama of the given shape with random weights (speed needs no trained ones) and the tiny tokenizer,
    saved as a Hugging Face folder. ``config``: LlamaConfig keys."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from preftune.testing import tiny_tokenizer

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    (path / "shape.json").write_text(json.dumps(config))
    return path


class _Words:
    """Random words within a token budget, counting tokens with ``tokenizer`` (cached per word)."""

    def __init__(self, tokenizer: Any, rng: random.Random) -> None:
        self.tokenizer, self.rng, self.cache = tokenizer, rng, {}

    def count(self, text: str) -> int:
        if text not in self.cache:
            self.cache[text] = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self.cache[text]

    def __call__(self, pool: list[str], budget: int, lead: str) -> str:
        out: list[str] = []
        n = 0
        while n < budget:
            w = self.rng.choice(pool)
            c = self.count((lead if not out else " ") + w)  # per-word counts add up: each " word" is a pre-token
            if not out and c > budget:  # the first word alone too long: the shortest one instead
                w = min(pool, key=lambda v: (self.count(lead + v), v))
                c = self.count(lead + w)
            if out and n + c > budget:
                break
            out.append(w)
            n += c
        text = lead + " ".join(out)
        while len(out) > 1 and len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) > budget:
            out.pop()  # the additivity assumption failed for this tokenizer: trim to the budget
            text = lead + " ".join(out)
        return text


def make_pairs(tokenizer: Any, n: int, max_length: int, max_prompt_length: int, seed: int) -> list[dict[str, str]]:
    """``n`` deterministic synthetic pairs {prompt, chosen, rejected} of varied lengths that need no truncation
    (module docstring); one token of each sequence is kept for the EOS both frameworks append."""
    rng = random.Random(seed)
    words = _Words(tokenizer, rng)
    pairs = []
    for _ in range(n):
        total = rng.randint(max(8, max_length // 4), max_length)
        prompt = words(PROMPT_WORDS, rng.randint(4, max(4, min(max_prompt_length - 1, total // 2))), "")
        room = max(1, total - len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) - 1)
        chosen = words(CHOSEN_WORDS, rng.randint(1, room), " ")
        rejected = words(REJECTED_WORDS, rng.randint(1, room), " ")
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def chat_lengths(n: int, max_length: int, max_prompt_length: int, seed: int) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token budgets of ``n`` chat-shaped pairs (module docstring)."""
    rng = random.Random(seed)
    scale = max_length / 1024

    def draw(median: float, sigma: float) -> int:
        return round(rng.lognormvariate(math.log(median * scale), sigma))

    out = []
    for _ in range(n):
        prompt = min(max(4, draw(*CHAT_PROMPT)), max_prompt_length - 1)
        room = max(1, max_length - prompt - 1)  # 1 for the EOS
        out.append((prompt, min(max(1, draw(*CHAT_COMPLETION)), room), min(max(1, draw(*CHAT_COMPLETION)), room)))
    return out


def make_chat_pairs(tokenizer: Any, n: int, max_length: int, max_prompt_length: int, seed: int
                    ) -> list[dict[str, str]]:
    """``n`` deterministic pairs with chat-shaped lengths (:func:`chat_lengths`), no truncation needed."""
    words = _Words(tokenizer, random.Random(seed + 1))
    return [{"prompt": words(PROMPT_WORDS, p, ""), "chosen": words(CHOSEN_WORDS, c, " "),
             "rejected": words(REJECTED_WORDS, r, " ")}
            for p, c, r in chat_lengths(n, max_length, max_prompt_length, seed)]


def build_pairs(s: Settings, tokenizer: Any) -> list[dict[str, str]]:
    make = make_chat_pairs if s.workload == "chat" else make_pairs
    return make(tokenizer, s.num_pairs, s.max_length, s.max_prompt_length, s.seed)


def pair_lengths(tokenizer: Any, rows: list[dict[str, str]]) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts as both frameworks tokenize them (completions + 1 EOS)."""
    out = []
    for r in rows:
        p = len(tokenizer(r["prompt"])["input_ids"])
        c, j = (len(tokenizer(r[k], add_special_tokens=False)["input_ids"]) + 1 for k in ("chosen", "rejected"))
        out.append((p, c, j))
    return out


def data_stats(lengths: list[tuple[int, int, int]]) -> dict[str, Any]:
    """Token counts of the pairs: TRL's count (each sequence whole: the prompt once per completion) and the
    count with each prompt once (what prefix sharing runs through the decoder)."""
    seqs = [p + c for p, c, _ in lengths] + [p + r for p, _, r in lengths]
    whole = sum(seqs)
    shared = sum(p + c + r for p, c, r in lengths)
    prompts = sorted(p for p, _, _ in lengths)
    completions = sorted([c for _, c, _ in lengths] + [r for _, _, r in lengths])
    return {"pairs": len(lengths), "tokens_per_pair": whole / len(lengths), "min_seq": min(seqs),
            "max_seq": max(seqs), "tokens": whole, "tokens_prompt_once": shared,
            "prompt_median": prompts[len(prompts) // 2], "completion_median": completions[len(completions) // 2],
            "prompt_share": sum(2 * p for p, _, _ in lengths) / whole}


def preftune_order(rows: list[dict], s: Settings) -> list[dict]:
    """The pairs arranged so that preftune's seeded sampler hands them out in ``rows`` order (TRL's order
    with its sequential sampler): preftune's position ``perm[j]`` gets ``rows[j]``."""
    from preftune.train.sampler import StepSampler

    sampler = StepSampler(len(rows), s.batch, s.grad_accum, 1, 0, s.seed)
    placed: list[dict | None] = [None] * len(rows)
    j = 0
    for step in range(s.steps):
        for micro in sampler.micro_batches(step):
            for i in micro:
                placed[i] = rows[j]
                j += 1
    if j != len(rows) or any(r is None for r in placed):
        raise RuntimeError("preftune's sampler does not visit every pair exactly once in one epoch")
    return placed  # type: ignore[return-value]
