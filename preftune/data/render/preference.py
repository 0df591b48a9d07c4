"""Rendering a preference pair ``{prompt?, chosen, rejected, system?}``: a shared prompt and two completions.

Where the prompt lives inside the completions (hh-rlhf strings, conversations, H4's repeated user turn) see
:mod:`preftune.data.implicit_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from preftune.data.fields import check_texts, field_value, render_texts, use_template, with_system
from preftune.data.implicit_prompt import hh_messages, split_implicit_prompt, strip_repeated_prompt
from preftune.data.load import Record

__all__ = ["PreferenceText", "render_preference"]


@dataclass(frozen=True)
class PreferenceText:
    """A rendered preference pair: a shared prompt and two completions (EOS included if templated)."""

    prompt: str
    chosen: str
    rejected: str
    origin: str


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
    check_texts(values, tokenizer, origin, templated=templated, completions=names[1:])
    if prompt is None:
        prompt, chosen, rejected = split_implicit_prompt(chosen, rejected, origin, names[1:])
        if templated and isinstance(prompt, str):
            # A plain transcript ("\n\nHuman: ...\n\nAssistant:") about to go through a chat template:
            # its turns become the template's messages rather than one user message quoting them.
            prompt, chosen, rejected = hh_messages(prompt, chosen, rejected)
    else:
        prompt, chosen, rejected = strip_repeated_prompt(prompt, chosen, rejected, origin, names)
    prompt = with_system(prompt, record, templated)
    prompt_text, (chosen_text, rejected_text) = render_texts(prompt, [(names[1], chosen), (names[2], rejected)],
                                                             tokenizer, origin, templated)
    return PreferenceText(prompt_text, chosen_text, rejected_text, origin)
