"""benchmarks/prefix_sharing.py on the tiny model: both modes run, alternate settings, and find the shared and
unshared outputs equal."""

from __future__ import annotations

import re

from tests.benchmarks._load import load_benchmark

bench = load_benchmark("prefix_sharing")


def test_groups_have_chat_shaped_lengths_and_are_deterministic():
    a = bench.make_groups(3, 4, 128, 96, seed=1)
    assert a == bench.make_groups(3, 4, 128, 96, seed=1)
    assert [len(cs) for _, cs in a] == [4, 4, 4]
    assert all(len(p) + len(c) <= 128 for p, cs in a for c in cs)


def _largest_difference(text: str) -> float:
    return float(re.search(r"Largest difference between the two settings' outputs: ([0-9.e+-]+)\.", text).group(1))


def test_reference_mode(capsys):
    assert bench.main(["reference", "--model", "tiny", "--pairs", "6", "--batch", "3", "--max-length", "96",
                       "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| reference precompute |" in out
    assert _largest_difference(out) < 1e-4


def test_groups_mode(capsys):
    assert bench.main(["groups", "--model", "tiny", "--prompts", "3", "--group", "3", "--batch", "2",
                       "--max-length", "96", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for phase in ("policy log-probs + values (no grad)", "reference log-probs (no grad)",
                  "update: policy forward + backward"):
        assert f"| {phase} |" in out
    assert _largest_difference(out) < 1e-4
