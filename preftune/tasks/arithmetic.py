"""Arithmetic problems with known answers, generated from a seed: an offline task for online RL.

    python -m preftune.tasks.arithmetic --out data/arith                     # addition, answer in tags
    python -m preftune.tasks.arithmetic --out data/arith --style plain --max-operand 20 --train 240
    python -m preftune.tasks.arithmetic --out data/countdown --task countdown

writes ``train.jsonl`` and ``eval.jsonl`` (held out: no problem of one appears in the other), one
record per line: ``prompt`` and ``answer`` (the number, as a string); countdown records add
``numbers`` and ``target``. ``--style tag`` (default) asks for the answer inside
``<answer></answer>`` (the prompt is a string the chat template wraps as a user turn); ``--style
plain`` asks the bare question after a one-line system message ("Answer briefly."), the form a small
model such as SmolLM2-135M-Instruct answers (``"17 + 5 = 22"``) — it never writes the tags unprompted
by examples. The built-in rewards check the answers (:mod:`preftune.rewards.verifiable`:
``exact_answer`` reads the tag or else the last number, ``tagged_exact_answer`` and ``answer_format``
insist on the tag, ``countdown`` checks the expression).

- ``addition``: a + b with operands drawn uniformly from [min_operand, max_operand] (default 0–99:
  single- and two-digit addition);
- ``countdown``: reach ``target`` from 3 given numbers with + − × ÷, each number at most once; every
  target is reachable (it is built from the numbers).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from pathlib import Path

__all__ = ["addition_problems", "countdown_problems", "split_problems", "write_task"]

ADDITION_PROMPT = "What is {a} + {b}? Give only the final number inside <answer></answer> tags."
PLAIN_ADDITION_PROMPT = "What is {a} + {b}?"
PLAIN_SYSTEM = "Answer briefly."
COUNTDOWN_PROMPT = ("Using the numbers {numbers}, each at most once, and + - * / with parentheses, write an "
                    "expression equal to {target}. Give only the expression inside <answer></answer> tags.")


def addition_problems(rng: random.Random, min_operand: int, max_operand: int, style: str = "tag") -> Iterator[dict]:
    while True:
        a, b = rng.randint(min_operand, max_operand), rng.randint(min_operand, max_operand)
        if style == "tag":
            prompt = ADDITION_PROMPT.format(a=a, b=b)
        else:
            prompt = [{"role": "system", "content": PLAIN_SYSTEM},
                      {"role": "user", "content": PLAIN_ADDITION_PROMPT.format(a=a, b=b)}]
        yield {"prompt": prompt, "answer": str(a + b)}


def countdown_problems(rng: random.Random, min_operand: int, max_operand: int, style: str = "tag") -> Iterator[dict]:
    while True:
        numbers = [rng.randint(min_operand, max_operand) for _ in range(3)]
        x, y, z = rng.sample(numbers, 3)
        inner = x + y if rng.random() < 0.5 else x * y
        target = inner + z if rng.random() < 0.5 else inner - z
        if target <= 0:
            continue
        yield {"prompt": COUNTDOWN_PROMPT.format(numbers=", ".join(map(str, numbers)), target=target),
               "answer": str(target), "numbers": numbers, "target": target}


def split_problems(problems: Iterator[dict], n_train: int, n_eval: int, max_tries: int = 1_000_000
                   ) -> tuple[list[dict], list[dict]]:
    """``n_train`` + ``n_eval`` distinct problems (by prompt) from ``problems``; the first ``n_eval`` are held out."""
    seen: set[str] = set()
    unique: list[dict] = []
    for _, problem in zip(range(max_tries), problems):
        key = json.dumps(problem["prompt"])
        if key not in seen:
            seen.add(key)
            unique.append(problem)
            if len(unique) == n_train + n_eval:
                return unique[n_eval:], unique[:n_eval]
    raise ValueError(f"only {len(unique)} distinct problems exist in this range; asked for {n_train} + {n_eval}")


def write_task(out: str | Path, task: str = "addition", n_train: int = 2000, n_eval: int = 200, seed: int = 0,
               min_operand: int | None = None, max_operand: int = 99, style: str = "tag") -> tuple[Path, Path]:
    """Write the two files; ``min_operand`` defaults to 0 for addition and 1 for countdown."""
    makers = {"addition": addition_problems, "countdown": countdown_problems}
    if task not in makers:
        raise ValueError(f"task must be one of {', '.join(makers)}, got {task!r}")
    if style not in ("tag", "plain") or (task == "countdown" and style != "tag"):
        raise ValueError(f"style must be tag or plain (plain for addition only), got {style!r}")
    if min_operand is None:
        min_operand = 0 if task == "addition" else 1
    if not 0 <= min_operand <= max_operand:
        raise ValueError(f"need 0 <= min_operand <= max_operand, got {min_operand}, {max_operand}")
    train, held_out = split_problems(makers[task](random.Random(seed), min_operand, max_operand, style), n_train,
                                     n_eval)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "eval.jsonl"
    for path, rows in zip(paths, (train, held_out)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m preftune.tasks.arithmetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for train.jsonl and eval.jsonl")
    parser.add_argument("--task", default="addition", choices=("addition", "countdown"))
    parser.add_argument("--style", default="tag", choices=("tag", "plain"),
                        help="tag: answer inside <answer></answer>; plain: the bare question (addition)")
    parser.add_argument("--train", type=int, default=2000, help="training problems (default 2000)")
    parser.add_argument("--eval", type=int, default=200, help="held-out problems (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-operand", type=int, default=None, help="default 0 (addition), 1 (countdown)")
    parser.add_argument("--max-operand", type=int, default=99)
    args = parser.parse_args(argv)
    train, held_out = write_task(args.out, args.task, args.train, args.eval, args.seed, args.min_operand,
                                 args.max_operand, args.style)
    print(f"wrote {train} ({args.train} problems) and {held_out} ({args.eval} held out)")


if __name__ == "__main__":
    main()
