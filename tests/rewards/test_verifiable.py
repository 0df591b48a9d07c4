"""The verifiable rewards and the arithmetic parser they use: values derived by hand."""

from fractions import Fraction

import pytest

from preftune.rewards.verifiable import (
    ExpressionError,
    answer_format,
    countdown,
    evaluate_expression,
    exact_answer,
    final_answer,
    parse_number,
    tagged_exact_answer,
)


@pytest.mark.parametrize("text, value", [
    ("42", Fraction(42)), ("-7", Fraction(-7)), ("3.50", Fraction(7, 2)), (".5", Fraction(1, 2)),
    ("7/2", Fraction(7, 2)), (" 12 ", Fraction(12)), ("1,000", None), ("abc", None), ("1/0", None), ("", None),
])
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_the_final_answer_is_the_last_tag_or_else_the_last_number():
    assert final_answer("17 + 5 = 22") == "22"
    assert final_answer("so <answer>3</answer> or <answer> 4 </answer>, not 9") == "4"
    assert final_answer("version v2.0 says 3.5, not 1e5") == "3.5"   # numbers glued to letters are not answers
    assert final_answer("no number here") is None


def test_exact_answer_compares_numbers_exactly_and_skips_records_without_an_answer():
    completions = ["17 + 5 = 22", "<answer>0.5</answer>", "<answer>1/3</answer>", "22.0", "21", "nothing", "x"]
    answers = ["22", "1/2", "0.333", 22, "22", "22", None]
    assert exact_answer(completions, answers) == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, None]
    assert tagged_exact_answer(completions[:2], answers[:2]) == [0.0, 1.0]   # untagged answers do not count
    with pytest.raises(ValueError, match="answer 'twelve' is not a number"):
        exact_answer(["12"], ["twelve"])


def test_answer_format_wants_one_tagged_number_at_the_end():
    assert answer_format(["<answer>12</answer>", "working... <answer> -3 </answer>\n", "<answer>12</answer> and more",
                          "<answer>x</answer>", "<answer>1</answer><answer>2</answer>", "12"]) == \
        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("text, value, numbers", [
    ("1 + 2 * 3", 7, [1, 2, 3]), ("(1 + 2) * 3", 9, [1, 2, 3]), ("8 / 4 / 2", 1, [8, 4, 2]),
    ("7 - 2 - 1", 4, [7, 2, 1]), ("-(3 - 5)", 2, [3, 5]), ("2 * -3", -6, [2, 3]), ("1 / 3 + 1 / 6", Fraction(1, 2),
                                                                                  [1, 3, 1, 6]),
])
def test_the_parser_follows_precedence_and_left_associativity(text, value, numbers):
    assert evaluate_expression(text) == (Fraction(value), numbers)


@pytest.mark.parametrize("text", ["__import__('os').system('true')", "2 ** 3", "(1 + 2", "1 +", "", "4 / (2 - 2)",
                                  "1" * 13, "(" * 60 + "1" + ")" * 60, "1 " * 150, "3 2"])
def test_anything_else_is_an_expression_error_never_run(text):
    with pytest.raises(ExpressionError):
        evaluate_expression(text)


def test_countdown_uses_the_numbers_at_most_once_and_hits_the_target():
    completions = ["<answer>(3 + 5) * 2</answer>", "<answer>2*(5+3)</answer>", "<answer>3 * 5 + 1</answer>",
                   "<answer>(3 + 5) * 2</answer>", "(3 + 5) * 2", "<answer>import os</answer>", "<answer>16</answer>"]
    numbers = [[3, 5, 2]] * 7
    targets = [16, 16, 16, 17, 16, 16, 16]   # 3 * 5 + 1 uses a 1 it was not given
    assert countdown(completions, numbers, targets) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert countdown(["<answer>2+2</answer>"], [None], [4]) == [None]
