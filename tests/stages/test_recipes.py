"""Published recipes run unchanged: the alignment-handbook's zephyr-7b-beta DPO recipes (recipes/ holds
copies of recipes/zephyr-7b-beta/dpo/config_full.yaml and config_qlora.yaml of huggingface/alignment-handbook,
keys as published) and the `trl dpo` command lines TRL 1.16 documents (trl/scripts/dpo.py).

Changed, and only these: the model and dataset names, which point at a tiny Llama and tiny datasets of the
same layout (same configs, splits and columns) in an on-disk Hugging Face cache read with HF_HUB_OFFLINE=1;
`push_to_hub` (false: it needs the network); and, without CUDA, `load_in_4bit` (a clear error names it first).
The runs are small because the data is: every key of the recipe, max_steps included, is as published.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from preftune.testing import save_to_hub_cache, write_dataset_repo
from preftune.train.metrics import read_metrics
from tests.stages.test_dpo_formats import h4_rows  # HuggingFaceH4/ultrafeedback_binarized's layout

RECIPES = Path(__file__).parent / "recipes"
MODEL, TINY_MODEL = "alignment-handbook/zephyr-7b-sft-{}", "tiny-org/tiny-zephyr-sft"
DATA, TINY_DATA = "HuggingFaceH4/ultrafeedback_binarized", "tiny-org/ultrafeedback-binarized-tiny"
def trl_lib_rows(n: int) -> list[dict]:
    """trl-lib/ultrafeedback_binarized's columns: chosen/rejected conversations (the prompt is their shared
    first message), score_chosen, score_rejected."""
    return [{k: r[k] for k in ("chosen", "rejected", "score_chosen", "score_rejected")} for r in h4_rows(n)]


def hub(tmp_path, offline_hub, model_dir, splits: dict[str, list[dict]], repo: str = TINY_DATA,
        config: str = "default") -> None:
    save_to_hub_cache(model_dir, TINY_MODEL, offline_hub)
    save_to_hub_cache(write_dataset_repo(tmp_path / "repo", {config: splits}), repo, offline_hub, repo_type="dataset")


def preftune(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "preftune", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def recipe(name: str, size: str, tmp_path: Path) -> Path:
    text = (RECIPES / name).read_text()
    assert MODEL.format(size) in text and DATA in text
    path = tmp_path / name
    path.write_text(text.replace(MODEL.format(size), TINY_MODEL).replace(DATA, TINY_DATA))
    return path


def test_zephyr_dpo_full_recipe_runs_unchanged(tiny_model_dir, tmp_path, offline_hub):
    # The mixture puts train_prefs and test_prefs together and holds test_split_size = 2000 rows out: 2032 rows
    # leave 32 to train on, 2 steps of 8 × 2 accumulation.
    hub(tmp_path, offline_hub, tiny_model_dir, {"train_prefs": h4_rows(2016), "test_prefs": h4_rows(16)})
    config = recipe("zephyr-7b-beta_dpo_config_full.yaml", "full", tmp_path)
    proc = preftune(["dpo", "--config", str(config), "--push_to_hub", "false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "data" / "zephyr-7b-dpo-full"
    saved = json.loads((out / "config.json").read_text())
    assert (saved["beta"], saved["learning_rate"], saved["lr_scheduler_type"], saved["optim"]) == (
        0.01, 5e-7, "cosine", "adamw_torch")
    assert saved["gradient_checkpointing_kwargs"] == {"use_reentrant": False} and saved["dtype"] is None
    assert saved["ignored_keys"] == {"dataset_num_proc": 12, "do_eval": True, "log_level": "info"}
    assert "eval data: dataset_mixture [test]: 2000 examples" in proc.stdout
    train = read_metrics(out / "metrics.jsonl", "train")
    assert [r["step"] for r in train] == [2] and [r["lr"] for r in train] == [pytest.approx(5e-7)]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "eval")] == [2]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert (out / "final" / "model.safetensors").is_file()


def test_zephyr_dpo_qlora_recipe_runs_unchanged_but_for_4bit_without_cuda(tiny_model_dir, tmp_path, offline_hub):
    hub(tmp_path, offline_hub, tiny_model_dir, {"train_prefs": h4_rows(8), "test_prefs": h4_rows(8)})
    config = recipe("zephyr-7b-beta_dpo_config_qlora.yaml", "qlora", tmp_path)
    settings = ["dpo", "--config", str(config), "--push_to_hub", "false"]
    if torch.cuda.is_available():
        pytest.skip("with CUDA the recipe's load_in_4bit would run; this test is the CPU path")
    refused = preftune(settings, cwd=tmp_path)
    assert refused.returncode == 2 and "load_in_4bit" in refused.stderr and "Traceback" not in refused.stderr
    proc = preftune([*settings, "--load_in_4bit", "false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "data" / "zephyr-7b-dpo-qlora"
    assert "paged_adamw_32bit: paging needs bitsandbytes on CUDA" in proc.stdout + proc.stderr
    assert "(LoRA)" in proc.stdout and "ignored: preprocessing_num_workers=12" in proc.stdout
    saved = json.loads((out / "config.json").read_text())
    assert (saved["eval_strategy"], saved["dtype"], saved["lora_target_modules"][-1]) == ("steps", "float16",
                                                                                           "down_proj")
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "eval")] == [2]
    assert (out / "final" / "model.safetensors").is_file()


def test_a_split_the_dataset_lacks_is_exit_code_2_before_the_model_loads(tiny_model_dir, tmp_path, offline_hub):
    hub(tmp_path, offline_hub, tiny_model_dir, {"train_prefs": h4_rows(8), "test_prefs": h4_rows(8)})
    proc = preftune(["dpo", "--model_name_or_path", TINY_MODEL, "--dataset_name", TINY_DATA, "--output_dir", "out"],
                    cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{TINY_DATA}: no split 'train' (it has train_prefs, test_prefs); set dataset_train_split" in proc.stderr
    assert "policy:" not in proc.stdout and not (tmp_path / "out" / "metrics.jsonl").exists()


def test_trls_own_mixture_format_trains(tiny_model_dir, tmp_path, offline_hub):
    # trl dpo's DatasetMixtureConfig keys, as TRL's docs write them in a YAML config.
    hub(tmp_path, offline_hub, tiny_model_dir, {"train_prefs": h4_rows(12), "test_prefs": h4_rows(4)})
    config = tmp_path / "trl.yaml"
    config.write_text(f"model_name_or_path: {TINY_MODEL}\noutput_dir: out\nmax_steps: 1\n"
                      f"per_device_train_batch_size: 4\neval_strategy: steps\nstreaming: false\n"
                      f"datasets:\n  - path: {TINY_DATA}\n    split: train_prefs\n    columns: [chosen, rejected]\n"
                      f"    fraction: 1.0\n  - path: {TINY_DATA}\n    split: test_prefs\n    columns: [chosen, rejected]\n"
                      f"    fraction: 0.5\n"
                      f"test_split_size: 3\n")
    proc = preftune(["dpo", "--config", str(config)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # shares ⅔ and ⅓; test_prefs (4 rows) caps the mixture at 12 rows: 8 + 4, of which 3 are held out
    assert "train data: datasets [train]: 9 examples" in proc.stdout
    assert "eval data: datasets [test]: 3 examples" in proc.stdout
    assert [r["step"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl", "eval")] == [1]


# TRL 1.16's documented command lines (trl/scripts/dpo.py), flag for flag.
TRL_DPO = ["--dataset_name", "trl-lib/ultrafeedback_binarized", "--model_name_or_path", "Qwen/Qwen2-0.5B-Instruct",
           "--learning_rate", "5.0e-7", "--num_train_epochs", "1", "--per_device_train_batch_size", "2",
           "--max_steps", "1000", "--gradient_accumulation_steps", "8", "--eval_strategy", "steps",
           "--eval_steps", "50", "--output_dir", "Qwen2-0.5B-DPO", "--no_remove_unused_columns"]
TRL_DPO_LORA = [*TRL_DPO[:5], "5.0e-6", *TRL_DPO[6:], "--use_peft", "--lora_r", "32", "--lora_alpha", "16"]


@pytest.mark.slow   # 1000 steps each (the command's own max_steps): minutes on 2 cores
@pytest.mark.parametrize("flags", [TRL_DPO, TRL_DPO_LORA], ids=["full", "lora"])
def test_trl_dpo_command_lines_run_unchanged(tiny_model_dir, tmp_path, offline_hub, flags):
    hub(tmp_path, offline_hub, tiny_model_dir, {"train": trl_lib_rows(16), "test": trl_lib_rows(4)},
        repo="tiny-org/trl-ultrafeedback-binarized-tiny")
    names = {"trl-lib/ultrafeedback_binarized": "tiny-org/trl-ultrafeedback-binarized-tiny",
             "Qwen/Qwen2-0.5B-Instruct": TINY_MODEL}
    # 1000 steps: about 12 minutes on 2 busy cores
    proc = preftune(["dpo", *[names.get(f, f) for f in flags]], cwd=tmp_path, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "Qwen2-0.5B-DPO"
    assert len(read_metrics(out / "metrics.jsonl", "eval")) == 20   # every 50 of the 1000 steps
    assert ("(LoRA)" in proc.stdout) == ("--use_peft" in flags)


def test_trl_dpo_flags_parse_as_trl_reads_them():
    from preftune.config import DPOConfig, cli_overrides, load_config

    cfg = load_config(DPOConfig, None, cli_overrides(TRL_DPO_LORA))
    assert (cfg.dataset_name, cfg.model_name_or_path, cfg.learning_rate, cfg.num_train_epochs, cfg.max_steps) == (
        "trl-lib/ultrafeedback_binarized", "Qwen/Qwen2-0.5B-Instruct", 5e-6, 1.0, 1000)
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.eval_strategy, cfg.eval_steps,
            cfg.output_dir) == (2, 8, "steps", 50, "Qwen2-0.5B-DPO")
    assert cfg.use_peft and (cfg.lora_r, cfg.lora_alpha) == (32, 16)
    assert cfg.ignored_keys == {"remove_unused_columns": False}
