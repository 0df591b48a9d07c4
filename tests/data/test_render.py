"""render_preference / render_completion: field validation, implicit prompts, chat templates."""

from __future__ import annotations

import copy
import csv
import json

import pytest

from preftune.data.load import Record, load_records
from preftune.data.render import CompletionText, PreferenceText, render_completion, render_preference
from preftune.errors import ConfigError, DataError

# Written out by hand from preftune.testing.CHATML_TEMPLATE.
HI_PROMPT = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def rec(**fields):
    return Record(fields, "dataset[7]")


def test_missing_field_names_file_line_and_field(tmp_path, plain_tok):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n\n{"prompt": "p", "rejected": "b"}\n')
    records = load_records(path)
    render_preference(records[0], plain_tok)
    with pytest.raises(DataError) as err:
        render_preference(records[1], plain_tok)
    assert str(err.value) == f"{path}:3: missing field 'chosen'"


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"prompt": "p", "chosen": 5, "rejected": "b"},
            "field 'chosen' must be a string or a list of messages, got int",
        ),
        ({"prompt": "p", "chosen": "a", "rejected": None}, "missing field 'rejected' (it is null)"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "field 'prompt' is empty"),
        ({"prompt": "p", "chosen": "a", "rejected": ""}, "field 'rejected' is empty"),
        ({"prompt": "p", "chosen": [], "rejected": "b"}, "field 'chosen' is an empty list of messages"),
        (
            {"prompt": "p", "chosen": ["x"], "rejected": "b"},
            "field 'chosen' message 0 must be an object with 'role' and 'content', got str",
        ),
        (
            {"prompt": "p", "chosen": [{"role": "user"}], "rejected": "b"},
            "field 'chosen' message 0: 'content' must be a string, got missing",
        ),
        (
            {"prompt": [{"role": 1, "content": "c"}], "chosen": "a", "rejected": "b"},
            "field 'prompt' message 0: 'role' must be a string, got int",
        ),
    ],
)
def test_field_errors_name_origin_and_field(fields, message, chat_tok):
    with pytest.raises(DataError) as err:
        render_preference(rec(**fields), chat_tok)
    assert str(err.value) == f"dataset[7]: {message}"


def test_without_template_strings_are_used_as_given(plain_tok):
    out = render_preference(rec(prompt="Q: 2+2?", chosen=" 4", rejected=" 5"), plain_tok)
    assert out == PreferenceText("Q: 2+2?", " 4", " 5", "dataset[7]")


def test_messages_without_template_need_one(plain_tok, chat_tok):
    with pytest.raises(
        DataError, match=r"^dataset\[7\]: field 'chosen' is a list of messages, which needs a chat template"
    ):
        render_preference(rec(prompt="p", chosen=[assistant("a")], rejected="b"), plain_tok)
    with pytest.raises(DataError, match="needs a chat template"):
        render_preference(
            rec(prompt="p", chosen=[assistant("a")], rejected="b"), chat_tok, use_chat_template=False
        )


def test_plain_strings_without_prompt_or_shared_start(chat_tok):
    with pytest.raises(DataError, match=r"^dataset\[7\]: no field 'prompt', and 'chosen'/'rejected' differ from "
                                        "their first character, so they share no prompt; add a 'prompt' field"):
        render_preference(rec(chosen="a", rejected="b"), chat_tok)


def test_chat_template_with_string_fields(chat_tok):
    out = render_preference(rec(prompt="hi", chosen="yes", rejected="no"), chat_tok)
    # The "\n" the template writes after <|im_end|> is cut so that EOS ends the completion.
    assert out == PreferenceText(HI_PROMPT, "yes<|im_end|>", "no<|im_end|>", "dataset[7]")


def test_use_chat_template_false_and_true(chat_tok, plain_tok):
    assert (
        render_preference(
            rec(prompt="hi", chosen="a", rejected="b"), chat_tok, use_chat_template=False
        ).prompt
        == "hi"
    )
    with pytest.raises(ConfigError, match="use_chat_template"):
        render_preference(rec(prompt="hi", chosen="a", rejected="b"), plain_tok, use_chat_template=True)


def test_implicit_prompt_single_turn(chat_tok):
    out = render_preference(
        rec(chosen=[user("hi"), assistant("yes")], rejected=[user("hi"), assistant("no")]), chat_tok
    )
    assert out == PreferenceText(HI_PROMPT, "yes<|im_end|>", "no<|im_end|>", "dataset[7]")


def test_implicit_prompt_multi_turn_keeps_whole_shared_messages(chat_tok):
    shared = [user("hi"), assistant("hello"), user("rate it")]
    out = render_preference(
        rec(chosen=shared + [assistant("good")], rejected=shared + [assistant("bad")]), chat_tok
    )
    assert out.prompt == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>user\nrate it<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (out.chosen, out.rejected) == ("good<|im_end|>", "bad<|im_end|>")


def test_implicit_prompt_only_whole_messages_are_shared(chat_tok):
    # Same role, content differs only after "go": the prefix is whole messages, not characters.
    out = render_preference(
        rec(chosen=[user("hi"), assistant("good")], rejected=[user("hi"), assistant("goo")]), chat_tok
    )
    assert (out.prompt, out.chosen, out.rejected) == (HI_PROMPT, "good<|im_end|>", "goo<|im_end|>")


def test_implicit_prompt_errors(chat_tok):
    with pytest.raises(DataError, match="share no leading messages"):
        render_preference(
            rec(chosen=[user("a"), assistant("x")], rejected=[user("b"), assistant("y")]), chat_tok
        )
    with pytest.raises(DataError, match="whole 'chosen' conversation is shared"):
        render_preference(rec(chosen=[user("a")], rejected=[user("a"), assistant("y")]), chat_tok)


def test_csv_cell_with_json_messages(tmp_path, chat_tok):
    path = tmp_path / "prefs.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["chosen", "rejected"])
        w.writerow([json.dumps([user("hi"), assistant("yes")]), json.dumps([user("hi"), assistant("no")])])
        w.writerow(["[1] is a citation", json.dumps([user("hi"), assistant("no")])])
    first, second = load_records(path)
    assert render_preference(first, chat_tok) == PreferenceText(
        HI_PROMPT, "yes<|im_end|>", "no<|im_end|>", f"{path} row 1"
    )
    # A cell that merely starts with "[" is text, so this row is strings-vs-messages without a prompt.
    with pytest.raises(DataError, match=r"row 2: no field 'prompt', and 'chosen' and 'rejected' are not both strings"):
        render_preference(second, chat_tok)


def test_template_that_breaks_the_prefix_invariant(plain_tok):
    tok = copy.deepcopy(plain_tok)
    # The generation prompt says "Assistant says:" but a rendered answer says "assistant:".
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant says: ' }}{% endif %}"
    )
    with pytest.raises(DataError) as err:
        render_preference(rec(prompt="hi", chosen="a", rejected="b"), tok)
    assert str(err.value) == (
        "dataset[7]: the chat template does not render the prompt as a prefix of the 'chosen' "
        "conversation (prompt-prefix invariant)"
    )


def test_template_exception_is_reported_with_origin(plain_tok):
    tok = copy.deepcopy(plain_tok)
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(
        DataError, match=r"^dataset\[7\]: the chat template failed on the 'chosen'.*roles must alternate"
    ):
        render_preference(rec(prompt="hi", chosen="a", rejected="b"), tok)


def test_render_completion_prompt_and_completion(chat_tok, plain_tok):
    assert render_completion(rec(prompt="hi", completion="yes"), chat_tok) == CompletionText(
        HI_PROMPT, "yes<|im_end|>", "dataset[7]"
    )
    assert render_completion(
        rec(prompt="hi", response="yes"), plain_tok, completion_field="response"
    ) == CompletionText("hi", "yes", "dataset[7]", "response")
    with pytest.raises(DataError, match=r"^dataset\[7\]: missing field 'completion'$"):
        render_completion(rec(prompt="hi"), chat_tok)
    with pytest.raises(DataError, match=r"^dataset\[7\]: field 'completion' is empty$"):
        render_completion(rec(prompt="hi", completion=""), chat_tok)


def test_render_completion_messages_form(chat_tok):
    out = render_completion(rec(messages=[user("hi"), assistant("yes")]), chat_tok)
    assert out == CompletionText(HI_PROMPT, "yes<|im_end|>", "dataset[7]", "messages")
    with pytest.raises(DataError, match="last message must be the assistant's.*got role 'user'"):
        render_completion(rec(messages=[assistant("yes"), user("hi")]), chat_tok)
    with pytest.raises(DataError, match="at least one message before the assistant's"):
        render_completion(rec(messages=[assistant("yes")]), chat_tok)
