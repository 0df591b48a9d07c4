"""Ranked lists for listwise (Plackett–Luce) DPO, step by step: render, tokenize, collate, build.

CharTokenizer gives one id per character (its code point; '<s>' = 1, '</s>' = 2), so
'a' = 97, 'b' = 98, ... and every expected tuple below can be checked with ord().
"""

from __future__ import annotations

import copy
import csv
import json
import math
from collections import Counter

import pytest
import torch

from preftune.data.collate import RankingBatch, collate_rankings
from preftune.data.dataset import BuiltDataset, DataSettings, build_ranking_dataset
from preftune.data.load import Record, load_records
from preftune.data.render.ranking import RankingText, render_ranking
from preftune.data.tokenize import (
    TokenizedCompletion,
    TokenizedPreference,
    TokenizedRanking,
    TokenizedUnpaired,
    tokenize_ranking,
)
from preftune.errors import DataError, SkipExample
from preftune.losses.listwise import plackett_luce_nll

from .conftest import CharTokenizer

CHAR = CharTokenizer(bos=False)
NO_LIMIT = {"max_length": None, "max_prompt_length": None}
# Written out by hand from preftune.testing.CHATML_TEMPLATE.
HI_PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
F, T = False, True


def rec(**fields):
    return Record(fields, "dataset[7]")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- render -------------------------------------------------------------------------------------


def test_render_without_template_keeps_order_and_strings(plain_tok):
    out = render_ranking(rec(prompt="Q", completions=["best", " mid", "worst"]), plain_tok)
    assert out == RankingText("Q", ("best", " mid", "worst"), "dataset[7]")


def test_render_with_the_chat_template(chat_tok):
    out = render_ranking(rec(prompt="hi", completions=["yes", "maybe", "no"]), chat_tok)
    assert out == RankingText(HI_PROMPT, ("yes<|im_end|>", "maybe<|im_end|>", "no<|im_end|>"), "dataset[7]")
    mixed = rec(prompt=[user("hi")], completions=[[assistant("yes")], "no"])
    assert render_ranking(mixed, chat_tok) == RankingText(HI_PROMPT, ("yes<|im_end|>", "no<|im_end|>"), "dataset[7]")


@pytest.mark.parametrize(
    "scores, expected",
    [
        ([1, 3, 2], ("b", "c", "a")),
        ([0.5, -1, 2.25], ("c", "a", "b")),
        ([3, 2, 1], ("a", "b", "c")),
        ([-math.inf, 0, math.inf], ("c", "b", "a")),
    ],
)
def test_scores_order_the_completions_best_first(scores, expected, plain_tok):
    out = render_ranking(rec(prompt="p", completions=["a", "b", "c"], scores=scores), plain_tok)
    assert out.completions == expected


def test_null_scores_mean_no_scores(plain_tok):
    out = render_ranking(rec(prompt="p", completions=["a", "b"], scores=None), plain_tok)
    assert out.completions == ("a", "b")


@pytest.mark.parametrize("scores", [[1, 2, 1], [0, 0.0, 5], [2.5, 2.5, 2.5]])
def test_tied_scores_are_skipped(scores, plain_tok):
    with pytest.raises(SkipExample) as err:
        render_ranking(rec(prompt="p", completions=["a", "b", "c"], scores=scores), plain_tok)
    assert (err.value.reason, err.value.origin) == ("tied scores in a ranking", "dataset[7]")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt": "p"}, "missing field 'completions'"),
        ({"prompt": "p", "completions": None}, "missing field 'completions' (it is null)"),
        ({"completions": ["a", "b"]}, "missing field 'prompt'"),
        ({"prompt": "p", "completions": "a"}, "field 'completions' must be a list, got str"),
        ({"prompt": "p", "completions": {"a": 1}}, "field 'completions' must be a list, got dict"),
        ({"prompt": "p", "completions": []}, "field 'completions' needs at least 2 completions to rank, got 0"),
        ({"prompt": "p", "completions": ["a"]}, "field 'completions' needs at least 2 completions to rank, got 1"),
        ({"prompt": "p", "completions": ["a", "b", ""]}, "field 'completions[2]' is empty"),
        (
            {"prompt": "p", "completions": ["a", 5]},
            "field 'completions[1]' must be a string or a list of messages, got int",
        ),
        ({"prompt": "p", "completions": ["a", None]}, "missing field 'completions[1]' (it is null)"),
        ({"prompt": "p", "completions": ["a", []]}, "field 'completions[1]' is an empty list of messages"),
        (
            {"prompt": "p", "completions": ["a", "b"], "scores": [1]},
            "field 'scores' has 1 scores but 'completions' has 2 completions",
        ),
        ({"prompt": "p", "completions": ["a", "b"], "scores": 3}, "field 'scores' must be a list, got int"),
        (
            {"prompt": "p", "completions": ["a", "b"], "scores": [1, "2"]},
            "field 'scores[1]' must be a number, got '2'",
        ),
        (
            {"prompt": "p", "completions": ["a", "b"], "scores": [1, float("nan")]},
            "field 'scores[1]' must be a number, got nan",
        ),
        (
            {"prompt": "p", "completions": ["a", "b"], "scores": [True, 0]},
            "field 'scores[0]' must be a number, got True",
        ),
        (
            {"prompt": "p", "completions": ["a", "b"], "scores": [None, 0]},
            "field 'scores[0]' must be a number, got None",
        ),
    ],
)
def test_field_errors_name_origin_and_field(fields, message, plain_tok):
    with pytest.raises(DataError) as err:
        render_ranking(rec(**fields), plain_tok)
    assert str(err.value) == f"dataset[7]: {message}"


def test_malformed_data_is_an_error_even_when_scores_tie(plain_tok):
    with pytest.raises(DataError, match=r"field 'completions\[1\]' is empty"):
        render_ranking(rec(prompt="p", completions=["a", ""], scores=[1, 1]), plain_tok)


def test_messages_need_a_template(plain_tok, chat_tok):
    record = rec(prompt="hi", completions=["a", [assistant("b")]])
    for tok, flag in ((plain_tok, None), (chat_tok, False)):
        with pytest.raises(DataError) as err:
            render_ranking(record, tok, use_chat_template=flag)
        assert str(err.value).startswith(
            "dataset[7]: field 'completions[1]' is a list of messages, which needs a chat template"
        )


def test_template_errors_name_the_completion(plain_tok):
    tok = copy.deepcopy(plain_tok)
    # The generation prompt says "Assistant says:" but a rendered answer says "assistant:".
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant says: ' }}{% endif %}"
    )
    with pytest.raises(DataError) as err:
        render_ranking(rec(prompt="hi", completions=["a", "b"], scores=[0, 1]), tok)
    # Scores put completions[1] first, and the error names it by its place in the record.
    assert str(err.value) == (
        "dataset[7]: the chat template does not render the prompt as a prefix of the 'completions[1]' "
        "conversation (prompt-prefix invariant)"
    )


def test_csv_cells_hold_json_lists(tmp_path, chat_tok):
    path = tmp_path / "ranks.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completions", "scores"])
        w.writerow(["hi", json.dumps(["no", "yes"]), "[0.1, 0.9]"])
        w.writerow(["hi", "[not json", "[1, 2]"])
    first, second = load_records(path)
    assert render_ranking(first, chat_tok) == RankingText(
        HI_PROMPT, ("yes<|im_end|>", "no<|im_end|>"), f"{path} row 1"
    )
    with pytest.raises(DataError, match=r"row 2: field 'completions' must be a list, got str$"):
        render_ranking(second, chat_tok)


# --- tokenize -----------------------------------------------------------------------------------


def test_tokenize_prompt_bos_and_each_completion_eos(char_tok):
    out = tokenize_ranking(RankingText("ab", ("c", "de", "f</s>"), "f.jsonl:4"), char_tok, **NO_LIMIT)
    assert out == TokenizedRanking((1, 97, 98), ((99, 2), (100, 101, 2), (102, 2)), "f.jsonl:4")


def test_tokenize_truncates_every_completion_from_the_right(char_tok_nobos):
    text = RankingText("abcdef", ("ghij", "k", "lm"), "o")
    # prompt "abcdef" -> keep the last 3: d e f; room 5 - 3 = 2 per completion.
    out = tokenize_ranking(text, char_tok_nobos, max_length=5, max_prompt_length=3)
    assert out == TokenizedRanking((100, 101, 102), ((103, 104), (107, 2), (108, 109)), "o")


def test_tokenize_skips(char_tok_nobos):
    with pytest.raises(SkipExample) as err:
        tokenize_ranking(RankingText("abcde", ("x", "y"), "o"), char_tok_nobos, max_length=5, max_prompt_length=None)
    assert (err.value.reason, err.value.origin) == ("completion fully truncated", "o")
    with pytest.raises(SkipExample) as err:
        tokenize_ranking(RankingText("p", ("x", "y", "x"), "o"), char_tok_nobos, **NO_LIMIT)
    assert err.value.reason == "identical completions in a ranking"
    # "xyA" and "xyB" both become "xy" with 2 tokens of room.
    with pytest.raises(SkipExample, match="identical completions in a ranking"):
        tokenize_ranking(RankingText("p", ("xyA", "z", "xyB"), "o"), char_tok_nobos, max_length=3, max_prompt_length=1)


# --- collate ------------------------------------------------------------------------------------

EXAMPLES = [
    TokenizedRanking((1, 2), ((3,), (4, 5), (6,)), "d[0]"),
    TokenizedRanking((7,), ((8, 9), (10,)), "d[1]"),
]


def test_collate_flattens_lists_in_example_then_rank_order():
    batch = collate_rankings(EXAMPLES, [5, 9], pad_token_id=0)
    assert isinstance(batch, RankingBatch) and batch.num_columns == 3
    rows = batch.rows
    assert rows.input_ids.tolist() == [
        [1, 2, 3, 0],
        [1, 2, 4, 5],
        [1, 2, 6, 0],
        [7, 8, 9, 0],
        [7, 10, 0, 0],
    ]
    assert rows.attention_mask.tolist() == [
        [1, 1, 1, 0],
        [1, 1, 1, 1],
        [1, 1, 1, 0],
        [1, 1, 1, 0],
        [1, 1, 0, 0],
    ]
    assert rows.loss_mask.tolist() == [
        [F, F, T, F],
        [F, F, T, T],
        [F, F, T, F],
        [F, T, T, F],
        [F, T, F, F],
    ]
    assert rows.example.tolist() == [5, 5, 5, 9, 9]
    assert rows.position.tolist() == [0, 0, 0, 1, 1]
    assert rows.column.tolist() == [0, 1, 2, 0, 1]
    assert batch.index.tolist() == [5, 9] and len(rows) == 5
    assert rows.input_ids.dtype == rows.attention_mask.dtype == torch.long and rows.loss_mask.dtype == torch.bool
    assert rows.example.dtype == rows.position.dtype == rows.column.dtype == batch.index.dtype == torch.long


def test_num_columns_is_the_longest_list_in_the_batch():
    assert collate_rankings(EXAMPLES[1:], [0], pad_token_id=0).num_columns == 2


def test_collate_pad_to_multiple_of_and_to():
    batch = collate_rankings(EXAMPLES, [0, 1], pad_token_id=99, pad_to_multiple_of=8).to("cpu")
    assert isinstance(batch, RankingBatch) and batch.num_columns == 3
    assert batch.rows.input_ids.shape == (5, 8) and batch.rows.input_ids[4].tolist() == [7, 10] + [99] * 6
    assert batch.rows.attention_mask.sum(dim=1).tolist() == [3, 4, 3, 3, 2]


def test_collate_bad_inputs():
    with pytest.raises(ValueError, match="2 examples but 3 indices"):
        collate_rankings(EXAMPLES, [0, 1, 2], pad_token_id=0)
    with pytest.raises(ValueError, match="empty batch"):
        collate_rankings([], [], pad_token_id=0)


def test_to_matrix_values_and_mask():
    batch = collate_rankings(EXAMPLES, [5, 9], pad_token_id=0)
    matrix, mask = batch.to_matrix(torch.tensor([10.0, 11.0, 12.0, 20.0, 21.0]))
    assert matrix.tolist() == [[10.0, 11.0, 12.0], [20.0, 21.0, 0.0]]
    assert mask.tolist() == [[T, T, T], [T, T, F]] and mask.dtype == torch.bool
    with pytest.raises(ValueError, match=r"one value per row \(5\)"):
        batch.to_matrix(torch.zeros(4))


def test_to_matrix_passes_gradients_back_to_the_rows():
    batch = collate_rankings(EXAMPLES, [5, 9], pad_token_id=0)
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], requires_grad=True)
    matrix, mask = batch.to_matrix(values)
    weights = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (matrix * weights).sum().backward()
    # Row r lands at (position[r], column[r]); the padded entry (1, 2) has no row to pass 6.0 to.
    assert values.grad.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_to_matrix_feeds_the_plackett_luce_loss():
    # Each list's loss from the padded matrix equals the loss of that list on its own.
    batch = collate_rankings(EXAMPLES, [5, 9], pad_token_id=0)
    values = torch.tensor([0.3, -1.2, 2.0, 0.7, -0.4], requires_grad=True)
    matrix, mask = batch.to_matrix(values)
    losses = plackett_luce_nll(matrix, mask)
    alone = [plackett_luce_nll(values[:3].detach()[None]), plackett_luce_nll(values[3:].detach()[None])]
    assert torch.allclose(losses.detach(), torch.cat(alone))
    losses.sum().backward()
    assert torch.isfinite(values.grad).all() and values.grad.abs().sum() > 0


# --- build, fingerprint, num_columns ------------------------------------------------------------


def test_build_orders_by_score_and_counts_drops(tmp_path):
    path = write_jsonl(
        tmp_path / "ranks.jsonl",
        [
            {"prompt": "ab", "completions": ["c", "d", "e"]},
            {"prompt": "ab", "completions": ["x", "y"], "scores": [1, 1]},  # tied
            {"prompt": "ab", "completions": ["same", "same!", "z"]},  # both cut to "same": identical
            {"prompt": "q", "completions": ["r", "s"], "scores": [0, 5]},
            {"prompt": "abcdef", "completions": ["u", "v"]},  # prompt fills max_length: nothing fits
        ],
    )
    built = build_ranking_dataset(path, CHAR, DataSettings(max_length=6, max_prompt_length=None))
    assert built.examples == [
        TokenizedRanking((97, 98), ((99, 2), (100, 2), (101, 2)), f"{path}:1"),
        TokenizedRanking((113,), ((115, 2), (114, 2)), f"{path}:4"),
    ]
    assert built.dropped == Counter(
        {"tied scores in a ranking": 1, "identical completions in a ranking": 1, "completion fully truncated": 1}
    )
    assert built.summary() == (
        f"{path}: 2 examples, dropped 3 (completion fully truncated: 1, identical completions in a "
        "ranking: 1, tied scores in a ranking: 1)"
    )
    assert built.num_columns == 3 and built.label_counts is None


def test_build_stops_on_malformed_data(tmp_path):
    path = write_jsonl(
        tmp_path / "ranks.jsonl", [{"prompt": "a", "completions": ["b", "c"]}, {"prompt": "a", "completions": ["b"]}]
    )
    with pytest.raises(DataError, match=r"ranks\.jsonl:2: field 'completions' needs at least 2 completions"):
        build_ranking_dataset(path, CHAR, DataSettings())


def test_build_and_collate_with_the_chat_template(chat_tok):
    rows = [
        {"prompt": "hi", "completions": ["good movie", "okay", "bad movie"]},
        {"prompt": [user("rate it")], "completions": [[assistant("great")], "awful"], "scores": [2, 1]},
    ]
    built = build_ranking_dataset(rows, chat_tok, DataSettings())
    assert chat_tok.decode(built.examples[0].prompt_ids) == HI_PROMPT
    assert [chat_tok.decode(ids) for ids in built.examples[0].completion_ids] == [
        "good movie<|im_end|>",
        "okay<|im_end|>",
        "bad movie<|im_end|>",
    ]
    batch = collate_rankings(built.examples, [0, 1], pad_token_id=chat_tok.pad_token_id)
    r = 0
    for ex in built.examples:
        n = len(ex.prompt_ids)
        for completion in ex.completion_ids:
            length = int(batch.rows.attention_mask[r].sum())
            assert batch.rows.input_ids[r, :length].tolist() == list(ex.prompt_ids + completion)
            assert batch.rows.loss_mask[r].nonzero().flatten().tolist() == list(range(n, length))
            r += 1
    assert r == len(batch.rows) == 5


def _dataset(examples):
    return BuiltDataset(list(examples), Counter(), "x.jsonl", DataSettings())


def test_fingerprint_of_rankings():
    base = _dataset([TokenizedRanking((1,), ((2,), (3,), (4,)), "o"), TokenizedRanking((5,), ((6,), (7,)), "o")])
    moved = BuiltDataset(
        [TokenizedRanking((1,), ((2,), (3,), (4,)), "z:1"), TokenizedRanking((5,), ((6,), (7,)), "z:2")],
        Counter(),
        "z.jsonl",
        DataSettings(),
    )
    assert base.fingerprint() == moved.fingerprint()
    variants = [
        _dataset([TokenizedRanking((1,), ((3,), (2,), (4,)), "o"), base.examples[1]]),  # rank order
        _dataset([TokenizedRanking((1,), ((2,), (3,)), "o"), base.examples[1]]),  # a shorter list
        _dataset([TokenizedRanking((1, 2), ((3,), (4,)), "o"), base.examples[1]]),  # a boundary
        _dataset(base.examples[::-1]),  # example order
    ]
    prints = [base.fingerprint()] + [d.fingerprint() for d in variants]
    assert len(set(prints)) == len(prints)
    # The same ids as a pair are a different dataset.
    pair = _dataset([TokenizedPreference((5,), (6,), (7,), "o")])
    assert pair.fingerprint() != _dataset([TokenizedRanking((5,), ((6,), (7,)), "o")]).fingerprint()


def test_num_columns_of_every_kind():
    assert _dataset([TokenizedCompletion((1,), (2,), "o")]).num_columns == 1
    assert _dataset([TokenizedPreference((1,), (2,), (3,), "o")]).num_columns == 2
    assert _dataset([TokenizedUnpaired((1,), (2,), True, "o")]).num_columns == 2
    assert _dataset(EXAMPLES).num_columns == 3
    assert _dataset(EXAMPLES[1:]).num_columns == 2
    assert _dataset([]).num_columns == 0
