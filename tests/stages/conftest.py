"""Real ``python -m preftune`` processes for the reliability and safety tests, and what to compare."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preftune.testing import tiny_llama, tiny_tokenizer
from preftune.train.metrics import read_metrics
from tests.conftest import pre_trl, separable_rows, write_jsonl

# 48 examples, global batch 4 × 2 accumulation = 8: 6 steps per epoch, 2 epochs.
SETTINGS = pre_trl(["max_length=48", "max_prompt_length=16", "per_device_train_batch_size=4",
                    "gradient_accumulation_steps=2", "num_train_epochs=2", "learning_rate=1e-3", "logging_steps=1",
                    "progress_bar=false", "report_to=none", "threads=1", "seed=3"])


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama-dropout")
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer), attention_dropout=0.2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    return write_jsonl(separable_rows(48, seed=5), tmp_path_factory.mktemp("data") / "train.jsonl")


def preftune_env(cache: Path, fault: str | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_CACHE": str(cache)}
    env.pop("PREFTUNE_FAULT", None)
    if fault:
        env["PREFTUNE_FAULT"] = fault
    return env


def dpo_command(out: Path, model: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "preftune", "dpo", f"model_name_or_path={model}", f"train_file={data}",
            f"output_dir={out}", *SETTINGS, *extra]


def preftune_dpo(out: Path, model: Path, data: Path, *extra: str, fault: str | None = None,
                 cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run(dpo_command(out, model, data, *extra), env=preftune_env(cache, fault), capture_output=True,
                          text=True, timeout=600)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train_records(out: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(out / "metrics.jsonl", "train")]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(dropout_model, train_file, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("uninterrupted")
    ok(preftune_dpo(root / "out", dropout_model, train_file, cache=root / "cache"))
    return root / "out"


def assert_bitwise_equal_runs(a: Path, b: Path) -> None:
    assert train_records(a) == train_records(b)          # exact floats, every step
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
