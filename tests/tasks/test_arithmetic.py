"""The offline arithmetic task: seeded, held-out problems disjoint from training, answers right."""

import json
import subprocess
import sys
from fractions import Fraction

from preftune.rewards.verifiable import countdown, evaluate_expression
from preftune.tasks.arithmetic import write_task


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_addition_files_are_seeded_disjoint_and_correct(tmp_path):
    a = write_task(tmp_path / "a", n_train=300, n_eval=50, seed=3)
    b = write_task(tmp_path / "b", n_train=300, n_eval=50, seed=3)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    train, held_out = read(a[0]), read(a[1])
    assert len(train) == 300 and len(held_out) == 50
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held_out}
    for r in train + held_out:
        x, y = (int(t) for t in r["prompt"].split("What is ")[1].split("?")[0].split(" + "))
        assert 0 <= x <= 99 and 0 <= y <= 99 and r["answer"] == str(x + y) and "<answer>" in r["prompt"]
    assert read(write_task(tmp_path / "c", n_train=300, n_eval=50, seed=4)[0]) != train


def test_plain_style_asks_the_bare_question_after_a_system_line(tmp_path):
    train, _ = (read(p) for p in write_task(tmp_path, n_train=20, n_eval=5, max_operand=9, style="plain"))
    system, user = train[0]["prompt"]
    assert system["role"] == "system" and user["role"] == "user" and "<answer>" not in user["content"]


def test_countdown_targets_are_reachable_from_their_numbers(tmp_path):
    train, held_out = (read(p) for p in write_task(tmp_path, task="countdown", n_train=100, n_eval=20, max_operand=12))
    for r in train + held_out:
        assert r["target"] > 0 and r["answer"] == str(r["target"]) and all(1 <= n <= 12 for n in r["numbers"])
        x, y, z = r["numbers"]
        reachable = {f"({a} {o1} {b}) {o2} {c}" for a, b, c in [(x, y, z), (x, z, y), (y, z, x)]
                     for o1 in "+*" for o2 in "+-"}
        assert any(evaluate_expression(e)[0] == Fraction(r["target"]) for e in reachable)
        assert countdown([f"<answer>{e}</answer>" for e in reachable], [r["numbers"]] * len(reachable),
                         [r["target"]] * len(reachable)).count(1.0) >= 1


def test_the_command_line_writes_both_files(tmp_path):
    out = subprocess.run([sys.executable, "-m", "preftune.tasks.arithmetic", "--out", str(tmp_path), "--train", "10",
                          "--eval", "4"], capture_output=True, text=True, check=True)
    assert "10 problems" in out.stdout and len(read(tmp_path / "eval.jsonl")) == 4
