"""TRL / transformers settings through a real (tiny) run: dropout off, checks before the model loads,
evaluation and save strategies, save_only_model, report_to, push_to_hub, and `preftune eval` reading
the run's own config."""

import json
import math

import pytest

from preftune.cli import main as cli_main
from preftune.config import DPOConfig, load_config
from preftune.errors import ConfigError
from preftune.stages.dpo import run_dpo
from preftune.testing import tiny_llama, tiny_tokenizer
from preftune.train.metrics import read_metrics
from tests.conftest import separable_rows, write_jsonl

TINY = ["max_length=48", "max_prompt_length=16", "per_device_train_batch_size=4", "learning_rate=1e-3",
        "progress_bar=false", "threads=1", "seed=0", "gradient_checkpointing=false"]


def config(model, out, *extra):
    return load_config(DPOConfig, None, [f"model_name_or_path={model}", f"output_dir={out}", *TINY, *extra])


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama-dropout")
    tokenizer = tiny_tokenizer()
    tiny_llama(len(tokenizer), attention_dropout=0.3).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("disable", [True, False])
def test_disable_dropout_makes_the_first_dpo_step_exactly_log_2(dropout_model, tmp_path, disable):
    # The reference log-probs are computed without dropout; the policy's first step sees the same weights, so
    # the loss is log 2 exactly only if the training forward has no dropout either (TRL's default).
    cfg = config(dropout_model, tmp_path, "max_steps=1", "logging_steps=1", f"disable_dropout={str(disable).lower()}")
    first = run_dpo(cfg, train_data=separable_rows(8)).history[0]["loss"]
    if disable:
        assert first == pytest.approx(math.log(2), abs=1e-6)
    else:
        assert abs(first - math.log(2)) > 1e-4


def test_data_checks_come_before_the_model_loads_all_at_once(tiny_model_dir, tmp_path, capsys):
    cfg = config(tiny_model_dir, tmp_path / "out", "per_device_train_batch_size=16", "eval_strategy=steps")
    with pytest.raises(ConfigError) as err:
        run_dpo(cfg, train_data=separable_rows(10))
    assert err.value.problems == [
        "per_device_train_batch_size: the 10 training examples are fewer than one global batch (16 per device × 1 "
        "accumulation × 1 process(es) = 16); lower the batch size or add data",
        "eval_strategy=steps needs held-out data: give eval_file (or dataset_test_split), or eval_size to hold out "
        "part of the training data"]
    assert "policy:" not in capsys.readouterr().out   # the model never loaded


def test_a_data_check_is_a_clean_exit_code_2_on_the_command_line(tiny_model_dir, tmp_path, capsys):
    train = write_jsonl(separable_rows(6), tmp_path / "train.jsonl")
    code = cli_main(["dpo", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(train),
                     "--output_dir", str(tmp_path / "out"), "--per_device_train_batch_size", "8", "--progress_bar",
                     "false"])
    captured = capsys.readouterr()
    assert code == 2 and "fewer than one global batch" in captured.err
    assert "Traceback" not in captured.err and "policy:" not in captured.out


def test_eval_and_save_strategies(tiny_model_dir, separable_files, tmp_path):
    train, held_out = separable_files
    out = tmp_path / "out"
    result = run_dpo(config(tiny_model_dir, out, f"train_file={train}", f"eval_file={held_out}", "max_steps=5",
                            "eval_on_start=true", "eval_strategy=steps", "eval_steps=2", "save_strategy=steps",
                            "save_steps=0.4", "save_total_limit=5", "logging_steps=2", "logging_first_step=true"))
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "eval")] == [0, 2, 4, 5]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "train")] == [1, 2, 4, 5]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]
    assert result.eval_before and result.eval_after


def test_nothing_is_evaluated_or_saved_with_strategy_no(tiny_model_dir, separable_files, tmp_path, capsys):
    train, held_out = separable_files
    out = tmp_path / "out"
    result = run_dpo(config(tiny_model_dir, out, f"train_file={train}", f"eval_file={held_out}", "max_steps=2",
                            "save_strategy=no"))
    assert result.eval_before == {} and result.eval_after == {} and not list(out.glob("checkpoint-*"))
    assert (out / "final" / "model.safetensors").is_file()
    assert "held-out data is given but eval_strategy is no" in capsys.readouterr().out


def test_save_only_model_checkpoints_cannot_be_resumed(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    run_dpo(config(tiny_model_dir, out, "max_steps=2", "save_steps=1", "save_only_model=true"),
            train_data=separable_rows(16))
    assert (out / "checkpoint-1" / "model" / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="saved with save_only_model=true: it holds no optimizer state"):
        run_dpo(config(tiny_model_dir, out, "max_steps=2", "save_steps=1", "save_only_model=true", "resume=latest"),
                train_data=separable_rows(16))


def test_report_to_tensorboard_writes_the_curves(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    run_dpo(config(tiny_model_dir, out, "max_steps=3", "logging_steps=1", "report_to=[tensorboard]"),
            train_data=separable_rows(12))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert losses == pytest.approx([r["loss"] for r in read_metrics(out / "metrics.jsonl", "train")], rel=1e-6)


def test_preftune_eval_reads_beta_loss_and_reference_from_the_run(tiny_model_dir, separable_files, tmp_path):
    from preftune.stages.evaluate import main as eval_main

    train, held_out = separable_files
    out = tmp_path / "run"
    trained = run_dpo(config(tiny_model_dir, out, f"train_file={train}", f"eval_file={held_out}", "max_steps=4",
                             "beta=0.3", "loss_type=ipo", "eval_strategy=steps"))
    metrics = eval_main(None, [f"model_name_or_path={out}", f"eval_file={held_out}", "threads=1"])
    assert metrics["loss"] == pytest.approx(trained.eval_after["loss"], abs=1e-5)
    assert metrics["rewards/margins"] == pytest.approx(trained.eval_after["rewards/margins"], abs=1e-5)
    # A value given to eval wins over the run's.
    other = eval_main(None, [f"model_name_or_path={out / 'final'}", f"eval_file={held_out}", "beta=0.6"])
    assert other["rewards/margins"] == pytest.approx(2 * metrics["rewards/margins"], rel=1e-4)
    # So does a reference: the policy against itself has no margin.
    itself = eval_main(None, [f"model_name_or_path={out}", f"eval_file={held_out}",
                              f"ref_model_name_or_path={out / 'final'}"])
    assert itself["rewards/margins"] == pytest.approx(0.0, abs=1e-6) and metrics["rewards/margins"] != 0


def test_push_to_hub_offline_is_an_error_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="push_to_hub needs the network but HF_HUB_OFFLINE is set"):
        config(tiny_model_dir, tmp_path, "push_to_hub=true", "hub_model_id=me/tiny")


class FakeHub:
    """huggingface_hub's HfApi at the network boundary: records the calls a run makes."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def whoami(self):
        FakeHub.calls.append(("whoami", self.token))
        return {"name": "me"}

    def create_repo(self, repo_id, private=None, exist_ok=False):
        FakeHub.calls.append(("create_repo", repo_id, private))

    def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
        from pathlib import Path

        FakeHub.calls.append(("upload", repo_id, Path(folder_path).name, commit_message,
                              (Path(folder_path) / "config.json").is_file()))
        return "https://hub/commit/1"


@pytest.mark.parametrize("strategy, uploads", [("end", ["final"]), ("every_save", ["model", "model", "final"])])
def test_push_to_hub_checks_at_start_and_uploads(tiny_model_dir, tmp_path, monkeypatch, strategy, uploads):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.calls = []
    run_dpo(config(tiny_model_dir, tmp_path / "tiny-run", "max_steps=2", "save_steps=1", "push_to_hub=true",
                   "hub_token=hf_x", f"hub_strategy={strategy}"), train_data=separable_rows(8))
    assert FakeHub.calls[:2] == [("whoami", "hf_x"), ("create_repo", "me/tiny-run", None)]
    pushed = [c for c in FakeHub.calls if c[0] == "upload"]
    assert [c[2] for c in pushed] == uploads and all(c[4] for c in pushed)   # whole model folders
    assert pushed[-1][3] == "End of training"


def test_config_json_records_the_ignored_trl_settings(tiny_model_dir, tmp_path):
    run_dpo(config(tiny_model_dir, tmp_path, "max_steps=1", "dataloader_num_workers=4", "log_level=info"),
            train_data=separable_rows(4))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["ignored_keys"] == {"dataloader_num_workers": 4, "log_level": "info"}
