"""The data layouts, by name: how a source becomes tokenized examples, and how examples become a batch.

A layout owns its columns, token count and fingerprint parts through its example class
(:class:`preftune.data.example.Example`). Adding a layout is its module (render, tokenize, example, build,
collate) plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from preftune.data.collate import collate_completions, collate_preferences, collate_rankings, collate_unpaired
from preftune.data.dataset import (
    BuiltDataset,
    build_completion_dataset,
    build_preference_dataset,
    build_ranking_dataset,
    build_unpaired_dataset,
)
from preftune.data.prompts import build_prompt_dataset


class Layout(NamedTuple):
    """``build(source, tokenizer, settings, *, split)`` → a :class:`BuiltDataset`;
    ``collate(examples, indices, *, pad_token_id)`` → a batch (None for prompts: the sampler batches them);
    ``data_format``: what a row holds, one line for errors and logs."""

    build: Callable[..., BuiltDataset]
    collate: Callable[..., Any] | None
    data_format: str


LAYOUTS: dict[str, Layout] = {
    "preference": Layout(build_preference_dataset, collate_preferences,
                         "{prompt, chosen, rejected} (or chosen/rejected conversations sharing the prompt messages)"),
    "completion": Layout(build_completion_dataset, collate_completions,
                         "{prompt, completion} (or a conversation {messages: [...]} ending with the completion)"),
    "unpaired": Layout(build_unpaired_dataset, collate_unpaired,
                       "{prompt, completion, label} with label true (desirable) or false (undesirable)"),
    "ranking": Layout(build_ranking_dataset, collate_rankings,
                      "{prompt, completions: [best, ..., worst]} (or with scores: [...], higher is better)"),
    "prompt": Layout(build_prompt_dataset, None, "{prompt} (and the columns the rewards read)"),
}
