"""Reward-model training, top to bottom (docs/maths.md §rlhf.rm): the RLHF baseline DPO replaces.

    1. run set-up: threads, process group, seeds, output folder
    2. tokenizer and data: pairs (bradley_terry) or ranked lists (plackett_luce), train and held-out
    3. the reward model: the LM with a scalar head (optionally LoRA + a fully trained head), for DDP
    4. optimizer, data order, resume state
    5. held-out evaluation before training
    6. the optimizer-step loop
    7. held-out evaluation after training, final save (+ the data settings the scorer needs)

r_φ(x, y) is the head at the last completion token (``preftune.modeling.reward_model``). Losses:

    bradley_terry   L = −log σ(r_φ(x, y_w) − r_φ(x, y_l) − m) + c · (r_φ(x, y_w) + r_φ(x, y_l))²
    plackett_luce   L = −Σ_k log exp(r_k) / Σ_{j≥k} exp(r_j)          (column 0 best)

(``losses.reward``; m = ``margin``, c = ``center_rewards_coefficient``). Held-out metrics: ``loss``,
``accuracy`` (fraction of pairs with r_w > r_l; for lists, of a list's ordered pairs in the right
order), ``margin`` (mean r_w − r_l; for lists best − worst), ``rewards/chosen``, ``rewards/rejected``
(pairs) or ``top1``, ``rewards/best``, ``rewards/worst`` (lists), and ``rewards/mean`` over every
scored completion. ``final/`` loads with ``AutoModelForSequenceClassification.from_pretrained`` and
holds ``preftune_reward.json``, which :class:`~preftune.modeling.reward_model.RewardModelScorer` reads.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from preftune.config import RMConfig
from preftune.data.collate import PreferenceBatch, RankingBatch
from preftune.data.dataset import BuiltDataset
from preftune.data.layouts import LAYOUTS as DATA_LAYOUTS
from preftune.losses.reward import bradley_terry, plackett_luce_rewards
from preftune.modeling.load import load_tokenizer
from preftune.modeling.moe import with_router_aux
from preftune.modeling.reward_model import (
    RewardHeadModel,
    apply_reward_lora,
    load_reward_model,
    write_reward_settings,
)
from preftune.objectives.listwise import ranking_metrics
from preftune.stages.common import (
    Run,
    RunResult,
    apply_lean_activations,
    apply_router_aux,
    checkpoint_saver,
    disable_dropout,
    enable_gradient_checkpointing,
    eval_after,
    eval_before,
    eval_mode,
    finish,
    load_data,
    metrics_logger,
    model_kwargs,
    num_tokens,
    packing,
    plan_steps,
    preflight,
    reading_checkpoint,
    restore_state,
    stage,
    start_run,
)
from preftune.stages.inputs import policy_path, resolve_data
from preftune.train.checkpoint import resolve_resume
from preftune.train.distributed import wrap_ddp
from preftune.train.loop import IndexedBatches, autocast, reduce_means, train_loop
from preftune.train.optim import build_optimizer
from preftune.train.sampler import eval_shard

Rewards = Callable[[Tensor, Tensor, Tensor], Tensor]  # (input_ids, attention_mask, loss_mask) -> [N]


def pair_loss(cfg: RMConfig, rewards: Rewards, batch: PreferenceBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """Bradley–Terry on a batch of pairs: the mean loss, and per-pair sums for logging."""
    r = rewards(batch.input_ids, batch.attention_mask, batch.loss_mask)
    b = batch.num_pairs
    chosen, rejected = r[:b], r[b:]
    per_pair = bradley_terry(chosen, rejected, margin=cfg.margin or None,
                             center_rewards_coefficient=cfg.center_rewards_coefficient)
    c, j = chosen.detach(), rejected.detach()
    sums = {"loss": per_pair.detach().sum(), "accuracy": (c > j).float().sum(), "margin": (c - j).sum(),
            "rewards/chosen": c.sum(), "rewards/rejected": j.sum(), "rewards/mean": ((c + j) / 2).sum(),
            "count": torch.tensor(float(b), device=r.device)}
    return per_pair.mean(), sums


def ranking_loss(cfg: RMConfig, rewards: Rewards, batch: RankingBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """Plackett–Luce on ranked lists: the mean loss, and per-list sums for logging."""
    rows = batch.rows
    matrix, mask = batch.to_matrix(rewards(rows.input_ids, rows.attention_mask, rows.loss_mask))
    per_list = plackett_luce_rewards(matrix, mask)
    m = ranking_metrics(matrix.detach(), mask)
    sums = {"loss": per_list.detach().sum(), "accuracy": m["rewards/accuracies"], "top1": m["rewards/top1"],
            "margin": m["rewards/margins"], "rewards/best": m["rewards/best"], "rewards/worst": m["rewards/worst"],
            "rewards/mean": matrix.detach()[mask].sum(),
            "count:rewards/mean": mask.sum().float(),   # a mean over completions, not over lists
            "count": torch.tensor(float(per_list.shape[0]), device=matrix.device)}
    return per_list.mean(), sums


PAIR_KEYS = ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected", "rewards/mean", "count")
RANKING_KEYS = ("loss", "accuracy", "top1", "margin", "rewards/best", "rewards/worst", "rewards/mean",
                "count:rewards/mean", "count")
LAYOUTS = {  # loss_type -> (dataset builder, collate, loss, the keys of its sums)
    "bradley_terry": (*DATA_LAYOUTS["preference"], pair_loss, PAIR_KEYS),
    "plackett_luce": (*DATA_LAYOUTS["ranking"], ranking_loss, RANKING_KEYS),
}


def load_reward_policy(run: Run, resume_dir: Path | None, tokenizer: Any) -> nn.Module:
    """Step 3: the model to train (fp32), from the checkpoint when resuming. The reward-model
    counterpart of ``common.load_policy`` (which loads causal LMs)."""
    cfg: RMConfig = run.cfg
    from_checkpoint = resume_dir is not None and not cfg.use_peft
    source = str(resume_dir / "model") if from_checkpoint else policy_path(cfg)
    with reading_checkpoint(resume_dir) if from_checkpoint else contextlib.nullcontext():
        model = load_reward_model(source, run.info.device, tokenizer=tokenizer, **model_kwargs(cfg))
    if cfg.disable_dropout:
        disable_dropout(model)
    apply_lean_activations(run, model)
    apply_router_aux(run, model)
    if cfg.use_peft:
        if resume_dir is not None:
            from peft import PeftModel

            with reading_checkpoint(resume_dir):
                model = PeftModel.from_pretrained(model, str(resume_dir / "model"), is_trainable=True)
        else:
            model = apply_reward_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model, cfg.gradient_checkpointing_kwargs)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    run.log(f"reward model: {cfg.model_name_or_path} + scalar head · {n_all / 1e6:.1f}M parameters, "
            f"{n_train / 1e6:.2f}M trainable" + (" (LoRA + head)" if cfg.use_peft else ""))
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        run.log("note: the tokenizer's pad token is its EOS, so plain transformers' sequence classification "
                "would pool the token before the final EOS; preftune's scorer is unaffected")
    return model


def make_batches(collate, dataset: BuiltDataset, pad_token_id: int, device: torch.device):
    def get_batch(indices: list[int]) -> tuple[Any, int]:
        examples = [dataset.examples[i] for i in indices]
        return collate(examples, indices, pad_token_id=pad_token_id).to(device), num_tokens(examples)
    return get_batch


@torch.no_grad()
def evaluate(run: Run, loss_fn, rewards: Rewards, dataset: BuiltDataset, get_batch) -> dict[str, float]:
    """Held-out loss and metrics; each rank scores a strided shard, sums are reduced over ranks."""
    cfg: RMConfig = run.cfg
    shard = list(eval_shard(len(dataset), run.info.world_size, run.info.rank))
    sums: dict[str, Tensor] = {}
    for i in range(0, len(shard), cfg.per_device_eval_batch_size):
        batch, _ = get_batch(shard[i:i + cfg.per_device_eval_batch_size])
        with autocast(cfg.bf16, run.info.device):
            _, s = loss_fn(cfg, rewards, batch)
        for k, v in s.items():
            sums[k] = sums[k] + v if k in sums else v
    if not sums:  # more ranks than held-out examples: contribute zeros to the reduction
        sums = {k: torch.zeros((), device=run.info.device) for k in LAYOUTS[cfg.loss_type][3]}
    return reduce_means(sums, run.info)


def describe_eval(step: int, metrics: dict[str, float]) -> str:
    shown = [f"loss {metrics['loss']:.4f}", f"accuracy {metrics['accuracy']:.3f}"]
    if "top1" in metrics:
        shown.append(f"top1 {metrics['top1']:.3f}")
    shown.append(f"margin {metrics['margin']:+.4f}")
    if "rewards/mean" in metrics:
        shown.append(f"mean reward {metrics['rewards/mean']:+.4f}")
    return f"eval @ step {step}: " + " · ".join(shown)


@stage
def run_rm(cfg: RMConfig, *, train_data: Any = None, eval_data: Any = None) -> RunResult:
    """Train a reward model. ``train_data``/``eval_data`` may be in-memory ``datasets.Dataset`` objects
    or lists of dicts instead of the config's files."""
    started = time.perf_counter()
    # 1. Run set-up.
    run = start_run(cfg)
    info = run.info
    build, collate, loss_fn, _ = LAYOUTS[cfg.loss_type]
    resume_dir = resolve_resume(cfg.resume, cfg.output_dir, run.log)

    # 2. Tokenizer and data.
    resolve_data(run, train_data, eval_data)  # before any model loads
    tokenizer = load_tokenizer(policy_path(cfg))
    train, held_out = load_data(run, build, train_data, eval_data, tokenizer)
    train_batch = make_batches(collate, train, tokenizer.pad_token_id, info.device)
    eval_batch = (make_batches(collate, held_out, tokenizer.pad_token_id, info.device)
                  if held_out is not None else None)

    # 3. The reward model.
    model = load_reward_policy(run, resume_dir, tokenizer)
    meta = preflight(run, resume_dir, model, tokenizer, train)
    reward_model = RewardHeadModel(model, **packing(run, model))
    ddp_model = wrap_ddp(reward_model, info)

    # 4. Optimizer, data order, resume.
    optimizer = build_optimizer(reward_model, cfg)
    sampler, steps = plan_steps(run, train)
    state = restore_state(run, resume_dir, optimizer)
    logger = metrics_logger(run, resume_step=state.step if resume_dir is not None else None)
    result = RunResult(output_dir=run.output_dir, final_dir=None, metrics_file=logger.path)
    save = checkpoint_saver(run, model, tokenizer, optimizer, meta)

    def do_eval(step: int) -> dict[str, float]:
        with eval_mode(reward_model):
            metrics = evaluate(run, loss_fn, reward_model, held_out, eval_batch)
        logger.log(step, metrics, split="eval")
        run.log(describe_eval(step, metrics))
        return metrics

    # 5. Held-out evaluation before training (a new head: rewards near 0, loss near log 2).
    if held_out is not None and cfg.eval_on_start:
        result.eval_before = eval_before(state, do_eval)

    # 6. Train.
    def compute_loss(batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        loss, sums = loss_fn(cfg, ddp_model, batch)   # an MoE router's loss added, as in the other stages
        return with_router_aux(loss, sums, reward_model.take_aux_losses(), reward_model.router_aux_coef)

    state = train_loop(cfg=cfg, model=ddp_model, optimizer=optimizer, source=IndexedBatches(sampler, train_batch),
                       compute_loss=compute_loss, info=info, logger=logger, total_steps=steps, state=state,
                       evaluate=do_eval if held_out is not None else None, save=save, desc=cfg.loss_type)

    # 7. Evaluate after, save: the final folder plus the data settings a scorer must reproduce.
    if held_out is not None and cfg.eval_strategy != "no":
        result.eval_after = eval_after(state, do_eval)
    result = finish(run, result, state, logger, model, tokenizer, save, started)
    if result.final_dir is not None:
        templated = (cfg.use_chat_template if cfg.use_chat_template is not None
                     else bool(getattr(tokenizer, "chat_template", None)))
        write_reward_settings(result.final_dir, {
            "loss_type": cfg.loss_type, "max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length,
            "use_chat_template": templated, "base_model": cfg.model_name_or_path,
            "eval_after": result.eval_after})
    return result


def main(config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    from preftune.config import load_config

    return run_rm(load_config(RMConfig, config_path, overrides))
