"""Verifiable rewards: checked against a known answer, no model, no ``eval``.

Each takes TRL's keyword form (``completions=`` plus the prompt record's columns; a completion is a
string, or TRL's ``[{"role": "assistant", "content": ...}]`` for conversations) and returns one float
per completion, or None where the record carries no answer to check against:

- :func:`exact_answer` — 1.0 when the completion's final answer is a number equal to the record's
  ``answer`` (compared exactly as fractions: ``0.5`` = ``1/2`` = ``.50``), else 0.0. The final answer
  is the content of the last ``<answer>…</answer>`` tag when there is one, else the last number in the
  text (``"17 + 5 = 22"`` answers 22).
- :func:`tagged_exact_answer` — the same, but only an answer inside the tag counts: the format is part
  of the task.
- :func:`answer_format` — 1.0 when the completion ends with exactly one ``<answer>NUMBER</answer>``
  (anything may come before it, e.g. working), else 0.0.
- :func:`countdown` — 1.0 when the tagged answer is an arithmetic expression (``+ - * /``, parentheses,
  integers) that uses only the record's ``numbers``, each at most once, and equals its ``target``.

Expressions are read by :func:`evaluate_expression`, a recursive-descent parser over exact fractions:
arbitrary text can be checked without running it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

__all__ = ["BUILT_IN", "ExpressionError", "answer_format", "completion_text", "countdown", "evaluate_expression",
           "exact_answer",
           "final_answer", "parse_number", "tagged_answer", "tagged_exact_answer"]

_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
_NUMBER_IN_TEXT = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:/\d+)?(?![\w])")
_STRICT_END = re.compile(r"<answer>\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?\s*</answer>\s*$")
MAX_EXPRESSION_CHARS = 200
MAX_INTEGER_DIGITS = 12      # bounds the size of any fraction an expression can build


def completion_text(completion: Any) -> str:
    """A completion as text: a string, or the last message's content of a message list (TRL's form)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise ValueError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")


def tagged_answer(text: str) -> str | None:
    """The content of the last ``<answer>…</answer>`` in ``text`` (stripped), or None."""
    found = _TAG.findall(text)
    return found[-1].strip() if found else None


def parse_number(text: str) -> Fraction | None:
    """An integer, decimal or fraction (``-12``, ``3.50``, ``7/2``) as an exact Fraction; None otherwise."""
    text = text.strip().replace(" ", "")
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _answer_value(answer: Any) -> Fraction | None:
    if answer is None:
        return None
    value = parse_number(str(answer))
    if value is None:
        raise ValueError(f"answer {answer!r} is not a number")
    return value


def final_answer(text: str) -> str | None:
    """The last tagged answer, or else the last number in the text (None when there is neither)."""
    tagged = tagged_answer(text)
    if tagged is not None:
        return tagged
    numbers = _NUMBER_IN_TEXT.findall(text)
    return numbers[-1] if numbers else None


def _match(completions: Sequence[str], answer: Sequence[Any], extract) -> list[float | None]:
    out: list[float | None] = []
    for completion, expected in zip(completions, answer, strict=True):
        value = _answer_value(expected)
        if value is None:
            out.append(None)
            continue
        given = extract(completion_text(completion))
        out.append(1.0 if given is not None and parse_number(given) == value else 0.0)
    return out


def exact_answer(completions: Sequence[str], answer: Sequence[Any], **_: Any) -> list[float | None]:
    """1.0 when the final answer (:func:`final_answer`) equals ``answer`` as a number, 0.0 when not, None
    for a record without an answer."""
    return _match(completions, answer, final_answer)


def tagged_exact_answer(completions: Sequence[str], answer: Sequence[Any], **_: Any) -> list[float | None]:
    """1.0 when the last tagged answer equals ``answer`` as a number (an untagged answer scores 0.0)."""
    return _match(completions, answer, tagged_answer)


def answer_format(completions: Sequence[str], **_: Any) -> list[float]:
    """1.0 when the completion ends with one ``<answer>NUMBER</answer>`` and holds no other answer tag."""
    texts = [completion_text(c) for c in completions]
    return [1.0 if _STRICT_END.search(t) and t.count("<answer>") == 1 else 0.0 for t in texts]


# ----------------------------------------------------------------------------------------------------
# A tiny arithmetic parser (no eval): expr := term (('+'|'-') term)*, term := factor (('*'|'/') factor)*,
# factor := ('+'|'-') factor | INTEGER | '(' expr ')'.


class ExpressionError(ValueError):
    """Not an arithmetic expression this parser accepts (or a division by zero)."""


_TOKEN = re.compile(r"\s*(?:(\d+)|(.))")


def _tokens(text: str) -> list[str]:
    out = []
    for number, other in _TOKEN.findall(text):
        if number:
            if len(number) > MAX_INTEGER_DIGITS:
                raise ExpressionError(f"integer {number[:20]}… has more than {MAX_INTEGER_DIGITS} digits")
            out.append(number)
        elif other in "+-*/()":
            out.append(other)
        elif not other.isspace():
            raise ExpressionError(f"unexpected character {other!r}")
    return out


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.i = 0
        self.numbers: list[int] = []
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("the expression ends too early")
        self.i += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            right = self.factor()
            if op == "*":
                value = value * right
            elif right == 0:
                raise ExpressionError("division by zero")
            else:
                value = value / right
        return value

    def factor(self) -> Fraction:
        token = self.take()
        if token in ("+", "-"):
            self.depth += 1
            if self.depth > 50:
                raise ExpressionError("too many nested signs or parentheses")
            value = self.factor()
            self.depth -= 1
            return value if token == "+" else -value
        if token == "(":
            self.depth += 1
            if self.depth > 50:
                raise ExpressionError("too many nested signs or parentheses")
            value = self.expr()
            if self.take() != ")":
                raise ExpressionError("a '(' is not closed")
            self.depth -= 1
            return value
        if token.isdigit():
            self.numbers.append(int(token))
            return Fraction(int(token))
        raise ExpressionError(f"unexpected {token!r}")


def evaluate_expression(text: str) -> tuple[Fraction, list[int]]:
    """The exact value of an arithmetic expression and the integers it uses, in order; ExpressionError
    for anything else (letters, ``**``, an unbalanced parenthesis, division by zero, > 200 characters)."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"longer than {MAX_EXPRESSION_CHARS} characters")
    parser = _Parser(_tokens(text))
    if not parser.tokens:
        raise ExpressionError("empty expression")
    value = parser.expr()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r} after a complete expression")
    return value, parser.numbers


def countdown(completions: Sequence[str], numbers: Sequence[Sequence[int]], target: Sequence[Any],
              **_: Any) -> list[float | None]:
    """1.0 when the tagged expression uses only ``numbers`` (each at most once) and equals ``target``."""
    out: list[float | None] = []
    for completion, allowed, goal in zip(completions, numbers, target, strict=True):
        if allowed is None or goal is None:
            out.append(None)
            continue
        given = tagged_answer(completion_text(completion))
        if given is None:
            out.append(0.0)
            continue
        try:
            value, used = evaluate_expression(given)
        except ExpressionError:
            out.append(0.0)
            continue
        fits = not (Counter(used) - Counter(int(n) for n in allowed))
        out.append(1.0 if fits and value == _answer_value(goal) else 0.0)
    return out


BUILT_IN: dict[str, Callable[..., list[float | None]]] = {
    "exact_answer": exact_answer,
    "tagged_exact_answer": tagged_exact_answer,
    "answer_format": answer_format,
    "countdown": countdown,
}
