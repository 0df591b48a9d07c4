"""Prompts for online RL: load → render → tokenize, with no completion (the policy writes it).

Any record with a ``prompt`` field works (a string or a message list), so a preference or SFT file
doubles as a prompt file. The rendered prompt is what generation continues from (the chat template's
generation prompt included); the *raw* prompt is kept for the reward functions, which see prompts the
way the data wrote them, and so are the record's other fields (``columns``: e.g. a task's ``answer``),
which reward functions receive as keyword arguments.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from preftune.data.dataset import BuiltDataset, DataSettings
from preftune.data.example import Example
from preftune.data.fields import check_texts, field_value, use_template, with_system
from preftune.data.formats import prepare
from preftune.data.load import load_records, source_name
from preftune.data.tokenize import encode_prompt
from preftune.errors import DataError

__all__ = ["TokenizedPrompt", "build_prompt_dataset", "render_prompt"]


@dataclass(frozen=True)
class TokenizedPrompt(Example):
    """A prompt for online RL: its ids, the prompt as written, and the record's other fields."""

    prompt_ids: tuple[int, ...]
    prompt: Any  # as written in the data: str or a list of messages
    origin: str
    columns: dict[str, Any] = field(default_factory=dict)  # the record's other fields, as read

    @property
    def completion_columns(self) -> tuple[tuple[int, ...], ...]:
        return ((),)  # one completion, yet to be sampled: the prompt's tokens are what it costs now

    def fingerprint_parts(self) -> list[Any]:
        # The other fields (e.g. answers) feed the rewards, so they are hashed when there are any.
        return ["Q", self.prompt_ids] + ([self.columns] if self.columns else [])


def render_prompt(prompt: Any, tokenizer: Any, templated: bool, origin: str) -> str:
    if not templated:
        return prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as e:  # noqa: BLE001 - jinja errors, including the template's own raise_exception()
        raise DataError(f"{origin}: the chat template failed on field 'prompt': {e}") from None


def build_prompt_dataset(source: Any, tokenizer: Any, settings: DataSettings, *, split: str = "train") -> BuiltDataset:
    """Every record's ``prompt`` (``prompt_field``; an UltraFeedback row's instruction), with the
    ``system_field`` message if set, rendered and cut from the left to ``max_prompt_length`` tokens."""
    templated = use_template(tokenizer, settings.use_chat_template)
    examples = []
    records = load_records(source, split=split, max_row_bytes=settings.max_row_bytes)
    for index, raw in enumerate(records):
        record = prepare(raw, settings.row_format, "prompt", index)
        prompt = field_value(record, "prompt")
        label = record.label("prompt")
        check_texts({label: prompt}, tokenizer, record.origin, templated=templated, completions=())
        text = render_prompt(with_system(prompt, record, templated), tokenizer, templated, record.origin)
        ids = encode_prompt(text, tokenizer, settings.max_prompt_length, record.origin)
        columns = {k: v for k, v in record.fields.items() if k not in ("prompt", "system")}
        examples.append(TokenizedPrompt(tuple(ids), prompt, record.origin, columns))
    return BuiltDataset(examples, Counter(), source_name(source, split), settings)
