"""Every key of TRL 1.16's configs and transformers' TrainingArguments is decided, for every stage that
shares it: taken (as the key or under preftune's name), accepted and logged as ignored (only at values
that change nothing), or refused with the reason. Never the generic "unknown key"."""

import dataclasses

import pytest
import trl
from transformers import TrainingArguments
from trl.experimental.online_dpo import OnlineDPOConfig as OnlineDPOConfigTRL  # TRL 1.16 keeps it there

from preftune.config import DPOConfig, GRPOConfig, OnlineDPOConfig, RLConfig, RMConfig, SFTConfig
from preftune.config.keymap import IGNORED, UNSUPPORTED
from preftune.errors import ConfigError
from preftune.stages.startup import ignored_lines

REQUIRED = {DPOConfig: {}, SFTConfig: {}, RMConfig: {}, RLConfig: {"reward": "m:f"}, GRPOConfig: {"reward_funcs": ["m:f"]},
            OnlineDPOConfig: {"reward_funcs": ["m:f"]}}
# Which TRL class each stage is the counterpart of (TrainingArguments, ModelConfig: every stage).
COUNTERPARTS = [(trl.DPOConfig, DPOConfig), (trl.RewardConfig, RMConfig), (trl.RLOOConfig, RLConfig),
                (trl.SFTConfig, SFTConfig), (trl.ScriptArguments, DPOConfig), (trl.GRPOConfig, GRPOConfig),
                (OnlineDPOConfigTRL, OnlineDPOConfig)]
COUNTERPARTS += [(cls, stage) for cls in (TrainingArguments, trl.ModelConfig, trl.DatasetMixtureConfig)
                 for stage in REQUIRED]


def default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


CASES = [(theirs, ours, f.name, default(f)) for theirs, ours in COUNTERPARTS for f in dataclasses.fields(theirs)
         if f.name not in ("output_dir", "model_name_or_path") and default(f) is not dataclasses.MISSING]


@pytest.mark.parametrize("theirs, ours, key, value", CASES,
                         ids=[f"{t.__name__}.{k}->{o.__name__}" for t, o, k, _ in CASES])
def test_every_trl_key_at_its_default_is_decided(theirs, ours, key, value):
    try:
        cfg = ours(model_name_or_path="m", **REQUIRED[ours], **{key: value})
    except ConfigError as e:
        generic = [p for p in e.problems if p.startswith(f"unknown config key {key!r}") and "--help" in p]
        assert not generic, f"{key} is not decided for {ours.__name__}: {e}"
        assert any(key in p for p in e.problems)
        return
    if key in cfg.ignored_keys:
        assert any(line.startswith(f"ignored: {key}=") for line in ignored_lines(cfg))
    else:
        assert key in {f.name for f in dataclasses.fields(ours)} or key in ("use_cpu", "disable_tqdm",
                                                                               "resume_from_checkpoint",
                                                                               "activation_checkpointing",
                                                                               "activation_checkpointing_kwargs",
                                                                               "train_sampling_strategy",
                                                                               "torch_dtype",
                                                                               "max_completion_length",
                                                                               "normalize_advantages")


@pytest.mark.parametrize("key, value, reason", [
    ("fp16", True, "fp16 needs loss scaling"),
    ("deepspeed", "ds.json", "shard with fsdp=true"),
    ("load_best_model_at_end", True, "preftune keeps the final model"),
    ("use_liger_kernel", True, "chunked output layer"),
    ("neftune_noise_alpha", 5.0, "NEFTune"),
    ("load_in_8bit", True, "use load_in_4bit"),
])
def test_a_value_that_would_change_the_run_is_refused_with_the_reason(key, value, reason):
    with pytest.raises(ConfigError, match=reason) as err:
        DPOConfig(model_name_or_path="m", **{key: value})
    assert err.value.problems[0].startswith(f"{key}={value!r} is not supported: ")


def test_harmless_keys_are_logged_as_ignored():
    cfg = DPOConfig(model_name_or_path="m", dataloader_num_workers=8, log_level="info", do_eval=True, fp16=False,
                    dataset_num_proc=12)
    assert set(cfg.ignored_keys) == {"dataloader_num_workers", "log_level", "do_eval", "fp16", "dataset_num_proc"}
    lines = ignored_lines(cfg)
    assert "ignored: dataloader_num_workers=8 (the data is tokenized in memory before training; no DataLoader runs)" in lines
    assert len(lines) == 5


def test_renamed_keys_map_their_values():
    cfg = DPOConfig(model_name_or_path="m", optimizer="rmsprop", use_cpu=True, disable_tqdm=True,
                    evaluation_strategy="steps", resume_from_checkpoint=True, torch_dtype="bfloat16",
                    train_sampling_strategy="group_by_length", fsdp="full_shard auto_wrap")
    assert (cfg.optim, cfg.device, cfg.progress_bar, cfg.eval_strategy, cfg.resume, cfg.dtype, cfg.group_by_length,
            cfg.fsdp) == ("rmsprop", "cpu", False, "steps", "latest", "bfloat16", True, True)
    assert DPOConfig(model_name_or_path="m", resume_from_checkpoint="runs/x/checkpoint-4").resume == "runs/x/checkpoint-4"
    assert RLConfig(model_name_or_path="m", reward="m:f", max_completion_length=64,
                    normalize_advantages=False).max_new_tokens == 64


def test_a_key_and_its_trl_name_together_is_an_error():
    with pytest.raises(ConfigError, match="optimizer and optim are both set"):
        DPOConfig(model_name_or_path="m", optimizer="adamw", optim="sgd")
    with pytest.raises(ConfigError, match="fsdp 'shard_grad_op': preftune's fsdp=true is full_shard"):
        DPOConfig(model_name_or_path="m", fsdp="shard_grad_op")


@pytest.mark.parametrize("stage, key, fix", [
    (RLConfig, "beta", "the KL coefficient is kl_coef"),
    (RLConfig, "epsilon", "clip_range"),
    (RLConfig, "max_length", "online stages bound completions with their own key"),
    (GRPOConfig, "max_new_tokens", "grpo calls it max_completion_length"),
    (SFTConfig, "beta", "sft has no reference model"),
])
def test_keys_another_stage_has_say_what_to_write_here(stage, key, fix):
    with pytest.raises(ConfigError, match=fix):
        stage(model_name_or_path="m", **REQUIRED[stage], **{key: 0.1})


def test_the_tables_do_not_shadow_real_keys():
    # A key that is a stage's own key is read as that key: the tables are only for the others' keys.
    for stage in REQUIRED:
        fields = {f.name for f in dataclasses.fields(stage)}
        scoped = {k for k, e in UNSUPPORTED.items() if e.stages and stage.__name__ not in e.stages}
        for key in (set(IGNORED) | set(UNSUPPORTED)) - scoped:
            if key in fields:
                assert key in ("overwrite_output_dir", "router_aux_loss_coef", "dataset_num_proc"), (stage.__name__, key)


# Where a stage's default for a TRL-named key is not TRL's, and why (each in the README's "Coming from TRL").
DEFAULTS_DIFFER = {
    "output_dir": "runs/<stage> rather than trainer_output",
    "bf16": "CPUs without bf16 units run it several times slower (TRL: None, i.e. on where supported)",
    "padding_free": "auto: packing, checked against padded rows on a probe (the same numbers)",
    "precompute_ref_log_probs": "null = true unless sync_ref_model (the same numbers, computed once)",
    "num_generations": "RLConfig serves ppo and reinforce too (one sample per prompt); rloo asks for >= 2",
}
SAME = {"report_to": lambda v: [v] if isinstance(v, str) else v, "fsdp": lambda v: v or False,
        "model_name_or_path": lambda v: v or ""}


@pytest.mark.parametrize("theirs, ours", COUNTERPARTS[:5], ids=lambda c: c.__name__)
def test_defaults_of_trl_named_keys_are_trls(theirs, ours):
    own = {f.name: f for f in dataclasses.fields(ours)}
    differ = {}
    for f in dataclasses.fields(theirs):
        if f.name in own and f.name not in DEFAULTS_DIFFER:
            normal = SAME.get(f.name, lambda v: v)
            if normal(default(f)) != normal(default(own[f.name])):
                differ[f.name] = (default(f), default(own[f.name]))
    assert differ == {}
