"""The data pipeline: load → render → tokenize → mask → collate, each step a small function.

Four layouts, one builder each: preference pairs (``build_preference_dataset``), SFT completions
(``build_completion_dataset``), unpaired labelled completions for KTO (``build_unpaired_dataset``)
and ranked lists for Plackett–Luce (``build_ranking_dataset``); the collate functions turn the
tokenized examples into padded batches whose sequences are :class:`Rows`.
"""

from preftune.data.collate import (
    CompletionBatch,
    PreferenceBatch,
    RankingBatch,
    Rows,
    UnpairedBatch,
    collate_completions,
    collate_preferences,
    collate_rankings,
    collate_unpaired,
)
from preftune.data.dataset import (
    BuiltDataset,
    DataSettings,
    assign_kl_partners,
    build_completion_dataset,
    build_preference_dataset,
    build_ranking_dataset,
    build_unpaired_dataset,
)
from preftune.data.load import Record, load_records
from preftune.data.mask import completion_sequence
from preftune.data.render import (
    CompletionText,
    PreferenceText,
    RankingText,
    UnpairedText,
    render_completion,
    render_preference,
    render_ranking,
    render_unpaired,
)
from preftune.data.tokenize import (
    TokenizedCompletion,
    TokenizedPreference,
    TokenizedRanking,
    TokenizedUnpaired,
    tokenize_completion,
    tokenize_preference,
    tokenize_ranking,
    tokenize_unpaired,
)

__all__ = [
    "BuiltDataset", "CompletionBatch", "CompletionText", "DataSettings", "PreferenceBatch", "PreferenceText",
    "RankingBatch", "RankingText", "Record", "Rows", "TokenizedCompletion", "TokenizedPreference",
    "TokenizedRanking", "TokenizedUnpaired", "UnpairedBatch", "UnpairedText", "assign_kl_partners",
    "build_completion_dataset", "build_preference_dataset", "build_ranking_dataset", "build_unpaired_dataset",
    "collate_completions", "collate_preferences", "collate_rankings", "collate_unpaired", "completion_sequence",
    "load_records", "render_completion", "render_preference", "render_ranking", "render_unpaired",
    "tokenize_completion", "tokenize_preference", "tokenize_ranking", "tokenize_unpaired",
]
