"""Shared fixtures: a tiny tokenizer + Llama saved as a real Hugging Face folder, and synthetic data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from preftune.testing import tiny_llama, tiny_tokenizer


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own empty cache folder (reference log-probs, converted models)."""
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "preftune-cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


GOOD = ["good", "great", "excellent", "fine", "yes"]
BAD = ["bad", "awful", "poor", "terrible", "no"]


def separable_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Pairs where the chosen answer uses only 'positive' words and the rejected only 'negative' ones:
    a task a tiny model can learn, so held-out reward accuracy must rise."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good = " ".join(rng.choice(GOOD) for _ in range(rng.randint(2, 6)))
        bad = " ".join(rng.choice(BAD) for _ in range(rng.randint(2, 6)))
        rows.append({"prompt": f"Review number {i}:", "chosen": good, "rejected": bad})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def separable_files(tmp_path) -> tuple[Path, Path]:
    return (write_jsonl(separable_rows(160, seed=0), tmp_path / "train.jsonl"),
            write_jsonl(separable_rows(48, seed=1), tmp_path / "eval.jsonl"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once into the user's preftune cache (slow tier only).

    Session-scoped fixtures are built before the per-test cache override, so this uses the real
    cache ($PREFTUNE_CACHE or ~/.cache/preftune) and converts at most once per machine.
    """
    pytest.importorskip("gguf")
    from preftune.assets.smollm2 import ensure_smollm2

    return ensure_smollm2()


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache and HF_HUB_OFFLINE=1, for this process and its subprocesses.

    huggingface_hub and datasets read their settings when imported, so the module values are set
    as well as the environment. Returns the hub cache folder (write repositories with
    ``preftune.testing.save_to_hub_cache``).
    """
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    hub = home / "hub"
    hub.mkdir(parents=True)
    for name, value in {"HF_HOME": str(home), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
                        "HF_DATASETS_CACHE": str(home / "datasets")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    try:
        import datasets.config as datasets_config
    except ImportError:
        pass
    else:
        monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(datasets_config, "HF_DATASETS_CACHE", home / "datasets")
    return hub


# preftune's defaults before TRL's became its defaults (issue 13). Tests written against the old defaults
# pin them, so they keep testing what they tested; a test's own settings come after and win.
PRE_TRL = ("num_train_epochs=1", "max_grad_norm=10", "logging_steps=1", "max_length=512", "max_prompt_length=256",
           "gradient_checkpointing=false", "optim=adamw_torch", "disable_dropout=false", "save_total_limit=2")
PRE_TRL_LORA = ("lora_dropout=0", "lora_target_modules=[all-linear]")
# Held-out data was evaluated before training and at the end (and every eval_steps when set).
PRE_TRL_EVAL = ("eval_on_start=true", "eval_strategy=steps", "eval_steps=1000000")


def pre_trl(settings, held_out: bool = False, online: bool = False) -> list[str]:
    """``settings`` after the pre-TRL defaults (the LoRA ones with use_peft, the evaluation ones with held-out
    data: an eval_file / eval_size among the settings, or ``held_out`` for data passed from Python). ``online``:
    for an online stage, which has no max_length (its completions are sampled to their own limit)."""
    settings = list(settings)
    keys = {s.partition("=")[0] for s in settings}
    out = [s for s in PRE_TRL if not (s.startswith("optim=") and "optimizer" in keys)
           and not (online and s.startswith("max_length="))]
    if "use_peft=true" in settings:
        out += PRE_TRL_LORA
    sizes = [s.partition("=")[2] for s in settings if s.startswith("eval_size=")]
    if held_out or "eval_file" in keys or (sizes and sizes[-1] != "0"):
        out += PRE_TRL_EVAL
    return out + settings


class _Touch:
    """Unpickling this runs a shell command that creates a marker file: what an attacker's payload does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def pickle_payload(marker: Path) -> bytes:
    """A pickle whose loading creates ``marker`` (no file appears unless something unpickles it)."""
    import pickle

    return pickle.dumps(_Touch(marker))
