"""`preftune plot`: PNG curves of real runs, two runs on the same axes."""

from __future__ import annotations

import json
import sys

import pytest

from preftune.cli import main as cli_main
from preftune.config import DPOConfig, load_config
from preftune.errors import ConfigError
from preftune.plot import plot_runs, read_run
from preftune.stages.dpo import run_dpo
from tests.conftest import pre_trl

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir):
    """Two real DPO runs of 6 steps on a tiny model (β 0.1 and 0.5), with held-out evaluation."""
    from tests.conftest import separable_rows, write_jsonl

    root = tmp_path_factory.mktemp("plot-runs")
    train = write_jsonl(separable_rows(48, seed=0), root / "train.jsonl")
    held_out = write_jsonl(separable_rows(16, seed=1), root / "eval.jsonl")
    runs = []
    for beta in ("0.1", "0.5"):
        out = root / f"beta{beta}"
        run_dpo(load_config(DPOConfig, None, pre_trl([
            f"model_name_or_path={tiny_model_dir}", f"train_file={train}", f"eval_file={held_out}",
            f"output_dir={out}", f"beta={beta}", "max_steps=6", "eval_steps=3", "learning_rate=1e-3",
            "per_device_train_batch_size=8", "max_length=48", "max_prompt_length=16", "logging_steps=1",
            "progress_bar=false", "report_to=none"])))
        runs.append(out)
    return runs


def test_two_runs_give_non_empty_pngs_for_every_logged_quantity(two_runs, tmp_path):
    written = plot_runs(two_runs, tmp_path / "plots")
    names = sorted(p.name for p in written)
    assert names == sorted(["loss.png", "reward_accuracy.png", "reward_margin.png", "lr.png", "grad_norm.png",
                            "overview.png"])
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, path


def test_both_runs_and_their_eval_curves_are_read(two_runs):
    for run in two_runs:
        series = read_run(run)
        assert [s for s, _ in series["train"]["loss"]] == [1, 2, 3, 4, 5, 6]
        assert [s for s, _ in series["eval"]["rewards/accuracies"]] == [0, 3, 6]


def test_the_cli_writes_into_the_run_folder_and_lists_the_files(two_runs, capsys):
    assert cli_main(["plot", str(two_runs[0])]) == 0
    printed = capsys.readouterr().out.split()
    assert str(two_runs[0] / "plots" / "loss.png") in printed
    assert (two_runs[0] / "plots" / "overview.png").stat().st_size > 0


def test_a_training_run_ends_by_printing_the_plot_command(tiny_model_dir, tmp_path, capsys):
    from tests.conftest import separable_rows

    out = tmp_path / "run"
    run_dpo(load_config(DPOConfig, None, [f"model_name_or_path={tiny_model_dir}", f"output_dir={out}",
                                          "max_steps=1", "progress_bar=false", "report_to=none"]),
            train_data=separable_rows(8))
    assert f"curves: preftune plot {out}" in capsys.readouterr().out


def test_a_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="no metrics.jsonl \\(give the output_dir of a preftune training run\\)"):
        plot_runs([tmp_path], tmp_path / "plots")
    assert cli_main(["plot", str(tmp_path)]) == 2
    assert "preftune plot: error:" in capsys.readouterr().err


def test_non_finite_values_are_left_out(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "split": "train", "loss": 0.7}, {"step": 2, "split": "train", "loss": "nan"},
        {"step": 3, "split": "train", "loss": 0.5}]) + "\n")
    assert read_run(tmp_path)["train"]["loss"] == [(1, 0.7), (3, 0.5)]


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 0.7}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # an import of it now fails
    with pytest.raises(ConfigError, match="preftune plot needs matplotlib, which is not installed: pip install"):
        plot_runs([tmp_path], tmp_path / "plots")
