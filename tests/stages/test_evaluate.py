import math

import pytest

from preftune.config import EvalConfig, load_config
from preftune.stages.dpo import run_dpo
from preftune.stages.evaluate import run_eval
from tests.stages.test_dpo import dpo_config


def test_eval_of_a_model_against_itself_and_after_dpo(tiny_model_dir, separable_files, tmp_path):
    train, held_out = separable_files
    common = [f"eval_file={held_out}", "max_length=48", "max_prompt_length=16", "beta=0.1"]
    same = run_eval(load_config(EvalConfig, None, [
        f"model_name_or_path={tiny_model_dir}", f"ref_model_name_or_path={tiny_model_dir}", *common]))
    assert same["loss"] == pytest.approx(math.log(2), abs=1e-6) and same["rewards/accuracies"] == 0.0

    trained = run_dpo(dpo_config(tiny_model_dir, train, tmp_path / "out", f"eval_file={held_out}",
                                 "learning_rate=1e-3", "max_steps=10"))
    out = tmp_path / "eval.json"
    after = run_eval(load_config(EvalConfig, None, [
        f"model_name_or_path={trained.final_dir}", f"ref_model_name_or_path={tiny_model_dir}", *common,
        f"output_file={out}"]))
    # The standalone evaluation reproduces the training run's own held-out evaluation.
    assert after["rewards/accuracies"] == pytest.approx(trained.eval_after["rewards/accuracies"], abs=1e-6)
    assert after["loss"] == pytest.approx(trained.eval_after["loss"], abs=1e-5)
    assert out.is_file()


def test_a_datasetdict_eval_file_is_evaluated_on_its_test_split(tiny_model_dir, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    from tests.conftest import separable_rows

    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(separable_rows(12)),
                          "test": datasets.Dataset.from_list(separable_rows(5, seed=2)),
                          "dev": datasets.Dataset.from_list(separable_rows(3, seed=3))}).save_to_disk(str(folder))
    models = [f"model_name_or_path={tiny_model_dir}", f"ref_model_name_or_path={tiny_model_dir}",
              f"eval_file={folder}", "max_length=48", "max_prompt_length=16"]
    run_eval(load_config(EvalConfig, None, models))
    assert f"eval data: {folder} [test]: 5 examples" in capsys.readouterr().out
    run_eval(load_config(EvalConfig, None, [*models, "dataset_test_split=dev"]))
    assert f"eval data: {folder} [dev]: 3 examples" in capsys.readouterr().out
