import pytest

from preftune.assets.imdb_prompts import build_imdb_prompts, main


def test_prompts_are_review_prefixes_disjoint_and_deterministic(tmp_path):
    train, held_out = build_imdb_prompts(40, 10, words=6, seed=3)
    assert len(train) == 40 and len(held_out) == 10
    assert all(len(r["prompt"].split()) == 6 for r in train + held_out)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    assert build_imdb_prompts(40, 10, words=6, seed=3) == (train, held_out)
    assert build_imdb_prompts(40, 10, words=6, seed=4) != (train, held_out)
    with pytest.raises(ValueError, match="words >= 1"):
        build_imdb_prompts(1, 1, words=0)
    assert main(["--out", str(tmp_path), "--train", "4", "--eval", "2"]) == 0
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 4
