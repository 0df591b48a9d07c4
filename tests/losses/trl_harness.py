"""Calling TRL 1.16's own DPO loss code from the tests.

TRL computes its losses inside ``DPOTrainer._compute_loss`` (there is no standalone ``dpo_loss`` any more),
so :func:`trl_loss` calls that method on a stand-in trainer that carries exactly the attributes the method
reads, with a "model" that is either a real model patched by TRL's ``add_fused_lm_head`` or a callable
returning given per-token tensors. TRL returns the batch mean. Written against TRL 1.16; a TRL whose
trainer internals differ fails loudly rather than being skipped.
"""

from __future__ import annotations

import collections
import types

import torch
from trl.trainer import dpo_trainer as trl_dpo


def trl_trainer(*, beta, loss_types, loss_weights=None, ld_alpha=None, use_weighting=False, ref_model=None,
                policy=None, **args):
    """A stand-in for a DPOTrainer instance: the attributes ``_compute_loss`` reads, as TRL's ``__init__``
    sets them from a DPOConfig. ``ref_model`` None means precomputed reference log-probs in the inputs."""
    accelerator = types.SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                                        gather_for_metrics=lambda x: x, unwrap_model=lambda m: m)
    model = policy
    if model is None:  # a module (TRL inspects it for PEFT wrapping) in training mode, without checkpointing
        model = torch.nn.Module()
        model.is_gradient_checkpointing = False
    return types.SimpleNamespace(
        model=model, ref_model=ref_model, accelerator=accelerator, aux_loss_enabled=False, ld_alpha=ld_alpha,
        precompute_ref_logps=ref_model is None, beta=beta, loss_types=list(loss_types),
        loss_weights=list(loss_weights) if loss_weights else [1.0] * len(loss_types), use_weighting=use_weighting,
        f_divergence_type=args.get("f_divergence_type", "reverse_kl"),
        f_alpha_divergence_coef=args.get("f_alpha_divergence_coef", 0.5),
        label_smoothing=args.get("label_smoothing", 0.0),
        args=types.SimpleNamespace(discopop_tau=args.get("discopop_tau", 0.05), gradient_checkpointing_kwargs=None),
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)), _total_train_tokens=0, _tp_size=1)


def trl_loss(trainer, model, input_ids, attention_mask, completion_mask, ref_chosen=None, ref_rejected=None):
    """TRL's batch-mean loss; rows are TRL's layout (chosen rows, then rejected rows)."""
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
    if ref_chosen is not None:
        inputs.update(ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
    return trl_dpo.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


def fused_outputs(log_probs, log_sum_sq_probs=None):
    """What a model patched by ``add_fused_lm_head`` returns: per-token tensors [N, T-1], 0 where masked."""
    zeros = torch.zeros_like(log_probs).detach()
    return types.SimpleNamespace(log_probs=log_probs, log_sum_sq_probs=log_sum_sq_probs, entropy=zeros,
                                 mean_logits=zeros, is_top1=torch.zeros(log_probs.shape, dtype=torch.bool))
