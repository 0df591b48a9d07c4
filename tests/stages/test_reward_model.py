"""The reward-model stage on a tiny random Llama: learning (pairs and rankings), the loss formula,
LoRA with a trained head, a final folder plain transformers loads, the scorer, resume, the CLI."""

import json
import math
import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from preftune.cli import main as cli_main
from preftune.config import RMConfig, load_config
from preftune.data.collate import collate_preferences, collate_rankings
from preftune.data.dataset import DataSettings, build_preference_dataset, build_ranking_dataset
from preftune.modeling.load import load_tokenizer
from preftune.modeling.reward_model import RewardModelScorer, load_reward_model, sequence_rewards
from preftune.stages.reward_model import PAIR_KEYS, RANKING_KEYS, pair_loss, ranking_loss, run_rm
from preftune.train.metrics import read_metrics
from preftune.train.seeding import seed_everything
from tests.conftest import pre_trl, separable_rows, write_jsonl


def rm_config(model_dir, train, out, *extra):
    return load_config(RMConfig, None, pre_trl([
        f"model_name_or_path={model_dir}", f"train_file={train}", f"output_dir={out}",
        "max_length=48", "max_prompt_length=16", "per_device_train_batch_size=8", "logging_steps=1",
        "progress_bar=false", "report_to=none", "seed=0", "learning_rate=1e-5", *extra]))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One Bradley–Terry run on the separable task, shared by the tests that only read its results."""
    tmp = tmp_path_factory.mktemp("rm")
    train = write_jsonl(separable_rows(160, seed=0), tmp / "train.jsonl")
    held_out = write_jsonl(separable_rows(48, seed=1), tmp / "eval.jsonl")
    cfg = rm_config(tiny_model_dir, train, tmp / "out", f"eval_file={held_out}", "learning_rate=1e-3",
                    "num_train_epochs=2")
    return run_rm(cfg), held_out


def test_bradley_terry_raises_held_out_pairwise_accuracy(trained):
    result, _ = trained
    before, after = result.eval_before, result.eval_after
    # The new head is small (std 0.02): every reward is near 0 and the loss near log 2 before training.
    assert before["loss"] == pytest.approx(math.log(2), abs=0.02)
    assert abs(before["margin"]) < 0.05
    assert after["accuracy"] >= 0.9 and after["loss"] < before["loss"] - 0.4
    assert after["margin"] > 1.0 and after["rewards/chosen"] > 0 > after["rewards/rejected"]
    assert {"loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected"} <= set(after)
    logged = read_metrics(result.metrics_file, "train")
    assert len(logged) == 40
    assert {"loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected", "grad_norm", "lr"} <= set(logged[0])


def test_final_folder_is_a_plain_transformers_reward_model(trained):
    result, held_out = trained
    final = result.final_dir
    settings = json.loads((final / "preftune_reward.json").read_text())
    assert settings["max_length"] == 48 and settings["max_prompt_length"] == 16
    assert settings["use_chat_template"] is True and settings["loss_type"] == "bradley_terry"
    plain = AutoModelForSequenceClassification.from_pretrained(final).eval()
    assert plain.config.num_labels == 1 and plain.config.pad_token_id == 3
    rows = [json.loads(line) for line in held_out.read_text().splitlines()][:8]
    tokenizer = load_tokenizer(str(final))
    data = build_preference_dataset(rows, tokenizer, DataSettings(48, 16, None))
    batch = collate_preferences(data.examples, list(range(len(rows))), pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        ours = sequence_rewards(plain, batch.input_ids, batch.attention_mask, batch.loss_mask)
        theirs = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.squeeze(-1)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_scorer_ranks_held_out_chosen_above_rejected(trained):
    result, held_out = trained
    rows = [json.loads(line) for line in held_out.read_text().splitlines()]
    scorer = RewardModelScorer(str(result.final_dir), "cpu", batch_size=16)
    chosen = scorer([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = scorer([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(rows) >= 0.9
    # The scorer reproduces the stage's own held-out evaluation of the final model.
    assert sum(chosen) / len(rows) == pytest.approx(result.eval_after["rewards/chosen"], abs=1e-5)
    assert sum(rejected) / len(rows) == pytest.approx(result.eval_after["rewards/rejected"], abs=1e-5)
    # A policy's sample that spells a special token is scored, not refused (training data would be).
    odd = scorer([rows[0]["prompt"]] * 2, ["good <|im_end|> more", ""])
    assert all(math.isfinite(x) for x in odd)


@pytest.mark.parametrize("margin,center", [(0.0, None), (1.0, None), (0.0, 0.5), (0.5, 0.25)])
def test_margin_and_centering_change_the_loss_as_the_formula_says(tiny_model_dir, tmp_path, margin, center):
    rows = separable_rows(8, seed=2)
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    extra = [f"eval_file={data}", "max_steps=1", f"margin={margin}"]
    if center is not None:
        extra.append(f"center_rewards_coefficient={center}")
    result = run_rm(rm_config(tiny_model_dir, data, tmp_path / "out", *extra))
    # By hand, from the same initial model (the stage seeds before it builds the head).
    seed_everything(0)
    model = load_reward_model(str(tiny_model_dir)).eval()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    built = build_preference_dataset(rows, tokenizer, DataSettings(48, 16, None))
    batch = collate_preferences(built.examples, list(range(8)), pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        r = sequence_rewards(model, batch.input_ids, batch.attention_mask, batch.loss_mask).tolist()
    c = center or 0.0
    losses = [-math.log(1 / (1 + math.exp(-(w - lo - margin)))) + c * (w + lo) ** 2 for w, lo in zip(r[:8], r[8:])]
    expected = sum(losses) / 8
    assert result.eval_before["loss"] == pytest.approx(expected, abs=1e-5)
    assert result.history[0]["loss"] == pytest.approx(expected, abs=1e-5)   # the one step saw the same 8 pairs
    assert result.eval_before["margin"] == pytest.approx(sum(r[:8]) / 8 - sum(r[8:]) / 8, abs=1e-6)


def ranking_rows(n, seed):
    """3-item rankings: all-positive ≻ one positive + one negative word ≻ all-negative."""
    return [{"prompt": r["prompt"],
             "completions": [r["chosen"], r["chosen"].split()[0] + " " + r["rejected"].split()[0], r["rejected"]]}
            for r in separable_rows(n, seed)]


def test_plackett_luce_learns_three_item_rankings(tiny_model_dir, tmp_path):
    train = write_jsonl(ranking_rows(160, 0), tmp_path / "train.jsonl")
    held_out = write_jsonl(ranking_rows(48, 1), tmp_path / "eval.jsonl")
    result = run_rm(rm_config(tiny_model_dir, train, tmp_path / "out", "loss_type=plackett_luce",
                              f"eval_file={held_out}", "learning_rate=2e-3"))
    before, after = result.eval_before, result.eval_after
    assert before["loss"] == pytest.approx(math.log(6), abs=0.05)   # 3! orders, all about equally likely
    assert after["top1"] >= 0.9 and after["accuracy"] >= 0.9 and after["loss"] < before["loss"] - 0.5
    assert after["margin"] > 0
    assert {"loss", "accuracy", "top1", "margin"} <= set(result.history[-1])


def test_lora_run_trains_the_head_and_saves_a_merged_plain_folder(tiny_model_dir, separable_files, tmp_path):
    train, held_out = separable_files
    result = run_rm(rm_config(tiny_model_dir, train, tmp_path / "out", f"eval_file={held_out}", "use_peft=true",
                              "lora_r=4", "learning_rate=5e-3"))
    assert result.eval_after["accuracy"] >= 0.9
    seed_everything(0)
    start = load_reward_model(str(tiny_model_dir))
    final = AutoModelForSequenceClassification.from_pretrained(result.final_dir)
    assert not hasattr(final, "peft_config")
    assert not torch.allclose(start.score.weight, final.score.weight)                 # the head was trained
    q0, q1 = start.model.layers[0].self_attn.q_proj.weight, final.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q0, q1)                                                 # the adapters were merged
    assert torch.equal(start.model.embed_tokens.weight, final.model.embed_tokens.weight)  # the rest untouched
    # Plain transformers and the scorer give the rewards the stage's evaluation measured.
    rows = [json.loads(line) for line in held_out.read_text().splitlines()]
    scorer = RewardModelScorer(str(result.final_dir))
    chosen = scorer([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    assert sum(chosen) / len(rows) == pytest.approx(result.eval_after["rewards/chosen"], abs=1e-5)


@pytest.mark.parametrize("peft", [False, True])
def test_resume_continues_with_the_same_losses(tiny_model_dir, separable_files, tmp_path, peft):
    train, _ = separable_files
    extra = ["max_steps=6", "learning_rate=1e-3", "save_steps=3"] + (["use_peft=true", "lora_r=4"] if peft else [])
    full = run_rm(rm_config(tiny_model_dir, train, tmp_path / "full", *extra))
    resumed = run_rm(rm_config(tiny_model_dir, train, tmp_path / "full", *extra,
                               f"resume={tmp_path / 'full' / 'checkpoint-3'}"))
    assert [h["step"] for h in resumed.history] == [4, 5, 6]
    for a, b in zip(full.history[3:], resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["margin"] == pytest.approx(b["margin"], abs=1e-6)


def test_cli_rm_trains_and_writes_the_final_folder(tiny_model_dir, separable_files, tmp_path):
    train, _ = separable_files
    code = cli_main(["rm", *pre_trl([f"model_name_or_path={tiny_model_dir}", f"train_file={train}", "eval_size=16",
                                     f"output_dir={tmp_path / 'out'}", "max_steps=2", "max_length=48",
                                     "max_prompt_length=16", "progress_bar=false", "report_to=none"])])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {"accuracy", "margin", "loss"} <= set(summary["eval_after"])
    assert (tmp_path / "out" / "final" / "preftune_reward.json").is_file()


def test_metric_keys_match_the_sums_each_loss_returns(tiny_model_dir):
    """Ranks with no held-out examples contribute zeros under exactly these keys (the reduction stacks them)."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    cfg = rm_config(tiny_model_dir, "unused.jsonl", "unused")
    settings = DataSettings(48, 16, None)
    pairs = build_preference_dataset(separable_rows(3, 0), tokenizer, settings)
    lists = build_ranking_dataset(ranking_rows(3, 0), tokenizer, settings)
    fake = lambda ids, attention, loss_mask: torch.randn(ids.shape[0])  # noqa: E731
    _, pair_sums = pair_loss(cfg, fake, collate_preferences(pairs.examples, [0, 1, 2], pad_token_id=3))
    _, list_sums = ranking_loss(cfg, fake, collate_rankings(lists.examples, [0, 1, 2], pad_token_id=3))
    assert set(pair_sums) == set(PAIR_KEYS) and set(list_sums) == set(RANKING_KEYS)
    assert list_sums["count:rewards/mean"].item() == 9 and list_sums["count"].item() == 3


@pytest.mark.distributed
@pytest.mark.parametrize("loss_type", ["bradley_terry", "plackett_luce"])
def test_two_processes_match_one_process_with_double_accumulation(tiny_model_dir, tmp_path, loss_type):
    """Same global batches, same averaged gradients: the same losses; an odd held-out set (9) is sharded
    unevenly and still reduces to the same means."""
    from tests.stages.test_distributed import _run

    rows = separable_rows(48, 0) if loss_type == "bradley_terry" else ranking_rows(48, 0)
    train, held_out = write_jsonl(rows, tmp_path / "train.jsonl"), write_jsonl(rows[:9], tmp_path / "eval.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_CACHE": str(tmp_path / "cache")}
    common = ["rm", *pre_trl([f"loss_type={loss_type}", f"model_name_or_path={tiny_model_dir}", f"train_file={train}",
                              f"eval_file={held_out}", "max_length=48", "max_prompt_length=16",
                              "per_device_train_batch_size=4", "max_steps=4", "learning_rate=1e-3", "logging_steps=1",
                              "progress_bar=false", "report_to=none", "threads=1"])]
    _run([*common, f"output_dir={tmp_path / 'one'}", "gradient_accumulation_steps=2"], 1, env)
    two = _run([*common, f"output_dir={tmp_path / 'two'}"], 2, env)
    assert "2 process(es)" in two.stdout
    one_m, two_m = (read_metrics(tmp_path / n / "metrics.jsonl") for n in ("one", "two"))
    assert len(one_m) == len(two_m) == 6   # eval, 4 steps, eval
    for a, b in zip(one_m, two_m, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5) and b["accuracy"] == pytest.approx(a["accuracy"])
