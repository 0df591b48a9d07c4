"""The prompt of a preference pair whose ``chosen`` and ``rejected`` carry it themselves.

Three layouts of published data put the prompt inside the completions:

* **Plain strings** (Anthropic/hh-rlhf): ``chosen = "\\n\\nHuman: q\\n\\nAssistant: a1"``, ``rejected =
  "...Assistant: a2"`` and no ``prompt`` field. The prompt is their longest common prefix, found
  exactly as TRL's ``extract_prompt`` finds it (a space just before the first difference goes to
  the completions), and then cut back to the end of the last ``\\n\\nAssistant:`` turn marker in it:
  two answers that begin with the same words ("I think ...", "I don't ...") would otherwise leave
  those words in the prompt, and neither completion would be trained on them. Where the answers
  differ from their first character (the usual case) the result is TRL's, character for character.
* **Conversations** without ``prompt``: the prompt is the whole messages both start with.
* **A prompt field and conversations that repeat it** (HuggingFaceH4/ultrafeedback_binarized:
  ``prompt`` is the user's text, ``chosen``/``rejected`` are ``[user, assistant]``): the shared
  leading messages are the prompt when they end with it (for a string prompt: their last user
  message says exactly the prompt), and are stripped from both completions; when they differ from
  the prompt field, that is the error, not the chat template.

The split always leaves both completions non-empty and the prompt shared by construction, so the
prompt-prefix invariant holds for the texts rendered from it.
"""

from __future__ import annotations

import re
from typing import Any

from preftune.errors import DataError

__all__ = ["TURN_MARKER", "hh_messages", "split_implicit_prompt", "strip_repeated_prompt"]

TURN_MARKER = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def split_implicit_prompt(chosen: Any, rejected: Any, origin: str, names: tuple[str, str] = ("chosen", "rejected")
                          ) -> tuple[Any, Any, Any]:
    """``(prompt, chosen_rest, rejected_rest)`` for a pair without a prompt field (module docstring)."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _split_text(chosen, rejected, origin, names)
    if isinstance(chosen, list) and isinstance(rejected, list):
        shared = _shared_messages(chosen, rejected)
        if shared == 0:
            raise DataError(f"{origin}: no field 'prompt' and '{names[0]}'/'{names[1]}' share no leading messages, "
                            "so the prompt cannot be inferred")
        _require_rest(shared, chosen, rejected, origin, names)
        return chosen[:shared], chosen[shared:], rejected[shared:]
    raise DataError(f"{origin}: no field 'prompt', and '{names[0]}' and '{names[1]}' are not both strings or both "
                    "message lists, so no shared prompt can be inferred; add a 'prompt' field")


def strip_repeated_prompt(prompt: Any, chosen: Any, rejected: Any, origin: str,
                          names: tuple[str, str, str] = ("prompt", "chosen", "rejected")) -> tuple[Any, Any, Any]:
    """A pair with a prompt field: if both completions start with the same messages, they repeat the
    prompt; return ``(shared messages, rests)``, or raise if what they repeat is not the prompt."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        return prompt, chosen, rejected
    shared = _shared_messages(chosen, rejected)
    if shared == 0:
        return prompt, chosen, rejected
    lead = chosen[:shared]
    if _ends_with_prompt(lead, prompt):
        _require_rest(shared, chosen, rejected, origin, names[1:])
        return lead, chosen[shared:], rejected[shared:]
    raise DataError(
        f"{origin}: '{names[1]}' and '{names[2]}' both start with the same {shared} message(s) "
        f"({_roles(lead)}), so they carry their own prompt, but it is not field '{names[0]}'; the prompt would "
        f"appear twice. Drop the '{names[0]}' column (the prompt is then taken from the shared messages), or "
        f"keep only the answer in '{names[1]}'/'{names[2]}'")


def hh_messages(prompt: str, chosen: str, rejected: str) -> tuple[Any, Any, Any]:
    """An hh-rlhf transcript as messages, for a chat template: ``"\\n\\nHuman: q\\n\\nAssistant:"`` becomes
    ``[user q]`` and each answer (with any later turns) its own messages; other text is left as it is."""
    if not (prompt.startswith("\n\nHuman:") and prompt.endswith(TURN_MARKER)):
        return prompt, chosen, rejected
    return _turns(prompt)[:-1], _turns(TURN_MARKER + chosen), _turns(TURN_MARKER + rejected)


def _turns(text: str) -> list[dict[str, str]]:
    parts = _TURN.split(text)  # ["", "Human", " q", "Assistant", " a", ...]
    return [{"role": _ROLES[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]


def _split_text(chosen: str, rejected: str, origin: str, names: tuple[str, str]) -> tuple[str, str, str]:
    n = min(len(chosen), len(rejected))
    cut = next((i for i in range(n) if chosen[i] != rejected[i]), n)
    if cut == n:
        if len(chosen) == len(rejected):
            what = f"'{names[0]}' and '{names[1]}' are the same text"
        else:
            short, long = names if len(chosen) < len(rejected) else names[::-1]
            what = f"'{long}' is '{short}' plus more text, so '{short}' would have no completion"
        raise DataError(f"{origin}: no field 'prompt', and {what}; add a 'prompt' field")
    if cut > 0 and chosen[cut - 1] == " ":  # TRL's rule: the space before the answer belongs to the answer
        cut -= 1
    marker = chosen.rfind(TURN_MARKER, 0, cut)
    if marker >= 0:
        cut = marker + len(TURN_MARKER)
    if cut == 0:
        raise DataError(f"{origin}: no field 'prompt', and '{names[0]}'/'{names[1]}' differ from their first "
                        "character, so they share no prompt; add a 'prompt' field")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _shared_messages(chosen: list, rejected: list) -> int:
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    return shared


def _require_rest(shared: int, chosen: list, rejected: list, origin: str, names: tuple[str, ...]) -> None:
    for name, conv in zip(names, (chosen, rejected)):
        if shared == len(conv):
            raise DataError(f"{origin}: the whole '{name}' conversation is shared with the other one (its prompt), "
                            f"which leaves it no completion")


def _ends_with_prompt(lead: list, prompt: Any) -> bool:
    if isinstance(prompt, str):
        users = [m for m in lead if m.get("role") == "user"]
        return bool(users) and users[-1].get("content") == prompt and lead[-1].get("role") == "user"
    return len(prompt) <= len(lead) and lead[len(lead) - len(prompt):] == prompt


def _roles(messages: list) -> str:
    return ", ".join(str(m.get("role")) for m in messages)
