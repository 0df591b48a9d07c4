"""The model and data groups the stages are composed from (see :mod:`preftune.config.stages`).

Key names follow TRL's ``DPOConfig`` / transformers' ``TrainingArguments`` where the concept is the
same, so a TRL user's settings carry over. Each group checks its own keys; checks across groups live
with the stage that composes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from preftune.config.fields import Problems, changed, setting

# use_chat_template means the same in every group that renders text (TextGroup here, rl.PromptGroup).
USE_CHAT_TEMPLATE = "Render with the tokenizer's chat template (null = when it has one)."


@dataclass(frozen=True)
class DeviceGroup:
    """Device and precision."""

    device: str = setting("auto", "auto, cpu or cuda.", choices=("auto", "cpu", "cuda"))
    threads: int | None = setting(None, "torch.set_num_threads; on 2 cores 1 thread is often faster (null = "
                                        "torch's default).")
    bf16: bool = setting(False, "bf16 autocast for forward/backward (weights and optimizer stay fp32). TRL turns "
                                "it on by default; preftune does not, as CPUs without bf16 units run it several "
                                "times slower (set bf16=true on a GPU).")
    tf32: bool | None = setting(None, "Allow TF32 matmuls on CUDA (null = torch's setting).")
    full_determinism: bool = setting(False, "Deterministic kernels only (torch.use_deterministic_algorithms), as "
                                            "transformers' full_determinism: slower, bitwise repeatable on a GPU.")

    def check(self, p: Problems) -> None:
        p.positive_or_null(self, "threads")


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
    dtype: str | None = setting("float32", "Weights' dtype: float32 (exact updates; bf16 enters through "
                                           "autocast), bfloat16, float16 or auto (the checkpoint's); null = "
                                           "float32. TRL's torch_dtype is the same key.",
                                choices=("float32", "bfloat16", "float16", "auto", "fp32", "bf16", "fp16"))
    attn_implementation: str | None = setting(None, "Attention kernel: sdpa, eager, flash_attention_2, ... (null = "
                                                    "the model's default).")
    model_init_kwargs: dict[str, Any] | None = setting(None, "More from_pretrained arguments, as TRL's "
                                                             "model_init_kwargs (a dtype or attn_implementation "
                                                             "there counts as the key of that name).")
    padding_free: bool | str = setting("auto", "Pack each batch's sequences end to end (positions restart per "
                                               "sequence) instead of computing on padding, checked against padded "
                                               "rows on a probe. auto = where the model keeps packed sequences apart "
                                               "(OPT, BLOOM, Mamba, ... run padded, said once in the log); true = an "
                                               "error on such a model.")
    prefix_sharing: bool | str = setting("auto", "Within the packed rows, compute a prompt once for all of its "
                                                 "completions (pairs, rankings, KL partners, RL groups): auto = where "
                                                 "a probe on first use shows it exact for this model (else sequences "
                                                 "are packed separately, logged), true = or stop, false = never. "
                                                 "Needs padding_free; auto is off under torch_compile.")

    def check(self, p: Problems) -> None:
        true_false_or_auto(self, p, "padding_free")
        kwargs = getattr(self, "model_init_kwargs", None) or {}
        for key in ("device_map", "quantization_config"):
            if key in kwargs:
                p.add(f"model_init_kwargs: {key} is not accepted (preftune places the model on its device; 4-bit "
                      "weights come from load_in_4bit)", "model_init_kwargs")
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
        p.positive(self, "logprob_chunk_size")


@dataclass(frozen=True)
class TrainModelGroup:
    """The model in training: dropout, memory and activations."""

    disable_dropout: bool = setting(True, "Turn every dropout off in the policy and the reference (as TRL): the "
                                          "first DPO step's loss is then exactly log 2.")
    gradient_checkpointing: bool = setting(True, "Recompute decoder activations in backward to save memory (TRL's "
                                                 "default; false is faster).")
    gradient_checkpointing_kwargs: dict[str, Any] | None = setting(None, "Arguments of gradient checkpointing, e.g. "
                                                                         "{use_reentrant: false} (null = that).")
    lean_activations: bool | str = setting("auto", "RMSNorm, SwiGLU MLPs and (on CPU) grouped-query attention "
                                                   "through functions that keep fewer activations for backward (same "
                                                   "math, each checked on a probe; modules of another formula keep "
                                                   "their own forward): SmolLM2 saves 40 % less. auto = where it "
                                                   "applies (a model with none of these runs as it is, said once in "
                                                   "the log); true = an error on such a model.")
    release_host_memory: bool = setting(False, "CPU only: hand the memory freed by each forward and backward pass "
                                                "back to the operating system (glibc malloc_trim) for a lower peak "
                                                "resident set, at the cost of page faults when it is used again "
                                                "(benchmarks/RESULTS.md measures both). No effect elsewhere.")
    fp32_master_weights: bool = setting(False, "With 16-bit weights (dtype bfloat16 / float16): the optimizer updates "
                                               "float32 copies of the trained weights (its state float32 too) and "
                                               "the model computes with their rounding, so updates below bf16's "
                                               "resolution are not lost; 4 bytes more per trained weight. No "
                                               "effect on float32 weights.")
    router_aux_loss_coef: float | None = setting(None, "Mixture-of-experts models: weight of the router "
                                                       "load-balancing loss added to the training loss (logged as "
                                                       "aux_loss); null = the model config's own, 0 = off (as TRL). "
                                                       "An error on a dense model.")

    def check(self, p: Problems) -> None:
        if not self.gradient_checkpointing:
            for key in changed(self, "gradient_checkpointing_kwargs"):
                p.add(f"{key} is set but gradient_checkpointing is false, so it would be ignored", key)
        true_false_or_auto(self, p, "lean_activations")
        if self.router_aux_loss_coef is not None and self.router_aux_loss_coef < 0:
            p.add(f"router_aux_loss_coef must be >= 0 or null, got {self.router_aux_loss_coef}",
                  "router_aux_loss_coef")


def true_false_or_auto(config: object, p: Problems, *keys: str) -> None:
    for key in keys:
        value = getattr(config, key)
        if value not in (True, False, "auto"):
            p.add(f"{key} must be true, false or auto, got {value!r}", key)


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
    """LoRA adapters (and QLoRA: LoRA on a 4-bit base)."""

    use_peft: bool = setting(False, "Train LoRA adapters instead of all weights.")
    lora_r: int = setting(16, "LoRA rank.")
    lora_alpha: int = setting(32, "LoRA α (scale = α / r).")
    lora_dropout: float = setting(0.05, "LoRA dropout (as TRL).")
    lora_target_modules: list[str] | None = setting(None, "Modules LoRA wraps (peft names, or all-linear); null = "
                                                          "peft's choice for the architecture (as TRL).")
    lora_modules_to_save: list[str] | None = setting(None, "Modules trained in full and saved with the adapter "
                                                           "(e.g. lm_head).")
    use_rslora: bool = setting(False, "Rank-stabilised LoRA: scale α / √r instead of α / r.")
    use_dora: bool = setting(False, "Weight-decomposed LoRA (DoRA).")
    load_in_4bit: bool = setting(False, "QLoRA: the frozen base weights in 4-bit NF4 (bitsandbytes; CUDA only, "
                                        "with use_peft).")

    def check(self, p: Problems) -> None:
        p.positive(self, "lora_r", "lora_alpha")
        p.in_range(self, "lora_dropout", "[0, 1)")
        if not self.use_peft:
            for key in changed(self, "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                               "lora_modules_to_save", "use_rslora", "use_dora", "load_in_4bit"):
                p.add(f"{key} is set but use_peft is false, so it would be ignored (set use_peft=true)", key)


@dataclass(frozen=True)
class TextGroup:
    """How examples become tokens."""

    max_length: int | None = setting(1024, "Max tokens of prompt + completion (null = no limit); what is cut "
                                           "follows truncation_mode.")
    max_prompt_length: int | None = setting(None, "Max prompt tokens, cut from the left (null = no separate limit, "
                                                  "as TRL 1.16).")
    max_completion_length: int | None = setting(None, "Max completion tokens, cut from the right (null = no "
                                                      "separate limit).")
    truncation_mode: str = setting("keep_start", "When prompt + completion exceed max_length: keep_start cuts the "
                                                 "completion's end (a prompt that alone fills max_length is dropped "
                                                 "and counted, as TRL); keep_end cuts the prompt's start.",
                                   choices=("keep_start", "keep_end"))
    use_chat_template: bool | None = setting(None, USE_CHAT_TEMPLATE)

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
        max_completion_length = getattr(self, "max_completion_length", None)  # the RL stages generate instead
        if max_completion_length is not None and max_completion_length < 1:
            p.add(f"max_completion_length must be >= 1 or null, got {max_completion_length}", "max_completion_length")


@dataclass(frozen=True)
class DataGroup:
    """Training and held-out data: files, Hub datasets, mixtures; which columns hold the prompt."""

    train_file: str = setting("", "Training data: a .jsonl/.json/.csv/.parquet file or a `datasets` folder (a "
                                  "DatasetDict: its dataset_train_split). One of train_file, dataset_name, "
                                  "dataset_mixture, dataset_mixer, datasets, unless data is passed from Python.")
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
    datasets: list[dict] | None = setting(None, "TRL's own mixture (trl dpo's DatasetMixtureConfig): [{path, name, "
                                                "data_dir, data_files, split, columns, fraction}]; fractions are "
                                                "shares of the mixture, as TRL's get_dataset takes them.")
    test_split_size: float | None = setting(None, "With datasets: rows (>= 1) or the fraction held out of the "
                                                  "mixture as its test split (seeded with seed).")
    prompt_field: str = setting("prompt", "Column holding the prompt (e.g. 'question' for Intel/orca_dpo_pairs).")
    system_field: str | None = setting(None, "Column holding a system text, which becomes the conversation's "
                                             "system message (empty text: none); needs a chat template.")
    max_row_bytes: int | None = setting(8 << 20, "Largest record read (a JSONL line, a CSV row, a dataset row), in "
                                                 "bytes: a bigger one is an error naming it, raised before any time "
                                                 "goes into parsing or tokenizing it (null = no limit).")

    def check(self, p: Problems) -> None:
        from preftune.data.sources import check_mixer, check_mixture, check_trl_mixture

        p.non_negative(self, "eval_size")
        p.positive_or_null(self, "max_row_bytes")
        sources = [k for k in ("train_file", "dataset_name", "dataset_mixture", "dataset_mixer", "datasets")
                   if getattr(self, k)]
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
        if self.datasets:
            for problem in check_trl_mixture(self.datasets, self.test_split_size):
                p.add(problem, "datasets")
        elif self.test_split_size is not None:
            p.add("test_split_size is set but datasets is not, so it would be ignored (dataset_mixture takes its own "
                  "test_split_size inside it)", "test_split_size")
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
