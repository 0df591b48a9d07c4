"""Where the rows come from: Hub datasets (offline, from a Hub cache written here), DatasetDict splits,
the alignment-handbook's dataset_mixture / dataset_mixer, in-memory objects."""

from __future__ import annotations

import pytest

from preftune.data.load import Source, load_records
from preftune.data.sources import DataSpec, check_mixer, check_mixture, resolve_sources
from preftune.errors import ConfigError, DataError
from preftune.testing import save_to_hub_cache, write_dataset_repo

datasets = pytest.importorskip("datasets")


def rows(tag: str, n: int) -> list[dict]:
    return [{"prompt": f"{tag} {i}", "chosen": "yes", "rejected": "no", "extra": i} for i in range(n)]


@pytest.fixture
def hub_prefs(tmp_path, offline_hub):
    """'org/prefs' in the offline Hub cache: config default (train_prefs 10, test_prefs 4), config small."""
    repo = write_dataset_repo(tmp_path / "repo", {"default": {"train_prefs": rows("train", 10),
                                                              "test_prefs": rows("test", 4)},
                                                  "small": {"train": rows("small", 3)}})
    save_to_hub_cache(repo, "org/prefs", offline_hub, repo_type="dataset")
    return "org/prefs"


def prompts(source) -> list[str]:
    return [r.fields["prompt"] for r in load_records(source)]


def test_a_hub_dataset_resolves_offline_with_its_splits_named(hub_prefs):
    spec = DataSpec(dataset_name=hub_prefs, dataset_train_split="train_prefs", dataset_test_split="test_prefs")
    train, held_out = resolve_sources(spec)
    assert (train.name, held_out.name) == ("org/prefs [train_prefs]", "org/prefs [test_prefs]")
    assert prompts(train) == [f"train {i}" for i in range(10)]
    assert prompts(held_out) == [f"test {i}" for i in range(4)]
    assert load_records(train)[2].origin == "org/prefs [train_prefs] row 3"


def test_dataset_config_picks_the_config(hub_prefs):
    train, held_out = resolve_sources(DataSpec(dataset_name=hub_prefs, dataset_config="small"))
    assert prompts(train) == ["small 0", "small 1", "small 2"] and held_out is None


def test_a_missing_split_names_the_key_to_set(hub_prefs):
    with pytest.raises(DataError, match="^org/prefs: no split 'train' \\(it has train_prefs, test_prefs\\); set "
                                        "dataset_train_split to one of those$"):
        resolve_sources(DataSpec(dataset_name=hub_prefs))


def test_an_uncached_hub_dataset_offline_says_where_it_looked(offline_hub):
    with pytest.raises(ConfigError) as e:
        resolve_sources(DataSpec(dataset_name="nobody/nothing"))
    message = str(e.value)
    assert message.startswith("dataset 'nobody/nothing': not a local file or folder; looked in the Hugging Face "
                              f"cache at {offline_hub / 'datasets--nobody--nothing'}")
    assert "HF_HUB_OFFLINE=1" in message


def test_a_missing_train_file_is_not_sent_to_the_hub(offline_hub):
    with pytest.raises(DataError, match="^data/prefs.jsonl: file not found$"):
        resolve_sources(DataSpec(train_file="data/prefs.jsonl"))


@pytest.fixture
def dict_folder(tmp_path):
    path = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows("train", 6)),
                          "test": datasets.Dataset.from_list(rows("test", 2)),
                          "dev": datasets.Dataset.from_list(rows("dev", 3))}).save_to_disk(str(path))
    return path


def test_an_eval_file_datasetdict_is_evaluated_on_its_test_split(dict_folder, tmp_path):
    train_file = tmp_path / "train.jsonl"
    train_file.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    _, held_out = resolve_sources(DataSpec(train_file=str(train_file), eval_file=str(dict_folder)))
    assert held_out.name == f"{dict_folder} [test]" and prompts(held_out) == ["test 0", "test 1"]
    _, held_out = resolve_sources(DataSpec(train_file=str(train_file), eval_file=str(dict_folder),
                                           dataset_test_split="dev"))
    assert prompts(held_out) == ["dev 0", "dev 1", "dev 2"]


def test_a_train_file_datasetdict_holds_out_its_test_split_unless_told_otherwise(dict_folder):
    train, held_out = resolve_sources(DataSpec(train_file=str(dict_folder)))
    assert (train.name, held_out.name) == (f"{dict_folder} [train]", f"{dict_folder} [test]")
    assert resolve_sources(DataSpec(train_file=str(dict_folder), eval_size=2))[1] is None


def test_in_memory_datasetdict_dataframe_and_lists(dict_folder):
    dd = datasets.load_from_disk(str(dict_folder))
    train, held_out = resolve_sources(DataSpec(), train_data=dd)
    assert (train.name, held_out.name) == ("dataset [train]", "dataset [test]")
    frame = dd["dev"].to_pandas()
    frame.loc[1, "chosen"] = None  # a missing cell reads as null, as in a file
    records = load_records(resolve_sources(DataSpec(), train_data=frame)[0])
    assert records[1].fields["chosen"] is None and records[0].origin == "dataset[0]"
    assert records[0].fields["extra"] == 0 and type(records[0].fields["extra"]) is int
    listed, none = resolve_sources(DataSpec(), train_data=rows("l", 2))
    assert prompts(listed) == ["l 0", "l 1"] and none is None


def test_two_sources_of_training_data_are_an_error(tmp_path):
    with pytest.raises(ConfigError, match="train_file and dataset_name are both set"):
        resolve_sources(DataSpec(train_file="a.jsonl", dataset_name="org/x"))
    with pytest.raises(ConfigError, match="no training data: set train_file, dataset_name"):
        resolve_sources(DataSpec())


@pytest.fixture
def two_hub_sets(tmp_path, offline_hub):
    for name, n in (("org/a", 20), ("org/b", 8)):
        repo = write_dataset_repo(tmp_path / name, {"default": {"train": rows(name, n), "test": rows(name + "-t", 4)}})
        save_to_hub_cache(repo, name, offline_hub, repo_type="dataset")


def test_dataset_mixture_draws_weighted_shares_and_splits_off_a_test_set(two_hub_sets):
    mixture = {"datasets": [{"id": "org/a", "split": "train", "columns": ["prompt", "chosen", "rejected"],
                             "weight": 0.5},
                            {"id": "org/b", "config": "default", "split": "train",
                             "columns": ["prompt", "chosen", "rejected"], "weight": 1.0}],
               "seed": 3, "test_split_size": 4}
    train, held_out = resolve_sources(DataSpec(dataset_mixture=mixture))
    train_prompts, test_prompts = prompts(train), prompts(held_out)
    assert (len(train_prompts), len(test_prompts)) == (14, 4)  # int(20 × 0.5) + 8 = 18 rows, 4 held out
    everything = train_prompts + test_prompts
    assert len(set(everything)) == 18
    assert sum(p.startswith("org/a") for p in everything) == 10 and sum(p.startswith("org/b") for p in everything) == 8
    assert set(load_records(train)[0].fields) == {"prompt", "chosen", "rejected"}
    assert prompts(resolve_sources(DataSpec(dataset_mixture=mixture))[0]) == train_prompts  # seeded
    assert prompts(resolve_sources(DataSpec(dataset_mixture={**mixture, "seed": 4}))[0]) != train_prompts


def test_dataset_mixture_without_test_split_size_trains_on_everything(two_hub_sets):
    train, held_out = resolve_sources(DataSpec(dataset_mixture={"datasets": [{"id": "org/b"}]}))
    assert sorted(prompts(train)) == sorted(f"org/b {i}" for i in range(8)) and held_out is None


def test_dataset_mixer_keeps_the_first_fraction_of_train_splits_and_all_test_rows(two_hub_sets):
    train, held_out = resolve_sources(DataSpec(dataset_mixer={"org/a": 0.25, "org/b": 0.5}))
    assert sorted(prompts(train)) == sorted([f"org/a {i}" for i in range(5)] + [f"org/b {i}" for i in range(4)])
    assert len(prompts(held_out)) == 8


def test_mixture_problems_are_reported_all_at_once():
    problems = check_mixture({"datasets": [{"id": "org/a", "weight": 2}, {"config": "x", "colums": ["a"]}],
                              "seed": "x", "test_split_size": 1.5, "shuffle": True})
    assert problems == [
        "dataset_mixture: unknown key 'shuffle' (known: datasets, seed, test_split_size)",
        "dataset_mixture.datasets[0].weight must be in (0, 1] (the share of its rows drawn), got 2",
        "dataset_mixture.datasets[1]: unknown key 'colums' (known: columns, config, data_dir, data_files, id, "
        "split, weight)",
        "dataset_mixture.datasets[1].id must name a dataset (a Hub id or a local folder)",
        "dataset_mixture.seed must be an integer, got 'x'",
        "dataset_mixture.test_split_size must be a row count >= 1 or a fraction in (0, 1), got 1.5",
    ]
    assert check_mixer({"org/a": 0}, ["train", "validation"]) == [
        "dataset_mixer['org/a'] must be a fraction in (0, 1], got 0",
        "dataset_splits: 'validation' contains neither 'train' nor 'test', so it is neither training nor held-out "
        "data (the alignment-handbook's rule)"]


def test_a_named_source_names_its_rows():
    records = load_records(Source(rows("x", 2), "my rows"))
    assert [r.origin for r in records] == ["my rows row 1", "my rows row 2"]


def test_mixtures_read_save_to_disk_folders_too(dict_folder, tmp_path):
    mixture = {"datasets": [{"id": str(dict_folder), "split": "dev", "columns": ["prompt", "chosen", "rejected"]}]}
    train, _ = resolve_sources(DataSpec(dataset_mixture=mixture))
    assert sorted(prompts(train)) == ["dev 0", "dev 1", "dev 2"]
    # The handbook's older layout: one save_to_disk folder per split, under the dataset's folder.
    per_split = tmp_path / "per-split"
    datasets.Dataset.from_list(rows("a", 4)).save_to_disk(str(per_split / "train"))
    datasets.Dataset.from_list(rows("a-t", 2)).save_to_disk(str(per_split / "test"))
    train, held_out = resolve_sources(DataSpec(dataset_mixer={str(per_split): 0.5}))
    assert sorted(prompts(train)) == ["a 0", "a 1"] and len(prompts(held_out)) == 2


@pytest.fixture
def two_local_sets(tmp_path):
    """Two local dataset folders (data files + card), readable by TRL's get_dataset and by preftune alike."""
    return [str(write_dataset_repo(tmp_path / name, {"default": {"train": rows(name, n)}}))
            for name, n in (("a", 20), ("b", 8))]


@pytest.mark.parametrize("fractions", [None, (0.5, 0.5), (3, 1), (1, 0)])
def test_trl_mixture_equals_trls_get_dataset(two_local_sets, fractions):
    from trl import DatasetMixtureConfig, get_dataset
    from trl.scripts.utils import DatasetConfig

    entries = [{"path": path, "split": "train", "columns": ["prompt", "chosen", "rejected"]}
               for path in two_local_sets]
    if fractions:
        entries = [{**e, "fraction": f} for e, f in zip(entries, fractions)]
    theirs = get_dataset(DatasetMixtureConfig(datasets=[DatasetConfig(**e) for e in entries]))["train"]["prompt"]
    train, held_out = resolve_sources(DataSpec(datasets=entries))
    assert prompts(train) == theirs and held_out is None
    # (3, 1): shares ¾ and ¼; a (20 rows) caps the mixture at 26⅔ rows: all 20 of a, round(6⅔) = 7 of b
    if fractions == (3, 1):
        assert (sum(p.startswith("a") for p in theirs), sum(p.startswith("b") for p in theirs)) == (20, 7)


def test_trl_mixture_test_split_size_holds_out_rows_seeded(two_local_sets):
    entries = [{"path": path} for path in two_local_sets]
    train, held_out = resolve_sources(DataSpec(datasets=entries, test_split_size=6, seed=1))
    assert (len(prompts(train)), len(prompts(held_out))) == (22, 6)
    assert sorted(prompts(train) + prompts(held_out)) == sorted([f"a {i}" for i in range(20)] +
                                                                [f"b {i}" for i in range(8)])
    assert prompts(resolve_sources(DataSpec(datasets=entries, test_split_size=6, seed=1))[1]) == prompts(held_out)
    assert len(prompts(resolve_sources(DataSpec(datasets=entries, test_split_size=0.25))[1])) == 7


def test_trl_mixture_problems_are_config_errors_all_at_once():
    from preftune.config import DPOConfig

    with pytest.raises(ConfigError) as e:
        DPOConfig(model_name_or_path="m", datasets=[{"id": "org/a", "fraction": 1}, {"path": "org/b"}],
                  test_split_size=1.5, streaming=True)
    assert e.value.problems == [
        "streaming=True is not supported: the data is read and tokenized in full before training",
        "datasets[0]: unknown key 'id' (TRL's DatasetConfig has columns, data_dir, data_files, fraction, name, path, "
        "split; 'id', 'config' and 'weight' are dataset_mixture's, the alignment-handbook's format)",
        "datasets[0].path must name a dataset (a Hub id or a local folder)",
        "datasets: fraction must be set for every dataset of the mixture or for none (as TRL)",
        "test_split_size must be a row count >= 1 or a fraction in (0, 1), got 1.5"]
    with pytest.raises(ConfigError, match="test_split_size is set but datasets is not"):
        DPOConfig(model_name_or_path="m", test_split_size=10)
    with pytest.raises(ConfigError, match="dataset_name and datasets are all set"):
        DPOConfig(model_name_or_path="m", dataset_name="x", datasets=[{"path": "y"}])
