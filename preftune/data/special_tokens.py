"""Text fields that spell a special token, such as EOS written inside a completion.

A tokenizer turns the *text* ``<|im_end|>`` (or ``</s>``, ``<|im_start|>``, ...) into the control
token wherever it appears, so a field that spells one is not trained as the characters written:
an EOS in the middle of a completion teaches the model to stop there and then carry on, and a
``<|im_start|>`` in a message forges a turn boundary the chat template never wrote. This is almost
always a data-preparation bug (text exported already templated, conversations concatenated), so it
is a DataError naming the field rather than a silent drop: a drop would hide a systematic bug
until most of the file is gone.

What is allowed:

* with a chat template, no message content may contain a special token (the template writes them);
* without one, a completion may END with EOS (preftune then does not append a second one), and a
  prompt is used exactly as written: a raw prompt is how already-templated text is given, so its
  BOS/turn tokens are intended.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from preftune.errors import DataError

__all__ = ["check_special_tokens", "special_tokens"]


def special_tokens(tokenizer: Any) -> list[str]:
    """Every string that ``tokenizer`` encodes as a special token wherever it appears in text."""
    found = {getattr(tokenizer, "eos_token", None), getattr(tokenizer, "bos_token", None)}
    found.update(getattr(tokenizer, "all_special_tokens", None) or ())
    # Added tokens marked special (e.g. <|im_start|>) are matched in text too but need not be named
    # in all_special_tokens.
    for token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(token, "special", False):
            found.add(str(token))
    return sorted(t for t in found if isinstance(t, str) and t)


def check_special_tokens(
    values: Mapping[str, Any],
    tokenizer: Any,
    origin: str,
    *,
    templated: bool,
    completions: Collection[str],
) -> None:
    """Raise DataError if a field spells a special token where the module docstring forbids it.

    ``values`` maps field names to validated strings or message lists; ``completions`` names the
    fields that are completions (only those are checked without a chat template).
    """
    tokens = special_tokens(tokenizer)
    eos = getattr(tokenizer, "eos_token", None)
    for name, value in values.items():
        if value is None or (not templated and name not in completions):
            continue
        if isinstance(value, str):
            texts = [(f"field '{name}'", value)]
        else:
            texts = [(f"field '{name}' message {i} content", m["content"]) for i, m in enumerate(value)]
        for where, text in texts:
            if not templated and eos and text.endswith(eos):
                text = text[: -len(eos)]  # one trailing EOS is allowed (module docstring)
            hits = [(text.find(t), t) for t in tokens if t in text]
            if hits:
                at, token = min(hits)
                kind = "EOS" if token == eos else "special"
                if templated:
                    hint = "the chat template writes these itself"
                elif kind == "EOS":
                    hint = "a completion may end with EOS, never contain it earlier"
                else:
                    hint = "only a raw prompt may carry special tokens"
                raise DataError(
                    f"{origin}: {where} contains the {kind} token {token!r} at character {at}, which the "
                    f"tokenizer would read as a control token, not as text; remove it ({hint})"
                )
