"""DPO training, top to bottom (Rafailov et al. 2023; ../shared/SPEC.md §4).

    1. run set-up: threads, process group, seeds, output folder
    2. tokenizer and data: load → render → tokenize (train, held-out eval)
    3. policy model (optionally LoRA), wrapped for per-sequence log-probs and DDP
    4. reference: precomputed table (default) | frozen copy | adapter disabled
    5. optimizer, data order, resume state
    6. held-out evaluation before training
    7. the optimizer-step loop
    8. held-out evaluation after training, final save
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from preftune import losses
from preftune.config import DPOConfig, LossConfig
from preftune.data.collate import PreferenceBatch, collate_preferences
from preftune.data.dataset import BuiltDataset, build_preference_dataset
from preftune.modeling.load import freeze, load_causal_lm
from preftune.modeling.logprobs import SequenceLogprobModel, unwrap_causal_lm
from preftune.modeling.reference import (
    AdapterDisabledReference,
    FrozenReference,
    PrecomputedReference,
    cache_key,
    precompute_reference,
    weights_fingerprint,
)
from preftune.stages.common import (
    Run,
    RunResult,
    checkpoint_saver,
    finish,
    load_data,
    load_policy,
    num_tokens,
    plan_steps,
    restore_state,
    start_run,
)
from preftune.train.checkpoint import (
    resolve_resume,
)
from preftune.train.distributed import all_reduce_sum, wrap_ddp
from preftune.train.loop import autocast, reduce_means, train_loop
from preftune.train.metrics import MetricsLogger
from preftune.train.optim import build_optimizer
from preftune.train.sampler import eval_shard


def preference_loss(cfg: LossConfig, policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor,
                    ref_rejected: Tensor, lengths: tuple[Tensor, Tensor] | None = None
                    ) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted sum of the configured losses; returns per-pair losses' mean and per-pair metric sums.
    ``lengths`` (completion token counts of chosen, rejected) reach only the losses that declare them."""
    weights = cfg.loss_weights or [1.0] * len(cfg.loss_type)
    total = None
    for name, weight in zip(cfg.loss_type, weights):
        hp = {k: getattr(cfg, k) for k in losses.hyperparameters(name)}
        if losses.needs_lengths(name):
            hp["chosen_lengths"], hp["rejected_lengths"] = lengths
        per_pair, chosen_rewards, rejected_rewards = losses.get(name)(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=cfg.beta, **hp)
        total = weight * per_pair if total is None else total + weight * per_pair
    margins = chosen_rewards - rejected_rewards
    sums = {
        "loss": total.detach().sum(),
        "rewards/chosen": chosen_rewards.sum(),
        "rewards/rejected": rejected_rewards.sum(),
        "rewards/margins": margins.sum(),
        "rewards/accuracies": (margins > 0).float().sum(),
        "logps/chosen": policy_chosen.detach().sum(),
        "logps/rejected": policy_rejected.detach().sum(),
        "count": torch.tensor(float(policy_chosen.shape[0]), device=policy_chosen.device),
    }
    return total.mean(), sums


def make_batches(dataset: BuiltDataset, pad_token_id: int, device: torch.device):
    def get_batch(indices: list[int]) -> tuple[PreferenceBatch, int]:
        examples = [dataset.examples[i] for i in indices]
        batch = collate_preferences(examples, indices, pad_token_id=pad_token_id).to(device)
        return batch, num_tokens(examples)
    return get_batch


def build_reference(run: Run, policy: SequenceLogprobModel, dataset: BuiltDataset, split: str,
                    get_batch, resumed: bool):
    """Step 4. Returns a callable batch → (ref_chosen, ref_rejected)."""
    cfg: DPOConfig = run.cfg
    adapter_ref = cfg.use_peft and cfg.ref_model_name_or_path is None
    if adapter_ref:
        live, source, ref_lm = AdapterDisabledReference(policy), "policy with LoRA adapter disabled", None
    elif cfg.ref_model_name_or_path is None and not resumed and cfg.precompute_ref_log_probs:
        # Before the first step the policy *is* the reference: score with it, load nothing twice.
        ref_lm, source = policy, cfg.model_name_or_path
        live = FrozenReference(policy)
    else:
        path = cfg.ref_model_name_or_path or cfg.model_name_or_path
        ref_lm = SequenceLogprobModel(freeze(load_causal_lm(path, run.info.device)), cfg.logprob_chunk_size)
        live, source = FrozenReference(ref_lm), path
    if not cfg.precompute_ref_log_probs:
        run.log(f"reference ({split}): {source}, computed every step")
        return live

    from preftune.assets.cache import cache_dir

    lm_for_key = unwrap_causal_lm(policy.model) if adapter_ref else ref_lm.model
    precision = "bf16" if cfg.bf16 else "fp32"
    key = cache_key(weights_fingerprint(lm_for_key), dataset.fingerprint(), precision)
    cache_file = cache_dir() / "reference_logps" / f"{key}.pt"

    def compute(indices: list[int]):
        batch, _ = get_batch(indices)
        with autocast(cfg.bf16, run.info.device):
            return live(batch)

    was_training = policy.training
    policy.eval()
    table = precompute_reference(
        compute, len(dataset), batch_size=cfg.per_device_eval_batch_size, cache_file=cache_file,
        rank=run.info.rank, world_size=run.info.world_size, all_reduce=lambda t: all_reduce_sum(t, run.info),
        log=run.log, desc=f"reference ({split}, {source})")
    policy.train(was_training)
    return PrecomputedReference(table.to(run.info.device))


@torch.no_grad()
def evaluate(run: Run, policy: SequenceLogprobModel, reference, dataset: BuiltDataset, get_batch) -> dict[str, float]:
    """Held-out loss, reward accuracy and margin; each rank scores a strided shard."""
    cfg: DPOConfig = run.cfg
    was_training = policy.training
    policy.eval()
    shard = list(eval_shard(len(dataset), run.info.world_size, run.info.rank))
    sums: dict[str, Tensor] = {}
    for i in range(0, len(shard), cfg.per_device_eval_batch_size):
        batch, _ = get_batch(shard[i:i + cfg.per_device_eval_batch_size])
        with autocast(cfg.bf16, run.info.device):
            out = policy(batch.input_ids, batch.attention_mask, batch.loss_mask)
            ref_chosen, ref_rejected = reference(batch)
        _, s = preference_loss(cfg, *out.logps.chunk(2), ref_chosen, ref_rejected, out.lengths.chunk(2))
        for k, v in s.items():
            sums[k] = sums[k] + v if k in sums else v
    if not sums:  # more ranks than eval examples: contribute zeros to the reduction
        sums = {k: torch.zeros((), device=run.info.device) for k in
                ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected", "count")}
    policy.train(was_training)
    return reduce_means(sums, run.info)


def run_dpo(cfg: DPOConfig, *, train_data: Any = None, eval_data: Any = None) -> RunResult:
    """Train with DPO (or any registered preference loss). ``train_data``/``eval_data`` may be
    in-memory ``datasets.Dataset`` objects or lists of dicts instead of the config's files."""
    started = time.perf_counter()
    # 1. Run set-up.
    run = start_run(cfg)
    info = run.info
    resume_dir = resolve_resume(cfg.resume, cfg.output_dir)

    # 2-3. Policy, tokenizer, data.
    model, tokenizer = load_policy(run, resume_dir)
    train, held_out = load_data(run, build_preference_dataset, train_data if train_data is not None else cfg.train_file,
                                eval_data if eval_data is not None else cfg.eval_file, tokenizer)
    policy = SequenceLogprobModel(model, cfg.logprob_chunk_size)
    ddp_policy = wrap_ddp(policy, info)
    train_batch = make_batches(train, tokenizer.pad_token_id, info.device)
    eval_batch = make_batches(held_out, tokenizer.pad_token_id, info.device) if held_out is not None else None

    # 4. Reference log-probs (train and held-out).
    reference = build_reference(run, policy, train, "train", train_batch, resumed=resume_dir is not None)
    eval_reference = (build_reference(run, policy, held_out, "eval", eval_batch, resumed=resume_dir is not None)
                      if held_out is not None else None)

    # 5. Optimizer, data order, resume.
    optimizer = build_optimizer(policy.parameters(), cfg)
    sampler, steps = plan_steps(run, len(train))
    state = restore_state(run, resume_dir, optimizer)
    logger = MetricsLogger(run.output_dir, cfg.report_to, enabled=info.is_main)
    result = RunResult(output_dir=run.output_dir, final_dir=None, metrics_file=logger.path)
    save = checkpoint_saver(run, policy.model, tokenizer, optimizer)

    def do_eval(step: int) -> dict[str, float]:
        metrics = evaluate(run, policy, eval_reference, held_out, eval_batch)
        logger.log(step, metrics, split="eval")
        run.log(f"eval @ step {step}: loss {metrics['loss']:.4f} · reward accuracy "
                f"{metrics['rewards/accuracies']:.3f} · margin {metrics['rewards/margins']:.4f}")
        return metrics

    # 6. Held-out evaluation before training. When the reference table was scored by this very
    #    policy (π_θ = π_ref at step 0), the policy's log-probs *are* the table: no second forward.
    if held_out is not None and state.step == 0:
        from_table = not any(losses.needs_lengths(n) for n in cfg.loss_type)
        if isinstance(eval_reference, PrecomputedReference) and cfg.ref_model_name_or_path is None and from_table:
            table = eval_reference.table
            _, sums = preference_loss(cfg, table[:, 0], table[:, 1], table[:, 0], table[:, 1])
            count = sums.pop("count").item()
            result.eval_before = {k: v.item() / count for k, v in sums.items()}
            logger.log(0, result.eval_before, split="eval")
            run.log(f"eval @ step 0: π_θ = π_ref, so every reward is 0 and the loss is "
                    f"{result.eval_before['loss']:.4f} (from the reference table)")
        else:
            result.eval_before = do_eval(0)

    # 7. Train.
    def compute_loss(batch: PreferenceBatch):
        out = ddp_policy(batch.input_ids, batch.attention_mask, batch.loss_mask)
        policy_chosen, policy_rejected = out.logps.chunk(2)
        ref_chosen, ref_rejected = reference(batch)
        return preference_loss(cfg, policy_chosen, policy_rejected, ref_chosen, ref_rejected, out.lengths.chunk(2))

    state = train_loop(cfg=cfg, model=ddp_policy, optimizer=optimizer, sampler=sampler, get_batch=train_batch,
                       compute_loss=compute_loss, info=info, logger=logger, total_steps=steps, state=state,
                       evaluate=do_eval if held_out is not None else None, save=save, desc="dpo")

    # 8. Evaluate after, save.
    if held_out is not None:
        result.eval_after = do_eval(state.step)
    return finish(run, result, state, logger, policy.model, tokenizer, save, started)


def main(config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    from preftune.config import load_config

    return run_dpo(load_config(DPOConfig, config_path, overrides))
