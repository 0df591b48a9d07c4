"""KTO's unpaired data, step by step: render (labels), tokenize, KL partners, collate, build.

CharTokenizer gives one id per character (its code point; '<s>' = 1, '</s>' = 2), so
'a' = 97, 'b' = 98, ... and every expected tuple below can be checked with ord().
"""

from __future__ import annotations

import csv
import json
import random
from collections import Counter

import pytest
import torch

from preftune.data.collate import Rows, UnpairedBatch, collate_unpaired
from preftune.data.dataset import (
    BuiltDataset,
    DataSettings,
    assign_kl_partners,
    build_unpaired_dataset,
)
from preftune.data.load import Record, load_records
from preftune.data.render.unpaired import UnpairedText, render_unpaired
from preftune.data.tokenize import (
    TokenizedCompletion,
    TokenizedPreference,
    TokenizedUnpaired,
    tokenize_unpaired,
)
from preftune.errors import DataError, SkipExample

from .conftest import CharTokenizer

CHAR = CharTokenizer(bos=False)
NO_LIMIT = {"max_length": None, "max_prompt_length": None}
# Written out by hand from preftune.testing.CHATML_TEMPLATE.
HI_PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
F, T = False, True


def rec(**fields):
    return Record(fields, "dataset[7]")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- render -------------------------------------------------------------------------------------


def test_render_without_template_keeps_the_strings(plain_tok):
    out = render_unpaired(rec(prompt="Q: 2+2?", completion=" 4", label=True), plain_tok)
    assert out == UnpairedText("Q: 2+2?", " 4", True, "dataset[7]")


def test_render_with_the_chat_template(chat_tok):
    expected = UnpairedText(HI_PROMPT, "yes<|im_end|>", False, "dataset[7]")
    assert render_unpaired(rec(prompt="hi", completion="yes", label=False), chat_tok) == expected
    messages = rec(
        prompt=[{"role": "user", "content": "hi"}],
        completion=[{"role": "assistant", "content": "yes"}],
        label=False,
    )
    assert render_unpaired(messages, chat_tok) == expected


def test_messages_need_a_template(plain_tok, chat_tok):
    record = rec(prompt="hi", completion=[{"role": "assistant", "content": "a"}], label=True)
    for tok, flag in ((plain_tok, None), (chat_tok, False)):
        with pytest.raises(DataError) as err:
            render_unpaired(record, tok, use_chat_template=flag)
        assert str(err.value).startswith(
            "dataset[7]: field 'completion' is a list of messages, which needs a chat template"
        )


@pytest.mark.parametrize(
    "label, expected",
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("true", True),
        ("false", False),
        ("TRUE", True),
        ("False", False),
        ("1", True),
        ("0", False),
        (" true ", True),
    ],
)
def test_label_spellings(label, expected, plain_tok):
    assert render_unpaired(rec(prompt="p", completion="c", label=label), plain_tok).label is expected


@pytest.mark.parametrize("label", [2, -1, 1.0, 0.0, "yes", "no", "", "2", "t", [True], {"v": 1}])
def test_bad_labels_name_the_field_and_the_value(label, plain_tok):
    with pytest.raises(DataError) as err:
        render_unpaired(rec(prompt="p", completion="c", label=label), plain_tok)
    assert str(err.value) == (
        "dataset[7]: field 'label' must be true/false (a boolean, 0/1, or the string \"true\", "
        f"\"false\", \"1\" or \"0\"), got {label!r}"
    )


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"prompt": "p", "completion": "c"}, "missing field 'label'"),
        ({"prompt": "p", "completion": "c", "label": None}, "missing field 'label' (it is null)"),
        ({"prompt": "p", "label": True}, "missing field 'completion'"),
        ({"completion": "c", "label": True}, "missing field 'prompt'"),
        ({"prompt": "p", "completion": "", "label": True}, "field 'completion' is empty"),
        (
            {"prompt": "p", "completion": 3, "label": True},
            "field 'completion' must be a string or a list of messages, got int",
        ),
    ],
)
def test_field_errors(fields, message, plain_tok):
    with pytest.raises(DataError) as err:
        render_unpaired(rec(**fields), plain_tok)
    assert str(err.value) == f"dataset[7]: {message}"


def test_csv_labels_are_strings(tmp_path, plain_tok):
    path = tmp_path / "kto.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion", "label"])
        w.writerows([["p", "good", "True"], ["p", "bad", "0"], ["p", "meh", "maybe"]])
    good, bad, meh = load_records(path)
    assert render_unpaired(good, plain_tok) == UnpairedText("p", "good", True, f"{path} row 1")
    assert render_unpaired(bad, plain_tok).label is False
    with pytest.raises(DataError, match=r"row 3: field 'label' must be true/false .*got 'maybe'$"):
        render_unpaired(meh, plain_tok)


# --- tokenize -----------------------------------------------------------------------------------


def test_tokenize_like_a_completion_and_keep_the_label(char_tok):
    text = UnpairedText("ab", "c", False, "f.jsonl:4")
    out = tokenize_unpaired(text, char_tok, **NO_LIMIT)
    assert out == TokenizedUnpaired((1, 97, 98), (99, 2), False, "f.jsonl:4", ())
    assert out.kl_completion_ids == ()


def test_tokenize_truncation_and_skip(char_tok):
    text = UnpairedText("abc", "xyz", True, "d[0]")
    # prompt: BOS a b c -> keep "b c"; completion budget 4 - 2 = 2 -> "x y" (EOS cut).
    out = tokenize_unpaired(text, char_tok, max_length=4, max_prompt_length=2)
    assert out == TokenizedUnpaired((98, 99), (120, 121), True, "d[0]")
    with pytest.raises(SkipExample) as err:
        tokenize_unpaired(text, char_tok, max_length=4, max_prompt_length=None)
    assert (err.value.reason, err.value.origin) == ("completion fully truncated", "d[0]")


def test_tokenize_eos_once(char_tok):
    out = tokenize_unpaired(UnpairedText("a", "b</s>", True, "o"), char_tok, **NO_LIMIT)
    assert out.completion_ids == (98, 2)
    out = tokenize_unpaired(UnpairedText("a", "b", True, "o"), char_tok, add_eos=False, **NO_LIMIT)
    assert out.completion_ids == (98,)


# --- KL partners --------------------------------------------------------------------------------


def unpaired_dataset(n, settings=DataSettings(max_length=None, max_prompt_length=None)):
    # Example i: prompt (i + 1,), completion (100 + i, 2); labels alternate.
    examples = [TokenizedUnpaired((i + 1,), (100 + i, 2), i % 2 == 0, f"d[{i}]") for i in range(n)]
    return BuiltDataset(examples, Counter({"completion fully truncated": 3}), "kto.jsonl", settings)


def test_two_examples_swap_completions_and_partners_are_truncated():
    a = TokenizedUnpaired((1, 2, 3), (4,), True, "a")
    b = TokenizedUnpaired((5,), (6, 7, 8), False, "b")
    settings = DataSettings(max_length=4, max_prompt_length=3)
    out = assign_kl_partners(BuiltDataset([a, b], Counter(), "x", settings), seed=0)
    # a's prompt has 3 tokens, so only 4 - 3 = 1 token of b's completion fits after it.
    assert out.examples == [
        TokenizedUnpaired((1, 2, 3), (4,), True, "a", (6,)),
        TokenizedUnpaired((5,), (6, 7, 8), False, "b", (4,)),
    ]
    unlimited = DataSettings(max_length=None, max_prompt_length=None)
    out = assign_kl_partners(BuiltDataset([a, b], Counter(), "x", unlimited), seed=0)
    assert [e.kl_completion_ids for e in out.examples] == [(6, 7, 8), (4,)]


def test_partners_follow_the_seeded_cycle():
    order = list(range(5))
    random.Random(0).shuffle(order)
    out = assign_kl_partners(unpaired_dataset(5), seed=0)
    for i in range(5):
        partner = order[(i + 1) % 5]
        assert out.examples[order[i]].kl_completion_ids == (100 + partner, 2)


def test_partners_form_one_cycle_without_self_partners():
    for seed in range(10):
        out = assign_kl_partners(unpaired_dataset(7), seed=seed)
        partner_of = [e.kl_completion_ids[0] - 100 for e in out.examples]
        assert all(p != i for i, p in enumerate(partner_of))
        assert sorted(partner_of) == list(range(7))  # every completion used exactly once
        seen, i = set(), 0
        while i not in seen:
            seen.add(i)
            i = partner_of[i]
        assert len(seen) == 7  # a single cycle through all examples


def test_partners_are_deterministic_per_seed_and_differ_across_seeds():
    data = unpaired_dataset(5)
    first = assign_kl_partners(data, seed=0)
    assert assign_kl_partners(data, seed=0).examples == first.examples
    assert assign_kl_partners(data, seed=1).examples != first.examples


def test_assign_returns_a_new_dataset_and_keeps_the_rest():
    data = unpaired_dataset(3)
    out = assign_kl_partners(data, seed=3)
    assert out is not data and all(e.kl_completion_ids == () for e in data.examples)
    assert (out.dropped, out.source, out.settings) == (data.dropped, data.source, data.settings)
    for before, after in zip(data.examples, out.examples):
        assert (after.prompt_ids, after.completion_ids, after.label, after.origin) == (
            before.prompt_ids,
            before.completion_ids,
            before.label,
            before.origin,
        )


def test_partners_are_truncated_to_max_length():
    settings = DataSettings(max_length=4, max_prompt_length=3)
    examples = [
        TokenizedUnpaired((1, 2, 3), (4,), True, "a"),
        TokenizedUnpaired((5, 6), (7, 8), True, "b"),
        TokenizedUnpaired((9,), (10, 11, 12), False, "c"),
    ]
    out = assign_kl_partners(BuiltDataset(examples, Counter(), "x", settings), seed=5)
    by_first_token = {e.completion_ids[0]: e for e in examples}
    for ex in out.examples:
        partner = by_first_token[ex.kl_completion_ids[0]]
        assert partner.origin != ex.origin
        # Cut from the right to what fits after this prompt: never empty, never past max_length.
        assert ex.kl_completion_ids == partner.completion_ids[: 4 - len(ex.prompt_ids)]
        assert 1 <= len(ex.kl_completion_ids) and len(ex.prompt_ids) + len(ex.kl_completion_ids) <= 4


def test_kto_needs_two_examples():
    with pytest.raises(DataError) as err:
        assign_kl_partners(unpaired_dataset(1), seed=0)
    assert str(err.value).startswith("kto.jsonl: KTO needs at least 2 examples for its KL estimate")


def test_partners_need_unpaired_examples():
    data = BuiltDataset([TokenizedCompletion((1,), (2,), "o")] * 2, Counter(), "x")
    with pytest.raises(TypeError, match="unpaired"):
        assign_kl_partners(data, seed=0)


# --- fingerprint, summary, num_columns -----------------------------------------------------------


def test_fingerprint_changes_with_labels_partners_and_order():
    base = unpaired_dataset(4)
    partnered = assign_kl_partners(base, seed=0)
    relabelled = BuiltDataset(
        [TokenizedUnpaired(e.prompt_ids, e.completion_ids, not e.label, e.origin) for e in base.examples],
        Counter(),
        base.source,
        base.settings,
    )
    reordered = BuiltDataset(base.examples[::-1], Counter(), base.source, base.settings)
    other_partners = assign_kl_partners(base, seed=1)
    assert other_partners.examples != partnered.examples
    prints = [d.fingerprint() for d in (base, partnered, relabelled, reordered, other_partners)]
    assert len(set(prints)) == len(prints)
    assert assign_kl_partners(base, seed=0).fingerprint() == partnered.fingerprint()


def test_fingerprint_tells_unpaired_from_sft_with_the_same_ids():
    settings = DataSettings()
    sft = BuiltDataset([TokenizedCompletion((1,), (2,), "o")], Counter(), "x", settings)
    kto = BuiltDataset([TokenizedUnpaired((1,), (2,), True, "o")], Counter(), "x", settings)
    assert sft.fingerprint() != kto.fingerprint()


def test_label_counts_and_columns():
    data = unpaired_dataset(5)  # labels True, False, True, False, True
    assert data.label_counts == (3, 2) and data.num_columns == 2
    assert data.summary() == (
        "kto.jsonl: 5 examples, 3 desirable / 2 undesirable, dropped 3 (completion fully truncated: 3)"
    )
    pairs = BuiltDataset([TokenizedPreference((1,), (2,), (3,), "o")], Counter(), "p.jsonl")
    assert pairs.label_counts is None and pairs.summary() == "p.jsonl: 1 examples, dropped 0"


# --- collate ------------------------------------------------------------------------------------

EXAMPLES = [
    TokenizedUnpaired((1, 2), (3,), True, "d[0]", (4, 5, 6)),
    TokenizedUnpaired((7,), (8, 9), False, "d[1]", (10,)),
]


def test_collate_main_and_kl_rows():
    batch = collate_unpaired(EXAMPLES, [10, 11], pad_token_id=0)
    assert isinstance(batch, UnpairedBatch) and isinstance(batch.main, Rows) and isinstance(batch.kl, Rows)
    # main: prompt + own completion, longest 3; kl: prompt + partner's completion, longest 5.
    assert batch.main.input_ids.tolist() == [[1, 2, 3], [7, 8, 9]]
    assert batch.main.attention_mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    assert batch.main.loss_mask.tolist() == [[F, F, T], [F, T, T]]
    assert batch.kl.input_ids.tolist() == [[1, 2, 4, 5, 6], [7, 10, 0, 0, 0]]
    assert batch.kl.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.kl.loss_mask.tolist() == [[F, F, T, T, T], [F, T, F, F, F]]
    for rows, column in ((batch.main, 0), (batch.kl, 1)):
        assert rows.example.tolist() == [10, 11]
        assert rows.position.tolist() == [0, 1]
        assert rows.column.tolist() == [column, column]
        assert len(rows) == 2
        assert (rows.input_ids.dtype, rows.attention_mask.dtype, rows.loss_mask.dtype) == (
            torch.long,
            torch.long,
            torch.bool,
        )
        assert rows.example.dtype == rows.position.dtype == rows.column.dtype == torch.long
    assert batch.labels.tolist() == [True, False] and batch.labels.dtype == torch.bool
    assert batch.index.tolist() == [10, 11] and batch.index.dtype == torch.long


def test_collate_pads_each_part_to_its_own_multiple():
    batch = collate_unpaired(EXAMPLES, [0, 1], pad_token_id=99, pad_to_multiple_of=4)
    assert batch.main.input_ids.tolist() == [[1, 2, 3, 99], [7, 8, 9, 99]]
    assert batch.kl.input_ids.shape == (2, 8)
    assert batch.kl.attention_mask.sum(dim=1).tolist() == [5, 2]


def test_collate_to_device():
    batch = collate_unpaired(EXAMPLES, [0, 1], pad_token_id=0).to("cpu")
    assert isinstance(batch, UnpairedBatch) and batch.kl.input_ids.device.type == "cpu"
    assert batch.labels.tolist() == [True, False]


def test_collate_needs_partners_and_a_batch():
    without = [EXAMPLES[0], TokenizedUnpaired((7,), (8, 9), False, "d[1]")]
    with pytest.raises(ValueError, match=r"^d\[1\]: .*assign_kl_partners must run on the dataset first"):
        collate_unpaired(without, [0, 1], pad_token_id=0)
    with pytest.raises(ValueError, match="2 examples but 1 indices"):
        collate_unpaired(EXAMPLES, [0], pad_token_id=0)
    with pytest.raises(ValueError, match="empty batch"):
        collate_unpaired([], [], pad_token_id=0)


# --- build --------------------------------------------------------------------------------------


def test_build_counts_drops_and_labels(tmp_path):
    path = write_jsonl(
        tmp_path / "kto.jsonl",
        [
            {"prompt": "ab", "completion": "c", "label": True},
            {"prompt": "abcdef", "completion": "x", "label": 1},  # no room left: fully truncated
            {"prompt": "ab", "completion": "xyzw", "label": "false"},
            {"prompt": "q", "completion": "r", "label": "0"},
        ],
    )
    built = build_unpaired_dataset(path, CHAR, DataSettings(max_length=6, max_prompt_length=None))
    assert built.examples == [
        TokenizedUnpaired((97, 98), (99, 2), True, f"{path}:1"),
        TokenizedUnpaired((97, 98), (120, 121, 122, 119), False, f"{path}:3"),  # EOS cut at 6
        TokenizedUnpaired((113,), (114, 2), False, f"{path}:4"),
    ]
    assert built.dropped == Counter({"completion fully truncated": 1})
    assert built.summary() == (
        f"{path}: 3 examples, 1 desirable / 2 undesirable, dropped 1 (completion fully truncated: 1), "
        "cut to fit (completions cut from the right: 1)"  # the row at line 3
    )


def test_build_stops_on_malformed_data(tmp_path):
    path = write_jsonl(
        tmp_path / "kto.jsonl",
        [{"prompt": "a", "completion": "b", "label": True}, {"prompt": "a", "completion": "b", "label": "yes"}],
    )
    with pytest.raises(DataError, match=r"kto\.jsonl:2: field 'label' must be true/false .*got 'yes'$"):
        build_unpaired_dataset(path, CHAR, DataSettings())


def test_build_partner_and_collate_with_the_chat_template(chat_tok):
    rows = [
        {"prompt": "hi", "completion": "yes", "label": True},
        {"prompt": [{"role": "user", "content": "rate it"}], "completion": "bad movie", "label": False},
        {"prompt": "hello", "completion": [{"role": "assistant", "content": "good"}], "label": "1"},
    ]
    built = assign_kl_partners(build_unpaired_dataset(rows, chat_tok, DataSettings()), seed=0)
    assert chat_tok.decode(built.examples[0].prompt_ids) == HI_PROMPT
    assert [chat_tok.decode(e.completion_ids) for e in built.examples] == [
        "yes<|im_end|>",
        "bad movie<|im_end|>",
        "good<|im_end|>",
    ]
    completions = {e.completion_ids for e in built.examples}
    for ex in built.examples:
        assert ex.kl_completion_ids in completions and ex.kl_completion_ids != ex.completion_ids
    batch = collate_unpaired(built.examples, range(3), pad_token_id=chat_tok.pad_token_id)
    for i, ex in enumerate(built.examples):
        n = len(ex.prompt_ids)
        for rows_, completion in ((batch.main, ex.completion_ids), (batch.kl, ex.kl_completion_ids)):
            length = int(rows_.attention_mask[i].sum())
            assert rows_.input_ids[i, :length].tolist() == list(ex.prompt_ids + completion)
            assert rows_.loss_mask[i].nonzero().flatten().tolist() == list(range(n, length))
    assert batch.labels.tolist() == [True, False, True]
