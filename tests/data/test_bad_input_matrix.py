"""Issue 5's bad-input matrix, end to end: a real file on disk → the public dataset builders.

Every case has one documented outcome (docs/bad_inputs.md): a DataError whose message starts
with the file and line (JSONL, ``path:3``) or row (CSV/JSON, ``path row 2``) and names the
field, or a drop that the BuiltDataset counts by reason and its summary reports. The bad record
comes after a good one (and, in JSONL, after a blank line), so a line number of 1, or one that
ignores blank lines, cannot pass; only a chat template that breaks every record fails on line 1.

CharTokenizer (conftest) gives one id per character, so the ids asserted below can be checked by
hand with ord(); chat_tok/plain_tok are the tiny byte-level BPE tokenizer with/without ChatML.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from preftune.data import (
    BuiltDataset,
    DataSettings,
    assign_kl_partners,
    build_completion_dataset,
    build_preference_dataset,
    build_ranking_dataset,
    build_unpaired_dataset,
    collate_completions,
    collate_preferences,
    collate_rankings,
    collate_unpaired,
)
from preftune.data.formats import RowFormat
from preftune.errors import DataError

from .conftest import CharTokenizer

PAIRS, SFT, KTO, RANKS = (build_preference_dataset, build_completion_dataset, build_unpaired_dataset,
                          build_ranking_dataset)
GOOD = {PAIRS: {"prompt": "ab", "chosen": "c", "rejected": "d"},
        SFT: {"prompt": "ab", "completion": "c"},
        KTO: {"prompt": "ab", "completion": "c", "label": True},
        RANKS: {"prompt": "ab", "completions": ["c", "d"]}}
BPE = DataSettings(max_length=64, max_prompt_length=32)
HI = [{"role": "user", "content": "hi"}]


def jsonl(builder: Callable, bad: dict | bytes) -> bytes:
    """A good record on line 1, a blank line 2, the bad one on line 3."""
    line = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
    return json.dumps(GOOD[builder]).encode() + b"\n\n" + line + b"\n"


def csv_text(header: str, *rows: str) -> bytes:
    return "\n".join([header, "ab,c,d", *rows]).encode() + b"\n"


@dataclass(frozen=True)
class Bad:
    """A file whose record on ``where`` must stop the build with a DataError naming ``field``."""

    case: str
    name: str  # file name in tmp_path; its suffix picks the reader
    content: bytes
    where: str  # what follows the path in the message: ":3" or " row 2"
    field: str | None  # None only where the file has no field to name (unparseable line, empty file)
    says: str
    builder: Callable = PAIRS
    tokenizer: str = "plain_tok"


ERRORS = [
    Bad("malformed JSON line", "p.jsonl", jsonl(PAIRS, b'{"prompt": "ab", "chosen": "c"'), ":3", None,
        "invalid JSON (Expecting ',' delimiter at column 31)"),
    Bad("malformed JSON file", "p.json", b'[\n{"prompt": "ab", "chosen": "c", "rejected": "d"},\n{"prompt": }\n]',
        ":3", None, "invalid JSON (Expecting value"),
    Bad("malformed CSV row", "p.csv", csv_text("prompt,chosen,rejected", "ab,c,d,e"), " row 2", None,
        "has 4 cells but the header has 3"),
    Bad("missing key", "p.jsonl", jsonl(PAIRS, {"prompt": "ab", "chosen": "c"}), ":3", "rejected",
        "missing field 'rejected'"),
    Bad("missing key (null)", "p.jsonl", jsonl(PAIRS, {"prompt": "ab", "chosen": "c", "rejected": None}), ":3",
        "rejected", "missing field 'rejected' (it is null)"),
    Bad("missing key, CSV column", "p.csv", b"prompt,chosen\nab,c\n", " row 1", "rejected", "missing field 'rejected'"),
    Bad("missing key, unpaired", "k.jsonl", jsonl(KTO, {"prompt": "ab", "completion": "c"}), ":3", "label",
        "missing field 'label'", KTO),
    Bad("missing key, ranked", "r.jsonl", jsonl(RANKS, {"prompt": "ab"}), ":3", "completions",
        "missing field 'completions'", RANKS),
    Bad("missing key, SFT", "s.jsonl", jsonl(SFT, {"prompt": "ab", "answer": "c"}), ":3", "completion",
        "missing field 'completion'", SFT),
    Bad("wrong type", "p.jsonl", jsonl(PAIRS, {"prompt": "ab", "chosen": 5, "rejected": "d"}), ":3", "chosen",
        "must be a string or a list of messages, got int"),
    Bad("wrong type, SFT", "s.jsonl", jsonl(SFT, {"prompt": ["ab"], "completion": "c"}), ":3", "prompt",
        "field 'prompt' message 0 must be an object with 'role' and 'content', got str", SFT),
    Bad("wrong type, unpaired label", "k.csv", b"prompt,completion,label\nab,c,true\nab,d,maybe\n", " row 2", "label",
        "must be true/false", KTO),
    Bad("wrong type, ranked", "r.jsonl", jsonl(RANKS, {"prompt": "ab", "completions": "c"}), ":3", "completions",
        "must be a list, got str", RANKS),
    Bad("wrong type, ranked score", "r.jsonl", jsonl(RANKS, {"prompt": "ab", "completions": ["c", "d"],
                                                             "scores": [1, "2"]}), ":3", "scores[1]",
        "must be a number, got '2'", RANKS),
    Bad("empty prompt", "p.jsonl", jsonl(PAIRS, {"prompt": "", "chosen": "c", "rejected": "d"}), ":3", "prompt",
        "field 'prompt' is empty"),
    Bad("empty prompt, CSV cell", "p.csv", csv_text("prompt,chosen,rejected", ",c,d"), " row 2", "prompt",
        "field 'prompt' is empty"),
    Bad("empty prompt, ranked", "r.jsonl", jsonl(RANKS, {"prompt": "", "completions": ["c", "d"]}), ":3", "prompt",
        "field 'prompt' is empty", RANKS),
    Bad("empty completion", "p.jsonl", jsonl(PAIRS, {"prompt": "ab", "chosen": "c", "rejected": ""}), ":3",
        "rejected", "field 'rejected' is empty"),
    Bad("empty completion, SFT", "s.jsonl", jsonl(SFT, {"prompt": "ab", "completion": ""}), ":3", "completion",
        "field 'completion' is empty", SFT),
    Bad("empty completion, unpaired", "k.jsonl", jsonl(KTO, {"prompt": "ab", "completion": "", "label": 0}), ":3",
        "completion", "field 'completion' is empty", KTO),
    Bad("empty completion, ranked", "r.jsonl", jsonl(RANKS, {"prompt": "ab", "completions": ["c", ""]}), ":3",
        "completions[1]", "field 'completions[1]' is empty", RANKS),
    Bad("empty completion, only EOS", "p.jsonl", jsonl(PAIRS, {"prompt": "ab", "chosen": "<|im_end|>",
                                                              "rejected": "d"}), ":3", "chosen",
        "is an empty completion (nothing but EOS"),
    Bad("empty completion, answer message", "p.jsonl",
        jsonl(PAIRS, {"chosen": HI + [{"role": "assistant", "content": ""}],
                      "rejected": HI + [{"role": "assistant", "content": "no"}]}), ":3", "chosen",
        "is an empty completion (nothing but EOS", PAIRS, "chat_tok"),
    Bad("empty completion, tokenizer keeps no token", "s.jsonl", jsonl(SFT, {"prompt": "ab", "completion": " \t"}),
        ":3", "completion", "encodes to zero tokens", SFT, "stripping_tok"),
    Bad("non-UTF-8 bytes, JSONL", "p.jsonl", jsonl(PAIRS, b'{"prompt": "ab", "chosen": "caf\xe9", "rejected": "d"}'),
        ":3", "chosen", "is not valid UTF-8 (byte 0xe9 at column 32)"),
    Bad("non-UTF-8 bytes, JSONL outside strings", "p.jsonl", jsonl(PAIRS, b'{"prompt": "ab",\xff "chosen": "c"}'),
        ":3", None, "is not valid UTF-8 (byte 0xff at column 17)"),
    Bad("non-UTF-8 bytes, JSON", "p.json",
        b'[{"prompt": "ab", "chosen": "c", "rejected": "d"},\n {"prompt": "ab", "chosen": "c", "rejected": "\xe9"}]',
        " row 2", "rejected", "is not valid UTF-8 (byte 0xe9 at line 2, column 47)"),
    # Row 2 spans lines 3-4 (a quoted newline): the message gives the line the row ends on.
    Bad("non-UTF-8 bytes, CSV", "p.csv", b'prompt,chosen,rejected\nab,c,d\nab,"two\nlines",caf\xe9\n', " row 2",
        "rejected", "is not valid UTF-8 (byte 0xe9 in a row ending on line 4)"),
    Bad("lone surrogate (JSON escape)", "p.jsonl", jsonl(PAIRS, b'{"prompt": "ab", "chosen": "x\\ud800",'
                                                               b' "rejected": "d"}'), ":3", "chosen",
        "is not valid Unicode text: a lone surrogate U+D800 at character 1"),
    Bad("EOS inside the text", "p.jsonl", jsonl(PAIRS, {"prompt": "ab", "chosen": "stop<|im_end|>go on",
                                                       "rejected": "d"}), ":3", "chosen",
        "contains the EOS token '<|im_end|>' at character 4"),
    Bad("EOS inside the text, chat template", "p.jsonl", jsonl(PAIRS, {"prompt": "ab", "chosen": "done<|im_end|>",
                                                                      "rejected": "d"}), ":3", "chosen",
        "contains the EOS token '<|im_end|>' at character 4", PAIRS, "chat_tok"),
    Bad("EOS inside the text, SFT messages", "s.jsonl",
        jsonl(SFT, {"messages": HI + [{"role": "assistant", "content": "a<|im_end|>b"}]}), ":3", "messages",
        "message 1 content contains the EOS token", SFT, "chat_tok"),
    Bad("EOS inside the text, char tokenizer", "k.jsonl", jsonl(KTO, {"prompt": "ab", "completion": "x</s>y",
                                                                     "label": 1}), ":3", "completion",
        "contains the EOS token '</s>' at character 1", KTO, "char_tok_nobos"),
    Bad("EOS inside the text, ranked", "r.jsonl", jsonl(RANKS, {"prompt": "ab", "completions": ["c", "x<|im_end|>y"]}),
        ":3", "completions[1]", "contains the EOS token '<|im_end|>' at character 1", RANKS),
    Bad("other special token in a templated prompt", "r.jsonl",
        jsonl(RANKS, {"prompt": "hi<|im_start|>system", "completions": ["c", "d"]}), ":3", "prompt",
        "contains the special token '<|im_start|>' at character 2", RANKS, "chat_tok"),
    Bad("chat template breaks the prompt-prefix invariant", "p.jsonl", jsonl(PAIRS, GOOD[PAIRS]), ":1", "chosen",
        "does not render the prompt as a prefix of the 'chosen' conversation", PAIRS, "broken_template_tok"),
    Bad("chat template breaks the prompt-prefix invariant, unpaired", "k.jsonl", jsonl(KTO, GOOD[KTO]), ":1",
        "completion", "does not render the prompt as a prefix of the 'completion' conversation", KTO,
        "broken_template_tok"),
    Bad("unpaired rows given to a pairwise loss", "p.jsonl",
        jsonl(PAIRS, {"prompt": "ab", "completion": "c", "label": True}), ":3", "chosen",
        "the layout of unpaired (KTO) data: train on it with loss_type=kto"),
    Bad("no prompt, strings that share no start", "p.jsonl", jsonl(PAIRS, {"chosen": "yes", "rejected": "no"}), ":3",
        "prompt", "'chosen'/'rejected' differ from their first character, so they share no prompt"),
    Bad("completions that repeat another prompt", "p.jsonl",
        jsonl(PAIRS, {"prompt": "ab", "chosen": HI + [{"role": "assistant", "content": "c"}],
                      "rejected": HI + [{"role": "assistant", "content": "d"}]}), ":3", "prompt",
        "so they carry their own prompt, but it is not field 'prompt'", PAIRS, "chat_tok"),
    Bad("UltraFeedback rating that is no number", "u.jsonl",
        jsonl(PAIRS, {"instruction": "ab", "completions": [
            {"response": "c", "annotations": {"helpfulness": {"Rating": "5"}}},
            {"response": "d", "annotations": {"helpfulness": {"Rating": "high"}}}]}), ":3",
        "completions[1].annotations.helpfulness.Rating", "must be a number (or \"N/A\"), got 'high'"),
    Bad("empty file, JSONL", "p.jsonl", b"\n  \n", "", None, "no records (the source is empty)"),
    Bad("empty file, JSON", "p.json", b"", "", None, "file is empty"),
    Bad("empty file, CSV", "p.csv", b"", "", None, "file is empty"),
    Bad("empty file, CSV header only", "p.csv", b"prompt,chosen,rejected\n", "", None, "no records"),
]


class StrippingTokenizer(CharTokenizer):
    """Drops whitespace, as a normalizer of some real tokenizers does."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return super().__call__("".join(text.split()), add_special_tokens)


@pytest.fixture
def stripping_tok() -> StrippingTokenizer:
    return StrippingTokenizer(bos=False)


@pytest.fixture
def broken_template_tok(plain_tok):
    tok = copy.deepcopy(plain_tok)
    # The generation prompt says "Assistant says:" but the rendered answer says "assistant:".
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'Assistant says: ' }}{% endif %}")
    return tok


@pytest.mark.parametrize("bad", ERRORS, ids=[b.case for b in ERRORS])
def test_bad_input_is_an_error_naming_file_line_and_field(bad: Bad, tmp_path: Path, request):
    path = tmp_path / bad.name
    path.write_bytes(bad.content)
    tokenizer = request.getfixturevalue(bad.tokenizer)
    with pytest.raises(DataError) as err:
        bad.builder(path, tokenizer, BPE)
    message = str(err.value)
    assert message.startswith(f"{path}{bad.where}: "), message
    if bad.field is not None:
        assert f"'{bad.field}'" in message, message
    assert bad.says in message, message


@dataclass(frozen=True)
class Drop:
    """A file whose record on line 3 is dropped with ``reason``; line 1 is kept."""

    case: str
    bad: dict
    reason: str
    settings: DataSettings
    builder: Callable = PAIRS


ROOM_4 = DataSettings(max_length=4, max_prompt_length=None)
DROPS = [
    Drop("identical chosen and rejected", {"prompt": "ab", "chosen": "same", "rejected": "same"},
         "chosen and rejected are identical", BPE),
    # prompt "ab" leaves 2 tokens: "xyA"/"xyB" + EOS are both cut to "xy".
    Drop("identical after truncation", {"prompt": "ab", "chosen": "xyA", "rejected": "xyB"},
         "chosen and rejected are identical", ROOM_4),
    Drop("identical completions, ranked", {"prompt": "ab", "completions": ["c", "e", "c"]},
         "identical completions in a ranking", BPE, RANKS),
    Drop("tied scores, ranked", {"prompt": "ab", "completions": ["c", "e"], "scores": [1, 1.0]},
         "tied scores in a ranking", BPE, RANKS),
    Drop("UltraFeedback completions that all tie", {"instruction": "ab", "completions": [
        {"response": "c", "overall_score": 5}, {"response": "e", "overall_score": 5.0}]},
         "UltraFeedback row whose completions all tie", DataSettings(row_format=RowFormat(
             ultrafeedback_score="overall_score"))),
    # 4 prompt tokens fill max_length 4: no room for even the first completion token.
    Drop("completion fully truncated", {"prompt": "abcd", "chosen": "c", "rejected": "d"},
         "completion fully truncated", ROOM_4),
    Drop("completion fully truncated, SFT", {"prompt": "abcd", "completion": "c"},
         "completion fully truncated", ROOM_4, SFT),
    Drop("completion fully truncated, unpaired", {"prompt": "abcd", "completion": "c", "label": False},
         "completion fully truncated", ROOM_4, KTO),
    Drop("completion fully truncated, ranked", {"prompt": "abcde", "completions": ["c", "d"]},
         "completion fully truncated", ROOM_4, RANKS),
]


@pytest.mark.parametrize("drop", DROPS, ids=[d.case for d in DROPS])
def test_unusable_input_is_a_counted_drop_in_the_summary(drop: Drop, tmp_path: Path, char_tok_nobos):
    path = tmp_path / "data.jsonl"
    path.write_bytes(jsonl(drop.builder, drop.bad))
    built = drop.builder(path, char_tok_nobos, drop.settings)
    assert [ex.origin for ex in built.examples] == [f"{path}:1"]
    assert built.dropped == Counter({drop.reason: 1})
    assert built.summary() == f"{path}: 1 examples{_labels(built)}, dropped 1 ({drop.reason}: 1)"


def _labels(built: BuiltDataset) -> str:
    return ", 1 desirable / 0 undesirable" if built.label_counts else ""


def test_drops_in_a_csv_file_too(tmp_path: Path, char_tok_nobos):
    path = tmp_path / "p.csv"
    path.write_bytes(csv_text("prompt,chosen,rejected", "ab,same,same", "abcd,c,d"))
    built = PAIRS(path, char_tok_nobos, ROOM_4)
    assert [ex.origin for ex in built.examples] == [f"{path} row 1"]
    assert built.summary() == (f"{path}: 1 examples, dropped 2 (chosen and rejected are identical: 1, "
                               "completion fully truncated: 1)")


# --- accepted on purpose: the outcome is a documented transformation, reported where it loses tokens


def test_prompt_longer_than_the_limit_keeps_its_last_tokens(tmp_path: Path, char_tok_nobos):
    path = tmp_path / "p.jsonl"
    path.write_bytes(jsonl(PAIRS, {"prompt": "abcdef", "chosen": "x", "rejected": "yz"}))
    built = PAIRS(path, char_tok_nobos, DataSettings(max_length=7, max_prompt_length=3))
    ex = built.examples[1]
    # "abcdef" → keep the last 3: d e f; room 7 - 3 = 4: "x"+EOS and "yz"+EOS fit whole.
    assert (ex.prompt_ids, ex.chosen_ids, ex.rejected_ids) == ((100, 101, 102), (120, 2), (121, 122, 2))
    assert built.summary() == f"{path}: 2 examples, dropped 0, cut to fit (prompts cut from the left: 1)"
    batch = collate_preferences(built.examples, [0, 1], pad_token_id=0)
    # rows: chosen 0, chosen 1, rejected 0, rejected 1; the kept prompt is a prefix of both of pair 1's.
    assert batch.input_ids[1].tolist() == [100, 101, 102, 120, 2, 0]
    assert batch.input_ids[3].tolist() == [100, 101, 102, 121, 122, 2]
    assert batch.loss_mask[3].tolist() == [False, False, False, True, True, True]


def test_prompt_longer_than_the_limit_with_the_chat_template(tmp_path: Path, chat_tok):
    path = tmp_path / "p.jsonl"
    prompt = "Write a short positive review of a film."
    path.write_bytes(jsonl(PAIRS, {"prompt": prompt, "chosen": "good", "rejected": "bad"}))
    built = PAIRS(path, chat_tok, DataSettings(max_length=16, max_prompt_length=6))
    rendered = chat_tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)
    full = chat_tok(rendered, add_special_tokens=False)["input_ids"]
    ex = built.examples[1]
    assert len(full) > 6 and list(ex.prompt_ids) == full[-6:]
    batch = collate_preferences(built.examples, [0, 1], pad_token_id=chat_tok.pad_token_id)
    for row in (1, 3):
        assert batch.input_ids[row, :6].tolist() == full[-6:]
    # The good row's templated prompt is longer than 6 tokens too: ChatML's framing alone is 12 here.
    assert built.summary() == f"{path}: 2 examples, dropped 0, cut to fit (prompts cut from the left: 2)"


def test_completion_cut_from_the_right_is_reported(tmp_path: Path, char_tok_nobos):
    path = tmp_path / "p.jsonl"
    path.write_bytes(jsonl(PAIRS, {"prompt": "ab", "chosen": "wxyz", "rejected": "q"}))
    built = PAIRS(path, char_tok_nobos, DataSettings(max_length=5, max_prompt_length=None))
    # room 5 - 2 = 3: "wxyz"+EOS → w x y (no EOS: the text was cut, not finished); "q"+EOS fits.
    assert (built.examples[1].chosen_ids, built.examples[1].rejected_ids) == ((119, 120, 121), (113, 2))
    assert built.summary() == f"{path}: 2 examples, dropped 0, cut to fit (completions cut from the right: 1)"


def test_whitespace_only_completion_is_kept_and_supervised(tmp_path: Path, char_tok_nobos):
    path = tmp_path / "p.jsonl"
    path.write_bytes(jsonl(PAIRS, {"prompt": "ab", "chosen": "c", "rejected": "  "}))
    built = PAIRS(path, char_tok_nobos, BPE)
    assert built.examples[1].rejected_ids == (32, 32, 2)
    assert not built.dropped


def test_a_trailing_eos_without_a_template_is_kept_once(tmp_path: Path, char_tok_nobos):
    path = tmp_path / "p.jsonl"
    path.write_bytes(jsonl(PAIRS, {"prompt": "ab", "chosen": "c</s>", "rejected": "d"}))
    assert PAIRS(path, char_tok_nobos, BPE).examples[1].chosen_ids == (99, 2)


# --- no row with zero supervised tokens reaches a loss


def completions(ex: Any) -> list[tuple[int, ...]]:
    """Every completion of a tokenized example of any layout: each becomes one row of a batch."""
    if hasattr(ex, "chosen_ids"):
        return [ex.chosen_ids, ex.rejected_ids]
    if hasattr(ex, "label"):
        return [ex.completion_ids, ex.kl_completion_ids]
    return list(ex.completion_ids) if isinstance(ex.completion_ids[0], tuple) else [ex.completion_ids]


LAYOUTS = [
    (PAIRS, collate_preferences, {"prompt": "abcdef", "chosen": "wxyz", "rejected": "q"}),
    (SFT, collate_completions, {"prompt": "abcdef", "completion": "wxyz"}),
    (KTO, collate_unpaired, {"prompt": "abcdef", "completion": "wxyz", "label": False}),
    (RANKS, collate_rankings, {"prompt": "abcdef", "completions": ["wxyz", "q", "rs"]}),
]


@pytest.mark.parametrize("builder, collate, cut", LAYOUTS, ids=["pairs", "sft", "unpaired", "ranked"])
def test_every_collated_row_has_a_supervised_token(builder, collate, cut, tmp_path: Path, char_tok_nobos):
    # The tightest legal limits: the prompt is cut to 3 tokens, leaving each completion exactly 1.
    path = tmp_path / "data.jsonl"
    path.write_bytes(jsonl(builder, cut))
    built = builder(path, char_tok_nobos, DataSettings(max_length=4, max_prompt_length=3))
    if builder is KTO:
        built = assign_kl_partners(built, seed=0)
    assert all(len(c) >= 1 for ex in built.examples for c in completions(ex))
    batch = collate(built.examples, list(range(len(built))), pad_token_id=0)
    masks = [batch.main.loss_mask, batch.kl.loss_mask] if builder is KTO else [getattr(batch, "rows", batch).loss_mask]
    assert [m.sum(dim=1).min().item() for m in masks] == [1] * len(masks)
