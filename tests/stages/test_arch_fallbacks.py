"""Optimisations a model cannot take: off by default with one log line, an error when asked for by name;
the reward-model stage on a family transformers cannot classify, with LoRA and resume."""

import pytest

from preftune.config import RMConfig, SFTConfig, load_config
from preftune.errors import ConfigError
from preftune.modeling.reward_head import HEAD_FILE
from preftune.modeling.reward_model import RewardModelScorer
from preftune.stages.reward_model import run_rm
from preftune.stages.sft import run_sft
from tests.architectures.matrix import PAIRS, save_tiny

ROWS = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS]


def _sft(model_dir, out, *extra):
    return load_config(SFTConfig, None, [f"model_name_or_path={model_dir}", f"output_dir={out}", "max_steps=1",
                                         "per_device_train_batch_size=2", "progress_bar=false", "report_to=none",
                                         *extra])


@pytest.fixture(scope="module")
def opt_dir(tmp_path_factory):
    return save_tiny("opt", tmp_path_factory.mktemp("opt"))


def test_defaults_run_padded_and_plain_and_say_so_once(opt_dir, tmp_path, capsys):
    run_sft(_sft(opt_dir, tmp_path), train_data=ROWS)
    out = capsys.readouterr().out
    assert out.count("model type 'opt' runs on padded rows (padding_free=auto)") == 1
    assert out.count("lean_activations: nothing in model type 'opt' has a lean form") == 1


@pytest.mark.parametrize("key, message", [
    ("padding_free", "does not keep packed sequences apart.*model type 'opt'.*Set padding_free=auto"),
    ("lean_activations", "nothing in model type 'opt' has a lean form.*set lean_activations=auto or false"),
])
def test_asking_for_it_by_name_is_an_error(opt_dir, tmp_path, key, message):
    with pytest.raises(ConfigError, match=message):
        run_sft(_sft(opt_dir, tmp_path, f"{key}=true"), train_data=ROWS)


def test_auto_true_false_only():
    with pytest.raises(ConfigError, match="padding_free must be true, false or auto, got 'sometimes'"):
        _sft("m", "out", "padding_free=sometimes")


def _rm(model_dir, out, *extra):
    return load_config(RMConfig, None, [f"model_name_or_path={model_dir}", f"output_dir={out}", "max_steps=2",
                                        "per_device_train_batch_size=2", "progress_bar=false", "report_to=none",
                                        "learning_rate=1e-2", "seed=0", "logging_steps=1", *extra])


def test_a_reward_model_with_lora_on_a_family_transformers_cannot_classify_resumes(tmp_path):
    cohere = save_tiny("cohere", tmp_path / "cohere")
    lora = ["use_peft=true", "lora_r=4", "save_steps=1"]
    full = run_rm(_rm(cohere, tmp_path / "full", *lora), train_data=PAIRS)
    resumed = run_rm(_rm(cohere, tmp_path / "full", *lora, f"resume={tmp_path / 'full' / 'checkpoint-1'}"),
                     train_data=PAIRS)
    assert full.history[1]["loss"] == pytest.approx(resumed.history[0]["loss"], abs=1e-6)
    assert (full.final_dir / HEAD_FILE).is_file()
    scores = RewardModelScorer(str(full.final_dir))(["Review number 1:"] * 2, ["good great", "bad awful"])
    assert len(scores) == 2 and scores[0] != scores[1]
