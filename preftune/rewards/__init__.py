"""Reward functions: one interface for online training, evaluation and best-of-n.

A reward is named by a string, in this order of lookup:

- a folder: a reward model (written by ``preftune rm``, or any ``AutoModelForSequenceClassification``
  folder with one label), scored in batches without gradients;
- ``module:function``: a Python callable, e.g. ``preftune.assets.sentiment:positive_probability`` or
  your own ``my_rewards:length_penalty`` (installed packages come first; a module next to the working
  directory is found too), or ``path/to/my_rewards.py:length_penalty`` (a file, imported without
  touching ``sys.path``). Arbitrary Python runs with your permissions, like any import;
- a built-in name from :mod:`preftune.rewards.verifiable`: ``exact_answer``, ``answer_format``,
  ``countdown``;
- otherwise a Hugging Face Hub id of a reward model (downloaded once, then read from the local cache).

Two calling conventions are accepted, told apart by the function's signature:

- preftune's positional form ``f(prompts, completions) -> list[float]``;
- TRL's keyword form ``f(prompts=, completions=, completion_ids=, **columns)``, where ``columns`` are
  the prompt record's other fields (e.g. ``answer``), one list entry per completion, plus
  ``trainer_state`` (``global_step``, ``max_steps``). A function that takes ``**kwargs`` gets all of
  them; one that names its parameters gets those it names. As in TRL, when the prompts are
  conversations (message lists) each completion is ``[{"role": "assistant", "content": text}]``.

A function may return ``None`` for a completion it does not apply to (as in TRL): that function then
leaves the completion out; a completion no function scores gets advantage 0 and is left out of the
reward statistics. Scores are checked: a wrong count or a non-finite number is an error naming the
function (return None, not NaN, for "not applicable"), never a NaN that reaches the optimizer.
Several rewards are summed with ``reward_weights`` (default 1 each).
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from preftune.errors import ConfigError

RewardFn = Callable[..., Sequence[float | None]]

__all__ = ["RewardFn", "RewardSet", "Scores", "import_callable", "load_reward", "load_rewards", "score"]

CALL_KEYWORDS = ("prompts", "completions", "completion_ids", "trainer_state")


def import_callable(spec: str, key: str = "reward") -> Callable[..., Any]:
    """The callable ``module:function`` names. The module is imported the normal way first, so an
    installed package always wins over a same-named file; only if no such module exists is the working
    directory searched (at the end of ``sys.path``, never ahead of installed packages)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}={spec!r}: not of the form 'module:function' or 'path/to/file.py:function'")
    try:
        module = _import_file(Path(module_name)) if module_name.endswith(".py") else importlib.import_module(
            module_name)
    except (FileNotFoundError, IsADirectoryError) as e:
        raise ConfigError(f"{key}={spec!r}: cannot import {module_name!r} ({e})") from None
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ConfigError(f"{key}={spec!r}: importing {module_name!r} failed ({e})") from None
        cwd = str(Path.cwd())
        if cwd in sys.path:
            raise ConfigError(f"{key}={spec!r}: cannot import module {module_name!r} ({e})") from None
        sys.path.append(cwd)
        try:
            module = importlib.import_module(module_name)
        except ImportError as e2:
            sys.path.remove(cwd)
            raise ConfigError(f"{key}={spec!r}: cannot import module {module_name!r} ({e2})") from None
    except ImportError as e:
        raise ConfigError(f"{key}={spec!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{key}={spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn


def _import_file(path: Path) -> Any:
    """The module defined by the Python file ``path``, imported under its own name without touching sys.path."""
    import importlib.util

    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    spec = importlib.util.spec_from_file_location(f"preftune_reward_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def load_reward(spec: str, device: torch.device | str = "cpu", *, batch_size: int = 32) -> RewardFn:
    """The reward function ``spec`` names (see the module docstring); a ConfigError says what is wrong."""
    from preftune.rewards import verifiable

    if Path(spec).is_dir():
        from preftune.modeling.reward_model import RewardModelScorer

        return RewardModelScorer(str(Path(spec)), device, batch_size=batch_size)
    if ":" in spec:
        return import_callable(spec)
    if spec in verifiable.BUILT_IN:
        return verifiable.BUILT_IN[spec]
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        from preftune.modeling.reward_model import RewardModelScorer

        return RewardModelScorer(spec, device, batch_size=batch_size)  # a Hub id: resolved, downloaded, cached
    raise ConfigError(f"reward {spec!r}: not a folder, not 'module:function', not a built-in "
                      f"({', '.join(verifiable.BUILT_IN)}) and not a Hub id 'owner/name'")


def reward_name(fn: Any, spec: str) -> str:
    """How a reward is named in the metrics (``rewards/<name>``)."""
    if Path(spec).is_dir() or ("/" in spec and ":" not in spec):
        return Path(spec.rstrip("/")).name
    return getattr(fn, "__name__", type(fn).__name__)


@dataclass(frozen=True)
class _Convention:
    keyword: bool
    names: frozenset[str]       # keyword parameters it accepts (keyword form)
    takes_all: bool             # has **kwargs


def _convention(fn: Any) -> _Convention:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: the positional form
        return _Convention(False, frozenset(), False)
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
    names = frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    return _Convention(takes_all or "completions" in names, names, takes_all)


def call_reward(fn: Any, name: str, prompts: list[Any], completions: list[str], completion_ids: list[list[int]],
                columns: Mapping[str, list[Any]], extras: Mapping[str, Any]) -> list[float | None]:
    """Call one reward function in its convention and check its answer (one finite float or None each)."""
    conv = _convention(fn)
    if conv.keyword:
        conversational = bool(prompts) and isinstance(prompts[0], list)
        as_given = [[{"role": "assistant", "content": c}] for c in completions] if conversational else completions
        offered = {"prompts": prompts, "completions": as_given, "completion_ids": completion_ids,
                   **extras, **columns}
        if conv.takes_all:
            kwargs = offered
        else:
            kwargs = {k: v for k, v in offered.items() if k in conv.names}
            required = [p.name for p in inspect.signature(fn).parameters.values()
                        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            missing = [k for k in required if k not in kwargs]
            if missing:
                raise ConfigError(f"reward function {name} needs {', '.join(missing)}, which is neither "
                                  f"{', '.join(CALL_KEYWORDS)} nor a column of the prompt data "
                                  f"({', '.join(columns) or 'it has none besides prompt'})")
        values = list(fn(**kwargs))
    else:
        values = list(fn(prompts, completions))
    if len(values) != len(completions):
        raise ValueError(f"reward function {name} returned {len(values)} scores for {len(completions)} completions")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"reward function {name} returned a non-finite score ({f}) for completion {i}: "
                             f"{completions[i][:80]!r} (return None for a completion it does not apply to)")
        out.append(f)
    return out


@dataclass
class Scores:
    total: torch.Tensor          # [N] weighted sum over the functions that scored each completion; NaN: none did
    per_function: torch.Tensor   # [N, F], NaN where a function returned None
    names: list[str]

    @property
    def scored(self) -> torch.Tensor:
        """[N] bool: at least one function scored the completion."""
        return ~torch.isnan(self.total)


class RewardSet:
    """The run's reward functions with their weights; ``__call__`` scores a batch of completions."""

    def __init__(self, specs: Sequence[str], weights: Sequence[float] | None = None,
                 device: torch.device | str = "cpu", *, batch_size: int = 32) -> None:
        if not specs:
            raise ConfigError("reward_funcs must name at least one reward")
        if weights is not None and len(weights) != len(specs):
            raise ConfigError(f"reward_weights has {len(weights)} entries but reward_funcs has {len(specs)}")
        self.specs = list(specs)
        self.functions = [load_reward(s, device, batch_size=batch_size) for s in specs]
        names = [reward_name(f, s) for f, s in zip(self.functions, specs)]
        # Two functions of one name would log into one metric: number the repeats.
        self.names = [n if names.count(n) == 1 else f"{n}_{names[:i].count(n)}" for i, n in enumerate(names)]
        self.weights = torch.tensor(list(weights) if weights is not None else [1.0] * len(specs), dtype=torch.float32)

    def describe(self) -> str:
        return " + ".join(f"{w:g} × {s}" for w, s in zip(self.weights.tolist(), self.specs))

    def __call__(self, prompts: list[Any], completions: list[str], completion_ids: list[list[int]],
                 columns: Mapping[str, list[Any]] | None = None, extras: Mapping[str, Any] | None = None) -> Scores:
        columns = columns or {}
        extras = extras or {}
        table = torch.full((len(completions), len(self.functions)), float("nan"))
        for j, (fn, name) in enumerate(zip(self.functions, self.names)):
            values = call_reward(fn, name, prompts, completions, completion_ids, columns, extras)
            table[:, j] = torch.tensor([float("nan") if v is None else v for v in values])
        weighted = table * self.weights
        total = torch.where(torch.isnan(table).all(1), float("nan"), weighted.nansum(1))
        return Scores(total, table, self.names)


def load_rewards(specs: Sequence[str], weights: Sequence[float] | None = None, device: torch.device | str = "cpu",
                 *, batch_size: int = 32) -> RewardSet:
    return RewardSet(specs, weights, device, batch_size=batch_size)


def score(reward_fn: RewardFn, prompts: list[Any], completions: list[str], device: torch.device | str = "cpu"
          ) -> torch.Tensor:
    """One reward function on (prompts, completions), as a float32 tensor [N]; every completion must be
    scored (None is an error here: best-of-n and evaluation need a number for each)."""
    name = getattr(reward_fn, "__qualname__", type(reward_fn).__name__)
    values = call_reward(reward_fn, name, prompts, completions, [[] for _ in completions], {}, {})
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise ValueError(f"reward function {name} returned None for completion {missing[0]}: "
                         f"{completions[missing[0]][:80]!r}")
    return torch.tensor(values, dtype=torch.float32, device=device)
