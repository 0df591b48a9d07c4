import typing

import pytest

from preftune.config import (
    DPOConfig,
    EvalConfig,
    GRPOConfig,
    OnlineDPOConfig,
    RLConfig,
    RMConfig,
    SFTConfig,
    TrainingConfig,
    describe,
    load_config,
)
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
    ("max_prompt_length=1200", "max_prompt_length must be < max_length"),
    ("optimizer=sgd", r"optimizer must be one of adamw, rmsprop \(it sets optim\), got 'sgd'"),
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


@pytest.mark.parametrize("overrides, message", [
    (["loss_type=kto", "rpo_alpha=0.5"], "rpo_alpha is set but none of loss_type ['kto'] uses it"),
    (["loss_type=plackett_luce", "use_weighting=true"], "use_weighting is set but none of loss_type"),
    (["loss_type=kto", "ld_alpha=0.5"], "ld_alpha is set but none of loss_type ['kto'] uses it"),
    # LD-DPO reweights what margin losses see; sft reads the plain sums, so alone it would ignore ld_alpha.
    (["loss_type=sft", "ld_alpha=0.5"], "ld_alpha is set but none of loss_type ['sft'] uses it"),
    (["loss_type=[sigmoid,aot]", "use_weighting=true"], "use_weighting cannot weight aot: it sorts the batch"),
])
def test_pair_options_unused_or_impossible_for_the_loss_are_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(DPOConfig, None, BASE + overrides)
    assert str(err.value).startswith(message)


def test_pair_options_load_with_the_losses_that_use_them():
    cfg = load_config(DPOConfig, None, BASE + ["loss_type=[sigmoid,sft]", "ld_alpha=0.5", "use_weighting=true",
                                               "rpo_alpha=0.1"])
    assert (cfg.ld_alpha, cfg.use_weighting, cfg.rpo_alpha) == (0.5, True, 0.1)


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
    # experiment_*.yaml configure `preftune experiment`, not a stage; tests/experiments loads them.
    stage_files = {p.name for p in root.glob("*.yaml") if not p.name.startswith("experiment_")}
    assert stage_files <= set(stage)
    for name, cls in stage.items():
        load_config(cls, root / name, ["model_name_or_path=m", "train_file=t.jsonl"])


# ----------------------------------------------------------------------------------------------------
# Issue 5 item 6: every numeric key with a range rejects a value outside it, naming key and range.

REQUIRED = {
    TrainingConfig: BASE[:1],
    SFTConfig: BASE,
    DPOConfig: BASE,
    EvalConfig: ["model_name_or_path=m", "ref_model_name_or_path=r", "eval_file=e.jsonl"],
    RMConfig: BASE,
    RLConfig: BASE + ["reward=module:function"],
    GRPOConfig: BASE + ["reward_funcs=[exact_answer]"],
    OnlineDPOConfig: BASE + ["reward_funcs=[exact_answer]"],
}

TR_DPO = ["sync_ref_model=true", "precompute_ref_log_probs=false"]  # the keys the TR-DPO ones need

# (class, overrides with the key under test last, the exact message). An int key shows an int, a float key
# a float.
OUT_OF_RANGE = [
    (TrainingConfig, ["learning_rate=-1"], "learning_rate must be > 0, got -1.0"),
    (SFTConfig, ["learning_rate=0"], "learning_rate must be > 0, got 0.0"),
    (TrainingConfig, ["per_device_train_batch_size=0"], "per_device_train_batch_size must be > 0, got 0"),
    (TrainingConfig, ["per_device_eval_batch_size=0"], "per_device_eval_batch_size must be > 0, got 0"),
    (TrainingConfig, ["gradient_accumulation_steps=0"], "gradient_accumulation_steps must be > 0, got 0"),
    (TrainingConfig, ["num_train_epochs=0"], "num_train_epochs must be > 0, got 0.0"),
    (TrainingConfig, ["logging_steps=0"], "logging_steps must be a whole number of steps >= 1 or a fraction of the "
                                          "total steps in (0, 1), got 0"),
    (TrainingConfig, ["logging_steps=2.5"], "logging_steps must be a whole number of steps >= 1 or a fraction of "
                                            "the total steps in (0, 1), got 2.5"),
    (TrainingConfig, ["logprob_chunk_size=-4"], "logprob_chunk_size must be > 0, got -4"),
    (TrainingConfig, ["use_peft=true", "lora_r=0"], "lora_r must be > 0, got 0"),
    (TrainingConfig, ["use_peft=true", "lora_alpha=0"], "lora_alpha must be > 0, got 0"),
    (TrainingConfig, ["use_peft=true", "lora_dropout=1"], "lora_dropout must be in [0, 1), got 1.0"),
    (TrainingConfig, ["adam_epsilon=0"], "adam_epsilon must be > 0, got 0.0"),
    (TrainingConfig, ["weight_decay=-0.1"], "weight_decay must be >= 0, got -0.1"),
    (TrainingConfig, ["warmup_steps=-1"], "warmup_steps must be >= 0, got -1.0"),
    (TrainingConfig, ["warmup_steps=2.5"], "warmup_steps must be a whole number of steps or a fraction in (0, 1), "
                                           "got 2.5"),
    (TrainingConfig, ["eval_delay=-1"], "eval_delay must be >= 0, got -1.0"),
    (TrainingConfig, ["max_completion_length=0"], "max_completion_length must be >= 1 or null, got 0"),
    (EvalConfig, ["max_completion_length=0"], "max_completion_length must be >= 1 or null, got 0"),
    (DPOConfig, ["precompute_ref_batch_size=0"], "precompute_ref_batch_size must be > 0 or null, got 0"),
    (TrainingConfig, ["warmup_ratio=1.5"], "warmup_ratio must be in [0, 1], got 1.5"),
    (TrainingConfig, ["warmup_ratio=-0.1"], "warmup_ratio must be in [0, 1], got -0.1"),
    (TrainingConfig, ["max_grad_norm=-1"], "max_grad_norm must be >= 0, got -1.0"),
    (TrainingConfig, ["eval_size=-1"], "eval_size must be >= 0, got -1"),
    (TrainingConfig, ["max_row_bytes=0"], "max_row_bytes must be > 0 or null, got 0"),
    (TrainingConfig, ["seed=1.0e+30"], "seed must be in [0, 4294967295], got 1000000000000000019884624838656"),
    (TrainingConfig, ["seed=-1"], "seed must be in [0, 4294967295], got -1"),
    (EvalConfig, ["loss_type=kto", "seed=-1"], "seed must be in [0, 4294967295], got -1"),
    (TrainingConfig, ["data_seed=-1"], "data_seed must be in [0, 4294967295], got -1"),
    (TrainingConfig, ["max_consecutive_skips=-1"], "max_consecutive_skips must be >= 0, got -1"),
    (TrainingConfig, ["eval_steps=0"], "eval_steps must be a whole number of steps >= 1 or a fraction of the total "
                                       "steps in (0, 1), got 0"),
    (TrainingConfig, ["save_steps=-5"], "save_steps must be a whole number of steps >= 1 or a fraction of the total "
                                        "steps in (0, 1), got -5"),
    (TrainingConfig, ["save_total_limit=0"], "save_total_limit must be > 0 or null, got 0"),
    (TrainingConfig, ["threads=0"], "threads must be > 0 or null, got 0"),
    (TrainingConfig, ["router_aux_loss_coef=-0.01"], "router_aux_loss_coef must be >= 0 or null, got -0.01"),
    (TrainingConfig, ["adam_beta1=1"], "adam_beta1 must be in [0, 1), got 1.0"),
    (TrainingConfig, ["adam_beta2=-0.5"], "adam_beta2 must be in [0, 1), got -0.5"),
    (TrainingConfig, ["max_steps=0"], "max_steps must be -1 (no limit) or > 0, got 0"),
    (TrainingConfig, ["max_steps=-2"], "max_steps must be -1 (no limit) or > 0, got -2"),
    (TrainingConfig, ["max_prompt_length=null", "max_length=1"],
     "max_length must be >= 2 or null (a prompt and a completion token), got 1"),
    (TrainingConfig, ["max_prompt_length=0"], "max_prompt_length must be >= 1 or null, got 0"),
    (TrainingConfig, ["max_prompt_length=1024"],  # = the default max_length
     "max_prompt_length must be < max_length (1024) so every completion keeps at least one token, got 1024"),
    (DPOConfig, ["max_steps=0"], "max_steps must be -1 (no limit) or > 0, got 0"),
    (DPOConfig, [*TR_DPO, "ref_model_mixup_alpha=1.5"], "ref_model_mixup_alpha must be in [0, 1], got 1.5"),
    (DPOConfig, [*TR_DPO, "ref_model_sync_steps=0"], "ref_model_sync_steps must be > 0, got 0"),
    (EvalConfig, ["per_device_eval_batch_size=0"], "per_device_eval_batch_size must be > 0, got 0"),
    (EvalConfig, ["logprob_chunk_size=0"], "logprob_chunk_size must be > 0, got 0"),
    (EvalConfig, ["threads=0"], "threads must be > 0 or null, got 0"),
    (EvalConfig, ["max_prompt_length=null", "max_length=1"],
     "max_length must be >= 2 or null (a prompt and a completion token), got 1"),
    (EvalConfig, ["max_prompt_length=0"], "max_prompt_length must be >= 1 or null, got 0"),
    (EvalConfig, ["max_length=64", "max_prompt_length=64"],
     "max_prompt_length must be < max_length (64) so every completion keeps at least one token, got 64"),
    (RMConfig, ["margin=-1"], "margin must be >= 0, got -1.0"),
    (RMConfig, ["center_rewards_coefficient=-0.01"], "center_rewards_coefficient must be >= 0 or null, got -0.01"),
    (RMConfig, ["learning_rate=-1e-5"], "learning_rate must be > 0, got -1e-05"),
    (RMConfig, ["logprob_chunk_size=256"], "unknown config key 'logprob_chunk_size' for RMConfig: the rm stage "
                                           "computes no token log-probs (its head reads one hidden state per sequence)"),
    (RLConfig, ["num_generations=0"], "num_generations must be > 0, got 0"),
    (RLConfig, ["max_new_tokens=0"], "max_new_tokens must be > 0, got 0"),
    (RLConfig, ["temperature=0"], "temperature must be > 0, got 0.0"),
    (RLConfig, ["adaptive_kl=true", "kl_horizon=0"], "kl_horizon must be > 0, got 0"),
    (RLConfig, ["adaptive_kl=true", "kl_target=-1"], "kl_target must be > 0, got -1.0"),
    (RLConfig, ["ppo_epochs=0"], "ppo_epochs must be > 0, got 0"),
    (RLConfig, ["num_mini_batches=0"], "num_mini_batches must be > 0, got 0"),
    (RLConfig, ["reward_batch_size=0"], "reward_batch_size must be > 0, got 0"),
    (RLConfig, ["clip_range=0"], "clip_range must be > 0, got 0.0"),
    (RLConfig, ["clip_range_value=0"], "clip_range_value must be > 0 or null, got 0.0"),
    (RLConfig, ["kl_coef=-0.05"], "kl_coef must be >= 0, got -0.05"),
    (RLConfig, ["vf_coef=-1"], "vf_coef must be >= 0, got -1.0"),
    (RLConfig, ["missing_eos_penalty=-1"], "missing_eos_penalty must be >= 0 or null, got -1.0"),
    (RLConfig, ["top_p=0"], "top_p must be in (0, 1], got 0.0"),
    (RLConfig, ["top_p=1.5"], "top_p must be in (0, 1], got 1.5"),
    (RLConfig, ["gamma=1.5"], "gamma must be in [0, 1], got 1.5"),
    (RLConfig, ["lam=-0.1"], "lam must be in [0, 1], got -0.1"),
    (RLConfig, ["max_steps=0"], "max_steps must be -1 (no limit) or > 0, got 0"),
    (RLConfig, ["max_prompt_length=0"], "max_prompt_length must be >= 1 or null, got 0"),
    (RLConfig, ["top_k=-1"], "top_k must be >= 0, got -1"),
    (RLConfig, ["min_p=1.5"], "min_p must be in [0, 1], got 1.5"),
    (RLConfig, ["repetition_penalty=0"], "repetition_penalty must be > 0, got 0.0"),
    (GRPOConfig, ["num_generations=1"], "num_generations must be >= 2 (GRPO's baseline is the group's other "
                                        "samples), got 1"),
    (GRPOConfig, ["num_generations_eval=0"], "num_generations_eval must be > 0 or null, got 0"),
    (GRPOConfig, ["max_completion_length=0"], "max_completion_length must be > 0, got 0"),
    (GRPOConfig, ["steps_per_generation=0"], "steps_per_generation must be > 0 or null, got 0"),
    (GRPOConfig, ["generation_batch_size=0"], "generation_batch_size must be > 0 or null, got 0"),
    (GRPOConfig, ["num_iterations=0"], "num_iterations must be > 0, got 0"),
    (GRPOConfig, ["beta=-0.1"], "beta must be >= 0, got -0.1"),
    (GRPOConfig, ["epsilon=0"], "epsilon must be > 0, got 0.0"),
    (GRPOConfig, ["epsilon_high=0"], "epsilon_high must be > 0 or null, got 0.0"),
    (GRPOConfig, ["delta=0"], "delta must be > 0 or null, got 0.0"),
    (GRPOConfig, ["loss_type=sapo", "sapo_temperature_pos=0"], "sapo_temperature_pos must be > 0, got 0.0"),
    (GRPOConfig, ["loss_type=sapo", "sapo_temperature_neg=-1"], "sapo_temperature_neg must be > 0, got -1.0"),
    (OnlineDPOConfig, ["max_new_tokens=0"], "max_new_tokens must be > 0, got 0"),
    (OnlineDPOConfig, ["missing_eos_penalty=-1"], "missing_eos_penalty must be >= 0 or null, got -1.0"),
]

# The loss keys: both DPOConfig and EvalConfig validate them (LossConfig.validate_losses).
LOSS_ROWS = [
    (["beta=0"], "beta must be > 0, got 0.0"),
    (["beta=-1"], "beta must be > 0, got -1.0"),
    (["label_smoothing=0.5"], "label_smoothing must be in [0, 0.5), got 0.5"),
    (["label_smoothing=-0.1"], "label_smoothing must be in [0, 0.5), got -0.1"),
    (["loss_type=discopop", "discopop_tau=0"], "discopop_tau must be > 0, got 0.0"),
    (["loss_type=simpo", "simpo_gamma=-1"], "simpo_gamma must be >= 0, got -1.0"),
    (["loss_type=orpo", "orpo_alpha=-0.1"], "orpo_alpha must be >= 0, got -0.1"),
    (["loss_type=kto", "desirable_weight=0"], "desirable_weight must be > 0, got 0.0"),
    (["loss_type=kto", "undesirable_weight=-1"], "undesirable_weight must be > 0, got -1.0"),
    (["loss_type=[sigmoid,ipo]", "loss_weights=[1,-1]"], "loss_weights[1] must be >= 0, got -1.0"),
    (["loss_type=[sigmoid,ipo]", "loss_weights=[0,0]"], "loss_weights must have a sum > 0, got [0.0, 0.0]"),
    (["ld_alpha=1.5"], "ld_alpha must be in [0, 1], got 1.5"),
    (["ld_alpha=-0.1"], "ld_alpha must be in [0, 1], got -0.1"),
    (["rpo_alpha=-1"], "rpo_alpha must be >= 0 or null, got -1.0"),
]
OUT_OF_RANGE += [(cls, overrides, message) for cls in (DPOConfig, EvalConfig) for overrides, message in LOSS_ROWS]
OUT_OF_RANGE += [(TrainingConfig, ["datasets=[{path: org/x}]", "test_split_size=1.5"],
                  "test_split_size must be a row count >= 1 or a fraction in (0, 1), got 1.5")]

# Wrong types, and the floats no range check can catch (nan compares False with everything).
WRONG_TYPE = [
    (DPOConfig, ["beta=abc"], "beta must be a number, got 'abc'"),
    (TrainingConfig, ["max_steps=abc"], "max_steps must be an integer, got 'abc'"),
    (TrainingConfig, ["per_device_train_batch_size=1.5"], "per_device_train_batch_size must be an integer, got 1.5"),
    (TrainingConfig, ["max_length=abc"], "max_length must be an integer, got 'abc'"),
    (TrainingConfig, ["bf16=maybe"], "bf16 must be true or false, got 'maybe'"),
    (TrainingConfig, ["learning_rate=true"], "learning_rate must be a number, got True"),
    (TrainingConfig, ["learning_rate=.nan"], "learning_rate must be a finite number, got nan"),
    (DPOConfig, ["beta=.inf"], "beta must be a finite number, got inf"),
    (DPOConfig, ["beta=nan"], "beta must be a finite number, got 'nan'"),
    (DPOConfig, ["loss_type=[sigmoid,ipo]", "loss_weights=[1,abc]"], "loss_weights must be a number, got 'abc'"),
    (RLConfig, ["temperature=[1]"], "temperature must be a number, got [1]"),
    (TrainingConfig, ["optimizer=sgd"], "optimizer must be one of adamw, rmsprop (it sets optim), got 'sgd'"),
    (TrainingConfig, ["optim=adamw_8bit"], "optim 'adamw_8bit': preftune builds adamw_torch, adamw_torch_fused, "
                                           "paged_adamw_32bit, adafactor, sgd, adagrad and rmsprop; the other "
                                           "transformers optimizers "
                                           "need bitsandbytes, GaLore, APOLLO, LOMO, torch-xla/NPU or schedule-free "
                                           "packages, or step layer by layer inside backward, which preftune's "
                                           "guarded step (skip a non-finite update, state unchanged) cannot wrap"),
]


@pytest.mark.parametrize("cls, overrides, message", OUT_OF_RANGE + WRONG_TYPE,
                         ids=[f"{c.__name__}:{' '.join(o)}" for c, o, _ in OUT_OF_RANGE + WRONG_TYPE])
def test_bad_values_name_the_key_and_the_allowed_range(cls, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(cls, None, REQUIRED[cls] + overrides)
    assert str(err.value) == message


@pytest.mark.parametrize("cls, key, near", [
    (DPOConfig, "betta", "beta"),
    (RLConfig, "temprature", "temperature"),
    (EvalConfig, "max_lenght", "max_length"),
    (RMConfig, "margn", "margin"),
])
def test_unknown_keys_are_errors_with_a_suggestion(cls, key, near):
    with pytest.raises(ConfigError) as err:
        load_config(cls, None, REQUIRED[cls] + [f"{key}=1"])
    assert str(err.value).startswith(f"unknown config key {key!r} for {cls.__name__} (did you mean {near}")


# Numeric keys with no range, and why: the audit below fails for any other key left unchecked.
NO_RANGE = {
    "reward_weights": "a reward's weight may be any real: negative makes it a penalty, 0 logs it without training on it",
    "bco_delta": "a reward shift δ: any real",
    "f_alpha_divergence_coef": "f'(u) = (u^(α-1) - 1)/(α - 1) is increasing for every real α (α = 1: its log limit)",
}


def _numeric_keys(cls: type) -> set[str]:
    keys = set()
    for name, tp in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if any(a in (int, float) or typing.get_args(a) == (float,) for a in args):
            keys.add(name)
    return keys


@pytest.mark.parametrize("cls", list(REQUIRED), ids=lambda c: c.__name__)
def test_every_numeric_key_is_range_checked_or_has_no_range_on_purpose(cls):
    # A key counts as covered by a row for this class, or for a class that takes it from the same group
    # (the group's own check tests it, whichever stage composes the group).
    def same_group(c: type, key: str) -> bool:
        return c is cls or (key in c.key_group and cls.key_group.get(key) is c.key_group[key])

    rows = [(c, o.split("=")[0]) for c, overrides, _ in OUT_OF_RANGE for o in overrides[-1:]]
    covered = {key for c, key in rows if same_group(c, key)}
    missing = _numeric_keys(cls) - covered - set(NO_RANGE)
    assert not missing, f"{cls.__name__}: numeric keys without a range test: {sorted(missing)}"
