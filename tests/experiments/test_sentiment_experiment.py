"""A miniature of `preftune experiment sentiment`, every stage and every method end to end: a tiny random Llama,
a handful of IMDb prompts, a small r* classifier, 2–4 steps per method; then reruns that skip everything
done, slices (until / max_minutes), and the pilot's power and cost section."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from preftune.errors import ConfigError
from preftune.experiments.config import METHODS, load_experiment_config
from preftune.experiments.sentiment import SentimentExperiment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def miniature(model_dir, out, *extra):
    return load_experiment_config(None, [
        f"model_name_or_path={model_dir}", f"output_dir={out}", "threads=1", "progress_bar=false",
        "num_train_prompts=16", "num_eval_prompts=6", "max_prompt_length=16", "max_new_tokens=6",
        "generation_batch_size=32", "classifier_max_reviews=300", "sft_num_reviews=16", "sft_max_words=12",
        "sft_batch_size=4", "sft_learning_rate=1e-3", "samples_per_prompt=4", "pair_mode=bradley_terry",
        "pairs_per_prompt=2", "dpo_betas=[0.1]", "ipo_betas=[0.5]", "dpo_epochs=1", "dpo_batch_size=4",
        "dpo_learning_rate=1e-3", "rm_batch_size=4", "rm_eval_size=4", "rm_learning_rate=1e-3",
        "rl_sequences=16", "ppo_kl_coefs=[0.05]", "ppo_batch_size=4", "ppo_epochs=1", "ppo_num_mini_batches=1",
        "ppo_learning_rate=1e-3", "rloo_kl_coefs=[0.1]", "rloo_num_generations=2", "rloo_batch_size=2",
        "rloo_learning_rate=1e-3", "grpo_betas=[0.1]", "grpo_num_generations=2", "grpo_batch_size=2",
        "grpo_learning_rate=1e-3", "online_dpo_betas=[0.1]", "online_dpo_batch_size=2", "online_dpo_learning_rate=1e-3",
        "points_per_run=2", "eval_samples_per_prompt=2", "best_of_n=[1,2,4]",
        "bootstrap=50", "run_pilot=false", "methods=[dpo,ipo,ppo_gt,ppo_rm,rloo,grpo,online_dpo,bon]", *extra])


RUNS = ("dpo_beta0.1", "ipo_beta0.5", "ppo_gt_kl0.05", "ppo_rm_kl0.05", "rloo_kl0.1", "grpo_beta0.1",
        "online_dpo_beta0.1")


SMALL_PILOT = {"methods": ["dpo", "ppo_gt", "bon"], "num_train_prompts": 8, "num_eval_prompts": 6,
               "eval_samples_per_prompt": 2, "sft_num_reviews": 8, "samples_per_prompt": 4, "pairs_per_prompt": 1,
               "dpo_betas": [0.1], "ppo_kl_coefs": [0.1], "points_per_run": 1, "best_of_n": [1, 2], "bon_prompts": 4,
               "bootstrap": 20, "run_pilot": False}


def test_miniature_pipeline_end_to_end_in_slices_then_resumes(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    logs: list[str] = []

    # Slices: up to the pairs, then an invocation with no time left starts nothing; neither writes outputs.
    assert SentimentExperiment(miniature(tiny_model_dir, out), log=logs.append).run(until="pairs") == []
    assert [line for line in logs if line.startswith("▶")] == ["▶ prompts", "▶ rstar", "▶ sft", "▶ pairs"]
    logs.clear()
    assert SentimentExperiment(miniature(tiny_model_dir, out), log=logs.append).run(max_minutes=0) == []
    assert not [line for line in logs if line.startswith("▶")]
    assert any(line.startswith("stopping before point_sft") for line in logs)
    assert not (out / "report.md").exists()
    with pytest.raises(ConfigError, match="until: no stage 'dpo_beta9'"):
        SentimentExperiment(miniature(tiny_model_dir, out)).run(until="dpo_beta9")

    # One slice with the first run: the outputs are written, marked partial.
    logs.clear()
    SentimentExperiment(miniature(tiny_model_dir, out), log=logs.append).run(until="dpo_beta0.1")
    assert ("**Partial: 6 stage(s) not done yet (ipo_beta0.5, ppo_gt_kl0.05, ppo_rm_kl0.05, rloo_kl0.1, grpo_beta0.1, "
            "online_dpo_beta0.1)") in (
        out / "report.md").read_text()

    logs.clear()
    points = SentimentExperiment(miniature(tiny_model_dir, out), log=logs.append).run()

    # Every method has points; runs have one per checkpoint (2 per run), π_SFT sits at KL 0.
    with open(out / "points.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(points)
    assert {r["method"] for r in rows} == {"sft", *METHODS}
    assert {r["run"] for r in rows} >= {*RUNS, "bon"}
    for run in RUNS:
        assert len([r for r in rows if r["run"] == run]) == 2, run
        done = json.loads((out / "runs" / run / "done.json").read_text())
        assert done["gradient_sequences"] == 16 and done["train_cpu_seconds"] > 0, run  # the common budget
    sft = next(r for r in rows if r["method"] == "sft")
    assert float(sft["kl"]) == 0.0 and int(sft["n"]) == 12 and float(sft["win_rate"]) == 0.5
    assert [int(r["step"]) for r in rows if r["method"] == "bon"] == [1, 2, 4]
    for r in rows:
        assert 0.0 <= float(r["reward"]) <= 1.0
        assert float(r["kl"]) == float(r["kl"])  # not NaN
        if r["method"] not in ("sft", "bon"):
            assert 0.0 <= float(r["win_rate"]) <= 1.0
    point = json.loads((out / "runs" / "rloo_kl0.1" / "points" / "step-4.json").read_text())
    assert [len(g) for g in point["rewards"]] == [2] * 6 and [len(g) for g in point["kls"]] == [2] * 6
    # GRPO: 2 prompts × 2 completions per optimizer step, online DPO: 2 prompts × a pair per step; 16 sequences
    # is 4 steps of either, measured at steps 2 and 4.
    sft_weights = load_file(out / "sft" / "final" / "model.safetensors")
    for run in ("grpo_beta0.1", "online_dpo_beta0.1"):
        assert json.loads((out / "runs" / run / "trained.json").read_text())["steps"] == [2, 4], run
        trained = load_file(out / "runs" / run / "final" / "model.safetensors")
        assert any(not torch.equal(w, sft_weights[k]) for k, w in trained.items()), f"{run} left π_SFT unchanged"

    for png in ("frontier.png", "training.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    report = (out / "report.md").read_text()
    assert "**Does DPO's frontier dominate PPO-GT's?**" in report and "Rotten Tomatoes rows" in report
    for section in ("## Verdict per KL bin: DPO − PPO-GT", "## Every other method against DPO", "| RLOO (r*) |", "| GRPO (r*) |",
                    "| online DPO (r*) |", "| grpo_beta0.1 |", "| online_dpo_beta0.1 |",
                    "## Win rate against π_SFT", "## Power and cost", "## What this scale can and cannot say",
                    "| dpo_beta0.1 |", "## Runtime", "every run trains on 16 gradient sequences"):
        assert section in report, section
    assert "Partial" not in report
    rstar = json.loads((out / "rstar" / "done.json").read_text())
    assert rstar["rotten_tomatoes_rows"] == 8530 and 0 <= rstar["rotten_tomatoes_accuracy"] <= 1
    assert not list((out / "runs" / "dpo_beta0.1").glob("checkpoint-*"))  # measured, then removed
    assert (out / "runs" / "dpo_beta0.1" / "final").is_dir()
    assert any(line.startswith("▶ rloo_kl0.1") for line in logs)

    # A rerun does nothing again: every stage is skipped, the outputs are rebuilt from the markers.
    before = (out / "points.csv").read_text()
    logs.clear()
    SentimentExperiment(miniature(tiny_model_dir, out), log=logs.append).run()
    assert not [line for line in logs if line.startswith("▶")]
    assert len([line for line in logs if line.startswith("↷")]) == 14
    assert (out / "points.csv").read_text() == before

    # A lost point is measured again, alone; the same noise and model give the same point.
    (out / "runs" / "ppo_gt_kl0.05" / "done.json").unlink()
    (out / "runs" / "ppo_gt_kl0.05" / "points" / "step-4.json").unlink()
    logs.clear()
    SentimentExperiment(miniature(tiny_model_dir, out), log=logs.append).run()
    assert [line for line in logs if line.startswith("▶")] == ["▶ ppo_gt_kl0.05"]
    assert [line for line in logs if line.startswith("point ")] == [line for line in logs if "ppo_gt_kl0.05 @ step 4" in line]
    assert (out / "points.csv").read_text() == before

    # The pilot (its sizes over these settings, in pilot/; here even smaller) gives the power and cost section
    # its numbers.
    monkeypatch.setattr("preftune.experiments.config.PILOT_PRESET", SMALL_PILOT)
    logs.clear()
    SentimentExperiment(miniature(tiny_model_dir, out, "run_pilot=true"), log=logs.append).run()
    assert [line for line in logs if line.startswith("▶")] == ["▶ pilot"]
    pilot = json.loads((out / "pilot" / "config.json").read_text())
    assert pilot["size"] == "pilot" and pilot["num_eval_prompts"] == 6 and pilot["max_new_tokens"] == 6
    report = (out / "report.md").read_text()
    assert "From the pilot (`pilot/`, 6 held-out prompts × 2 samples" in report and "CPU-hours" in report
    # The pilot's verdict.json (its DPO − PPO-GT bins) is what the paired size is read from.
    pv = json.loads((out / "pilot" / "verdict.json").read_text())
    assert pv["prompts"] == 6 and pv["samples_per_prompt"] == 2 and pv["baseline"] == "PPO-GT (r*)"
    assert ("margin SE is at most" in report) == bool(pv["bins"])
    assert "| pilot |" in report
    spent = sum(json.loads((f / "done.json").read_text())["cpu_seconds"]
                for f in [*(out / n for n in ("prompts", "rstar", "sft", "pairs", "point_sft", "bon", "rm")),
                          *(out / "runs").iterdir()])
    assert f"Measured for this run's stages (the pilot's excluded): **{spent / 3600:.2f} CPU-hours**" in report

    # A new β adds one run and nothing else; a setting that changes measured results is refused.
    logs.clear()
    SentimentExperiment(miniature(tiny_model_dir, out, "dpo_betas=[0.1,0.5]"), log=logs.append).run()
    assert [line for line in logs if line.startswith("▶")] == ["▶ dpo_beta0.5"]
    assert len((out / "points.csv").read_text().splitlines()) == len(before.splitlines()) + 2
    with pytest.raises(ConfigError, match="other settings \\(ppo_max_steps: None -> 3\\)"):
        SentimentExperiment(miniature(tiny_model_dir, out, "ppo_max_steps=3"), log=logs.append).run()
