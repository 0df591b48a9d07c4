"""Published preference-data formats, built here row for row, train DPO on a tiny model (or fail naming the
cause); a Hub model and a Hub dataset run from an on-disk Hub cache with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from preftune.config import DPOConfig, load_config
from preftune.errors import DataError
from preftune.stages.dpo import run_dpo
from preftune.testing import save_to_hub_cache, write_dataset_repo
from tests.conftest import pre_trl

GOOD, BAD = ["good", "great", "fine", "yes"], ["bad", "awful", "poor", "no"]


def hh(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def hh_rows(n: int) -> list[dict]:
    """Anthropic/hh-rlhf: {chosen, rejected}, whole transcripts that differ in the last Assistant turn."""
    return [{"chosen": hh(f"Review {i}?", "ok", "And now?", f"{GOOD[i % 4]} {GOOD[(i + 1) % 4]}"),
             "rejected": hh(f"Review {i}?", "ok", "And now?", f"{BAD[i % 4]} {BAD[(i + 1) % 4]}")} for i in range(n)]


def orca_rows(n: int) -> list[dict]:
    """Intel/orca_dpo_pairs: {system, question, chosen, rejected}; many system texts are empty."""
    return [{"system": "" if i % 2 else "You are a helpful assistant.", "question": f"Review {i}:",
             "chosen": GOOD[i % 4], "rejected": BAD[i % 4]} for i in range(n)]


def uf_rows(n: int) -> list[dict]:
    """openbmb/UltraFeedback: {source, instruction, models, completions: [{response, annotations, ...}]}."""
    def completion(text, rating):
        aspect = {"Rating": str(rating), "Rationale": "..."}
        return {"model": "m", "principle": "helpfulness", "custom_system_prompt": "", "critique": "...",
                "response": text, "overall_score": float(rating * 2), "fine-grained_score": float(rating),
                "annotations": {"helpfulness": dict(aspect, Type=["1"]), "honesty": aspect,
                                "instruction_following": aspect, "truthfulness": dict(aspect, Type=["0"])}}
    return [{"source": "ultrachat", "instruction": f"Review {i}:", "models": ["a", "b", "c", "d"],
             "correct_answers": ["None"], "incorrect_answers": ["None"],
             "completions": [completion(GOOD[i % 4], 5), completion(BAD[i % 4], 1), completion(BAD[(i + 1) % 4], 2),
                             completion(GOOD[(i + 1) % 4], 4)]} for i in range(n)]


def h4_rows(n: int) -> list[dict]:
    """HuggingFaceH4/ultrafeedback_binarized: prompt string, chosen/rejected = [user, assistant] repeating it."""
    rows = []
    for i in range(n):
        prompt = f"Review {i}:"
        chosen = [{"role": "user", "content": prompt}, {"role": "assistant", "content": GOOD[i % 4]}]
        rejected = [{"role": "user", "content": prompt}, {"role": "assistant", "content": BAD[i % 4]}]
        rows.append({"prompt": prompt, "prompt_id": f"{i:064x}", "chosen": chosen, "rejected": rejected,
                     "messages": chosen, "score_chosen": 8.0, "score_rejected": 3.0})
    return rows


def dpo(model_dir, out, *extra):
    return load_config(DPOConfig, None, pre_trl([
        f"model_name_or_path={model_dir}", f"output_dir={out}", "max_length=64", "max_prompt_length=48",
        "per_device_train_batch_size=4", "max_steps=3", "learning_rate=1e-3", "progress_bar=false",
        "report_to=none", *extra]))


@pytest.mark.parametrize("rows, keys", [
    (hh_rows(12), []),
    (orca_rows(12), ["prompt_field=question", "system_field=system"]),
    (uf_rows(12), ["ultrafeedback_score=mean_aspect", "ultrafeedback_pairs=best_vs_random"]),
    (h4_rows(12), []),
], ids=["hh-rlhf", "orca_dpo_pairs", "UltraFeedback", "ultrafeedback_binarized"])
def test_published_formats_train(tiny_model_dir, tmp_path, rows, keys, capsys):
    result = run_dpo(dpo(tiny_model_dir, tmp_path / "out", *keys), train_data=rows)
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # θ = ref at the first step
    assert all(math.isfinite(h["loss"]) for h in result.history) and len(result.history) == 3
    assert "train data: dataset: 12 examples, dropped 0" in capsys.readouterr().out


def test_kto_rows_without_loss_type_kto_name_the_fix(tiny_model_dir, tmp_path):
    rows = [{"prompt": f"p{i}", "completion": "good", "label": i % 2 == 0} for i in range(8)]
    with pytest.raises(DataError, match="^dataset\\[0\\]: missing field 'chosen'; the row has 'completion' and "
                                        "'label', the layout of unpaired \\(KTO\\) data: train on it with loss_type=kto"):
        run_dpo(dpo(tiny_model_dir, tmp_path / "out"), train_data=rows)


def test_h4_rows_whose_completions_repeat_another_prompt_name_the_cause(tiny_model_dir, tmp_path):
    rows = h4_rows(4)
    rows[2]["prompt"] = "Something else"
    with pytest.raises(DataError, match="^dataset\\[2\\]: 'chosen' and 'rejected' both start with the same 1 "
                                        "message\\(s\\) \\(user\\), so they carry their own prompt, but it is not field "
                                        "'prompt'"):
        run_dpo(dpo(tiny_model_dir, tmp_path / "out"), train_data=rows)


def test_a_hub_model_and_a_hub_dataset_run_offline_from_the_cli(tiny_model_dir, tmp_path, offline_hub):
    save_to_hub_cache(tiny_model_dir, "tiny-org/tiny-llama", offline_hub)
    repo = write_dataset_repo(tmp_path / "repo", {"default": {"train_prefs": h4_rows(12), "test_prefs": h4_rows(4)}})
    save_to_hub_cache(repo, "tiny-org/h4-prefs", offline_hub, repo_type="dataset")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "preftune", "dpo", *pre_trl([
        "model_name_or_path=tiny-org/tiny-llama", "dataset_name=tiny-org/h4-prefs", "dataset_train_split=train_prefs",
        "dataset_test_split=test_prefs", f"output_dir={out}", "max_steps=2", "max_length=64", "max_prompt_length=48",
        "per_device_train_batch_size=4", "progress_bar=false", "report_to=none"], held_out=True)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert env["HF_HUB_OFFLINE"] == "1"
    log = proc.stdout
    assert "train data: tiny-org/h4-prefs [train_prefs]: 12 examples" in log
    assert "eval data: tiny-org/h4-prefs [test_prefs]: 4 examples" in log
    assert "policy: tiny-org/tiny-llama @ " in log
    assert json.loads((out / "summary.json").read_text())["eval_after"]
