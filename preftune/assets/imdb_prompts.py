"""Prompts for the controlled-sentiment task: the first words of IMDb reviews (DPO paper, §6.1).

The policy continues a review prefix and a sentiment classifier scores the continuation, so a
higher mean reward means the policy learned to steer any opening towards a positive review. Half
the prefixes come from positive reviews and half from negative ones (a negative opening is the
interesting case), each review is used once, and the held-out prompts share no review with the
training prompts.

    python -m preftune.assets.imdb_prompts --out data/imdb_prompts      # train.jsonl, eval.jsonl
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from preftune.assets.imdb import MIN_WORDS, load_imdb_reviews, write_jsonl


def build_imdb_prompts(n_train: int, n_eval: int, *, words: int = 8, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``{"prompt": <first ``words`` words of a review>}`` rows, balanced over the review labels."""
    if words < 1 or n_train < 0 or n_eval < 0:
        raise ValueError(f"need words >= 1 and non-negative counts, got {words}, {n_train}, {n_eval}")
    by_label: dict[int, dict[str, None]] = {0: {}, 1: {}}
    for review in load_imdb_reviews():
        if review.source == "imdb" and len(review.text.split()) >= max(words + 4, MIN_WORDS):
            by_label[review.label].setdefault(" ".join(review.text.split()[:words]), None)
    need = n_train + n_eval
    rng = random.Random(seed)
    pools = []
    for label in (0, 1):
        prefixes = list(by_label[label])
        rng.shuffle(prefixes)
        pools.append(prefixes)
    per_label = -(-need // 2)
    if per_label > min(len(p) for p in pools):
        raise ValueError(f"asked for {need} prompts, only {2 * min(len(p) for p in pools)} distinct prefixes")
    seen: set[str] = set()
    rows = []
    for pair in zip(pools[0][:per_label], pools[1][:per_label]):
        for prefix in pair:
            if prefix not in seen:  # a prefix shared by a positive and a negative review is kept once
                seen.add(prefix)
                rows.append({"prompt": prefix})
    if len(rows) < need:
        raise ValueError(f"asked for {need} prompts, only {len(rows)} distinct prefixes")
    return rows[:n_train], rows[n_train:need]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/imdb_prompts", help="folder for train.jsonl and eval.jsonl")
    parser.add_argument("--train", type=int, default=1024, help="training prompts")
    parser.add_argument("--eval", type=int, default=64, help="held-out prompts")
    parser.add_argument("--words", type=int, default=8, help="words of the review kept as the prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train, held_out = build_imdb_prompts(args.train, args.eval, words=args.words, seed=args.seed)
    out = Path(args.out)
    print(write_jsonl(train, out / "train.jsonl"), len(train))
    print(write_jsonl(held_out, out / "eval.jsonl"), len(held_out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
