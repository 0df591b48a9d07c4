"""Where a run's training and held-out rows come from, decided before any model is loaded.

One of, for training:

* ``train_file``: a ``.jsonl``/``.json``/``.csv``/``.parquet`` file (read by preftune's own loaders,
  so errors name the line) or a ``save_to_disk`` folder;
* ``dataset_name`` (+ ``dataset_config``): a Hub dataset id or a local folder of data files, loaded
  with ``datasets.load_dataset``, which downloads when online; offline (``HF_HUB_OFFLINE=1`` or no
  network) it uses datasets' own cache and then the Hugging Face cache's snapshot of the repository;
* ``dataset_mixture``: the alignment-handbook's mixture ``{datasets: [{id, config, split, columns,
  weight}], seed, test_split_size}`` — each dataset loaded, its columns selected, a ``weight`` share
  of it drawn (shuffled with ``seed``), all concatenated and shuffled, and ``test_split_size`` rows
  (or that fraction) split off as ``test``, exactly as the handbook's ``get_dataset`` does;
* ``dataset_mixer``: the handbook's older ``{id: fraction}`` with ``dataset_splits`` — splits whose
  name contains ``train`` are cut to the first ``fraction`` of their rows and concatenated, those
  containing ``test`` are concatenated whole, both shuffled with seed 42;
* ``datasets`` (+ ``test_split_size``): TRL's own mixture (``trl dpo``'s ``DatasetMixtureConfig``),
  ``[{path, name, data_dir, data_files, split, columns, fraction}]`` — each loaded with
  ``load_dataset``, fractions normalised to shares of the largest mixture no dataset is oversampled
  for (the first ``round(share × total)`` rows of each), concatenated in order, ``test_split_size``
  split off as ``test`` (seeded with the run's seed; TRL's split is unseeded);
* an object from Python: ``datasets.Dataset``/``DatasetDict``, a pandas DataFrame, a list of dicts.

Whatever has splits (a Hub dataset, a mixture, a ``DatasetDict`` folder or object) gives training
rows from ``dataset_train_split`` and held-out rows from ``dataset_test_split`` — unless
``eval_file``/``eval_data`` or ``eval_size`` say otherwise — and the split used is in the name that
logs and errors print (``HuggingFaceH4/ultrafeedback_binarized [train_prefs] row 17``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preftune.data.load import Source, is_hf_dataset, require_package
from preftune.errors import ConfigError, DataError

__all__ = ["DataSpec", "check_mixer", "check_mixture", "check_trl_mixture", "eval_source", "load_hub_dataset",
           "resolve_sources"]

_MIXTURE_KEYS = {"datasets", "seed", "test_split_size"}
_ENTRY_KEYS = {"id", "config", "split", "columns", "weight", "data_dir", "data_files"}
_TRL_ENTRY_KEYS = {"path", "name", "data_dir", "data_files", "split", "columns", "fraction"}


@dataclass(frozen=True)
class DataSpec:
    """The data settings of a config (names as in TRL's ScriptArguments and the alignment-handbook)."""

    train_file: str | None = None
    eval_file: str | None = None
    dataset_name: str | None = None
    dataset_config: str | None = None
    dataset_train_split: str = "train"
    dataset_test_split: str = "test"
    dataset_mixture: Mapping[str, Any] | None = None
    dataset_mixer: Mapping[str, float] | None = None
    dataset_splits: Sequence[str] = ("train", "test")
    datasets: Sequence[Mapping[str, Any]] | None = None
    test_split_size: float | None = None
    eval_size: int = 0
    seed: int = 42

    @classmethod
    def of(cls, cfg: Any) -> DataSpec:
        """The spec of a config object: every field it has, the defaults for the rest."""
        return cls(**{f: getattr(cfg, f) for f in cls.__dataclass_fields__ if hasattr(cfg, f)})


def resolve_sources(spec: DataSpec, train_data: Any = None, eval_data: Any = None) -> tuple[Any, Any]:
    """``(train, held_out)``, each a file path or a :class:`Source` (an unnamed in-memory object stays
    as it is, its rows reported as ``dataset[i]``); held_out None = none, or split off later by
    ``eval_size``. Raises ConfigError / DataError before any model is loaded."""
    train_sets = [name for name, given in (("train_data", train_data is not None), ("train_file", spec.train_file),
                                           ("dataset_name", spec.dataset_name),
                                           ("dataset_mixture", spec.dataset_mixture),
                                           ("dataset_mixer", spec.dataset_mixer),
                                           ("datasets", spec.datasets)) if given]
    if not train_sets:
        raise ConfigError("no training data: set train_file, dataset_name, dataset_mixture, dataset_mixer or "
                          "datasets (or pass train_data= from Python)")
    if len(train_sets) > 1 and train_sets[0] != "train_data":
        raise ConfigError(f"{' and '.join(train_sets)} are both set: name the training data once")
    if train_data is not None:
        splits = _splits_of(train_data, "dataset")
    elif spec.train_file:
        splits = _splits_of(spec.train_file, spec.train_file)
    elif spec.dataset_name:
        splits = _splits_of(spec.dataset_name, spec.dataset_name, config=spec.dataset_config, hub=True)
    elif spec.dataset_mixture:
        splits = _splits_of(load_mixture(spec.dataset_mixture), "dataset_mixture")
    elif spec.datasets:
        splits = _splits_of(load_trl_mixture(spec.datasets, spec.test_split_size, spec.seed), "datasets")
    else:
        splits = _splits_of(load_mixer(spec.dataset_mixer, spec.dataset_splits), "dataset_mixer")
    train = splits.pick(spec.dataset_train_split, "dataset_train_split")
    if eval_data is not None:
        held_out = _splits_of(eval_data, "dataset").pick(spec.dataset_test_split, "dataset_test_split")
    elif spec.eval_file:
        held_out = _splits_of(spec.eval_file, spec.eval_file).pick(spec.dataset_test_split, "dataset_test_split")
    elif spec.eval_size == 0 and splits.has(spec.dataset_test_split):
        held_out = splits.pick(spec.dataset_test_split, "dataset_test_split")
    else:
        held_out = None
    return train, held_out


def eval_source(spec: DataSpec, eval_data: Any = None) -> Any:
    """The held-out rows of an evaluation alone (``preftune eval``): ``eval_data``, else ``eval_file``, else
    ``dataset_name`` — from a source with splits, its ``dataset_test_split``."""
    if eval_data is not None:
        return _splits_of(eval_data, "dataset").pick(spec.dataset_test_split, "dataset_test_split")
    if spec.eval_file:
        return _splits_of(spec.eval_file, spec.eval_file).pick(spec.dataset_test_split, "dataset_test_split")
    if spec.dataset_name:
        return _splits_of(spec.dataset_name, spec.dataset_name, config=spec.dataset_config,
                          hub=True).pick(spec.dataset_test_split, "dataset_test_split")
    raise ConfigError("no held-out data: set eval_file or dataset_name (or pass eval_data= from Python)")


@dataclass(frozen=True)
class _Splits:
    """A source that may have named splits (``splits`` None: it is one set of rows)."""

    name: str
    rows: Any
    splits: Mapping[str, Any] | None

    def has(self, split: str) -> bool:
        return self.splits is not None and split in self.splits

    def pick(self, split: str, key: str) -> Any:
        if self.splits is None:
            return self.rows  # a path, or an in-memory object: load_records names it
        if split not in self.splits:
            raise DataError(f"{self.name}: no split {split!r} (it has {', '.join(map(str, self.splits))}); "
                            f"set {key} to one of those")
        return Source(self.splits[split], f"{self.name} [{split}]")


def _splits_of(source: Any, name: str, *, config: str | None = None, hub: bool = False) -> _Splits:
    """``source`` with its splits, if it has any. ``hub``: a name that is no local path may be a Hub id
    (``dataset_name``); a file key (``train_file``, ``eval_file``) must exist."""
    if is_hf_dataset(source):
        return _Splits(name, source, dict(source) if isinstance(source, Mapping) else None)
    if not isinstance(source, (str, os.PathLike)):
        return _Splits(name, source, None)  # a list of dicts or a DataFrame
    path = Path(source).expanduser()
    if path.is_file():
        return _Splits(str(source), source, None)  # preftune's own readers: errors name the line
    if path.is_dir() and _saved_to_disk(path):
        datasets = require_package("datasets", "datasets", "reading a datasets folder")
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, Mapping):
            return _Splits(str(source), loaded, dict(loaded))
        return _Splits(str(source), source, None)
    if not path.exists() and not hub:
        raise DataError(f"{source}: file not found")
    loaded = load_hub_dataset(str(source), config=config)  # a Hub id, or a local folder of data files
    return _Splits(str(source), loaded, dict(loaded) if isinstance(loaded, Mapping) else None)


def _saved_to_disk(path: Path) -> bool:
    """A folder written by ``save_to_disk`` (a DatasetDict's, or a single Dataset's)."""
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file()
                                                      and (path / "dataset_info.json").is_file())


def load_hub_dataset(name: str, *, config: str | None = None, split: str | None = None,
                     data_dir: str | None = None, data_files: Any = None) -> Any:
    """``datasets.load_dataset(name, config, split=...)``; offline, the Hub cache's snapshot instead.

    ``datasets`` itself reads its own cache of datasets it prepared before, but not the files that
    ``huggingface_hub`` keeps (the ``datasets--org--name`` snapshot); when it cannot reach the Hub,
    the snapshot folder of the default revision is loaded as a local folder, which reads the same
    files with the same configs (the dataset card's ``configs:``).
    """
    datasets = require_package("datasets", "datasets", f"loading dataset {name!r}")
    kwargs = {"split": split, "data_dir": data_dir, "data_files": data_files}
    local = Path(name).expanduser()
    if local.exists():
        return _load_local(datasets, local, config, kwargs, name)
    from preftune.hub import download_snapshot, is_hub_id

    if not is_hub_id(name):
        raise ConfigError(f"dataset {name!r}: no such file or folder, and not a Hugging Face Hub id ('org/name')")
    try:
        return _load(datasets, name, config, kwargs, name)
    except ConnectionError:
        pass  # offline or unreachable: the Hub cache below, with one message if it is not there either
    snapshot = download_snapshot(name, repo_type="dataset", what="dataset")
    return _load(datasets, str(snapshot), config, kwargs, name)


def _load_local(datasets: Any, path: Path, config: str | None, kwargs: dict[str, Any], name: str) -> Any:
    """A local folder of data files (``load_dataset``), or one written by ``save_to_disk`` — whole, or one
    folder per split as the alignment-handbook's older mixer saved them (``<name>/<split>``)."""
    split = kwargs.get("split")
    for folder, split_inside in ((path, True), (path / str(split), False)):
        if folder.is_dir() and _saved_to_disk(folder) and (split_inside or split is not None):
            loaded = datasets.load_from_disk(str(folder))
            if split_inside and split is not None and isinstance(loaded, Mapping):
                if split not in loaded:
                    raise ConfigError(f"dataset {name!r}: no split {split!r} (it has {', '.join(loaded)})")
                return loaded[split]
            return loaded
    return _load(datasets, str(path), config, kwargs, name)


def _load(datasets: Any, path: str, config: str | None, kwargs: dict[str, Any], name: str) -> Any:
    from datasets.exceptions import DatasetNotFoundError

    try:
        return datasets.load_dataset(path, config, **{k: v for k, v in kwargs.items() if v is not None})
    except ConnectionError:
        raise
    except DatasetNotFoundError as e:
        raise ConfigError(f"dataset {name!r}: {e}") from None
    except ValueError as e:  # an unknown config or split: datasets lists the ones that exist
        what = "dataset_config" if "config" in str(e).lower() else "split"
        raise ConfigError(f"dataset {name!r}: {e} (check {what})") from None
    except FileNotFoundError as e:
        raise ConfigError(f"dataset {name!r}: {e}") from None


# ----------------------------------------------------------------------------------------------------
# The alignment-handbook's mixtures


def check_mixture(spec: Any) -> list[str]:
    """Every problem of a ``dataset_mixture`` value, as messages naming the key (empty: it is valid)."""
    if not isinstance(spec, Mapping):
        return [f"dataset_mixture must be a mapping with a 'datasets' list, got {type(spec).__name__}"]
    problems = [f"dataset_mixture: unknown key {k!r} (known: {', '.join(sorted(_MIXTURE_KEYS))})"
                for k in spec if k not in _MIXTURE_KEYS]
    entries = spec.get("datasets")
    if not isinstance(entries, list) or not entries:
        problems.append("dataset_mixture.datasets must be a non-empty list of {id, config, split, columns, weight}")
        entries = []
    for i, entry in enumerate(entries):
        where = f"dataset_mixture.datasets[{i}]"
        problems += _entry_problems(entry, where, "id", _ENTRY_KEYS, f"known: {', '.join(sorted(_ENTRY_KEYS))}")
        weight = entry.get("weight", 1.0) if isinstance(entry, Mapping) else 1.0
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 1:
            problems.append(f"{where}.weight must be in (0, 1] (the share of its rows drawn), got {weight!r}")
    seed = spec.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        problems.append(f"dataset_mixture.seed must be an integer, got {seed!r}")
    size = spec.get("test_split_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0
                             or (isinstance(size, float) and size >= 1)):
        problems.append(f"dataset_mixture.test_split_size must be a row count >= 1 or a fraction in (0, 1), got {size!r}")
    return problems


def _entry_problems(entry: Any, where: str, name_key: str, keys: set[str], known: str, handbook_keys: bool = False
                    ) -> list[str]:
    """The problems of one mixture entry: not a mapping, unknown keys, no dataset named, bad columns."""
    if not isinstance(entry, Mapping):
        return [f"{where} must be a mapping with at least {name_key!r}"]
    problems = []
    for k in entry:
        if k not in keys:
            hint = ("; 'id', 'config' and 'weight' are dataset_mixture's, the alignment-handbook's format"
                    if handbook_keys and k in ("id", "config", "weight") else "")
            problems.append(f"{where}: unknown key {k!r} ({known}{hint})")
    if not isinstance(entry.get(name_key), str) or not entry.get(name_key):
        problems.append(f"{where}.{name_key} must name a dataset (a Hub id or a local folder)")
    columns = entry.get("columns")
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        problems.append(f"{where}.columns must be a list of column names, got {columns!r}")
    return problems


def check_mixer(mixer: Any, splits: Any) -> list[str]:
    """Every problem of a ``dataset_mixer`` / ``dataset_splits`` pair (empty: valid)."""
    if not isinstance(mixer, Mapping) or not mixer:
        return [f"dataset_mixer must be a non-empty mapping of dataset id → fraction, got {mixer!r}"]
    problems = [f"dataset_mixer[{name!r}] must be a fraction in (0, 1], got {frac!r}" for name, frac in mixer.items()
                if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1]
    for split in splits or ():
        if "train" not in split and "test" not in split:
            problems.append(f"dataset_splits: {split!r} contains neither 'train' nor 'test', so it is neither "
                            "training nor held-out data (the alignment-handbook's rule)")
    return problems


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("; ".join(problems))


def load_mixture(spec: Mapping[str, Any]) -> Any:
    """The ``dataset_mixture`` as a DatasetDict with ``train`` (and ``test``); see the module docstring."""
    _raise(check_mixture(spec))
    datasets = require_package("datasets", "datasets", "loading a dataset_mixture")
    seed = spec.get("seed", 0)
    parts = []
    for i, entry in enumerate(spec["datasets"]):
        ds = load_hub_dataset(entry["id"], config=entry.get("config"), split=entry.get("split", "train"),
                              data_dir=entry.get("data_dir"), data_files=entry.get("data_files"))
        ds = _select_columns(ds, entry.get("columns"), f"dataset_mixture.datasets[{i}] ({entry['id']})")
        weight = entry.get("weight", 1.0)
        if weight is not None:
            ds = ds.shuffle(seed=seed).select(range(int(len(ds) * weight)))
        parts.append(ds)
    mixed = _concatenate(datasets, parts, [e["id"] for e in spec["datasets"]]).shuffle(seed=seed)
    size = spec.get("test_split_size")
    if size is None:
        return datasets.DatasetDict({"train": mixed})
    return mixed.train_test_split(test_size=size, seed=seed)


def load_mixer(mixer: Mapping[str, float], splits: Sequence[str]) -> Any:
    """The older ``dataset_mixer`` as a DatasetDict with ``train`` and/or ``test`` (module docstring)."""
    _raise(check_mixer(mixer, splits))
    datasets = require_package("datasets", "datasets", "loading a dataset_mixer")
    train, test, train_names, test_names = [], [], [], []
    for name, fraction in mixer.items():
        for split in splits:
            ds = load_hub_dataset(name, split=split)
            if "train" in split:
                train.append(ds.select(range(int(fraction * len(ds)))))
                train_names.append(f"{name} [{split}]")
            else:  # held-out sets are kept whole, for a fair comparison across runs (as the handbook did)
                test.append(ds)
                test_names.append(f"{name} [{split}]")
    out = {}
    if train:
        out["train"] = _concatenate(datasets, train, train_names).shuffle(seed=42)
    if test:
        out["test"] = _concatenate(datasets, test, test_names).shuffle(seed=42)
    return datasets.DatasetDict(out)


def check_trl_mixture(entries: Any, test_split_size: float | None) -> list[str]:
    """Every problem of TRL's mixture (the ``datasets`` and ``test_split_size`` keys); empty: valid."""
    problems = []
    if not isinstance(entries, list):
        return [f"datasets must be a list of {{path, name, split, columns, fraction}}, got {entries!r}"]
    known = f"TRL's DatasetConfig has {', '.join(sorted(_TRL_ENTRY_KEYS))}"
    for i, entry in enumerate(entries):
        where = f"datasets[{i}]"
        problems += _entry_problems(entry, where, "path", _TRL_ENTRY_KEYS, known, handbook_keys=True)
        fraction = entry.get("fraction") if isinstance(entry, Mapping) else None
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or fraction < 0):
            problems.append(f"{where}.fraction must be a number >= 0 (a share of the mixture), got {fraction!r}")
    given = [isinstance(e, Mapping) and e.get("fraction") is not None for e in entries]
    if any(given) and not all(given):
        problems.append("datasets: fraction must be set for every dataset of the mixture or for none (as TRL)")
    elif all(given) and entries and not any(e.get("fraction", 0) > 0 for e in entries if isinstance(e, Mapping)):
        problems.append("datasets: every fraction is 0, so the mixture would be empty")
    if test_split_size is not None and not (0 < test_split_size < 1 or (test_split_size >= 1 and
                                                                        float(test_split_size).is_integer())):
        problems.append(f"test_split_size must be a row count >= 1 or a fraction in (0, 1), got {test_split_size:g}")
    return problems


def load_trl_mixture(entries: Sequence[Mapping[str, Any]], test_split_size: float | None, seed: int) -> Any:
    """TRL's mixture as a DatasetDict with ``train`` (and ``test``); see the module docstring."""
    _raise(check_trl_mixture(list(entries), test_split_size))
    datasets = require_package("datasets", "datasets", "loading a datasets mixture")
    parts = []
    for i, entry in enumerate(entries):
        ds = load_hub_dataset(entry["path"], config=entry.get("name"), split=entry.get("split") or "train",
                              data_dir=entry.get("data_dir"), data_files=entry.get("data_files"))
        parts.append(_select_columns(ds, entry.get("columns"), f"datasets[{i}] ({entry['path']})"))
    fractions = [entry.get("fraction") for entry in entries]
    if fractions[0] is not None:
        shares = [f / sum(fractions) for f in fractions]
        # the largest mixture in which no dataset gives more rows than it has
        total = min(len(ds) / share for ds, share in zip(parts, shares) if share > 0)
        parts = [ds.select(range(round(share * total))) for ds, share in zip(parts, shares)]
    mixed = _concatenate(datasets, parts, [e["path"] for e in entries])
    if test_split_size is None:
        return datasets.DatasetDict({"train": mixed})
    size = int(test_split_size) if test_split_size >= 1 else test_split_size
    return mixed.train_test_split(test_size=size, seed=seed)


def _select_columns(ds: Any, columns: Sequence[str] | None, where: str) -> Any:
    if columns is None:
        return ds
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ConfigError(f"{where}: no column(s) {missing} (it has {ds.column_names})")
    return ds.select_columns(list(columns))


def _concatenate(datasets: Any, parts: list[Any], names: list[str]) -> Any:
    if len(parts) == 1:
        return parts[0]
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as e:
        features = "; ".join(f"{n}: {sorted(p.column_names)}" for n, p in zip(names, parts))
        raise DataError(f"the datasets of the mixture cannot be concatenated ({e}); their columns: {features}. "
                        "Select the same columns from each (each entry's 'columns')") from None
