"""Fast tests of the IMDb reader and the DPO preference builder (reads the packaged CSV, ~2 s)."""

from __future__ import annotations

import json
import re

import pytest

from preftune.assets import imdb
from preftune.assets.cache import AssetMissingError, package_file
from preftune.assets.imdb import (
    PROMPTS,
    build_imdb_preferences,
    clean_text,
    load_imdb_reviews,
    trim_words,
    write_jsonl,
)

try:
    imdb.imdb_csv_path()
except AssetMissingError as e:  # pragma: no cover - depends on the environment
    pytest.skip(str(e), allow_module_level=True)


@pytest.fixture(scope="module")
def reviews():
    return load_imdb_reviews()


@pytest.fixture(scope="module")
def split():
    return build_imdb_preferences(300, 60, seed=0, max_words=48)


def test_reviews_columns_and_counts(reviews):
    assert len(reviews) == 33530
    imdb_rows = [r for r in reviews if r.source == "imdb"]
    assert len(imdb_rows) == 25000
    assert {r.source for r in reviews} == {"imdb", "rt"}
    assert {r.label for r in reviews} == {0, 1}
    assert sum(r.label for r in imdb_rows) == 12500
    assert [r.row for r in reviews[:5]] == [0, 1, 2, 3, 4]


def test_reviews_are_cleaned(reviews):
    bad = re.compile(r"<br|\s\s|^\s|\s$|[\x80-\x9f\n\t]", re.IGNORECASE)
    assert not [r.row for r in reviews if bad.search(r.text)]


def test_clean_text():
    assert clean_text("Great.<br /><br />Really\x96 great<BR/>  film\x85 <i>yes</i>") == (
        "Great. Really\u2013 great film\u2026 yes"
    )


def test_trim_words():
    assert trim_words("one two three", 5) == "one two three"
    text = "A b c d e. F g h i j k l m n o p."
    assert trim_words(text, 8) == "A b c d e."  # sentence end in the second half
    assert trim_words("A. b c d e f g h i j", 8) == "A. b c d e f g h"  # too early: word cut


def test_rows_shape_and_word_limit(split):
    train, evals = split
    assert len(train) == 300 and len(evals) == 60
    for row in train + evals:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["prompt"] in PROMPTS
        for key in ("chosen", "rejected"):
            n = len(row[key].split())
            assert imdb.MIN_WORDS // 2 <= n <= 48
            assert "<br" not in row[key]
        assert row["chosen"] != row["rejected"]


def test_word_limit_small():
    train, evals = build_imdb_preferences(50, 10, seed=3, max_words=12)
    assert all(len(r[k].split()) <= 12 for r in train + evals for k in ("chosen", "rejected"))


def test_chosen_positive_rejected_negative(reviews, split):
    train, _ = split
    pos = {trim_words(r.text, 48) for r in reviews if r.source == "imdb" and r.label == 1}
    neg = {trim_words(r.text, 48) for r in reviews if r.source == "imdb" and r.label == 0}
    assert all(r["chosen"] in pos and r["rejected"] in neg for r in train)


def test_deterministic_and_seed_dependent(split):
    assert build_imdb_preferences(300, 60, seed=0, max_words=48) == split
    other = build_imdb_preferences(300, 60, seed=1, max_words=48)
    assert other != split


def test_disjoint_split(split):
    train, evals = split
    train_texts = {r[k] for r in train for k in ("chosen", "rejected")}
    eval_texts = {r[k] for r in evals for k in ("chosen", "rejected")}
    assert not train_texts & eval_texts
    # each review is used once
    assert len(train_texts) == 2 * len(train) and len(eval_texts) == 2 * len(evals)


def test_prompt_variety(split):
    train, _ = split
    assert len({r["prompt"] for r in train}) == len(PROMPTS) >= 4


def test_too_many_pairs_and_bad_args():
    with pytest.raises(ValueError, match="only"):
        build_imdb_preferences(20000, 0)
    with pytest.raises(ValueError):
        build_imdb_preferences(-1, 0)
    with pytest.raises(ValueError):
        build_imdb_preferences(1, 1, max_words=0)


def test_write_jsonl(tmp_path, split):
    rows = split[1][:5]
    path = write_jsonl(rows, tmp_path / "sub" / "eval.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows


def test_missing_package_message():
    with pytest.raises(AssetMissingError, match="pip install --no-deps nope"):
        package_file("no_such_pkg_xyz", "no-such-pkg-xyz", "data.csv", "pip install --no-deps nope")
