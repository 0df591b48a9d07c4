"""A miniature of `preftune experiment sentiment`, every stage end to end: a tiny random Llama, a handful of
IMDb prompts, a small r* classifier, 2–4 steps per method; then a rerun that skips everything done."""

import csv
import json

import pytest

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
        "ppo_max_steps=2", "ppo_batch_size=4", "ppo_epochs=1", "ppo_num_mini_batches=1", "ppo_learning_rate=1e-3",
        "points_per_run=2", "eval_samples_per_prompt=2", "best_of_n=[1,2,4]", *extra])


def test_miniature_pipeline_end_to_end_then_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "exp"
    logs: list[str] = []
    points = SentimentExperiment(miniature(tiny_model_dir, out), log=logs.append).run()

    # Every method has points; runs have one per checkpoint (2 per run), π_SFT sits at KL 0.
    with open(out / "points.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(points)
    assert {r["method"] for r in rows} == {"sft", *METHODS}
    assert {r["run"] for r in rows} >= {"dpo_beta0.1", "ipo_beta0.5", "ppo_gt_kl0.05", "ppo_rm_kl0.05", "bon"}
    for run in ("dpo_beta0.1", "ipo_beta0.5", "ppo_gt_kl0.05", "ppo_rm_kl0.05"):
        assert len([r for r in rows if r["run"] == run]) == 2, run
    sft = next(r for r in rows if r["method"] == "sft")
    assert float(sft["kl"]) == 0.0 and int(sft["n"]) == 12
    assert [int(r["step"]) for r in rows if r["method"] == "bon"] == [1, 2, 4]
    for r in rows:
        assert 0.0 <= float(r["reward"]) <= 1.0
        assert float(r["kl"]) == float(r["kl"])  # not NaN

    assert (out / "frontier.png").read_bytes()[:8] == PNG_MAGIC
    report = (out / "report.md").read_text()
    assert "**Verdict: DPO's frontier" in report and "Rotten Tomatoes rows" in report
    assert "| dpo_beta0.1 |" in report and "## Runtime" in report
    rstar = json.loads((out / "rstar" / "done.json").read_text())
    assert rstar["rotten_tomatoes_rows"] == 8530 and 0 <= rstar["rotten_tomatoes_accuracy"] <= 1
    assert not list((out / "runs" / "dpo_beta0.1").glob("checkpoint-*"))  # measured, then removed
    assert (out / "runs" / "dpo_beta0.1" / "final").is_dir()
    assert any(line.startswith("▶ ppo_rm_kl0.05") for line in logs)

    # A rerun does nothing again: every stage is skipped, the outputs are rebuilt from the markers.
    before = (out / "points.csv").read_text()
    logs.clear()
    SentimentExperiment(miniature(tiny_model_dir, out), log=logs.append).run()
    assert not [line for line in logs if line.startswith("▶")]
    assert len([line for line in logs if line.startswith("↷")]) == 11
    assert (out / "points.csv").read_text() == before

    # A lost point is measured again, alone; a new β adds one run; other settings are refused.
    (out / "runs" / "ppo_gt_kl0.05" / "done.json").unlink()
    (out / "runs" / "ppo_gt_kl0.05" / "points" / "step-2.json").unlink()
    logs.clear()
    SentimentExperiment(miniature(tiny_model_dir, out), log=logs.append).run()
    assert [line for line in logs if line.startswith("▶")] == ["▶ ppo_gt_kl0.05"]
    assert [line for line in logs if line.startswith("point ")] == [line for line in logs if "ppo_gt_kl0.05 @ step 2" in line]
    assert (out / "points.csv").read_text() == before  # same noise, same model: the same point

    # A new β adds one run and nothing else; a setting that changes measured results is refused.
    logs.clear()
    SentimentExperiment(miniature(tiny_model_dir, out, "dpo_betas=[0.1,0.5]"), log=logs.append).run()
    assert [line for line in logs if line.startswith("▶")] == ["▶ dpo_beta0.5"]
    assert len((out / "points.csv").read_text().splitlines()) == len(before.splitlines()) + 2
    with pytest.raises(ConfigError, match="other settings \\(ppo_max_steps: 2 -> 3\\)"):
        SentimentExperiment(miniature(tiny_model_dir, out, "ppo_max_steps=3"), log=logs.append).run()
