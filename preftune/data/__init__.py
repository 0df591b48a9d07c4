"""The data pipeline: load → render → tokenize → mask → collate, each step a small function.

``build_preference_dataset`` / ``build_completion_dataset`` run the first three over a source;
the collate functions turn the tokenized examples into padded training batches.
"""

from preftune.data.collate import CompletionBatch, PreferenceBatch, collate_completions, collate_preferences
from preftune.data.dataset import (
    BuiltDataset,
    DataSettings,
    build_completion_dataset,
    build_preference_dataset,
)
from preftune.data.load import Record, load_records
from preftune.data.mask import completion_sequence
from preftune.data.render import CompletionText, PreferenceText, render_completion, render_preference
from preftune.data.tokenize import (
    TokenizedCompletion,
    TokenizedPreference,
    tokenize_completion,
    tokenize_preference,
)

__all__ = [
    "BuiltDataset",
    "CompletionBatch",
    "CompletionText",
    "DataSettings",
    "PreferenceBatch",
    "PreferenceText",
    "Record",
    "TokenizedCompletion",
    "TokenizedPreference",
    "build_completion_dataset",
    "build_preference_dataset",
    "collate_completions",
    "collate_preferences",
    "completion_sequence",
    "load_records",
    "render_completion",
    "render_preference",
    "tokenize_completion",
    "tokenize_preference",
]
