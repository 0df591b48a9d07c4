"""Reward functions: one interface for RL, evaluation and best-of-n.

A reward function takes the prompts (as the data wrote them: strings or message lists) and the
completions (decoded text, special tokens removed) and returns one float per completion:

    def my_reward(prompts: list, completions: list[str]) -> list[float]: ...

``reward=`` in a config names either

- a reward-model folder written by ``preftune rm`` (any ``AutoModelForSequenceClassification`` folder
  with one label works), or its Hub id (downloaded, or read from the Hugging Face cache offline),
  scored in batches without gradients, or
- a Python callable ``module:function`` importable from the working directory, e.g.
  ``preftune.assets.sentiment:positive_probability`` (an IMDb sentiment classifier) or your own
  ``my_rewards:length_penalty``. Arbitrary Python runs with your permissions, like any import.

Scores are checked: a wrong count or a non-finite value is an error naming the function, never a
NaN that reaches the optimizer.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from preftune.errors import ConfigError

RewardFn = Callable[[list[Any], list[str]], Sequence[float]]

__all__ = ["RewardFn", "load_reward", "score"]


def load_reward(spec: str, device: torch.device | str = "cpu", *, batch_size: int = 32) -> RewardFn:
    """The reward function ``spec`` names (module docstring); a ConfigError says what is wrong."""
    from preftune.hub import is_hub_id

    path = Path(spec)
    if path.is_dir() or (":" not in spec and is_hub_id(spec)):  # a folder, or a Hub id (org/reward-model)
        from preftune.modeling.reward_model import RewardModelScorer

        return RewardModelScorer(spec, device, batch_size=batch_size)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"reward={spec!r}: not a folder, not a Hub id, and not of the form 'module:function'")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules next to the user's working directory import
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"reward={spec!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward={spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def score(reward_fn: RewardFn, prompts: list[Any], completions: list[str], device: torch.device | str = "cpu"
          ) -> torch.Tensor:
    """Call ``reward_fn`` and return a float32 tensor [N], checked for count and finiteness."""
    values = list(reward_fn(prompts, completions))
    name = getattr(reward_fn, "__qualname__", type(reward_fn).__name__)
    if len(values) != len(completions):
        raise ValueError(f"reward function {name} returned {len(values)} scores for {len(completions)} completions")
    floats = [float(v) for v in values]
    bad = [i for i, v in enumerate(floats) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"reward function {name} returned a non-finite score ({floats[bad[0]]}) for completion "
                         f"{bad[0]}: {completions[bad[0]][:80]!r}")
    return torch.tensor(floats, dtype=torch.float32, device=device)
