"""Prompts carried inside the completions: hh-rlhf strings (against TRL's own extract_prompt),
conversations, and the H4 form whose completions repeat the prompt."""

from __future__ import annotations

import pytest

from preftune.data.implicit_prompt import hh_messages, split_implicit_prompt, strip_repeated_prompt
from preftune.data.load import Record
from preftune.data.render import PreferenceText, render_preference
from preftune.errors import DataError

trl_data = pytest.importorskip("trl.data_utils")


def hh(*turns: str) -> str:
    """An Anthropic/hh-rlhf transcript: alternating Human / Assistant turns."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# Rows in hh-rlhf's published form: the answers differ from their first character.
HH_ROWS = [
    (hh("What is a cat?", "A small furry animal."), hh("What is a cat?", "No idea.")),
    (hh("Hi", "Hello! How can I help?", "Tell me a joke.", "Why did the chicken cross the road?"),
     hh("Hi", "Hello! How can I help?", "Tell me a joke.", "I would rather not.")),
    (hh("Name three colours.", "Red, green and blue.", "And two more?", "Yellow and purple."),
     hh("Name three colours.", "Red, green and blue.", "And two more?", "Cats.")),
]


@pytest.mark.parametrize("chosen, rejected", HH_ROWS)
def test_hh_rows_split_exactly_as_trl_extract_prompt(chosen, rejected):
    expected = trl_data.extract_prompt({"chosen": chosen, "rejected": rejected})
    assert split_implicit_prompt(chosen, rejected, "row") == (
        expected["prompt"], expected["chosen"], expected["rejected"])
    # maybe_extract_prompt takes the same path for rows without a prompt column.
    assert trl_data.maybe_extract_prompt({"chosen": chosen, "rejected": rejected}) == expected


def test_hh_prompt_ends_at_the_last_assistant_marker():
    prompt, chosen, rejected = split_implicit_prompt(*HH_ROWS[1], "row")
    assert prompt == hh("Hi", "Hello! How can I help?", "Tell me a joke.") + "\n\nAssistant:"
    assert (chosen, rejected) == (" Why did the chicken cross the road?", " I would rather not.")


def test_answers_that_begin_alike_are_cut_back_to_the_turn_marker_where_trl_is_not():
    chosen, rejected = hh("Is it safe?", "I think so."), hh("Is it safe?", "I don't know.")
    prompt, c, r = split_implicit_prompt(chosen, rejected, "row")
    assert prompt == "\n\nHuman: Is it safe?\n\nAssistant:"
    assert (c, r) == (" I think so.", " I don't know.")
    # TRL's character-level prefix keeps the shared "I" in the prompt (the deliberate difference).
    assert trl_data.extract_prompt({"chosen": chosen, "rejected": rejected})["prompt"].endswith("Assistant: I")


def test_plain_strings_without_turn_markers_follow_trl():
    chosen, rejected = "The film was great fun", "The film was dull"
    expected = trl_data.extract_prompt({"chosen": chosen, "rejected": rejected})
    assert split_implicit_prompt(chosen, rejected, "row") == (
        expected["prompt"], expected["chosen"], expected["rejected"]) == ("The film was", " great fun", " dull")


@pytest.mark.parametrize("chosen, rejected, message", [
    ("same", "same", "'chosen' and 'rejected' are the same text"),
    ("abc", "abcdef", "'rejected' is 'chosen' plus more text, so 'chosen' would have no completion"),
    ("yes", "no", "'chosen'/'rejected' differ from their first character, so they share no prompt"),
])
def test_strings_that_leave_no_prompt_or_no_completion_are_errors(chosen, rejected, message):
    with pytest.raises(DataError, match=f"^row: no field 'prompt', and {message}; add a 'prompt' field$"):
        split_implicit_prompt(chosen, rejected, "row")


def test_conversations_split_as_trl_extract_prompt():
    shared = [user("hi"), assistant("hello"), user("rate it")]
    chosen, rejected = shared + [assistant("good")], shared + [assistant("bad")]
    expected = trl_data.extract_prompt({"chosen": chosen, "rejected": rejected})
    assert split_implicit_prompt(chosen, rejected, "row") == (
        expected["prompt"], expected["chosen"], expected["rejected"])


def test_h4_rows_strip_the_repeated_user_turn_as_trl_does():
    # HuggingFaceH4/ultrafeedback_binarized: prompt string, chosen/rejected = [user, assistant].
    row = {"prompt": "Write a haiku.", "chosen": [user("Write a haiku."), assistant("Old pond, a frog.")],
           "rejected": [user("Write a haiku."), assistant("No.")]}
    expected = trl_data.maybe_extract_prompt(dict(row))
    assert strip_repeated_prompt(row["prompt"], row["chosen"], row["rejected"], "row") == (
        expected["prompt"], expected["chosen"], expected["rejected"])


def test_a_prompt_list_repeated_by_the_completions_is_stripped_too():
    prompt = [{"role": "system", "content": "Be brief."}, user("hi")]
    out = strip_repeated_prompt(prompt, prompt + [assistant("a")], prompt + [assistant("b")], "row")
    assert out == (prompt, [assistant("a")], [assistant("b")])


def test_completions_that_repeat_a_different_prompt_name_the_real_cause():
    with pytest.raises(DataError, match="^row: 'chosen' and 'rejected' both start with the same 1 message\\(s\\) "
                                        "\\(user\\), so they carry their own prompt, but it is not field 'prompt'"):
        strip_repeated_prompt("Write a poem.", [user("Write a haiku."), assistant("a")],
                              [user("Write a haiku."), assistant("b")], "row")


def test_h4_rows_render_with_the_prompt_once(chat_tok):
    record = Record({"prompt": "hi", "chosen": [user("hi"), assistant("yes")],
                     "rejected": [user("hi"), assistant("no")]}, "row 1")
    out = render_preference(record, chat_tok)
    assert out == PreferenceText("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                                 "yes<|im_end|>", "no<|im_end|>", "row 1")


def test_hh_transcripts_become_template_turns(chat_tok):
    chosen, rejected = HH_ROWS[1]
    out = render_preference(Record({"chosen": chosen, "rejected": rejected}, "row 1"), chat_tok)
    assert out.prompt == ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                          "<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n")
    assert out.chosen == "Why did the chicken cross the road?<|im_end|>"
    assert out.rejected == "I would rather not.<|im_end|>"


def test_hh_transcripts_without_a_template_stay_text(plain_tok):
    chosen, rejected = HH_ROWS[0]
    out = render_preference(Record({"chosen": chosen, "rejected": rejected}, "row 1"), plain_tok)
    assert out == PreferenceText("\n\nHuman: What is a cat?\n\nAssistant:", " A small furry animal.", " No idea.",
                                 "row 1")


def test_hh_messages_leaves_other_text_alone():
    assert hh_messages("Review:", " good", " bad") == ("Review:", " good", " bad")
