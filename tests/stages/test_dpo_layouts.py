"""The DPO stage on its other data layouts: KTO from unpaired labels, Plackett–Luce from rankings."""

import json

import pytest
import torch

from preftune.modeling.load import load_causal_lm
from preftune.stages.dpo import run_dpo
from preftune.stages.evaluate import main as eval_main
from tests.conftest import separable_rows, write_jsonl
from tests.stages.test_dpo import dpo_config


def unpaired_rows(pairs):
    """Each pair becomes two unpaired examples: chosen desirable, rejected undesirable."""
    out = []
    for r in pairs:
        out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return out


def test_kto_learns_unpaired_labels(tiny_model_dir, tmp_path):
    train = write_jsonl(unpaired_rows(separable_rows(80, seed=0)), tmp_path / "train.jsonl")
    held_out = write_jsonl(unpaired_rows(separable_rows(24, seed=1)), tmp_path / "eval.jsonl")
    cfg = dpo_config(tiny_model_dir, train, tmp_path / "out", f"eval_file={held_out}", "loss_type=kto",
                     "learning_rate=1e-3", "num_train_epochs=2", "beta=0.1")
    result = run_dpo(cfg)
    before, after = result.eval_before, result.eval_after
    assert before["loss"] == pytest.approx(0.5, abs=1e-6)   # r = z = 0: 1 − σ(0) for every example
    assert before["kl"] == 0.0
    assert after["rewards/chosen"] > 0 > after["rewards/rejected"]
    assert after["rewards/accuracies"] >= 0.9 and after["loss"] < 0.49
    assert {"kl", "rewards/chosen", "rewards/rejected", "loss"} <= set(result.history[0])


def test_kto_precomputed_reference_equals_live_reference(tiny_model_dir, tmp_path):
    train = write_jsonl(unpaired_rows(separable_rows(40, seed=0)), tmp_path / "train.jsonl")
    extra = ["loss_type=kto", "max_steps=3", "learning_rate=1e-3"]
    live = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "live", "precompute_ref_log_probs=false", *extra))
    cached = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "cached", *extra))
    for a, b in zip(live.history, cached.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-6)


def ranking_rows(pairs, k3=False):
    """Rankings from pairs; with ``k3`` a middling third answer goes between best and worst."""
    rows = []
    for r in pairs:
        middle = [r["chosen"].split()[0] + " " + r["rejected"].split()[0]] if k3 else []
        rows.append({"prompt": r["prompt"], "completions": [r["chosen"], *middle, r["rejected"]]})
    return rows


def test_plackett_luce_with_two_completions_trains_exactly_like_dpo(tiny_model_dir, tmp_path):
    pairs = separable_rows(32, seed=0)
    pair_file = write_jsonl(pairs, tmp_path / "pairs.jsonl")
    ranking_file = write_jsonl(ranking_rows(pairs), tmp_path / "rankings.jsonl")
    extra = ["max_steps=3", "learning_rate=1e-3", "beta=0.2"]
    dpo = run_dpo(dpo_config(tiny_model_dir, pair_file, tmp_path / "dpo", *extra))
    pl = run_dpo(dpo_config(tiny_model_dir, ranking_file, tmp_path / "pl", "loss_type=plackett_luce", *extra))
    for a, b in zip(dpo.history, pl.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)
    w_dpo = load_causal_lm(str(dpo.final_dir)).state_dict()
    w_pl = load_causal_lm(str(pl.final_dir)).state_dict()
    assert all(torch.allclose(w_dpo[k], w_pl[k], atol=1e-5) for k in w_dpo)


def test_plackett_luce_learns_rankings_of_three(tiny_model_dir, tmp_path):
    train = write_jsonl(ranking_rows(separable_rows(80, seed=0), k3=True), tmp_path / "train.jsonl")
    held_out = write_jsonl(ranking_rows(separable_rows(24, seed=1), k3=True), tmp_path / "eval.jsonl")
    cfg = dpo_config(tiny_model_dir, train, tmp_path / "out", f"eval_file={held_out}", "loss_type=plackett_luce",
                     "learning_rate=1e-3", "num_train_epochs=2")
    result = run_dpo(cfg)
    before, after = result.eval_before, result.eval_after
    # π_θ = π_ref: every reward is 0, so each list of 3 scores −log(1/3!) = log 6.
    assert before["loss"] == pytest.approx(torch.tensor(6.0).log().item(), abs=1e-5)
    assert after["rewards/top1"] >= 0.9 and after["rewards/accuracies"] > 0.8
    assert after["loss"] < before["loss"] - 0.5


def test_eval_stage_reads_rankings(tiny_model_dir, tmp_path):
    data = write_jsonl(ranking_rows(separable_rows(8, seed=2), k3=True), tmp_path / "rank.jsonl")
    out = tmp_path / "metrics.json"
    metrics = eval_main(None, [f"model_name_or_path={tiny_model_dir}", f"ref_model_name_or_path={tiny_model_dir}",
                               f"eval_file={data}", "loss_type=plackett_luce", f"output_file={out}",
                               "max_length=48", "max_prompt_length=16"])
    assert metrics["rewards/margins"] == 0.0 and json.loads(out.read_text())["loss"] == pytest.approx(metrics["loss"])
