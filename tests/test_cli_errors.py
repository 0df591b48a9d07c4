"""Each bad input of issue 19 ("tracebacks instead of file/line errors") is an error naming the file and
line/row and field, or the key, with exit code 2 — raised before any training work.

Old behaviour, for each: a RecursionError traceback (JSON nested 3,000 levels), csv's "field larger
than field limit" (a cell over 128 KiB), a ValueError after the reference was computed (fewer rows than
one batch), torch's "Overflow when unpacking long long" (seed=1.0e+30), a TypeError (an integer YAML
key), "you need sentencepiece or tiktoken" (no tokenizer files), safetensors' "incomplete metadata"
without a file name (truncated weights), a JSONDecodeError (invalid meta.json), 7.7 minutes and 6 GB
for a 50 MB line cut to 32 tokens, and a 39 MB error message for a 326-byte YAML alias bomb.
"""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from preftune.cli import main
from preftune.train.checkpoint import checkpoint_run_id, write_manifest
from tests.conftest import separable_rows, write_jsonl

BASE = ["max_length=32", "max_prompt_length=16", "per_device_train_batch_size=4", "progress_bar=false",
        "report_to=none", "threads=1", "max_steps=1"]
BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg"))
        + "beta: *g\n")


@pytest.fixture
def data(tmp_path):
    return write_jsonl(separable_rows(16), tmp_path / "ok.jsonl")


def dpo(capsys, model, *args):
    code = main(["dpo", f"model_name_or_path={model}", *BASE, *args])
    return code, capsys.readouterr().err


def test_json_nested_thousands_of_levels(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(separable_rows(1)[0]) + "\n"
                    + '{"prompt": "x", "chosen": ' + "[" * 3000 + "]" * 3000 + ', "rejected": "b"}\n')
    code, err = dpo(capsys, tiny_model_dir, f"train_file={path}", f"output_dir={tmp_path / 'out'}")
    assert code == 2 and f"{path}:2: JSON nested too deeply to read" in err and "Traceback" not in err


def test_a_csv_cell_over_the_row_limit_names_its_row(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "big.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "chosen", "rejected"])
        writer.writerows([["p", "a", "b"], ["p", "a" * 4000, "b"]])
    code, err = dpo(capsys, tiny_model_dir, f"train_file={path}", "max_row_bytes=2000",
                    f"output_dir={tmp_path / 'out'}")
    assert code == 2 and f"{path} row 2 (ending on line 3): a cell is over max_row_bytes (1.95 KiB)" in err


def test_a_line_over_the_row_limit_fails_before_it_is_parsed(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "huge.jsonl"
    rows = separable_rows(8)
    rows[3]["prompt"] = "x" * (9 << 20)                                       # a 9 MiB prompt
    write_jsonl(rows, path)
    code, err = dpo(capsys, tiny_model_dir, f"train_file={path}", f"output_dir={tmp_path / 'out'}")
    assert code == 2 and f"{path}:4: the record is 9 MiB, over max_row_bytes (8 MiB)" in err


def test_fewer_rows_than_one_batch_fails_before_the_reference_is_computed(tiny_model_dir, tmp_path, capsys):
    path = write_jsonl(separable_rows(3), tmp_path / "few.jsonl")
    code, err = dpo(capsys, tiny_model_dir, f"train_file={path}", f"output_dir={tmp_path / 'out'}")
    assert code == 2 and "3 training examples are fewer than one global batch" in err
    assert not (tmp_path / "preftune-cache" / "reference_logps").exists()


def test_a_seed_past_what_the_generators_take(tiny_model_dir, data, tmp_path, capsys):
    code, err = dpo(capsys, tiny_model_dir, f"train_file={data}", "seed=1.0e+30", f"output_dir={tmp_path / 'o'}")
    assert code == 2 and "seed must be in [0, 4294967295]" in err and not (tmp_path / "o").exists()


def test_an_integer_yaml_key(tiny_model_dir, data, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("1: foo\nbeta: 0.1\n")
    code, err = dpo(capsys, tiny_model_dir, "--config", str(config), f"train_file={data}")
    assert code == 2 and "unknown config key '1'" in err


def test_a_yaml_alias_bomb_is_refused_in_one_short_line(tiny_model_dir, data, tmp_path, capsys):
    config = tmp_path / "bomb.yaml"
    config.write_text(BOMB)
    assert len(BOMB) < 400
    code, err = dpo(capsys, tiny_model_dir, "--config", str(config), f"train_file={data}")
    assert code == 2 and f"{config}: cannot read config: its aliases expand to more than 100,000 values" in err
    assert len(err) < 500


def test_a_model_folder_without_tokenizer_files(tiny_model_dir, data, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (model / name).unlink(missing_ok=True)
    code, err = dpo(capsys, model, f"train_file={data}", f"output_dir={tmp_path / 'out'}")
    assert code == 2 and f"{model} has no tokenizer files (none of tokenizer.json" in err


def test_a_truncated_safetensors_file_is_named(tiny_model_dir, data, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    code, err = dpo(capsys, model, f"train_file={data}", f"output_dir={tmp_path / 'out'}")
    assert code == 2 and f"{weights} is not a complete safetensors file" in err


def test_an_invalid_meta_json_in_a_checkpoint_is_named(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert dpo(capsys, tiny_model_dir, f"train_file={data}", f"output_dir={out}")[0] == 0
    ckpt = out / "checkpoint-1"
    (ckpt / "meta.json").write_text('{"config": {"seed": ')
    write_manifest(ckpt, 1, checkpoint_run_id(ckpt))            # hashes that match: only the content is bad
    code, err = dpo(capsys, tiny_model_dir, f"train_file={data}", f"output_dir={out}", "resume=latest")
    assert code == 2 and f"{ckpt / 'meta.json'} is not a valid meta.json (JSONDecodeError" in err
