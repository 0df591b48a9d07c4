"""load_records: every format, origins, and the structural errors (naming file and line/row)."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from preftune.data.load import Record, load_records
from preftune.errors import DataError


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_skips_blank_lines_and_keeps_real_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ['{"a": 1}', "", '{"a": "é"}'])
    records = load_records(path)
    assert records == [Record({"a": 1}, f"{path}:1"), Record({"a": "é"}, f"{path}:3")]


def test_jsonl_invalid_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ['{"a": 1}', '{"a": 2}', '{"a": 3', '{"a": 4}'])
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value).startswith(f"{path}:3: invalid JSON (")


def test_jsonl_non_object_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ['{"a": 1}', "[1, 2]"])
    with pytest.raises(DataError, match=r":2: expected a JSON object per line, got a list"):
        load_records(path)


def test_json_top_level_list(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"a": 1}, {"a": 2}]))
    assert load_records(path) == [Record({"a": 1}, f"{path} row 1"), Record({"a": 2}, f"{path} row 2")]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"data": []}', "expected a top-level JSON list of objects, got an object"),
        ('[{"a": 1}, 3]', "row 2: expected an object with named fields, got int"),
        ("", "file is empty"),
        ("[]", "no records"),
    ],
)
def test_json_errors(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_records(path)
    assert str(err.value).startswith(str(path))
    assert message in str(err.value)


def test_json_syntax_error_names_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n{"a": 1},\n{"a": }\n]')
    with pytest.raises(DataError, match=r"p\.json:3: invalid JSON"):
        load_records(path)


def test_csv_values_stay_strings(tmp_path):
    path = tmp_path / "p.csv"
    messages = json.dumps([{"role": "user", "content": "hi, there"}])
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "chosen", "rejected"])
        w.writerow(["1", "yes, sir", messages])
        w.writerow(["", "b", "c"])
    records = load_records(path)
    assert records[0] == Record({"prompt": "1", "chosen": "yes, sir", "rejected": messages}, f"{path} row 1",
                                text_cells=True)
    assert records[1].fields["prompt"] == "" and records[1].origin == f"{path} row 2"


def test_csv_ragged_row_is_an_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected\na,b,c\na,b,c,d\n")
    with pytest.raises(DataError, match=r"p\.csv row 2: has 4 cells but the header has 3"):
        load_records(path)


@pytest.mark.parametrize("content", ["", "prompt,chosen,rejected\n"])
def test_csv_empty(tmp_path, content):
    path = tmp_path / "p.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=str(path).replace("\\", "\\\\")):
        load_records(path)


def test_parquet_nested_messages_become_python_lists(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "p.parquet"
    rows = [
        {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "n": 1},
        {"chosen": [{"role": "user", "content": "q2"}], "n": 2},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    records = load_records(path)
    assert [r.origin for r in records] == [f"{path} row 1", f"{path} row 2"]
    assert [r.fields for r in records] == rows
    assert type(records[0].fields["chosen"]) is list and type(records[0].fields["chosen"][0]) is dict


def test_hf_folder_dataset_and_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    single = tmp_path / "single"
    datasets.Dataset.from_list([{"a": "x"}, {"a": "y"}]).save_to_disk(str(single))
    assert load_records(single) == [
        Record({"a": "x"}, f"{single} row 1"),
        Record({"a": "y"}, f"{single} row 2"),
    ]

    multi = tmp_path / "multi"
    datasets.DatasetDict(
        train=datasets.Dataset.from_list([{"a": "t"}]), test=datasets.Dataset.from_list([{"a": "e"}])
    ).save_to_disk(str(multi))
    assert load_records(multi, split="test") == [Record({"a": "e"}, f"{multi} [test] row 1")]
    with pytest.raises(DataError, match=r"no split 'dev' \(available: "):
        load_records(multi, split="dev")


def test_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="not a folder written by datasets' save_to_disk"):
        load_records(tmp_path)


def test_in_memory_dataset_including_numpy_format():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"a": "x", "m": [{"role": "user", "content": "c"}]}])
    expected = [Record({"a": "x", "m": [{"role": "user", "content": "c"}]}, "dataset[0]")]
    assert load_records(ds) == expected
    # numpy formatting yields np.str_ and arrays; render needs plain str/list/dict.
    loaded = load_records(ds.with_format("numpy"))
    assert loaded == expected
    assert type(loaded[0].fields["m"]) is list and type(loaded[0].fields["a"]) is str


def test_list_of_dicts():
    assert load_records([{"a": 1}, {"a": 2}]) == [
        Record({"a": 1}, "dataset[0]"),
        Record({"a": 2}, "dataset[1]"),
    ]
    with pytest.raises(DataError, match=r"^dataset\[1\]: expected an object"):
        load_records([{"a": 1}, "oops"])
    with pytest.raises(DataError, match="^dataset: no records"):
        load_records([])


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found"):
        load_records(tmp_path / "nope.jsonl")
    path = tmp_path / "p.txt"
    path.write_text("x")
    with pytest.raises(DataError, match=r"p\.txt: unsupported file type '\.txt'"):
        load_records(path)
    with pytest.raises(TypeError):
        load_records(42)


def test_empty_jsonl_names_file(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ["", "  "])
    with pytest.raises(DataError, match=r"p\.jsonl: no records"):
        load_records(path)


def test_missing_optional_dependency_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "p.parquet"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"optional package 'pyarrow'.*preftune\[data\]"):
        load_records(path)
