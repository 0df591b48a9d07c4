"""The builders end to end: drop accounting, errors, the prompt-prefix invariant, fingerprints."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from preftune.data.collate import collate_preferences
from preftune.data.dataset import (
    BuiltDataset,
    DataSettings,
    build_completion_dataset,
    build_preference_dataset,
)
from preftune.data.tokenize import TokenizedPreference
from preftune.errors import ConfigError, DataError

from .conftest import CharTokenizer

CHAR = CharTokenizer(bos=False)
NO_TEMPLATE = DataSettings(max_length=6, max_prompt_length=3)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_drops_are_counted_and_summarised(tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "ab", "chosen": "c", "rejected": "d"},
            {"prompt": "ab", "chosen": "same", "rejected": "same"},  # identical
            {"prompt": "ab", "chosen": "x", "rejected": "y"},
        ],
    )
    # prompt "ab" = 2 tokens, room 4: "same"+EOS is 5 tokens -> both cut to "same" -> identical.
    built = build_preference_dataset(path, CHAR, NO_TEMPLATE)
    assert len(built) == 2
    assert [e.origin for e in built.examples] == [f"{path}:1", f"{path}:3"]
    assert built.dropped == Counter({"chosen and rejected are identical": 1})
    assert built.summary() == f"{path}: 2 examples, dropped 1 (chosen and rejected are identical: 1)"


def test_summary_without_drops():
    built = build_preference_dataset([{"prompt": "a", "chosen": "b", "rejected": "c"}], CHAR, NO_TEMPLATE)
    assert built.summary() == "dataset: 1 examples, dropped 0"


def test_data_errors_propagate(tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}],
    )
    with pytest.raises(DataError, match=r"prefs\.jsonl:2: missing field 'rejected'"):
        build_preference_dataset(path, CHAR, NO_TEMPLATE)


def test_everything_dropped_is_an_error():
    rows = [
        {"prompt": "abc", "chosen": "x", "rejected": "x"},
        {"prompt": "abcdefgh", "chosen": "x", "rejected": "y"},
    ]
    settings = DataSettings(max_length=4, max_prompt_length=None)
    with pytest.raises(DataError) as err:
        build_preference_dataset(rows, CHAR, settings)
    assert str(err.value) == (
        "dataset: all 2 examples were dropped "
        "(chosen and rejected are identical: 1, completion fully truncated: 1)"
    )


def test_settings_validate_lengths():
    with pytest.raises(ConfigError, match="max_prompt_length"):
        DataSettings(max_length=8, max_prompt_length=8)
    DataSettings(max_length=None, max_prompt_length=8)
    DataSettings(max_length=8, max_prompt_length=None)


def test_completion_dataset(chat_tok):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]}]
    built = build_completion_dataset(rows, chat_tok, DataSettings())
    (ex,) = built.examples
    assert chat_tok.decode(ex.prompt_ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert chat_tok.decode(ex.completion_ids) == "yes<|im_end|>"


VARIED = [
    "hello",
    " leading space",
    "trailing space ",
    "  two  spaces  ",
    "tab\there",
    "new\nline",
    "\n",
    "ünïcödé",
    "日本語のテキスト",
    "emoji 🙂👍🏽",
    "mixed العربية text",
    "a",
    "?",
    "!!!",
    "...",
    "'quotes' \"double\"",
    "(paren) [bracket] {brace}",
    "1234567890",
    "3.14159",
    "-_-",
    "a,b;c:d",
    "<not special>",  # special-token text inside a field is an error: see test_bad_input_matrix.py
    "end with newline\n",
    "The quick brown fox",
    "good movie",
    "bad",
    "\u200bzero width",
    "é" * 30,
    "x " * 40,
]


def varied_rows():
    rows = []
    for i, prompt in enumerate(VARIED):
        chosen, rejected = VARIED[(i + 5) % len(VARIED)], VARIED[(i + 11) % len(VARIED)]
        if i % 2:  # every other row as a conversation with an implicit prompt
            conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]
            rows.append(
                {
                    "chosen": conv + [{"role": "assistant", "content": chosen}],
                    "rejected": conv + [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


@pytest.mark.parametrize(
    "settings",
    [
        DataSettings(max_length=None, max_prompt_length=None),
        DataSettings(max_length=24, max_prompt_length=10),
    ],
)
def test_prompt_prefix_invariant_on_the_bpe_tokenizer(chat_tok, settings):
    built = build_preference_dataset(varied_rows(), chat_tok, settings)
    assert len(built) == len(VARIED) and not built.dropped
    B = len(built)
    batch = collate_preferences(built.examples, range(B), pad_token_id=chat_tok.pad_token_id)
    for i, ex in enumerate(built.examples):
        n = len(ex.prompt_ids)
        for row, completion in ((i, ex.chosen_ids), (B + i, ex.rejected_ids)):
            length = int(batch.attention_mask[row].sum())
            ids = batch.input_ids[row, :length].tolist()
            assert ids[:n] == list(ex.prompt_ids)
            assert ids[n:] == list(completion)
            assert batch.loss_mask[row].nonzero().flatten().tolist() == list(range(n, length))
    if settings.max_length is None:
        # Untruncated, the ids decode back to exactly the rendered conversation up to its last EOS.
        for ex, row in zip(built.examples, varied_rows()):
            for field, ids in (("chosen", ex.chosen_ids), ("rejected", ex.rejected_ids)):
                if "prompt" in row:
                    conv = [
                        {"role": "user", "content": row["prompt"]},
                        {"role": "assistant", "content": row[field]},
                    ]
                else:
                    conv = row[field]
                full = chat_tok.apply_chat_template(conv, tokenize=False)
                assert (
                    chat_tok.decode(ex.prompt_ids + ids)
                    == full[: full.rindex("<|im_end|>") + len("<|im_end|>")]
                )
                assert ids[-1] == chat_tok.eos_token_id


def _dataset(examples, settings=NO_TEMPLATE, source="x.jsonl"):
    return BuiltDataset(list(examples), Counter(), source, settings)


def test_fingerprint_is_stable_and_ignores_origin_and_source():
    a = _dataset([TokenizedPreference((1, 2), (3,), (4,), "x.jsonl:1")])
    b = _dataset([TokenizedPreference((1, 2), (3,), (4,), "moved.jsonl:9")], source="moved.jsonl")
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 64 and int(a.fingerprint(), 16) >= 0


def test_fingerprint_changes_with_a_token_a_boundary_or_a_setting():
    base = _dataset(
        [TokenizedPreference((1, 2), (3,), (4,), "o"), TokenizedPreference((5,), (6,), (7,), "o")]
    )
    token = _dataset(
        [TokenizedPreference((1, 2), (3,), (4,), "o"), TokenizedPreference((5,), (6,), (8,), "o")]
    )
    boundary = _dataset(
        [TokenizedPreference((1,), (2, 3), (2, 4), "o"), TokenizedPreference((5,), (6,), (7,), "o")]
    )
    setting = _dataset(base.examples, dataclasses.replace(NO_TEMPLATE, max_length=7))
    order = _dataset(base.examples[::-1])
    prints = [d.fingerprint() for d in (base, token, boundary, setting, order)]
    assert len(set(prints)) == len(prints)


def test_fingerprint_of_rebuilt_data(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "ab", "chosen": "c", "rejected": "d"}])
    first = build_preference_dataset(path, CHAR, NO_TEMPLATE).fingerprint()
    assert build_preference_dataset(path, CHAR, NO_TEMPLATE).fingerprint() == first
    # A setting that leaves every id unchanged (nothing is long enough to truncate) still counts.
    assert (
        build_preference_dataset(path, CHAR, DataSettings(max_length=7, max_prompt_length=3)).fingerprint()
        != first
    )
    write_jsonl(path, [{"prompt": "ab", "chosen": "c", "rejected": "e"}])
    assert build_preference_dataset(path, CHAR, NO_TEMPLATE).fingerprint() != first
