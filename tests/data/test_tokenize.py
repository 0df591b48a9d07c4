"""tokenize_preference / tokenize_completion: special tokens, EOS, truncation (ids derived by hand).

CharTokenizer gives one id per character (its code point; '<s>' = 1, '</s>' = 2), so
'a' = 97, 'b' = 98, ... and every expected tuple below can be checked with ord().
"""

from __future__ import annotations

import pytest

from preftune.data.load import Record
from preftune.data.render import CompletionText, PreferenceText, render_preference
from preftune.data.tokenize import (
    TokenizedCompletion,
    TokenizedPreference,
    tokenize_completion,
    tokenize_preference,
)
from preftune.errors import SkipExample

NO_LIMIT = {"max_length": None, "max_prompt_length": None}


def pref(prompt, chosen, rejected):
    return PreferenceText(prompt, chosen, rejected, "f.jsonl:4")


def test_prompt_gets_bos_and_completions_get_eos(char_tok):
    out = tokenize_preference(pref("ab", "c", "d"), char_tok, **NO_LIMIT)
    assert out == TokenizedPreference((1, 97, 98), (99, 2), (100, 2), "f.jsonl:4")


def test_no_double_bos_when_the_prompt_already_has_one(char_tok):
    out = tokenize_preference(pref("<s>ab", "c", "d"), char_tok, **NO_LIMIT)
    assert out.prompt_ids == (1, 97, 98)


def test_eos_appended_exactly_once(char_tok):
    out = tokenize_preference(pref("ab", "c</s>", "d"), char_tok, **NO_LIMIT)
    assert out.chosen_ids == (99, 2) and out.rejected_ids == (100, 2)
    out = tokenize_preference(pref("ab", "c</s>", "d"), char_tok, add_eos=False, **NO_LIMIT)
    assert out.chosen_ids == (99, 2) and out.rejected_ids == (100,)


def test_eos_once_with_the_chat_template(chat_tok):
    record = Record({"prompt": "hi", "chosen": "good movie", "rejected": "bad movie"}, "dataset[0]")
    out = tokenize_preference(render_preference(record, chat_tok), chat_tok, **NO_LIMIT)
    for ids in (out.chosen_ids, out.rejected_ids):
        assert ids.count(chat_tok.eos_token_id) == 1 and ids[-1] == chat_tok.eos_token_id
    # The prompt's own <|im_end|> (closing the user turn) stays: exactly one there too.
    assert out.prompt_ids.count(chat_tok.eos_token_id) == 1


def test_prompt_trimmed_from_the_left_completion_from_the_right(char_tok_nobos):
    # prompt "abcdef" -> keep the last 3: d e f = 100 101 102; budget 5 - 3 = 2 per completion.
    out = tokenize_preference(pref("abcdef", "ghij", "k"), char_tok_nobos, max_length=5, max_prompt_length=3)
    assert out.prompt_ids == (100, 101, 102)
    assert out.chosen_ids == (103, 104)  # "gh"; "ij" and the EOS are cut
    assert out.rejected_ids == (107, 2)  # "k" + EOS fits exactly


def test_no_prompt_limit_and_a_long_prompt_leaves_no_room(char_tok_nobos):
    with pytest.raises(SkipExample) as err:
        tokenize_preference(pref("abcde", "x", "y"), char_tok_nobos, max_length=5, max_prompt_length=None)
    assert err.value.reason == "completion fully truncated" and err.value.origin == "f.jsonl:4"
    out = tokenize_preference(pref("abcd", "x", "y"), char_tok_nobos, max_length=5, max_prompt_length=None)
    assert (out.chosen_ids, out.rejected_ids) == ((120,), (121,))


def test_identical_pairs_are_skipped_also_after_truncation(char_tok_nobos):
    with pytest.raises(SkipExample, match="chosen and rejected are identical"):
        tokenize_preference(pref("p", "same", "same"), char_tok_nobos, **NO_LIMIT)
    # "xyA" vs "xyB": with 2 tokens of room both become "xy".
    with pytest.raises(SkipExample) as err:
        tokenize_preference(pref("p", "xyA", "xyB"), char_tok_nobos, max_length=3, max_prompt_length=1)
    assert err.value.reason == "chosen and rejected are identical"


@pytest.mark.parametrize("max_length, max_prompt_length", [(4, 4), (4, 5), (1, None), (8, 0)])
def test_bad_limits(char_tok, max_length, max_prompt_length):
    with pytest.raises(ValueError):
        tokenize_preference(
            pref("a", "b", "c"), char_tok, max_length=max_length, max_prompt_length=max_prompt_length
        )


def test_tokenize_completion(char_tok):
    text = CompletionText("abc", "xyz", "d[0]")
    assert tokenize_completion(text, char_tok, **NO_LIMIT) == TokenizedCompletion(
        (1, 97, 98, 99), (120, 121, 122, 2), "d[0]"
    )
    # prompt: BOS a b c -> keep "b c"; completion budget 4 - 2 = 2 -> "x y".
    out = tokenize_completion(text, char_tok, max_length=4, max_prompt_length=2)
    assert out == TokenizedCompletion((98, 99), (120, 121), "d[0]")
    with pytest.raises(SkipExample, match="completion fully truncated"):
        tokenize_completion(text, char_tok, max_length=4, max_prompt_length=None)
