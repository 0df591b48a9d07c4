"""The small groups of keys the stages are composed from (see :mod:`preftune.config.stages`).

Key names follow TRL's ``DPOConfig`` / transformers' ``TrainingArguments`` where the concept is the
same, so a TRL user's settings carry over. Each group checks its own keys; checks across groups live
with the stage that composes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from preftune.config.fields import (
    Problems,
    changed,
    in_range,
    non_negative,
    positive,
    positive_or_null,
    setting,
)


@dataclass(frozen=True)
class DeviceGroup:
    """Device and precision."""

    device: str = setting("auto", "auto, cpu or cuda.", choices=("auto", "cpu", "cuda"))
    threads: int | None = setting(None, "torch.set_num_threads; on 2 cores 1 thread is often faster (null = "
                                        "torch's default).")
    bf16: bool = setting(False, "bf16 autocast for forward/backward (weights and optimizer stay fp32).")

    def check(self, p: Problems) -> None:
        positive_or_null(self, p, "threads")


@dataclass(frozen=True)
class ModelGroup:
    """The model."""

    model_name_or_path: str = setting("", "The model to train: a Hugging Face Hub id (org/name; downloaded, or "
                                          "read from the Hugging Face cache offline), a local folder, or 'smollm2' "
                                          "for the embedded SmolLM2-135M-Instruct. Required unless a model object "
                                          "is passed from Python.")
    model_revision: str = setting("main", "Hub revision of model_name_or_path: a branch, tag or commit hash "
                                          "(TRL's ModelConfig key).")
    trust_remote_code: bool = setting(False, "Run the Python code a Hub model ships with (needed by some "
                                             "architectures; read it first: it runs with your permissions).")
    padding_free: bool = setting(True, "Pack each batch's sequences end to end (positions restart per sequence) "
                                       "instead of computing on padding; checked against padded rows on first use.")
    prefix_sharing: bool | str = setting("auto", "Within the packed rows, compute a prompt once for all of its "
                                                 "completions (pairs, rankings, KL partners, RL groups): auto = where "
                                                 "a probe on first use shows it exact for this model (else sequences "
                                                 "are packed separately, logged), true = or stop, false = never. "
                                                 "Needs padding_free; auto is off under torch_compile.")

    def check(self, p: Problems) -> None:
        if self.prefix_sharing not in (True, False, "auto"):
            p.add(f"prefix_sharing must be auto, true or false, got {self.prefix_sharing!r}", "prefix_sharing")
        elif self.prefix_sharing is True and not self.padding_free:
            p.add("prefix_sharing=true needs padding_free=true (the shared prompt lives in packed rows); set "
                  "padding_free=true or prefix_sharing=auto", "prefix_sharing")
        elif self.prefix_sharing is True and getattr(self, "torch_compile", False):
            p.add("prefix_sharing=true with torch_compile=true: compiled layers would recompile for every batch's "
                  "layout; set one of them to false (or prefix_sharing=auto)", "prefix_sharing")


@dataclass(frozen=True)
class LogprobGroup:
    """Token log-probabilities."""

    logprob_chunk_size: int = setting(512, "Completion tokens per output-layer chunk: bounds the live logits.")

    def check(self, p: Problems) -> None:
        positive(self, p, "logprob_chunk_size")


@dataclass(frozen=True)
class TrainModelGroup:
    """The model in training: memory and activations."""

    gradient_checkpointing: bool = setting(False, "Recompute decoder activations in backward to save memory.")
    lean_activations: bool = setting(True, "RMSNorm, SwiGLU MLPs and (on CPU) grouped-query attention through "
                                           "functions that keep fewer activations for backward (same math; modules "
                                           "with another formula keep their own forward): SmolLM2 saves 40 % less.")


@dataclass(frozen=True)
class ShardingGroup:
    """Sharding and compilation (sft and dpo)."""

    fsdp: bool = setting(False, "Under torchrun, shard weights, gradients and optimizer state across processes "
                                "(FSDP2, one unit per decoder layer); checkpoints are sharded "
                                "(torch.distributed.checkpoint) and resume under any process count. Full "
                                "fine-tuning.")
    torch_compile: bool = setting(False, "torch.compile each decoder layer (dynamic shapes; the first steps pay the "
                                         "compile time).")


@dataclass(frozen=True)
class PeftGroup:
    """LoRA adapters."""

    use_peft: bool = setting(False, "Train LoRA adapters instead of all weights.")
    lora_r: int = setting(16, "LoRA rank.")
    lora_alpha: int = setting(32, "LoRA α (scale = α / r).")
    lora_dropout: float = setting(0.0, "LoRA dropout.")
    lora_target_modules: list[str] = setting(["all-linear"], "Modules LoRA wraps (peft names; 'all-linear').")

    def check(self, p: Problems) -> None:
        positive(self, p, "lora_r", "lora_alpha")
        in_range(self, p, "lora_dropout", "[0, 1)")
        if not self.use_peft:
            for key in changed(self, "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"):
                p.add(f"{key} is set but use_peft is false, so it would be ignored (set use_peft=true)", key)


@dataclass(frozen=True)
class TextGroup:
    """How examples become tokens."""

    max_length: int | None = setting(512, "Max tokens of prompt + completion; completions are cut from the right.")
    max_prompt_length: int | None = setting(256, "Max prompt tokens; longer prompts are cut from the left.")
    use_chat_template: bool | None = setting(None, "Render with the tokenizer's chat template (null = when it has "
                                                   "one).")

    def check(self, p: Problems) -> None:
        """The same rules as the data pipeline's DataSettings."""
        max_length, max_prompt_length = self.max_length, self.max_prompt_length
        if max_length is not None and max_length < 2:
            p.add(f"max_length must be >= 2 or null (a prompt and a completion token), got {max_length}",
                  "max_length")
        elif max_prompt_length is not None and max_prompt_length < 1:
            p.add(f"max_prompt_length must be >= 1 or null, got {max_prompt_length}", "max_prompt_length")
        elif max_length is not None and max_prompt_length is not None and max_prompt_length >= max_length:
            p.add(f"max_prompt_length must be < max_length ({max_length}) so every completion keeps at least one "
                  f"token, got {max_prompt_length}", "max_prompt_length")


@dataclass(frozen=True)
class DataGroup:
    """Training and held-out data: files, Hub datasets, mixtures; which columns hold the prompt."""

    train_file: str = setting("", "Training data: a .jsonl/.json/.csv/.parquet file or a `datasets` folder (a "
                                  "DatasetDict: its dataset_train_split). One of train_file, dataset_name, "
                                  "dataset_mixture, dataset_mixer, unless data is passed from Python.")
    eval_file: str | None = setting(None, "Held-out data in the same formats (a DatasetDict: its "
                                          "dataset_test_split); never used for a training step.")
    eval_size: int = setting(0, "If no eval_file: hold out this many training examples (seeded) for evaluation "
                                "(instead of a test split the training data may have).")
    dataset_name: str | None = setting(None, "A Hub dataset id (or local folder of data files) loaded with "
                                             "datasets.load_dataset: downloaded, or from the Hugging Face cache "
                                             "offline.")
    dataset_config: str | None = setting(None, "The dataset's configuration (datasets.load_dataset's `name`).")
    dataset_train_split: str = setting("train", "Split to train on, of a dataset with splits (Hub dataset, "
                                                "DatasetDict, mixture).")
    dataset_test_split: str = setting("test", "Split to evaluate on, of a dataset with splits; used when it exists "
                                              "and no eval_file / eval_size is set.")
    dataset_mixture: dict | None = setting(None, "The alignment-handbook's mixture: {datasets: [{id, config, split, "
                                                 "columns, weight}], seed, test_split_size}.")
    dataset_mixer: dict | None = setting(None, "The alignment-handbook's older mixer: {dataset id: fraction of "
                                               "its train splits}, with dataset_splits.")
    dataset_splits: list[str] = setting(["train", "test"], "dataset_mixer's splits: names with 'train' are "
                                                           "training data, names with 'test' held-out data.")
    prompt_field: str = setting("prompt", "Column holding the prompt (e.g. 'question' for Intel/orca_dpo_pairs).")
    system_field: str | None = setting(None, "Column holding a system text, which becomes the conversation's "
                                             "system message (empty text: none); needs a chat template.")

    def check(self, p: Problems) -> None:
        from preftune.data.sources import check_mixer, check_mixture

        non_negative(self, p, "eval_size")
        sources = [k for k in ("train_file", "dataset_name", "dataset_mixture", "dataset_mixer") if getattr(self, k)]
        if len(sources) > 1:
            p.add(f"{' and '.join(sources)} are all set: name the training data once")
        if self.dataset_mixture is not None:
            for problem in check_mixture(self.dataset_mixture):
                p.add(problem, "dataset_mixture")
        if self.dataset_mixer is not None:
            for problem in check_mixer(self.dataset_mixer, self.dataset_splits):
                p.add(problem, "dataset_mixer")
        elif changed(self, "dataset_splits"):
            p.add("dataset_splits is set but dataset_mixer is not, so it would be ignored (dataset_name's splits "
                  "are dataset_train_split / dataset_test_split)", "dataset_splits")
        if self.dataset_config is not None and not self.dataset_name:
            p.add("dataset_config is set but dataset_name is not, so it would be ignored", "dataset_config")
        for key in ("prompt_field", "system_field"):
            if getattr(self, key) == "":
                p.add(f"{key} must name a column, got an empty string", key)


@dataclass(frozen=True)
class PreferenceColumnsGroup:
    """Preference rows: which columns hold the pair, and how UltraFeedback rows become pairs."""

    chosen_field: str = setting("chosen", "Column holding the preferred completion.")
    rejected_field: str = setting("rejected", "Column holding the dispreferred completion.")
    ultrafeedback_score: str = setting("mean_aspect", "UltraFeedback rows (instruction + completions with "
                                                      "ratings): the score of a completion — mean_aspect (mean of "
                                                      "its aspect ratings, 'N/A' left out), overall_score, "
                                                      "fine-grained_score, or one aspect.",
                                       choices=("mean_aspect", "overall_score", "fine-grained_score", "helpfulness",
                                                "honesty", "instruction_following", "truthfulness"))
    ultrafeedback_pairs: str = setting("best_vs_random", "UltraFeedback rows: the best completion against a random "
                                                         "strictly worse one (seeded per row, as H4 binarized it) "
                                                         "or against the worst.",
                                       choices=("best_vs_random", "best_vs_worst"))

    def check(self, p: Problems) -> None:
        for key in ("chosen_field", "rejected_field"):
            if getattr(self, key) == "":
                p.add(f"{key} must name a column, got an empty string", key)


@dataclass(frozen=True)
class OptimGroup:
    """Optimisation: optimizer, learning-rate schedule, batch, length of training, clipping."""

    learning_rate: float = setting(1e-6, "Peak learning rate.")
    optimizer: str = setting("adamw", "adamw or rmsprop (the DPO paper used RMSprop).", choices=("adamw", "rmsprop"))
    weight_decay: float = setting(0.0, "Decoupled weight decay (AdamW) / L2 (RMSprop).")
    adam_beta1: float = setting(0.9, "AdamW β1.")
    adam_beta2: float = setting(0.999, "AdamW β2.")
    adam_epsilon: float = setting(1e-8, "AdamW / RMSprop ε.")
    lr_scheduler_type: str = setting("linear", "linear (warm-up then linear decay to 0) or constant (after "
                                               "warm-up).", choices=("linear", "constant"))
    warmup_steps: int = setting(0, "Linear warm-up steps (the DPO paper: 150).")
    warmup_ratio: float = setting(0.0, "Warm-up as a fraction of total steps (used when warmup_steps is 0).")
    per_device_train_batch_size: int = setting(8, "Examples per process per micro-step.")
    per_device_eval_batch_size: int = setting(8, "Examples per process per evaluation batch.")
    gradient_accumulation_steps: int = setting(1, "Micro-steps per optimizer step.")
    num_train_epochs: float = setting(1.0, "Passes over the training data (fractional allowed).")
    max_steps: int = setting(-1, "If > 0, stop after this many optimizer steps (overrides num_train_epochs).")
    max_grad_norm: float = setting(10.0, "Clip the global gradient norm to this (0 = no clipping); the pre-clip "
                                         "norm is logged as grad_norm. DPO's reference code uses 10.")
    group_by_length: bool = setting(False, "Batch examples of similar length together (windows of 16 global "
                                           "batches sorted by length, batches shuffled): less padding, faster steps.")

    def check(self, p: Problems) -> None:
        positive(self, p, "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "num_train_epochs", "adam_epsilon")
        if hasattr(self, "gradient_accumulation_steps"):
            positive(self, p, "gradient_accumulation_steps")
        non_negative(self, p, "weight_decay", "warmup_steps", "max_grad_norm")
        in_range(self, p, "warmup_ratio", "[0, 1]")
        in_range(self, p, "adam_beta1", "[0, 1)")
        in_range(self, p, "adam_beta2", "[0, 1)")
        if self.max_steps != -1 and self.max_steps <= 0:
            p.add(f"max_steps must be -1 (no limit) or > 0, got {self.max_steps}", "max_steps")


@dataclass(frozen=True)
class RunGroup:
    """The run: output, seed, logging, evaluation and checkpoint cadence, resuming."""

    output_dir: str = setting("runs/run", "Folder for checkpoints, metrics.jsonl and TensorBoard events.")
    seed: int = setting(42, "Seed for data order, initialisation and dropout.")
    logging_steps: int = setting(1, "Log train metrics every N optimizer steps (each log is one host sync).")
    eval_steps: int | None = setting(None, "Evaluate on the held-out set every N steps (null = only at start and "
                                           "end).")
    save_steps: int | None = setting(None, "Save a resumable checkpoint every N steps (null = only at the end).")
    save_total_limit: int | None = setting(2, "Keep only the newest N step checkpoints (null = keep all).")
    resume: str | None = setting(None, "Resume from a checkpoint folder, or 'latest' in output_dir (the newest "
                                       "checkpoint whose manifest verifies; a corrupt one is reported and skipped).")
    force_resume: bool = setting(False, "Resume even though the seed, data, tokenizer, model config or a training "
                                        "setting differs from the checkpoint's (each difference is still printed).")
    max_consecutive_skips: int = setting(5, "Stop the run after this many optimizer steps in a row with a "
                                            "non-finite loss or gradient (each is skipped; 0 = never stop).")
    report_to: str = setting("auto", "auto (TensorBoard when installed), tensorboard or none.",
                             choices=("auto", "tensorboard", "none"))
    progress_bar: bool = setting(True, "Show a live progress bar (rank 0).")

    def check(self, p: Problems) -> None:
        positive(self, p, "logging_steps")
        non_negative(self, p, "max_consecutive_skips")
        positive_or_null(self, p, "eval_steps", "save_steps", "save_total_limit")
