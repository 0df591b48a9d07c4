"""The offline sentiment reward: trained on a small IMDb subset here (a few seconds), cached, sensible."""

from __future__ import annotations

import math

import pytest

from preftune.assets import imdb, sentiment
from preftune.assets.cache import AssetMissingError

try:
    imdb.imdb_csv_path()
except AssetMissingError as e:  # pragma: no cover - depends on the environment
    pytest.skip(str(e), allow_module_level=True)

POSITIVE = "A wonderful, moving film with a brilliant cast. I loved every minute and would watch it again."
NEGATIVE = "A boring, awful mess. The acting was terrible and the plot made no sense. A waste of time."


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A classifier on 1,000 reviews (800 train / 200 held out), trained once for this module."""
    cache = tmp_path_factory.mktemp("sentiment-cache")
    logs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFTUNE_CACHE", str(cache))
        clf = sentiment.load_classifier(max_reviews=1000, log=logs.append)
    return clf, logs, cache


@pytest.fixture
def small(trained, monkeypatch):
    """The module's classifier as ``positive_probability``'s default, and this module's cache."""
    clf, logs, cache = trained
    monkeypatch.setattr(sentiment, "_default", lambda: clf)
    monkeypatch.setenv("PREFTUNE_CACHE", str(cache))
    return clf, logs


def test_trains_reports_held_out_accuracy_and_caches(small):
    clf, logs = small
    assert (clf.num_train, clf.num_held_out) == (800, 200)
    assert clf.held_out_accuracy > 0.75            # ≈ 0.90 with every review; fewer reviews, less
    assert "held-out accuracy" in logs[0] and "trained" in logs[0]
    assert clf.path is not None and clf.path.is_file() and clf.path.parent.name == "sentiment"
    again: list[str] = []
    hit = sentiment.load_classifier(max_reviews=1000, log=again.append)
    assert again[0].startswith("sentiment: cache hit")
    assert hit.held_out_accuracy == clf.held_out_accuracy
    assert hit.probability([POSITIVE, NEGATIVE]) == pytest.approx(clf.probability([POSITIVE, NEGATIVE]))


def test_other_settings_miss_the_cache_and_cache_false_writes_nothing(small):
    clf, _ = small
    logs: list[str] = []
    other = sentiment.load_classifier(max_reviews=200, seed=1, cache=False, log=logs.append)
    assert "trained" in logs[0] and other.path is None
    assert sorted(p.name for p in clf.path.parent.iterdir()) == [clf.path.name, f"{clf.path.name}.sha256"]
    assert sentiment._key(200, 1) != sentiment._key(1000, 0) != sentiment._key(1000, 1)


def test_positive_text_scores_above_negative_text(small):
    prompts = ["Write a review.", "Write a review."]
    p_pos, p_neg = sentiment.positive_probability(prompts, [POSITIVE, NEGATIVE])
    assert 0 <= p_neg < 0.5 < p_pos <= 1
    l_pos, l_neg = sentiment.positive_logit(prompts, [POSITIVE, NEGATIVE])
    assert l_neg < 0 < l_pos
    # The logit is the log-odds of the probability.
    assert l_pos == pytest.approx(math.log(p_pos / (1 - p_pos)), abs=1e-6)
    assert sentiment.positive_probability([], []) == []


def test_rejects_too_few_reviews():
    with pytest.raises(ValueError, match="max_reviews"):
        sentiment.load_classifier(max_reviews=5)


def test_the_cache_holds_numbers_not_pickles_and_reloads_to_the_same_scores(small, tmp_path):
    clf, _ = small
    assert clf.path.suffix == ".npz"
    import numpy as np

    with np.load(clf.path, allow_pickle=False) as arrays:       # loads without allowing a single pickle
        assert set(arrays.files) == {"meta", "idf", "coef", "intercept"}
    pipeline, info = sentiment.load_pipeline(clf.path)
    texts = [POSITIVE, NEGATIVE, "an unseen word soup", ""]
    assert (pipeline.predict_proba(texts) == clf.pipeline.predict_proba(texts)).all()       # exactly
    assert info["held_out_accuracy"] == clf.held_out_accuracy


def test_a_planted_pickle_in_the_cache_runs_nothing_and_is_retrained(small, tmp_path, monkeypatch):
    # Old behaviour: joblib.load, i.e. unpickling whatever file sits at the cache path.
    from preftune.assets.cache import write_verified
    from tests.conftest import pickle_payload

    clf, _ = small
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "cache" / "sentiment" / clf.path.name
    marker = tmp_path / "payload-ran"
    write_verified(path, lambda tmp: tmp.write_bytes(pickle_payload(marker)))   # with a matching checksum
    logs: list[str] = []
    again = sentiment.load_classifier(max_reviews=1000, log=logs.append)
    assert not marker.exists()
    assert f"the cache file {path} is damaged (it cannot be read" in logs[0] and "trained" in logs[1]
    assert again.probability([POSITIVE]) == pytest.approx(clf.probability([POSITIVE]))
