"""The DPO stage with TRL's per-pair options (ld_alpha, use_weighting, rpo_alpha) and TR-DPO (sync_ref_model),
end to end on the tiny Llama. Their numbers against TRL's code: tests/losses/test_trl_parity_tokens.py."""

import math

import pytest
import torch
from safetensors.torch import load_file

from preftune.config import DPOConfig, EvalConfig, load_config
from preftune.errors import ConfigError
from preftune.stages.dpo import run_dpo
from preftune.stages.evaluate import run_eval
from tests.stages.test_dpo import dpo_config


def test_pair_options_give_the_same_steps_with_a_precomputed_and_a_live_reference(tiny_model_dir, separable_files,
                                                                                  tmp_path):
    # The cached table must hold π_ref's LD-weighted log-probs, and the step-0 evaluation, which otherwise
    # reads the policy's log-probs from that table, must run the policy (WPO needs its per-token statistics).
    train, held_out = separable_files
    extra = ["max_steps=3", "learning_rate=1e-3", "ld_alpha=0.5", "use_weighting=true", "rpo_alpha=0.2",
             f"eval_file={held_out}"]
    live = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "live", "precompute_ref_log_probs=false", *extra))
    cached = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "cached", *extra))
    assert cached.eval_before["loss"] == pytest.approx(live.eval_before["loss"], abs=1e-6)
    for a, b in zip(live.history, cached.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-6)
    assert all(math.isfinite(h["loss"]) for h in live.history)
    # θ = ref at step 0 (rewards 0), but not log 2: WPO weights each pair and RPO adds the chosen NLL.
    assert live.eval_before["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert live.eval_before["loss"] != pytest.approx(math.log(2), abs=1e-3)


def test_preftune_eval_reproduces_the_runs_evaluation_with_the_pair_options(tiny_model_dir, separable_files,
                                                                            tmp_path):
    train, held_out = separable_files
    keys = ["ld_alpha=0.5", "use_weighting=true", "rpo_alpha=0.2", "loss_type=ipo", "beta=0.1"]
    trained = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "out", f"eval_file={held_out}",
                                 "learning_rate=1e-3", "max_steps=4", *keys))
    after = run_eval(load_config(EvalConfig, None, [
        f"model_name_or_path={trained.final_dir}", f"ref_model_name_or_path={tiny_model_dir}",
        f"eval_file={held_out}", "max_length=48", "max_prompt_length=16", *keys]))
    assert after["loss"] == pytest.approx(trained.eval_after["loss"], abs=1e-5)
    assert after["rewards/margins"] == pytest.approx(trained.eval_after["rewards/margins"], abs=1e-5)


def test_ld_alpha_gets_its_own_reference_cache_entry(tiny_model_dir, separable_files, tmp_path, capsys):
    train, _ = separable_files
    run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "a", "max_steps=1", "ld_alpha=0.5"))
    run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "b", "max_steps=1"))
    assert "cache hit" not in capsys.readouterr().out     # plain sums are other numbers: not served from LD's
    run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "c", "max_steps=1", "ld_alpha=0.5"))
    assert "cache hit" in capsys.readouterr().out
    run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "d", "max_steps=1", "ld_alpha=0.25"))
    assert "cache hit" not in capsys.readouterr().out


TR_DPO = ["precompute_ref_log_probs=false", "sync_ref_model=true", "ref_model_sync_steps=2",
          "ref_model_mixup_alpha=0.25", "learning_rate=1e-3", "max_steps=4", "save_steps=2", "save_total_limit=null"]


def test_sync_ref_model_mixes_the_policy_into_the_reference_every_n_steps(tiny_model_dir, separable_files,
                                                                          tmp_path):
    train, _ = separable_files
    synced = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "tr", *TR_DPO))
    fixed = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "fixed", *TR_DPO[:1], *TR_DPO[4:]))
    # Steps 1-2 see the starting reference in both runs; the first update happens after step 2.
    for a, b in zip(synced.history[:2], fixed.history[:2], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert synced.history[2]["rewards/margins"] != pytest.approx(fixed.history[2]["rewards/margins"], abs=1e-4)

    # The saved reference at step 2 is ¼ θ_2 + ¾ θ_0, parameter by parameter.
    start = load_file(tiny_model_dir / "model.safetensors")
    policy_2 = load_file(tmp_path / "tr" / "checkpoint-2" / "model" / "model.safetensors")
    ref_2 = load_file(tmp_path / "tr" / "checkpoint-2" / "reference" / "model.safetensors")
    assert ref_2.keys() == start.keys()
    assert any(not torch.equal(policy_2[k], start[k]) for k in start)
    for key in start:
        assert torch.allclose(ref_2[key], 0.25 * policy_2[key] + 0.75 * start[key], rtol=0, atol=1e-7), key
    # And at step 4: ¼ θ_4 + ¾ ref_2.
    policy_4 = load_file(tmp_path / "tr" / "checkpoint-4" / "model" / "model.safetensors")
    ref_4 = load_file(tmp_path / "tr" / "checkpoint-4" / "reference" / "model.safetensors")
    for key in start:
        assert torch.allclose(ref_4[key], 0.25 * policy_4[key] + 0.75 * ref_2[key], rtol=0, atol=1e-7), key


def test_sync_ref_model_resumes_with_the_updated_reference(tiny_model_dir, separable_files, tmp_path):
    train, _ = separable_files
    full = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "full", *TR_DPO))
    resumed = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "full", *TR_DPO,
                                 f"resume={tmp_path / 'full' / 'checkpoint-2'}"))
    assert [h["step"] for h in resumed.history] == [3, 4]
    for a, b in zip(full.history[2:], resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-6)


def test_sync_ref_model_works_for_kto_too(tiny_model_dir, tmp_path):
    from tests.conftest import separable_rows, write_jsonl
    from tests.stages.test_dpo_layouts import unpaired_rows

    train = write_jsonl(unpaired_rows(separable_rows(40, seed=0)), tmp_path / "train.jsonl")
    extra = ["loss_type=kto", "max_steps=3", "learning_rate=1e-3", "precompute_ref_log_probs=false"]
    synced = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "tr", *extra, "sync_ref_model=true",
                                "ref_model_sync_steps=1", "ref_model_mixup_alpha=1"))
    fixed = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "fixed", *extra))
    assert synced.history[0]["loss"] == pytest.approx(fixed.history[0]["loss"], abs=1e-6)
    # α = 1: after every step the reference is the policy, so every later step starts at r = z = 0, where the
    # KTO loss is 1 − σ(0) = 0.5 for every example; with the fixed reference it has moved.
    for h in synced.history[1:]:
        assert h["loss"] == pytest.approx(0.5, abs=1e-6) and h["kl"] == pytest.approx(0.0, abs=1e-6)
    assert fixed.history[2]["loss"] != pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize("overrides, message", [
    # Left unset, precompute_ref_log_probs follows sync_ref_model (a moving reference is computed live).
    (["sync_ref_model=true", "precompute_ref_log_probs=true"], "sync_ref_model needs precompute_ref_log_probs=false"),
    (["sync_ref_model=true", "precompute_ref_log_probs=false", "use_peft=true"],
     "sync_ref_model cannot be used with use_peft"),
    (["sync_ref_model=true", "precompute_ref_log_probs=false", "loss_type=simpo"],
     "sync_ref_model is set but none of loss_type ['simpo'] reads the reference"),
    (["ref_model_sync_steps=64"], "ref_model_sync_steps is set but sync_ref_model is false"),
    (["ref_model_mixup_alpha=0.9"], "ref_model_mixup_alpha is set but sync_ref_model is false"),
])
def test_sync_ref_model_settings_that_cannot_work_are_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(DPOConfig, None, ["model_name_or_path=m", *overrides])
    assert str(err.value).startswith(message)
