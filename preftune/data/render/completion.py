"""Rendering an SFT example: ``{prompt, completion}`` or a conversation ``{messages: [...]}`` whose last
message is the completion to learn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from preftune.data.fields import check_texts, field_value, render_texts, use_template, with_system
from preftune.data.load import Record
from preftune.errors import DataError

__all__ = ["CompletionText", "render_completion"]


@dataclass(frozen=True)
class CompletionText:
    """A rendered SFT example: one prompt and the completion to learn (``field`` names it in errors)."""

    prompt: str
    completion: str
    origin: str
    field: str = "completion"


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
    check_texts(values, tokenizer, origin, templated=templated, completions=(completion_field,),
                allow_special_tokens=allow_special_tokens)
    prompt = with_system(prompt, record, templated)
    prompt_text, (completion_text,) = render_texts(prompt, [(field, completion)], tokenizer, origin, templated)
    return CompletionText(prompt_text, completion_text, origin, field)
