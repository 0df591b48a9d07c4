"""Step 2: turn a raw record into the exact prompt and completion *strings* the model will see.

Rendering is kept apart from tokenization so that the chat template is applied in exactly one
place. With a chat template the completion is defined as ``full[len(prompt):]`` where ``prompt``
is the conversation rendered with the generation prompt and ``full`` the conversation including
the answer; this is only sound if the template renders the former as a prefix of the latter
(the *prompt-prefix invariant*), which is checked for every example rather than assumed
(:mod:`preftune.data.fields`).

Text fields must be valid Unicode and must not spell a special token where the tokenizer would
read it as a control token (see :mod:`preftune.data.special_tokens`); an empty string field is an
error. Whitespace-only text is kept: it may be the intended answer (code, formatting), and it
still encodes to at least one token. (An answer *message* with empty content renders to the EOS
alone; the dataset builders reject that for training data, while the reward scorer uses it on
purpose to score a policy that stopped at once.) Where the prompt lives inside the completions
(hh-rlhf strings, conversations, H4's repeated user turn) see :mod:`preftune.data.implicit_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from preftune.data.fields import (
    field_value,
    render_templated,
    require_template_for_messages,
    use_template,
    with_system,
)
from preftune.data.implicit_prompt import hh_messages, split_implicit_prompt, strip_repeated_prompt
from preftune.data.load import Record
from preftune.data.special_tokens import check_special_tokens
from preftune.errors import DataError

__all__ = ["CompletionText", "PreferenceText", "render_completion", "render_preference"]


@dataclass(frozen=True)
class PreferenceText:
    """A rendered preference pair: a shared prompt and two completions (EOS included if templated)."""

    prompt: str
    chosen: str
    rejected: str
    origin: str


@dataclass(frozen=True)
class CompletionText:
    """A rendered SFT example: one prompt and the completion to learn (``field`` names it in errors)."""

    prompt: str
    completion: str
    origin: str
    field: str = "completion"


def render_preference(
    record: Record, tokenizer: Any, *, use_chat_template: bool | None = None
) -> PreferenceText:
    """Render ``{prompt?, chosen, rejected, system?}`` into strings; see the module docstring.

    Without a ``prompt`` field the prompt is inferred from what ``chosen`` and ``rejected`` share at
    their start (:func:`~preftune.data.implicit_prompt.split_implicit_prompt`); with one, completions
    that repeat it are stripped of it. ``use_chat_template=None`` uses the tokenizer's template iff it
    has one.
    """
    origin = record.origin
    names = (record.label("prompt"), record.label("chosen"), record.label("rejected"))
    chosen = field_value(record, "chosen")
    rejected = field_value(record, "rejected")
    prompt = field_value(record, "prompt", required=False)
    templated = use_template(tokenizer, use_chat_template)
    values = dict(zip(names, (prompt, chosen, rejected)))
    require_template_for_messages(values, templated, origin)
    check_special_tokens(values, tokenizer, origin, templated=templated, completions=names[1:])
    if prompt is None:
        prompt, chosen, rejected = split_implicit_prompt(chosen, rejected, origin, names[1:])
        if templated and isinstance(prompt, str):
            # A plain transcript ("\n\nHuman: ...\n\nAssistant:") about to go through a chat template:
            # its turns become the template's messages rather than one user message quoting them.
            prompt, chosen, rejected = hh_messages(prompt, chosen, rejected)
    else:
        prompt, chosen, rejected = strip_repeated_prompt(prompt, chosen, rejected, origin, names)
    prompt = with_system(prompt, record, templated)
    if not templated:
        return PreferenceText(prompt, chosen, rejected, origin)
    prompt_text, chosen_text = render_templated(prompt, chosen, names[1], tokenizer, origin)
    _, rejected_text = render_templated(prompt, rejected, names[2], tokenizer, origin)
    return PreferenceText(prompt_text, chosen_text, rejected_text, origin)


def render_completion(
    record: Record,
    tokenizer: Any,
    *,
    use_chat_template: bool | None = None,
    completion_field: str = "completion",
    allow_special_tokens: bool = False,
) -> CompletionText:
    """Render an SFT record: ``{prompt, <completion_field>}`` or ``{messages: [...]}``.

    ``allow_special_tokens`` skips the special-token check (preftune.data.special_tokens): for text a
    policy generated, which is scored as the tokenizer reads it rather than refused mid-run.

    In the ``messages`` form the last message must be the assistant's: it is the completion and
    everything before it is the prompt.
    """
    origin = record.origin
    if "messages" in record.fields and completion_field not in record.fields:
        messages = field_value(record, "messages")
        if isinstance(messages, str):
            raise DataError(f"{origin}: field 'messages' must be a list of messages, got a plain string")
        if messages[-1]["role"] != "assistant":
            raise DataError(
                f"{origin}: field 'messages': the last message must be the assistant's (it is the "
                f"completion to learn), got role '{messages[-1]['role']}'"
            )
        if len(messages) < 2:
            raise DataError(f"{origin}: field 'messages' needs at least one message before the assistant's")
        prompt, completion = messages[:-1], messages[-1:]
        field, values = "messages", {"messages": messages}
    else:
        prompt = field_value(record, "prompt")
        completion = field_value(record, completion_field)
        field, values = completion_field, {"prompt": prompt, completion_field: completion}
    templated = use_template(tokenizer, use_chat_template)
    require_template_for_messages(values, templated, origin)
    if not allow_special_tokens:
        check_special_tokens(values, tokenizer, origin, templated=templated, completions=(completion_field,))
    prompt = with_system(prompt, record, templated)
    if not templated:
        return CompletionText(prompt, completion, origin, field)
    prompt_text, completion_text = render_templated(prompt, completion, field, tokenizer, origin)
    return CompletionText(prompt_text, completion_text, origin, field)
