"""The ground-truth reward r* of the sentiment experiment: P(positive | text) from a classifier trained here.

TF-IDF over word 1–2-grams + logistic regression (the settings of :mod:`preftune.assets.sentiment`), but
trained only on the reviews the experiment's split leaves for it (none of the prompt or SFT reviews), on
windows of ``window_words`` words of each review (completions are that short, and short windows classify
better when trained on short windows: 0.78 vs 0.76 on 40-word snippets here). Measured on held-out
classifier reviews (their windows) and on the 8,530 Rotten Tomatoes one-sentence reviews.

As an RL reward (``reward=preftune.experiments.rstar:positive_probability``) the classifier is the one at
``$PREFTUNE_SENTIMENT_RSTAR`` (the experiment sets it before its PPO runs), so PPO-GT optimises exactly the
r* every point is measured with.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from preftune.assets.cache import read_verified
from preftune.assets.imdb import load_imdb_reviews
from preftune.assets.sentiment import SETTINGS as SENTIMENT_SETTINGS
from preftune.assets.sentiment import load_pipeline, save_pipeline
from preftune.errors import ConfigError

ENV = "PREFTUNE_SENTIMENT_RSTAR"
HELD_OUT_FRACTION = 0.1


def windows(text: str, size: int) -> list[str]:
    """Consecutive windows of ``size`` words (the last may be shorter; a tail under size/2 joins none)."""
    words = text.split()
    if len(words) <= size:
        return [" ".join(words)]
    return [" ".join(words[i:i + size]) for i in range(0, len(words) - size // 2, size)]


def train_classifier(rows: Sequence[int], *, window_words: int, max_reviews: int | None, seed: int,
                     log: Callable[[str], object] = print) -> tuple[Any, dict[str, Any]]:
    """Fit on the reviews at CSV ``rows``; returns the pipeline and its measurements."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    by_row = {r.row: r for r in load_imdb_reviews()}
    reviews = [by_row[i] for i in rows]
    random.Random(seed).shuffle(reviews)
    if max_reviews is not None:
        reviews = reviews[:max_reviews]
    n_held = max(2, int(round(len(reviews) * HELD_OUT_FRACTION)))
    held, train = reviews[:n_held], reviews[n_held:]
    x, y = [], []
    for r in train:
        for w in windows(r.text, window_words):
            x.append(w)
            y.append(r.label)
    if len(set(y)) < 2:
        raise ValueError(f"need reviews of both labels to train r*, got {len(train)} reviews")
    s = SENTIMENT_SETTINGS
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=tuple(s["ngram_range"]), min_df=s["min_df"], max_features=s["max_features"],
                        sublinear_tf=s["sublinear_tf"]),
        LogisticRegression(C=s["C"], max_iter=1000),
    )
    started = time.perf_counter()
    pipeline.fit(x, y)
    hx = [(w, r.label) for r in held for w in windows(r.text, window_words)]
    rt = [r for r in by_row.values() if r.source == "rt"]
    metrics = {
        "train_reviews": len(train), "train_windows": len(x), "window_words": window_words,
        "held_out_reviews": len(held),
        "held_out_window_accuracy": float(pipeline.score([w for w, _ in hx], [lab for _, lab in hx])),
        "held_out_review_accuracy": float(pipeline.score([r.text for r in held], [r.label for r in held])),
        "rotten_tomatoes_rows": len(rt),
        "rotten_tomatoes_accuracy": float(pipeline.score([r.text for r in rt], [r.label for r in rt])),
        "fit_seconds": time.perf_counter() - started,
    }
    log(f"r*: TF-IDF + logistic regression on {len(x)} windows of {len(train)} IMDb reviews "
        f"({metrics['fit_seconds']:.1f}s); accuracy {metrics['rotten_tomatoes_accuracy']:.3f} on "
        f"{len(rt)} Rotten Tomatoes rows, {metrics['held_out_window_accuracy']:.3f} on held-out "
        f"{window_words}-word windows, {metrics['held_out_review_accuracy']:.3f} on held-out reviews")
    return pipeline, metrics


def save(pipeline: Any, path: Path, include_prompt: bool) -> None:
    """The classifier as numbers + JSON with its checksum (``preftune.assets.sentiment.save_pipeline``)."""
    if not save_pipeline(pipeline, path, {"include_prompt": include_prompt}):
        raise OSError(f"could not write the r* classifier {path} (see the warning above)")


@functools.lru_cache(maxsize=4)
def _load(path: str) -> dict[str, Any]:
    problems: list[str] = []
    saved = read_verified(Path(path), load_pipeline, "r* classifier", problems.append)
    if saved is None:
        raise ConfigError(f"${ENV} = {path}: {problems[0] if problems else 'missing'}; run the r* stage of "
                          "`preftune experiment sentiment` again (delete its rstar/ folder)")
    pipeline, info = saved
    return {"pipeline": pipeline, "include_prompt": info["include_prompt"]}


def _classifier() -> dict[str, Any]:
    path = os.environ.get(ENV)
    if not path or not Path(path).is_file():
        raise ConfigError(f"preftune.experiments.rstar needs ${ENV} = the classifier file written by "
                          f"`preftune experiment sentiment` (<output_dir>/rstar/classifier.npz); got {path!r}")
    return _load(str(Path(path).resolve()))


def positive_probability(prompts: Sequence[Any], completions: Sequence[str]) -> list[float]:
    """r*(x, y) = P(positive | y) (or | x + y when the experiment says so), in [0, 1]."""
    saved = _classifier()
    texts = list(completions)
    if saved["include_prompt"]:
        texts = [f"{p}{c}" if isinstance(p, str) else c for p, c in zip(prompts, completions)]
    if not texts:
        return []
    return [float(p) for p in saved["pipeline"].predict_proba(texts)[:, 1]]
