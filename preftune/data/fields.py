"""Shared pieces of step 2 (render): validating a field's value, and rendering through a chat template.

Every render function (pairs, SFT completions, KTO examples, ranked lists, RL prompts) validates its
fields and applies the chat template through these, so the rules are the same for all: a text field
is a non-empty valid-Unicode string or a non-empty list of ``{role, content}`` messages (a CSV cell
may hold that list as JSON; a string read from any other format is always text); with a chat template the completion is ``full[len(prompt):]`` and the
prompt must render as a prefix of every conversation (the prompt-prefix invariant), checked for
every example. Errors name a field by the column it was read from (``Record.label``).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from preftune.data.encoding import check_text
from preftune.data.load import Record
from preftune.data.special_tokens import check_special_tokens
from preftune.errors import ConfigError, DataError

__all__ = ["Messages", "TextOrMessages", "check_texts", "field_value", "render_templated", "render_texts",
           "require_template_for_messages", "use_template", "with_system"]

Messages = list[dict[str, Any]]
TextOrMessages = str | Messages


def field_value(record: Record, name: str, *, required: bool = True) -> TextOrMessages | None:
    """Fetch and validate one field: a non-empty string or a valid, non-empty message list."""
    origin = record.origin
    label = record.label(name)
    # A null (missing Parquet/Dataset cell) counts as absent: those formats have no "no key".
    value = record.fields.get(name)
    if value is None:
        if not required:
            return None
        null = " (it is null)" if name in record.fields else ""
        raise DataError(f"{origin}: missing field '{label}'{null}")
    if isinstance(value, str):
        messages = _parse_json_messages(value, f"{origin}: field '{label}'") if record.text_cells else None
        if messages is None:
            if not value:  # whitespace-only is kept: it may be meaningful (code, formatting)
                raise DataError(f"{origin}: field '{label}' is empty")
            check_text(value, f"field '{label}'", origin)
            return value
        value = messages
    if not isinstance(value, (list, tuple)):
        raise DataError(
            f"{origin}: field '{label}' must be a string or a list of messages, got {type(value).__name__}"
        )
    return _check_messages(list(value), label, origin)


def _parse_json_messages(text: str, where: str) -> list | None:
    """A CSV cell can only hold a string: accept one that is a JSON list of message objects. (Only CSV:
    a string from JSON, Parquet or a dataset is text, even when it looks like a message list.)"""
    if not text.lstrip().startswith("["):
        return None
    try:
        parsed = json.loads(text)
    except RecursionError:
        raise DataError(f"{where} holds JSON nested too deeply to read") from None
    except ValueError:
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


def use_template(tokenizer: Any, use_chat_template: bool | None) -> bool:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template is None:
        return has_template
    if use_chat_template and not has_template:
        raise ConfigError("use_chat_template is true but the tokenizer has no chat_template")
    return use_chat_template


def require_template_for_messages(values: dict[str, Any], templated: bool, origin: str) -> None:
    if templated:
        return
    for name, value in values.items():
        if isinstance(value, list):
            raise DataError(
                f"{origin}: field '{name}' is a list of messages, which needs a chat template, but the "
                "tokenizer has none or use_chat_template is false"
            )


def render_templated(
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


def with_system(prompt: TextOrMessages, record: Record, templated: bool) -> TextOrMessages:
    """``prompt`` with the row's ``system`` text (``system_field``) as a leading system message.

    An empty or null system text adds nothing (Intel/orca_dpo_pairs leaves many empty). A system
    message needs a chat template to be rendered, and a prompt that has its own system message
    cannot take a second one.
    """
    system = record.fields.get("system")
    if system is None or system == "":
        return prompt
    label = record.label("system")
    if not isinstance(system, str):
        raise DataError(f"{record.origin}: field '{label}' must be a string, got {type(system).__name__}")
    check_text(system, f"field '{label}'", record.origin)
    if not templated:
        raise DataError(f"{record.origin}: field '{label}' (system_field) becomes a system message, which needs a "
                        "chat template, but the tokenizer has none or use_chat_template is false; drop system_field "
                        "or use a tokenizer with a chat template")
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if messages and messages[0].get("role") == "system":
        raise DataError(f"{record.origin}: field '{label}' (system_field) is set, but field "
                        f"'{record.label('prompt')}' already starts with a system message")
    return [{"role": "system", "content": system}, *messages]


def check_texts(values: Mapping[str, Any], tokenizer: Any, origin: str, *, templated: bool,
                completions: Collection[str], allow_special_tokens: bool = False) -> None:
    """What every layout checks of its fields (``values``: column label → value) before rendering them: a
    message list needs a chat template, and no text spells a special token where the tokenizer would read
    it as one (:func:`~preftune.data.special_tokens.check_special_tokens`; ``completions`` names the
    completion fields) unless ``allow_special_tokens``."""
    require_template_for_messages(values, templated, origin)
    if not allow_special_tokens:
        check_special_tokens(values, tokenizer, origin, templated=templated, completions=completions)


def render_texts(prompt: TextOrMessages, completions: Sequence[tuple[str, TextOrMessages]], tokenizer: Any,
                 origin: str, templated: bool) -> tuple[str, list[str]]:
    """The prompt and completion strings the model sees, from the prompt and ``(column label, completion)``
    pairs: as they are without a chat template (then every value is a string: see
    :func:`require_template_for_messages`), else each completion's conversation through the template
    (:func:`render_templated`) and the prompt as the first one renders it."""
    if not templated:
        return prompt, [completion for _, completion in completions]
    rendered = [render_templated(prompt, completion, name, tokenizer, origin) for name, completion in completions]
    return rendered[0][0], [text for _, text in rendered]
