import pytest

from preftune.config import DPOConfig, SFTConfig, describe, load_config
from preftune.errors import ConfigError

BASE = ["model_name_or_path=m", "train_file=t.jsonl"]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_name_or_path: m\ntrain_file: t.jsonl\nbeta: 0.5\nlearning_rate: 1e-6\n")
    cfg = load_config(DPOConfig, path, ["beta=0.2", "bf16=true", "loss_type=[sigmoid,ipo]", "loss_weights=[1,0.5]"])
    assert cfg.beta == 0.2 and cfg.bf16 is True and cfg.learning_rate == 1e-6
    assert cfg.loss_type == ["sigmoid", "ipo"] and cfg.loss_weights == [1.0, 0.5]
    assert load_config(DPOConfig, None, BASE + ["loss_type=ipo"]).loss_type == ["ipo"]


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown config key 'betta'.*did you mean beta"):
        load_config(DPOConfig, None, BASE + ["betta=0.1"])
    with pytest.raises(ConfigError, match="unknown config key 'beta' for SFTConfig"):
        load_config(SFTConfig, None, BASE + ["beta=0.1"])


@pytest.mark.parametrize("override, message", [
    ("beta=0", "beta must be > 0"),
    ("beta=abc", "beta must be a number"),
    ("learning_rate=-1", "learning_rate must be > 0"),
    ("bf16=maybe", "bf16 must be true or false"),
    ("per_device_train_batch_size=1.5", "per_device_train_batch_size must be an integer"),
    ("max_prompt_length=600", "max_prompt_length .* must be < max_length"),
    ("optimizer=sgd", "optimizer must be one of adamw, rmsprop"),
    ("loss_type=nope", "loss_type: unknown loss 'nope'"),
    ("label_smoothing=0.6", r"label_smoothing must be in \[0, 0.5\)"),
    ("lora_r=8", "lora_r is set but use_peft is false"),
    ("loss_weights=[1,2]", "loss_weights has 2 entries but loss_type has 1"),
    ("loss_type=[kto,sigmoid]", "cannot be combined with other losses"),
    ("loss_type=[plackett_luce,plackett_luce]", "cannot be combined"),
    ("desirable_weight=2", "desirable_weight is set but none of loss_type"),
])
def test_invalid_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DPOConfig, None, BASE + [override])


def test_label_smoothing_unused_by_the_loss_is_an_error():
    with pytest.raises(ConfigError, match="none of loss_type"):
        load_config(DPOConfig, None, BASE + ["loss_type=ipo", "label_smoothing=0.1"])


def test_config_is_frozen():
    cfg = load_config(DPOConfig, None, BASE)
    with pytest.raises(AttributeError):
        cfg.beta = 1.0


def test_describe_lists_every_key_with_default():
    text = describe(DPOConfig)
    for key in ("beta (float) = 0.1", "loss_type", "precompute_ref_log_probs", "threads", "resume"):
        assert key in text


def test_kto_and_plackett_luce_are_loss_types_with_their_hyperparameters():
    cfg = load_config(DPOConfig, None, BASE + ["loss_type=kto", "desirable_weight=1.33", "undesirable_weight=1"])
    assert cfg.loss_type == ["kto"] and cfg.desirable_weight == 1.33
    with pytest.raises(ConfigError, match="undesirable_weight must be > 0"):
        load_config(DPOConfig, None, BASE + ["loss_type=kto", "undesirable_weight=0"])
    assert load_config(DPOConfig, None, BASE + ["loss_type=plackett_luce"]).loss_type == ["plackett_luce"]


def test_example_configs_in_the_repo_load():
    from pathlib import Path

    from preftune.config import RLConfig

    root = Path(__file__).resolve().parent.parent / "configs"
    stage = {"dpo_paper.yaml": DPOConfig, "sft_chosen.yaml": SFTConfig, "ppo_sentiment.yaml": RLConfig}
    assert {p.name for p in root.glob("*.yaml")} <= set(stage)
    for name, cls in stage.items():
        load_config(cls, root / name, ["model_name_or_path=m", "train_file=t.jsonl"])
