"""A string in the data means what it says: JSON inside a string is read as messages only in a CSV cell
(the one format that cannot hold a list); records have a size limit checked before parsing.

Old behaviour: a JSONL completion '[{"role": "assistant", "content": "hi"}]' (a string) silently trained
as "hi"; csv's 128 KiB cell limit stopped a file with a bare csv.Error.
"""

import csv
import json

import pytest

from preftune.data.dataset import DataSettings, build_preference_dataset
from preftune.data.load import load_records
from preftune.errors import DataError
from preftune.testing import tiny_tokenizer

LOOKS_LIKE_MESSAGES = json.dumps([{"role": "assistant", "content": "hi"}])


def _decoded_chosen(path):
    tokenizer = tiny_tokenizer()
    built = build_preference_dataset(path, tokenizer, DataSettings(max_length=None, max_prompt_length=None,
                                                                  use_chat_template=False))
    return tokenizer.decode(built.examples[0].chosen_ids)


def test_a_json_looking_string_in_jsonl_is_text(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Say:", "chosen": LOOKS_LIKE_MESSAGES, "rejected": "no"}) + "\n")
    assert _decoded_chosen(path).startswith(LOOKS_LIKE_MESSAGES)


def test_the_same_text_in_a_csv_cell_is_a_message_list(tmp_path):
    path = tmp_path / "p.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["prompt", "chosen", "rejected"],
                                 [json.dumps([{"role": "user", "content": "Say:"}]), LOOKS_LIKE_MESSAGES,
                                  json.dumps([{"role": "assistant", "content": "no"}])]])
    records = load_records(path)
    assert records[0].text_cells
    tokenizer = tiny_tokenizer()
    built = build_preference_dataset(path, tokenizer, DataSettings(max_length=None, max_prompt_length=None))
    assert tokenizer.decode(built.examples[0].chosen_ids).startswith("hi")


def test_a_csv_cell_over_csv_s_own_128_kib_limit_is_read_under_max_row_bytes(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["prompt", "chosen", "rejected"], ["p", "a" * (140 << 10), "b"]])
    assert len(load_records(path)[0].fields["chosen"]) == 140 << 10
    with pytest.raises(DataError, match=r"big.csv row 1 \(ending on line 2\): a cell is over max_row_bytes"):
        load_records(path, max_row_bytes=100 << 10)
    assert csv.field_size_limit() == 128 << 10                                 # csv's own setting put back


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_nested_too_deeply_names_the_place(tmp_path, suffix):
    deep = "[" * 5000 + "]" * 5000
    path = tmp_path / f"p{suffix}"
    path.write_text(f'[{{"prompt": {deep}}}]' if suffix == ".json" else f'{{"prompt": {deep}}}\n')
    where = str(path) if suffix == ".json" else f"{path}:1"
    with pytest.raises(DataError, match=f"{where}: JSON nested too deeply to read"):
        load_records(path)


def test_in_memory_rows_have_the_same_limit(tmp_path):
    with pytest.raises(DataError, match=r"dataset\[1\]: the record is 2 KiB, over max_row_bytes \(1 KiB\)"):
        load_records([{"prompt": "a"}, {"prompt": "b" * 2048}], max_row_bytes=1024)
