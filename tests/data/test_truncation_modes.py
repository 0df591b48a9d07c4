"""truncation_mode and max_completion_length, against TRL 1.16's own collator (DataCollatorForPreference)."""

from collections import Counter

import pytest
from trl.trainer.dpo_trainer import DataCollatorForPreference

from preftune.data.render import PreferenceText
from preftune.data.tokenize import COMPLETION_CUT, PROMPT_CUT, tokenize_preference
from preftune.errors import SkipExample
from preftune.testing import tiny_tokenizer

TOK = tiny_tokenizer()
TEXT = PreferenceText(prompt="the prompt has quite a few words in it, more than a few",
                      chosen="a long chosen answer with many many words", rejected="short no", origin="row 1")


def trl_sequences(ex, max_length: int, mode: str) -> list[list[int]]:
    """TRL's truncated (prompt + chosen, prompt + rejected) for our token ids."""
    collator = DataCollatorForPreference(pad_token_id=TOK.pad_token_id, max_length=max_length, truncation_mode=mode)
    batch = collator.torch_call([{"prompt_ids": list(ex.prompt_ids), "chosen_ids": list(ex.chosen_ids),
                                  "rejected_ids": list(ex.rejected_ids)}])
    return [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def tokenized(**limits):
    notes = Counter()
    return tokenize_preference(TEXT, TOK, max_prompt_length=None, notes=notes, **limits), notes


def test_keep_start_is_trls_cut():
    whole, _ = tokenized(max_length=None)
    prompt = len(whole.prompt_ids)
    for max_length in (prompt + 1, prompt + 3, prompt + len(whole.chosen_ids) - 1):
        ex, notes = tokenized(max_length=max_length, truncation_mode="keep_start")
        ours = [list(ex.prompt_ids + ex.chosen_ids), list(ex.prompt_ids + ex.rejected_ids)]
        assert ours == trl_sequences(whole, max_length, "keep_start")
        assert ex.prompt_ids == whole.prompt_ids and notes[PROMPT_CUT] == 0 and notes[COMPLETION_CUT] >= 1


def test_keep_start_drops_a_prompt_that_fills_max_length_as_trl_does():
    whole, _ = tokenized(max_length=None)
    with pytest.raises(SkipExample, match="completion fully truncated"):
        tokenized(max_length=len(whole.prompt_ids), truncation_mode="keep_start")


def test_keep_end_cuts_the_prompt_start_once_for_both_completions():
    whole, _ = tokenized(max_length=None)
    max_length = len(whole.chosen_ids) + 4
    ex, notes = tokenized(max_length=max_length, truncation_mode="keep_end")
    assert ex.prompt_ids == whole.prompt_ids[-4:] and notes[PROMPT_CUT] == 1
    assert ex.chosen_ids == whole.chosen_ids and ex.rejected_ids == whole.rejected_ids   # completions whole
    trl_chosen, trl_rejected = trl_sequences(whole, max_length, "keep_end")
    # The longest completion's sequence is TRL's exactly; TRL keeps more prompt before the shorter one (it cuts
    # each sequence on its own), preftune one shared prompt: the shorter sequence is a suffix of TRL's.
    assert list(ex.prompt_ids + ex.chosen_ids) == trl_chosen
    ours_rejected = list(ex.prompt_ids + ex.rejected_ids)
    assert trl_rejected[-len(ours_rejected):] == ours_rejected


def test_keep_end_keeps_one_prompt_token_and_then_cuts_the_completion_end():
    ex, _ = tokenized(max_length=5, truncation_mode="keep_end")
    assert len(ex.prompt_ids) == 1 and len(ex.chosen_ids) == 4 and len(ex.rejected_ids) <= 4


def test_max_completion_length_cuts_completions_from_the_right():
    whole, _ = tokenized(max_length=None)
    ex, notes = tokenized(max_length=None, max_completion_length=3)
    assert ex.chosen_ids == whole.chosen_ids[:3] and ex.rejected_ids == whole.rejected_ids[:3]
    assert notes[COMPLETION_CUT] == sum(len(c) > 3 for c in (whole.chosen_ids, whole.rejected_ids))
