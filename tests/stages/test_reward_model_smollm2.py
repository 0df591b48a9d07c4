"""Slow tier: a reward model on the real SmolLM2-135M learns IMDb sentiment preferences on a CPU.

Pairs from ``preftune.assets.imdb`` (prompt: "write a positive review"; chosen a positive IMDb review,
rejected a negative one, both cut to 48 words; held-out reviews disjoint from the training ones).
Full fine-tuning with the settings of README's "Reward model" run (4 min 17 s on 2 CPU cores there;
held-out accuracy 0.641 → 0.781, the same to 4 decimals with 1 or 2 threads).
"""

import pytest

from preftune.assets.imdb import build_imdb_preferences
from preftune.config import RMConfig, load_config
from preftune.modeling.reward_model import RewardModelScorer
from preftune.stages.reward_model import run_rm
from tests.conftest import pre_trl

pytestmark = pytest.mark.slow

TRAIN_PAIRS, EVAL_PAIRS, MAX_WORDS = 160, 64, 48
SETTINGS = pre_trl(["use_chat_template=false", "max_length=128", "max_prompt_length=32", "learning_rate=1e-4",
                    "lr_scheduler_type=constant_with_warmup", "warmup_steps=4", "per_device_train_batch_size=8",
                    "threads=2", "seed=42"], held_out=True)


def test_reward_model_on_smollm2_learns_imdb_preferences(smollm2_dir, tmp_path):
    train, held_out = build_imdb_preferences(TRAIN_PAIRS, EVAL_PAIRS, seed=0, max_words=MAX_WORDS)
    cfg = load_config(RMConfig, None, [f"model_name_or_path={smollm2_dir}", f"output_dir={tmp_path}",
                                       "progress_bar=false", "report_to=none", *SETTINGS])
    result = run_rm(cfg, train_data=train, eval_data=held_out)
    assert result.eval_after["accuracy"] > 0.75
    assert result.eval_after["loss"] < result.eval_before["loss"] - 0.1
    # The final folder scores new text like the stage's own evaluation did.
    scorer = RewardModelScorer(str(result.final_dir))
    some = held_out[:8]
    chosen = scorer([r["prompt"] for r in some], [r["chosen"] for r in some])
    rejected = scorer([r["prompt"] for r in some], [r["rejected"] for r in some])
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 5
