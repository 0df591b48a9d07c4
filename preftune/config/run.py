"""The run group (output, seed, when to log / evaluate / save, resuming, reporters) and the Hub group.

Strategies and step counts mean what they mean in transformers' ``TrainingArguments``: ``steps`` every
N optimizer steps (N a count, or a fraction of the total steps), ``epoch`` at every epoch's end, ``no``
never; evaluation and saving also happen at the last step when their strategy is not ``no``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from preftune.config.fields import Problems, setting

STRATEGIES = ("no", "steps", "epoch")
# report_to name -> the module it needs and the pip extra that installs it
REPORTERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
             "trackio": ("trackio", "trackio"), "mlflow": ("mlflow", "mlflow")}


def steps_or_fraction(config, p: Problems, *keys: str) -> None:
    """A step interval: a whole number of steps >= 1, or a fraction of the total steps in (0, 1)."""
    for key in keys:
        value = getattr(config, key)
        if value is None:
            continue
        if not (0 < value < 1 or (value >= 1 and float(value).is_integer())):
            p.add(f"{key} must be a whole number of steps >= 1 or a fraction of the total steps in (0, 1), got "
                  f"{value:g}", key)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True)
class RunGroup:
    """The run: output, seed, when to log, evaluate and save, resuming, where metrics go."""

    output_dir: str = setting("runs/run", "Folder for checkpoints, metrics.jsonl and the final model.")
    overwrite_output_dir: bool = setting(False, "Start afresh in an output_dir that holds another run: its files "
                                                "are moved to <output_dir>.previous-<time> (never deleted). Without "
                                                "it such a folder is refused (resume=latest continues the run there).")
    seed: int = setting(42, "Seed for initialisation, dropout and (unless data_seed) the data order (0 to "
                            "2**32 - 1, as numpy and TRL take it).")
    logging_strategy: str = setting("steps", "When to log train metrics: steps (every logging_steps), epoch or no.",
                                    choices=STRATEGIES)
    logging_steps: float = setting(10, "Log every N optimizer steps, or a fraction of the total steps in (0, 1) "
                                       "(each log is one host sync); the last step is always logged.")
    logging_first_step: bool = setting(False, "Also log after the first step.")
    eval_strategy: str = setting("no", "When to evaluate on held-out data: steps (every eval_steps, and at the "
                                       "last step), epoch (every epoch's end) or no.", choices=STRATEGIES)
    eval_steps: float | None = setting(None, "Evaluate every N steps (or a fraction of the total steps) with "
                                             "eval_strategy=steps (null = logging_steps).")
    eval_delay: float = setting(0, "No evaluation before this many steps (eval_strategy=steps) or epochs "
                                   "(eval_strategy=epoch).")
    eval_on_start: bool = setting(False, "Evaluate once before the first step (for DPO read from the reference "
                                         "table: at step 0 the policy is the reference).")
    save_strategy: str = setting("steps", "When to save a resumable checkpoint: steps (every save_steps, and at the "
                                          "last step), epoch or no. The final model is saved in any case.",
                                 choices=STRATEGIES)
    save_steps: float = setting(500, "Save every N steps, or a fraction of the total steps in (0, 1).")
    save_total_limit: int | None = setting(None, "Keep only the newest N checkpoints (null = keep all).")
    save_only_model: bool = setting(False, "Checkpoints hold the model only (no optimizer state or RNG): smaller, "
                                           "but a run cannot resume from them.")
    resume: str | None = setting(None, "Resume from a checkpoint folder, or 'latest' in output_dir (the newest "
                                       "checkpoint whose manifest verifies; a corrupt one is reported and skipped).")
    force_resume: bool = setting(False, "Resume even though the seed, data, tokenizer, model config or a training "
                                        "setting differs from the checkpoint's (each difference is still printed).")
    max_consecutive_skips: int = setting(5, "Stop the run after this many optimizer steps in a row with a "
                                            "non-finite loss or gradient (each is skipped; 0 = never stop).")
    report_to: list[str] = setting(["none"], "Where metrics go besides metrics.jsonl (always written): any of "
                                             "tensorboard, wandb, trackio, mlflow; all (every one installed) or "
                                             "none (auto, preftune's older value: tensorboard when installed).",
                                   choices=("none", "all", "auto", *REPORTERS))
    run_name: str | None = setting(None, "The run's name in wandb, trackio and mlflow (null = output_dir's name).")
    project: str = setting("huggingface", "wandb / trackio project (as transformers).")
    progress_bar: bool = setting(True, "Show a live progress bar (rank 0).")

    def check(self, p: Problems) -> None:
        p.in_range(self, "seed", "[0, 4294967295]")   # torch overflows past 2**63, numpy past 2**32
        steps_or_fraction(self, p, "logging_steps", "eval_steps", "save_steps")
        p.non_negative(self, "max_consecutive_skips", "eval_delay")
        p.positive_or_null(self, "save_total_limit")
        if "report_to" not in p.bad and len(self.report_to) > 1 and {"none", "all", "auto"} & set(self.report_to):
            p.add(f"report_to {self.report_to}: none, all and auto stand alone", "report_to")
        for name in self.report_to:
            if name in REPORTERS and not installed(REPORTERS[name][0]):
                module, extra = REPORTERS[name]
                p.add(f"report_to {name}: the {module} package is not installed (pip install 'preftune[{extra}]')",
                      "report_to")


@dataclass(frozen=True)
class HubGroup:
    """Publishing the trained model to the Hugging Face Hub."""

    push_to_hub: bool = setting(False, "Upload the final model folder to the Hub at the end (and, with "
                                       "hub_strategy=every_save, each saved model); needs the network and a token, "
                                       "checked before any work.")
    hub_model_id: str | None = setting(None, "Repository 'user/name' (null = your namespace / output_dir's name).")
    hub_strategy: str = setting("every_save", "every_save (the model at each checkpoint and at the end) or end (the "
                                              "final model only).", choices=("every_save", "end"))
    hub_token: str | None = setting(None, "Hub token (null = the one `hf auth login` stored, or HF_TOKEN).")
    hub_private_repo: bool | None = setting(None, "Create the repository private (null = the Hub's default).")
    hub_revision: str | None = setting(None, "Branch to push to (null = main).")
    hub_always_push: bool = setting(False, "Accepted for transformers compatibility: preftune's uploads are "
                                           "synchronous, so no push is ever skipped.")

    def check(self, p: Problems) -> None:
        if not self.push_to_hub:
            return
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            p.add("push_to_hub needs the network but HF_HUB_OFFLINE is set: unset it, or set push_to_hub=false and "
                  "upload final/ later (hf upload <repo> <output_dir>/final)", "push_to_hub")
