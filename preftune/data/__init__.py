"""The data pipeline: load → render → tokenize → mask → collate, each step a small function.

Four layouts, one builder each: preference pairs (``build_preference_dataset``), SFT completions
(``build_completion_dataset``), unpaired labelled completions for KTO (``build_unpaired_dataset``)
and ranked lists for Plackett–Luce (``build_ranking_dataset``); the collate functions turn the
tokenized examples into padded batches whose sequences are :class:`Rows`.
"""

# Each step's module names what it makes public (its __all__); the package re-exports those names.
from preftune.data import collate, dataset, mask, render, tokenize
from preftune.data.collate import *  # noqa: F403
from preftune.data.dataset import *  # noqa: F403
from preftune.data.load import Record, load_records
from preftune.data.mask import *  # noqa: F403
from preftune.data.render import *  # noqa: F403
from preftune.data.tokenize import *  # noqa: F403

__all__ = ["Record", "load_records", *collate.__all__, *dataset.__all__, *mask.__all__, *render.__all__,
           *tokenize.__all__]
