"""Slow tier: a few DPO steps on the real SmolLM2-135M with IMDb pairs, both reference modes."""

import math

import pytest

from preftune.assets.imdb import build_imdb_preferences
from preftune.config import DPOConfig, load_config
from preftune.stages.dpo import run_dpo
from tests.conftest import pre_trl

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("extra", [[], ["use_peft=true", "learning_rate=1e-4"]])
def test_dpo_steps_on_smollm2(smollm2_dir, tmp_path, extra):
    train, held_out = build_imdb_preferences(8, 8, seed=0, max_words=12)
    cfg = load_config(DPOConfig, None, pre_trl([
        f"model_name_or_path={smollm2_dir}", f"output_dir={tmp_path}", "max_length=64", "max_prompt_length=48",
        "per_device_train_batch_size=4", "max_steps=2", "learning_rate=1e-5", "progress_bar=false",
        "report_to=none", "threads=2", *extra], held_out=True))
    result = run_dpo(cfg, train_data=train, eval_data=held_out)
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert result.eval_before["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert result.eval_after["rewards/margins"] != result.eval_before["rewards/margins"]
    assert (result.final_dir / "model.safetensors").is_file()
