"""TRL's and transformers' keys that are not preftune keys, decided one by one.

A key a stage has is read as that key. Every other key of TRL 1.16's configs (DPOConfig, RewardConfig,
RLOOConfig, GRPOConfig, OnlineDPOConfig, SFTConfig, ModelConfig, ScriptArguments) and transformers'
TrainingArguments is, for a stage, one of:

- RENAMED: preftune spells it differently; the value is taken over (and mapped where the values differ).
- IGNORED: it changes nothing a preftune run computes, so any value is accepted and logged as ignored.
- UNSUPPORTED: accepted (and logged as ignored) at the values that change nothing, e.g. ``fp16: false``;
  any other value is an error with the reason.
- HINTS: not a key of this stage; the error says what to write instead.

tests/config/test_keymap.py checks that every key of those TRL / transformers classes is decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SETS_NOTHING = object()  # "this value of a renamed key sets nothing"


@dataclass(frozen=True)
class Rename:
    key: str
    values: dict[Any, Any] | None = None   # old value -> preftune value (SETS_NOTHING: sets nothing); None = the same
    note: str = ""
    others_pass: bool = False               # a value not in ``values`` is taken as it is


@dataclass(frozen=True)
class Unsupported:
    harmless: tuple[Any, ...]
    reason: str
    stages: tuple[str, ...] = field(default=())   # the stages this applies to (empty: every stage)


RENAMED: dict[str, Rename] = {
    "optimizer": Rename("optim", {"adamw": "adamw_torch", "rmsprop": "rmsprop"}, "preftune's older name"),
    "torch_dtype": Rename("dtype"),
    "evaluation_strategy": Rename("eval_strategy", note="transformers' older name"),
    "activation_checkpointing": Rename("gradient_checkpointing", {True: True, False: False, None: SETS_NOTHING},
                                       "transformers 5's new name"),
    "activation_checkpointing_kwargs": Rename("gradient_checkpointing_kwargs", note="transformers 5's new name"),
    "use_cpu": Rename("device", {True: "cpu", False: SETS_NOTHING}),
    "disable_tqdm": Rename("progress_bar", {True: False, False: True, None: SETS_NOTHING}),
    "resume_from_checkpoint": Rename("resume", {True: "latest", False: SETS_NOTHING, None: SETS_NOTHING}, others_pass=True),
    "train_sampling_strategy": Rename("group_by_length", {"random": False, "group_by_length": True}),
    "use_flash_attention_2": Rename("attn_implementation", {True: "flash_attention_2", False: SETS_NOTHING},
                                    "the alignment-handbook's older key"),
    "max_completion_length": Rename("max_new_tokens", note="TRL's RLOO name for the generation length"),
    "normalize_advantages": Rename("whiten_advantages", note="TRL's RLOO name"),
}

_SAME = "it changes nothing preftune computes"
IGNORED: dict[str, str] = {
    "log_level": "preftune prints its own progress lines", "log_level_replica": "preftune prints on rank 0 only",
    "log_on_each_node": "preftune prints on rank 0 only",
    "logging_nan_inf_filter": "a non-finite step is skipped (parameters unchanged) and counted in skipped_steps",
    "include_num_input_tokens_seen": "tokens_seen is always logged",
    "dataloader_num_workers": "the data is tokenized in memory before training; no DataLoader runs",
    "dataloader_pin_memory": _SAME, "dataloader_persistent_workers": _SAME, "dataloader_prefetch_factor": _SAME,
    "dataloader_multiprocessing_context": _SAME, "dataloader_in_order": _SAME,
    "dataloader_drop_last": "a partial global batch is always left out of its epoch (and counted in the log), so "
                            "every step averages the same number of examples",
    "remove_unused_columns": "only the columns a stage reads are read", "ddp_find_unused_parameters": _SAME,
    "ddp_bucket_cap_mb": _SAME, "ddp_broadcast_buffers": _SAME, "ddp_static_graph": _SAME, "ddp_backend": _SAME,
    "ddp_timeout": _SAME, "local_rank": "torchrun's environment gives the rank", "debug": _SAME,
    "skip_memory_metrics": _SAME, "do_train": "the stage trains", "do_eval": "eval_strategy decides evaluation",
    "save_on_each_node": "rank 0 writes the checkpoint", "eval_do_concat_batches": _SAME,
    "eval_use_gather_object": _SAME, "prediction_loss_only": _SAME, "eval_accumulation_steps": _SAME,
    "torch_empty_cache_steps": _SAME, "dataset_num_proc": "tokenization runs in this process",
    "pad_to_multiple_of": "padding does not change the numbers", "ignore_bias_buffers": _SAME,
    "use_cache": "the KV cache is off in training and on when sampling",
    "use_bnb_nested_quant": "load_in_4bit always quantises the quantisation constants too",
    "ds3_gather_for_generation": _SAME, "log_completions": _SAME, "log_multimodal": _SAME,
    "log_unique_prompts": _SAME, "num_completions_to_print": _SAME,
    "shuffle_dataset": "the data order is always a seeded shuffle, epoch by epoch",
    "preprocessing_num_workers": "tokenization runs in this process",
    "log_completions_hub_repo": "completions are not logged to the Hub",
    **{k: "loss_type vespo is not implemented, so its settings change nothing"
       for k in ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg")},
    **{k: "use_adaptive_entropy is not implemented, so its settings change nothing"
       for k in ("entropy_coef_min", "entropy_coef_max", "entropy_coef_delta", "entropy_target")},
    **{k: "there is no vLLM backend (use_vllm=true is refused), so vLLM's settings change nothing"
       for k in ("vllm_model_impl", "vllm_enable_sleep_mode", "vllm_structured_outputs_regex", "vllm_server_base_url",
                 "vllm_server_host", "vllm_server_port", "vllm_server_timeout", "vllm_group_port",
                 "vllm_gpu_memory_utilization", "vllm_max_model_length", "vllm_tensor_parallel_size",
                 "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max",
                 "vllm_importance_sampling_clip_min", "vllm_importance_sampling_cap")},
}

_MIXED = ("bf16 autocast is preftune's mixed precision; fp16 needs loss scaling, which it does not implement "
          "(use bf16=true)")
_BEST = "preftune keeps the final model; pick a checkpoint by the eval curves in metrics.jsonl (preftune plot)"
_VLLM = "preftune samples with the model's own generate(); vLLM is not used"
UNSUPPORTED: dict[str, Unsupported] = {
    "fp16": Unsupported((False,), _MIXED), "fp16_full_eval": Unsupported((False,), _MIXED),
    "bf16_full_eval": Unsupported((False,), "evaluation runs under the same autocast as training (bf16)"),
    "label_smoothing_factor": Unsupported((0, 0.0), "it smooths a classifier's labels; the preference losses "
                                                    "take label_smoothing"),
    "average_tokens_across_devices": Unsupported((True,), "the loss is always averaged over the global count "
                                                         "of items across processes"),
    "auto_find_batch_size": Unsupported((False,), "set per_device_train_batch_size (checked against the data "
                                                  "before the model loads)"),
    "use_liger_kernel": Unsupported((False,), "preftune computes log-probs with its own chunked output layer"),
    "liger_kernel_config": Unsupported((None,), "preftune computes log-probs with its own chunked output layer"),
    "neftune_noise_alpha": Unsupported((None,), "NEFTune embedding noise is not implemented"),
    "label_names": Unsupported((None,), "each stage knows its columns"),
    "length_column_name": Unsupported(("length",), "lengths are counted from the tokens"),
    "load_best_model_at_end": Unsupported((False,), _BEST), "metric_for_best_model": Unsupported((None,), _BEST),
    "greater_is_better": Unsupported((None,), _BEST),
    "ignore_data_skip": Unsupported((False,), "the data order is a function of the step, so a resumed run "
                                              "continues exactly where it stopped without replaying data"),
    "restore_callback_states_from_checkpoint": Unsupported((False,), "preftune has no callbacks"),
    "enable_jit_checkpoint": Unsupported((False,), "checkpoints are written at save_steps / on a signal"),
    "optim_target_modules": Unsupported((None,), "GaLore / APOLLO optimizers are not built"),
    "torch_compile_backend": Unsupported((None,), "torch_compile uses the default inductor backend"),
    "torch_compile_mode": Unsupported((None,), "torch_compile uses the default mode"),
    "activation_offloading": Unsupported((False,), "activations stay on the device; use gradient_checkpointing "
                                                   "or lean_activations to save memory"),
    "pad_token": Unsupported((None,), "TRL deprecated it; set the tokenizer's pad_token (preftune adds one when "
                                      "the tokenizer has none)"),
    "accelerator_config": Unsupported((None,), "preftune does not run under accelerate"),
    "parallelism_config": Unsupported((None,), "preftune parallelises with torchrun: DDP, or fsdp=true"),
    "deepspeed": Unsupported((None,), "DeepSpeed is not supported; shard with fsdp=true under torchrun"),
    "fsdp_config": Unsupported((None,), "fsdp=true shards every decoder layer (FSDP2); no other settings"),
    "trackio_space_id": Unsupported((None,), "report_to=trackio logs locally; sync with `trackio sync` yourself"),
    "trackio_bucket_id": Unsupported((None,), "report_to=trackio logs locally"),
    "trackio_static_space_id": Unsupported((None,), "report_to=trackio logs locally"),
    "do_predict": Unsupported((False,), "preftune has no prediction pass; use preftune eval"),
    "batch_eval_metrics": Unsupported((False,), "held-out metrics are computed by the stage"),
    "include_for_metrics": Unsupported(([],), "held-out metrics are computed by the stage"),
    "chat_template_path": Unsupported((None,), "the tokenizer's own chat template is used"),
    "eos_token": Unsupported((None,), "the tokenizer's own eos token is used"),
    "load_in_8bit": Unsupported((False,), "8-bit base weights are not supported; use load_in_4bit (QLoRA)"),
    "bnb_4bit_quant_type": Unsupported(("nf4",), "load_in_4bit uses NF4"),
    "bnb_4bit_quant_storage": Unsupported((None,), "load_in_4bit stores uint8"),
    "lora_target_parameters": Unsupported((None,), "LoRA wraps modules (lora_target_modules)"),
    "lora_task_type": Unsupported(("CAUSAL_LM", "SEQ_CLS"), "the stage sets the task type"),
    "dataset_streaming": Unsupported((False,), "the data is read and tokenized in full before training"),
    "streaming": Unsupported((False,), "the data is read and tokenized in full before training"),
    "dataset_text_field": Unsupported(("text",), "sft trains on prompt/completion rows (completion_field)",
                                      ("SFTConfig",)),
    "dataset_kwargs": Unsupported((None,), "sft builds its own rows", ("SFTConfig",)),
    "packing": Unsupported((False,), "padding_free already packs each batch's sequences, exactly", ("SFTConfig",)),
    "packing_strategy": Unsupported(("bfd",), "padding_free already packs each batch", ("SFTConfig",)),
    "eval_packing": Unsupported((None,), "padding_free already packs each batch", ("SFTConfig",)),
    "completion_only_loss": Unsupported((None, True), "sft always trains on completion tokens only",
                                        ("SFTConfig",)),
    "assistant_only_loss": Unsupported((False,), "sft trains on the completion column", ("SFTConfig",)),
    "loss_type": Unsupported(("nll",), "sft trains negative log-likelihood (TRL's dft is not implemented)",
                             ("SFTConfig",)),
    "num_generations_eval": Unsupported((None,), "evaluation samples num_generations too", ("RLConfig",)),
    "generation_batch_size": Unsupported((None,), "a rollout is per_device_train_batch_size prompts",
                                         ("RLConfig",)),
    "steps_per_generation": Unsupported((None,), "one rollout per update step", ("RLConfig",)),
    "generation_kwargs": Unsupported((None,), "sampling takes temperature and top_p", ("RLConfig",)),
    "chat_template_kwargs": Unsupported((None,), "the chat template is rendered with its defaults",
                                        ("RLConfig", "GRPOConfig", "OnlineDPOConfig")),
    "cache_implementation": Unsupported((None,), "generate() uses its default KV cache", ("RLConfig", "GRPOConfig", "OnlineDPOConfig")),
    "use_vllm": Unsupported((False,), _VLLM, ("RLConfig",)),
    "reward_clip_range": Unsupported((None,), "rewards are used as returned", ("RLConfig",)),
    "mask_truncated_completions": Unsupported((False,), "missing_eos_penalty is preftune's handle on "
                                                        "completions cut at max_new_tokens", ("RLConfig",)),
    "use_transformers_continuous_batching": Unsupported((False,), _VLLM, ("RLConfig", "GRPOConfig", "OnlineDPOConfig")),
    "transformers_continuous_batching_config": Unsupported((None,), _VLLM, ("RLConfig", "GRPOConfig", "OnlineDPOConfig")),
    "use_transformers_paged": Unsupported((False,), _VLLM, ("RLConfig", "GRPOConfig", "OnlineDPOConfig")),
    "sync_ref_model": Unsupported((False,), "the online RL stages keep π_ref fixed (TR-DPO syncing is a dpo "
                                            "setting)", ("RLConfig",)),
    "ref_model_mixup_alpha": Unsupported((0.6,), "the online RL stages keep π_ref fixed", ("RLConfig", "GRPOConfig")),
    "ref_model_sync_steps": Unsupported((512,), "the online RL stages keep π_ref fixed", ("RLConfig", "GRPOConfig")),
    "use_adaptive_entropy": Unsupported((False,), "no entropy bonus is implemented (the logged entropy is a "
                                                   "sample estimate)", ("GRPOConfig",)),
    "max_tool_calling_iterations": Unsupported((None,), "tool calling during generation is not implemented",
                                               ("GRPOConfig",)),
    # A stage that has the key reads it instead: every training stage has router_aux_loss_coef.
    "router_aux_loss_coef": Unsupported((None,), "evaluation trains nothing, so there is no router loss to weight"),
}

HINTS: dict[str, str] = {
    "beta": "in the ppo/rloo/reinforce stages the KL coefficient is kl_coef (TRL RLOO's beta)",
    "num_iterations": "passes over a rollout are ppo_epochs (algorithm=ppo)",
    "epsilon": "the clipping ε is clip_range (algorithm=ppo)",
    "epsilon_high": "the clipping range is symmetric: clip_range (algorithm=ppo)",
    "reward_weights": "give the reward with reward=...",
}


def fsdp_value(value: Any) -> Any:
    """transformers' ``fsdp`` is a string of options ("full_shard auto_wrap"); preftune's is true/false
    (FSDP2, every decoder layer a unit, parameters, gradients and optimizer state sharded)."""
    if value is None:
        return False
    if not isinstance(value, str) or value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value
    options = set(value.split())
    if not options:
        return False
    if options <= {"full_shard", "auto_wrap"}:
        return True
    raise ValueError(f"fsdp {value!r}: preftune's fsdp=true is full_shard with every decoder layer wrapped; "
                     f"{', '.join(sorted(options - {'full_shard', 'auto_wrap'}))} is not supported")


VALUE_FORMS = {"fsdp": fsdp_value}


def hint_for(cls: type, key: str) -> str | None:
    """Why ``key`` is not a key of ``cls``, and what to write instead (None: no idea)."""
    reason = getattr(cls, "left_out", {}).get(key)
    if reason:
        return reason
    if key in HINTS:
        return HINTS[key]
    if key in RENAMED:
        return f"this stage has no {RENAMED[key].key} (what {key} sets)"
    return None
