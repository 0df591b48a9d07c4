import dataclasses
import subprocess
import sys

from preftune.cli import main
from preftune.config import DPOConfig


def test_help_lists_every_key(capsys):
    try:
        main(["dpo", "--help"])
    except SystemExit:
        pass
    text = capsys.readouterr().out
    for f in dataclasses.fields(DPOConfig):
        if not f.metadata.get("internal"):
            assert f"  {f.name} (" in text, f.name


def test_bad_key_is_a_clean_error_with_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "preftune", "dpo", "model_name_or_path=x", "betta=0.2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown config key 'betta'" in proc.stderr and "did you mean beta" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_data_is_a_clean_error_naming_file_line_and_field(tiny_model_dir, tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "rejected": "c"}\n')
    proc = subprocess.run([sys.executable, "-m", "preftune", "dpo", f"model_name_or_path={tiny_model_dir}",
                           f"train_file={data}", f"output_dir={tmp_path / 'out'}", "progress_bar=false"],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{data}:2" in proc.stderr and "'chosen'" in proc.stderr


def test_theory_subcommand_writes_the_report(tmp_path):
    code = main(["theory", "--quick", "--out", str(tmp_path / "t")])
    assert code == 0
    text = (tmp_path / "t" / "theory.md").read_text()
    assert "checks pass" in text and "**FAIL**" not in text


def test_dashed_settings_and_flags_are_read_like_key_value(capsys):
    code = main(["dpo", "--model_name_or_path", "x", "--beta=0", "--bf16", "--betta", "0.2", "max_length=1",
                 "--optim", "sgd", "--optim_args", "momentum=0.9", "--no_remove_unused_columns"])
    assert code == 2
    err = capsys.readouterr().err
    assert "3 problems in the config" in err   # optim_args took momentum=0.9 as its value
    for text in ("unknown config key 'betta'", "beta must be > 0, got 0.0", "max_length must be >= 2"):
        assert text in err
    assert "bf16" not in err  # --bf16 alone read as true


def test_a_missing_model_or_data_fails_before_any_work(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "preftune", "dpo", "train_file=prefs.jsonl", f"output_dir={out}"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "model_name_or_path is required" in proc.stderr
    assert not out.exists()  # nothing was started
    proc = subprocess.run([sys.executable, "-m", "preftune", "dpo", "model_name_or_path=smollm2",
                           f"output_dir={out}", "dataset_name=./no/such/folder"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr and "Traceback" not in proc.stderr
