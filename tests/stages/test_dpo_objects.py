"""The Python API a TRL user expects: model, tokenizer, LoraConfig and in-memory datasets as objects."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from preftune.config import DPOConfig, SFTConfig, load_config
from preftune.errors import ConfigError
from preftune.stages.dpo import run_dpo
from preftune.stages.sft import run_sft
from preftune.testing import tiny_llama, tiny_tokenizer
from tests.conftest import PRE_TRL_EVAL, pre_trl, separable_rows

datasets = pytest.importorskip("datasets")
COMMON = pre_trl(["max_length=48", "max_prompt_length=16", "per_device_train_batch_size=8", "logging_steps=1",
                  "progress_bar=false", "report_to=none", "seed=0", "learning_rate=1e-3"])


def config(cls, out, *extra):
    return load_config(cls, None, [f"output_dir={out}", *COMMON, *extra])


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_model_object_trains_in_place_like_the_same_model_by_name(tiny_model_dir, tmp_path):
    rows = datasets.Dataset.from_list(separable_rows(32))
    by_name = run_dpo(config(DPOConfig, tmp_path / "name", f"model_name_or_path={tiny_model_dir}", "max_steps=3"),
                      train_data=rows)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = tiny_tokenizer()
    before = weights(model)
    by_object = run_dpo(config(DPOConfig, tmp_path / "object", "max_steps=3"), model=model, processing_class=tokenizer,
                        train_data=rows)
    assert [h["loss"] for h in by_object.history] == pytest.approx([h["loss"] for h in by_name.history], abs=1e-6)
    after = weights(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the caller's object was trained
    saved = AutoModelForCausalLM.from_pretrained(by_object.final_dir).state_dict()
    for key, value in saved.items():
        assert torch.allclose(value, after[key], atol=1e-6), key


def test_a_lora_config_object_trains_an_adapter_with_the_adapter_disabled_reference(tmp_path):
    from peft import LoraConfig

    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    base = weights(model)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    result = run_dpo(config(DPOConfig, tmp_path / "lora", "max_steps=2", "precompute_ref_log_probs=false"),
                     model=model, tokenizer=tokenizer, peft_config=lora, train_data=separable_rows(16))
    assert result.history[0]["loss"] == pytest.approx(0.6931472, abs=1e-6)  # adapter off = reference at step 0
    import json

    saved = json.loads((result.output_dir / "config.json").read_text())
    assert (saved["use_peft"], saved["lora_r"], saved["lora_alpha"], saved["lora_target_modules"]) == (
        True, 4, 8, ["q_proj", "v_proj"])
    # peft injected the adapter into the caller's object, as TRL's get_peft_model does; its base weights are
    # still the reference's, and the adapter has trained.
    after = model.state_dict()
    for key, value in base.items():
        name = key.replace(".weight", ".base_layer.weight") if any(t in key for t in ("q_proj", "v_proj")) else key
        assert torch.equal(after[name], value), key
    assert any(k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in after.items())


def test_in_memory_rows_as_dataframe_and_datasetdict(tiny_model_dir, tmp_path, capsys):
    frame = datasets.Dataset.from_list(separable_rows(16)).to_pandas()
    run_dpo(config(DPOConfig, tmp_path / "df", f"model_name_or_path={tiny_model_dir}", "max_steps=1"),
            train_data=frame)
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(separable_rows(16)),
                                   "test": datasets.Dataset.from_list(separable_rows(8, seed=3))})
    result = run_dpo(config(DPOConfig, tmp_path / "dd", f"model_name_or_path={tiny_model_dir}", "max_steps=1",
                            *PRE_TRL_EVAL), train_data=splits)
    out = capsys.readouterr().out
    assert "train data: dataset [train]: 16 examples" in out and "eval data: dataset [test]: 8 examples" in out
    assert result.eval_after  # the test split was evaluated


def test_resuming_with_another_model_object_is_refused(tmp_path):
    tokenizer = tiny_tokenizer()
    extra = ["max_steps=4", "save_steps=1", "save_total_limit=null"]
    run_dpo(config(DPOConfig, tmp_path / "run", *extra), model=tiny_llama(len(tokenizer), seed=1),
            tokenizer=tokenizer, train_data=separable_rows(16))
    uninterrupted = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint-4" / "model").state_dict()
    resumed = config(DPOConfig, tmp_path / "run", *extra, f"resume={tmp_path / 'run' / 'checkpoint-2'}")
    with pytest.raises(ConfigError, match="model_config: fingerprint"):
        run_dpo(resumed, model=tiny_llama(len(tokenizer), seed=2), tokenizer=tokenizer,
                train_data=separable_rows(16))
    # The same starting object resumes: its weights become the checkpoint's, and the run ends where the
    # uninterrupted one ended.
    model = tiny_llama(len(tokenizer), seed=1)
    result = run_dpo(resumed, model=model, tokenizer=tokenizer, train_data=separable_rows(16))
    assert len(result.history) == 2  # steps 3 and 4
    for key, value in uninterrupted.items():
        assert torch.allclose(model.state_dict()[key], value, atol=1e-6), key


def test_sft_takes_a_model_object_and_its_tokenizer_by_name(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # name_or_path: the tokenizer's folder
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in separable_rows(16)]
    result = run_sft(config(SFTConfig, tmp_path / "sft", "max_steps=2"), model=model, train_data=rows)
    assert len(result.history) == 2


def test_objects_are_checked(tiny_model_dir, tmp_path):
    cfg = config(DPOConfig, tmp_path / "x", f"model_name_or_path={tiny_model_dir}", "max_steps=1")
    with pytest.raises(ConfigError, match="is set and a model object was passed"):
        run_dpo(cfg, model=tiny_llama(384), train_data=separable_rows(8))
    with pytest.raises(ConfigError, match="model= must be a model object"):
        run_dpo(cfg, model="org/name", train_data=separable_rows(8))
    with pytest.raises(ConfigError, match="tokenizer= and processing_class= are the same thing"):
        run_dpo(cfg, tokenizer=tiny_tokenizer(), processing_class=tiny_tokenizer(), train_data=separable_rows(8))
