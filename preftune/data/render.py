"""Step 2: turn a raw record into the exact prompt and completion *strings* the model will see.

Rendering is kept apart from tokenization so that the chat template is applied in exactly one
place. With a chat template the completion is defined as ``full[len(prompt):]`` where ``prompt``
is the conversation rendered with the generation prompt and ``full`` the conversation including
the answer; this is only sound if the template renders the former as a prefix of the latter
(the *prompt-prefix invariant*), which is checked for every example rather than assumed.

Text fields must be valid Unicode and must not spell a special token where the tokenizer would
read it as a control token (see :mod:`preftune.data.special_tokens`); an empty string field is an
error. Whitespace-only text is kept: it may be the intended answer (code, formatting), and it
still encodes to at least one token. (An answer *message* with empty content renders to the EOS
alone; the dataset builders reject that for training data, while the reward scorer uses it on
purpose to score a policy that stopped at once.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from preftune.data.encoding import check_text
from preftune.data.load import Record
from preftune.data.special_tokens import check_special_tokens
from preftune.errors import ConfigError, DataError

__all__ = ["CompletionText", "PreferenceText", "render_completion", "render_preference"]

Messages = list[dict[str, Any]]
TextOrMessages = str | Messages


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
    """Render ``{prompt?, chosen, rejected}`` into strings; see the module docstring.

    Without a ``prompt`` field the prompt is inferred as the messages that ``chosen`` and
    ``rejected`` share at their start, the usual layout of conversational preference datasets.
    ``use_chat_template=None`` uses the tokenizer's template iff it has one.
    """
    origin = record.origin
    chosen = _value(record, "chosen")
    rejected = _value(record, "rejected")
    prompt = _value(record, "prompt", required=False)
    templated = _use_template(tokenizer, use_chat_template)
    values = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    _require_template_for_messages(values, templated, origin)
    check_special_tokens(values, tokenizer, origin, templated=templated, completions=("chosen", "rejected"))
    if prompt is None:
        prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected, origin)
    if not templated:
        return PreferenceText(prompt, chosen, rejected, origin)
    prompt_text, chosen_text = _render_templated(prompt, chosen, "chosen", tokenizer, origin)
    _, rejected_text = _render_templated(prompt, rejected, "rejected", tokenizer, origin)
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
        messages = _value(record, "messages")
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
        prompt = _value(record, "prompt")
        completion = _value(record, completion_field)
        field, values = completion_field, {"prompt": prompt, completion_field: completion}
    templated = _use_template(tokenizer, use_chat_template)
    _require_template_for_messages(values, templated, origin)
    if not allow_special_tokens:
        check_special_tokens(values, tokenizer, origin, templated=templated, completions=(completion_field,))
    if not templated:
        return CompletionText(prompt, completion, origin, field)
    prompt_text, completion_text = _render_templated(prompt, completion, field, tokenizer, origin)
    return CompletionText(prompt_text, completion_text, origin, field)


def _value(record: Record, name: str, *, required: bool = True) -> TextOrMessages | None:
    """Fetch and validate one field: a non-empty string or a valid, non-empty message list."""
    origin = record.origin
    # A null (missing Parquet/Dataset cell) counts as absent: those formats have no "no key".
    value = record.fields.get(name)
    if value is None:
        if not required:
            return None
        null = " (it is null)" if name in record.fields else ""
        raise DataError(f"{origin}: missing field '{name}'{null}")
    if isinstance(value, str):
        messages = _parse_json_messages(value)
        if messages is None:
            if not value:  # whitespace-only is kept: it may be meaningful (code, formatting)
                raise DataError(f"{origin}: field '{name}' is empty")
            check_text(value, f"field '{name}'", origin)
            return value
        value = messages
    if not isinstance(value, (list, tuple)):
        raise DataError(
            f"{origin}: field '{name}' must be a string or a list of messages, got {type(value).__name__}"
        )
    return _check_messages(list(value), name, origin)


def _parse_json_messages(text: str) -> list | None:
    """A CSV cell can only hold a string: accept one that is a JSON list of message objects."""
    if not text.lstrip().startswith("["):
        return None
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return None  # text that merely starts with '[' is ordinary text
    if isinstance(parsed, list) and parsed and all(isinstance(m, dict) for m in parsed):
        return parsed
    return None


def _check_messages(messages: list, name: str, origin: str) -> Messages:
    if not messages:
        raise DataError(f"{origin}: field '{name}' is an empty list of messages")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise DataError(
                f"{origin}: field '{name}' message {i} must be an object with 'role' and 'content', "
                f"got {type(message).__name__}"
            )
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                found = "missing" if key not in message else type(message[key]).__name__
                raise DataError(
                    f"{origin}: field '{name}' message {i}: '{key}' must be a string, got {found}"
                )
            check_text(message[key], f"field '{name}' message {i} '{key}'", origin)
    return [dict(m) for m in messages]


def _use_template(tokenizer: Any, use_chat_template: bool | None) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template is None:
        return has_template
    if use_chat_template and not has_template:
        raise ConfigError("use_chat_template is true but the tokenizer has no chat_template")
    return use_chat_template


def _require_template_for_messages(values: dict[str, Any], templated: bool, origin: str) -> None:
    if templated:
        return
    for name, value in values.items():
        if isinstance(value, list):
            raise DataError(
                f"{origin}: field '{name}' is a list of messages, which needs a chat template, but the "
                "tokenizer has none or use_chat_template is false"
            )


def _split_implicit_prompt(chosen: TextOrMessages, rejected: TextOrMessages, origin: str):
    """Infer the prompt as the whole messages that both conversations start with."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise DataError(
            f"{origin}: missing field 'prompt': a prompt is required unless 'chosen' and 'rejected' "
            "are conversations (message lists) that start with the same messages"
        )
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise DataError(
            f"{origin}: no field 'prompt' and 'chosen'/'rejected' share no leading messages, so the "
            "prompt cannot be inferred"
        )
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if shared == len(conv):
            raise DataError(
                f"{origin}: no field 'prompt' and the whole '{name}' conversation is shared with the "
                "other one, which leaves it no completion"
            )
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _render_templated(
    prompt: TextOrMessages, completion: TextOrMessages, name: str, tokenizer: Any, origin: str
) -> tuple[str, str]:
    prompt_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    completion_msgs = (
        [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    )
    try:
        prompt_text = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(prompt_msgs + completion_msgs, tokenize=False)
    except Exception as e:  # noqa: BLE001 - jinja errors, including the template's own raise_exception()
        raise DataError(f"{origin}: the chat template failed on the '{name}' conversation: {e}") from None
    if not full_text.startswith(prompt_text):
        raise DataError(
            f"{origin}: the chat template does not render the prompt as a prefix of the '{name}' "
            "conversation (prompt-prefix invariant)"
        )
    completion_text = full_text[len(prompt_text) :]
    eos = getattr(tokenizer, "eos_token", None)
    if eos and eos in completion_text:
        # Templates add e.g. "\n" after <|im_end|>; training on it would teach the model to emit
        # text after EOS, and tokenize would then append a second EOS.
        completion_text = completion_text[: completion_text.rindex(eos) + len(eos)]
    if not completion_text:
        raise DataError(f"{origin}: field '{name}' renders to an empty completion with this chat template")
    return prompt_text, completion_text
