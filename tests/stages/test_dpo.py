"""DPO end to end on a tiny random Llama: learning, the θ = ref invariant, reference modes, resume."""

import math

import pytest
import torch

from preftune.config import DPOConfig, load_config
from preftune.modeling.load import load_causal_lm
from preftune.stages.dpo import run_dpo
from preftune.train.metrics import read_metrics
from tests.conftest import pre_trl


def dpo_config(model_dir, train, out, *extra):
    return load_config(DPOConfig, None, pre_trl([
        f"model_name_or_path={model_dir}", f"train_file={train}", f"output_dir={out}",
        "max_length=48", "max_prompt_length=16", "per_device_train_batch_size=8", "logging_steps=1",
        "progress_bar=false", "report_to=none", "seed=0", *extra]))


def test_dpo_raises_held_out_reward_accuracy_on_a_separable_task(tiny_model_dir, separable_files, tmp_path):
    train, held_out = separable_files
    cfg = dpo_config(tiny_model_dir, train, tmp_path / "out", f"eval_file={held_out}", "learning_rate=1e-3",
                     "num_train_epochs=2", "beta=0.1")
    result = run_dpo(cfg)
    assert result.eval_before["rewards/accuracies"] == 0.0          # θ = ref: every margin is exactly 0
    assert result.eval_after["rewards/accuracies"] >= 0.9
    assert result.eval_after["loss"] < result.eval_before["loss"] - 0.2
    assert (result.final_dir / "model.safetensors").is_file() and (result.final_dir / "tokenizer.json").is_file()
    logged = read_metrics(result.metrics_file, "train")
    assert len(logged) == 40 and {"loss", "rewards/margins", "grad_norm", "lr", "tokens_per_s"} <= set(logged[0])


def test_first_step_loss_is_log2_with_zero_rewards(tiny_model_dir, separable_files, tmp_path):
    train, _ = separable_files
    result = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "out", "max_steps=1"))
    first = result.history[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert first[key] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("peft", [False, True])
def test_precomputed_reference_equals_live_reference(tiny_model_dir, separable_files, tmp_path, peft):
    train, _ = separable_files
    extra = ["max_steps=4", "learning_rate=1e-3"] + (["use_peft=true", "lora_r=4"] if peft else [])
    live = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "live", "precompute_ref_log_probs=false", *extra))
    cached = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "cached", *extra))
    for a, b in zip(live.history, cached.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-6)


def test_reference_cache_is_hit_on_rerun(tiny_model_dir, separable_files, tmp_path, capsys):
    train, _ = separable_files
    run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "a", "max_steps=1"))
    assert "cache hit" not in capsys.readouterr().out
    run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "b", "max_steps=1"))
    assert "cache hit" in capsys.readouterr().out
    run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "c", "max_steps=1", "max_length=40"))
    assert "cache hit" not in capsys.readouterr().out   # other tokenization settings, other key


def test_resume_continues_with_the_same_losses(tiny_model_dir, separable_files, tmp_path):
    train, _ = separable_files
    extra = ["max_steps=6", "learning_rate=1e-3", "save_steps=3"]
    full = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "full", *extra))
    resumed = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "full", *extra,
                                 f"resume={tmp_path / 'full' / 'checkpoint-3'}"))
    assert [h["step"] for h in resumed.history] == [4, 5, 6]
    for a, b in zip(full.history[3:], resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_final_model_loads_and_differs_from_start(tiny_model_dir, separable_files, tmp_path):
    train, _ = separable_files
    result = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "out", "max_steps=2", "learning_rate=1e-3",
                                "use_peft=true", "lora_r=4"))
    start, final = load_causal_lm(str(tiny_model_dir)), load_causal_lm(str(result.final_dir))
    assert not hasattr(final, "peft_config")  # LoRA merged into a plain Hugging Face model
    changed = [not torch.equal(a, b) for a, b in zip(start.parameters(), final.parameters())]
    assert any(changed)


def test_gradient_checkpointing_and_rmsprop_give_the_same_steps(tiny_model_dir, separable_files, tmp_path):
    train, _ = separable_files
    extra = ["max_steps=3", "learning_rate=1e-4", "optimizer=rmsprop", "warmup_steps=2"]
    plain = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "a", *extra))
    ckpt = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "b", *extra, "gradient_checkpointing=true"))
    for a, b in zip(plain.history, ckpt.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    # transformers' warm-up (from lr 0 at the first step), then linear decay: (3 − 2)/(3 − 2) at step 2.
    assert [h["lr"] for h in plain.history] == pytest.approx([0.0, 5e-5, 1e-4])


def test_bf16_autocast_runs_and_stays_close_to_fp32(tiny_model_dir, separable_files, tmp_path):
    train, _ = separable_files
    fp32 = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "a", "max_steps=2", "precompute_ref_log_probs=false"))
    bf16 = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "b", "max_steps=2", "precompute_ref_log_probs=false",
                              "bf16=true"))
    assert bf16.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # same autocast for policy and ref
    assert bf16.history[0]["logps/chosen"] == pytest.approx(fp32.history[0]["logps/chosen"], rel=2e-2)


@pytest.mark.parametrize("losses", [["ipo"], ["simpo"], ["orpo"], ["hinge", "sigmoid"], ["sigmoid_norm"]])
def test_every_wired_loss_trains_and_lengths_reach_the_losses_that_need_them(tiny_model_dir, separable_files,
                                                                           tmp_path, losses):
    train, held_out = separable_files
    extra = ["max_steps=12", "learning_rate=1e-3", f"eval_file={held_out}", f"loss_type=[{','.join(losses)}]"]
    if len(losses) == 2:
        extra.append("loss_weights=[0.5,1.0]")
    result = run_dpo(dpo_config(tiny_model_dir, train, tmp_path, *extra))
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert result.eval_after["rewards/accuracies"] > 0.5   # learns the separable task with every loss


def test_reference_free_losses_load_and_score_no_reference(tiny_model_dir, separable_files, tmp_path, capsys):
    train, held_out = separable_files
    result = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "simpo", "loss_type=simpo", "max_steps=2",
                                f"eval_file={held_out}"))
    out = capsys.readouterr().out
    assert "reference (train): none" in out and "reference log-probs" not in out
    # With log π_ref ≡ 0 the reported rewards are β log π_θ: negative, unlike the zeros of θ = ref.
    assert result.eval_before["rewards/chosen"] < 0
    # The loss itself never reads π_ref: with an explicit reference model the steps are the same.
    with_ref = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "ref", "loss_type=simpo", "max_steps=2",
                                  f"ref_model_name_or_path={tiny_model_dir}"))
    for a, b in zip(result.history, with_ref.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)


def test_group_by_length_trains_on_every_example_once_per_epoch(tiny_model_dir, separable_files, tmp_path):
    train, _ = separable_files
    result = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "out", "group_by_length=true",
                                "learning_rate=1e-3", "per_device_train_batch_size=4"))
    assert len(result.history) == 40                       # 160 pairs / 4: one epoch, nothing lost
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
