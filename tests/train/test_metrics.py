from preftune.train.metrics import MetricsLogger, read_metrics


def test_fresh_run_starts_a_new_file_and_resume_drops_steps_after_the_checkpoint(tmp_path):
    first = MetricsLogger(tmp_path, report_to="none")
    for step in (1, 2, 3, 4):
        first.log(step, {"loss": float(step)})
    first.log(2, {"loss": 0.5}, split="eval")
    first.close()
    resumed = MetricsLogger(tmp_path, report_to="none", resume_step=2)   # crashed after step 4, saved at 2
    resumed.log(3, {"loss": 30.0})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl", "train")] == [
        (1, 1.0), (2, 2.0), (3, 30.0)]
    assert len(read_metrics(tmp_path / "metrics.jsonl", "eval")) == 1
    fresh = MetricsLogger(tmp_path, report_to="none")
    fresh.log(1, {"loss": 9.0})
    fresh.close()
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [9.0]
