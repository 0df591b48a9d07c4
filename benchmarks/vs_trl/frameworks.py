"""Each framework's configuration from the shared settings, and TRL's trainer with a per-micro-batch record.

Same on both sides: the model folder, the pairs, the data ORDER (TRL with ``train_sampling_strategy=
"sequential"``; preftune's shuffle is undone by ``workload.preftune_order``), batch size and accumulation,
β, lr (constant, no warm-up), AdamW (torch, non-fused, β1 0.9, β2 0.999, ε 1e-8, no weight decay),
max_grad_norm, precision, gradient checkpointing, threads, plain text (no chat template), no dropout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from vs_trl.settings import ARMS, Settings

if TYPE_CHECKING:
    from vs_trl.workers import Recorder


def trl_config(s: Settings, output_dir: str, precompute: bool, bf16: bool | None = None):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=output_dir, per_device_train_batch_size=s.batch, gradient_accumulation_steps=s.grad_accum,
        max_steps=s.steps, learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
        max_grad_norm=s.max_grad_norm, bf16=s.bf16 if bf16 is None else bf16,
        gradient_checkpointing=s.gradient_checkpointing, beta=s.beta, loss_type=["sigmoid"],
        max_length=s.max_length, precompute_ref_log_probs=precompute, disable_dropout=True,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        seed=s.seed, data_seed=s.seed, train_sampling_strategy="sequential", dataloader_num_workers=0,
        use_cpu=s.device == "cpu",
    )


def preftune_config(s: Settings, output_dir: str, precompute: bool, bf16: bool | None = None,
                    arm: str = "preftune"):
    """preftune's DPOConfig for ``arm`` (settings.ARMS): the shared settings, then --preftune's, then the arm's."""
    from preftune.config import DPOConfig

    return DPOConfig(
        model_name_or_path=s.model_dir, output_dir=output_dir, max_length=s.max_length,
        max_prompt_length=s.max_prompt_length, use_chat_template=False, learning_rate=s.lr, optimizer="adamw",
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0, lr_scheduler_type="constant",
        warmup_steps=0, per_device_train_batch_size=s.batch, per_device_eval_batch_size=s.batch,
        gradient_accumulation_steps=s.grad_accum, max_steps=s.steps, max_grad_norm=s.max_grad_norm,
        bf16=s.bf16 if bf16 is None else bf16, gradient_checkpointing=s.gradient_checkpointing, seed=s.seed,
        threads=s.threads, device=s.device, logging_steps=1, report_to="none", progress_bar=False, beta=s.beta,
        loss_type=["sigmoid"], precompute_ref_log_probs=precompute, **{**s.preftune_settings, **ARMS[arm]},
    )


def trl_trainer_class():
    """DPOTrainer, recording each training micro-batch's loss and non-padding token count (nothing else
    changes: the loss is TRL's own ``compute_loss``)."""
    from trl import DPOTrainer

    class RecordingDPOTrainer(DPOTrainer):
        def __init__(self, *args: Any, recorder: Recorder | None = None, **kwargs: Any) -> None:
            self.micro_records: list[tuple[torch.Tensor, torch.Tensor]] = []
            self._recorder = recorder
            super().__init__(*args, **kwargs)

        def _precompute_ref_logps(self, *args: Any, **kwargs: Any):
            if self._recorder is not None:
                self._recorder.start_phase()
            out = super()._precompute_ref_logps(*args, **kwargs)
            if self._recorder is not None:
                self._recorder.reference_done()
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.model.training:
                loss = out[0] if return_outputs else out
                self.micro_records.append((loss.detach(), inputs["attention_mask"].sum()))
            return out

    return RecordingDPOTrainer


def trl_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)
