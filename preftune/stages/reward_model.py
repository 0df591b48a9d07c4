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

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from preftune.config import RMConfig
from preftune.data.collate import PreferenceBatch, RankingBatch
from preftune.data.layouts import LAYOUTS as DATA_LAYOUTS
from preftune.losses.reward import bradley_terry, plackett_luce_rewards
from preftune.modeling.moe import with_router_aux
from preftune.modeling.reward_model import (
    RewardHeadModel,
    apply_reward_lora,
    load_reward_model,
    write_reward_settings,
)
from preftune.objectives.listwise import ranking_metrics
from preftune.stages.common import plan_steps, preflight, start_run, tokenizer_and_data
from preftune.stages.lifecycle import RunResult, stage
from preftune.stages.offline import evaluate, make_batches
from preftune.stages.policy import ModelClass, distribute, load_policy, packing
from preftune.stages.run_io import open_io
from preftune.train.loop import IndexedBatches, train_loop
from preftune.train.optim import build_optimizer

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
LAYOUTS = {  # loss_type -> (data layout, loss, the keys of its sums)
    "bradley_terry": (DATA_LAYOUTS["preference"], pair_loss, PAIR_KEYS),
    "plackett_luce": (DATA_LAYOUTS["ranking"], ranking_loss, RANKING_KEYS),
}


def reward_adapter(cfg: RMConfig, model: nn.Module) -> nn.Module:
    """LoRA on the decoder, the new head trained in full (``reward_model.apply_reward_lora``)."""
    return apply_reward_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)


REWARD_MODEL = ModelClass(load=load_reward_model, new_adapter=reward_adapter, role="reward model",
                          head=" + scalar head", lora=" (LoRA + head)")


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
    # 1. Run set-up: the folder, the checkpoint to resume from.
    run = start_run(cfg)
    info = run.info
    layout, loss_fn, keys = LAYOUTS[cfg.loss_type]

    # 2. Tokenizer and data (found before any model loads).
    tokenizer, train, held_out = tokenizer_and_data(run, layout.build, train_data, eval_data)
    train_batch = make_batches(layout.collate, train, tokenizer.pad_token_id, info.device)
    eval_batch = make_batches(layout.collate, held_out, tokenizer.pad_token_id, info.device)

    # 3. The reward model (fp32), from the checkpoint when resuming.
    model, _ = load_policy(run, model_class=REWARD_MODEL, tokenizer=tokenizer)
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        run.log("note: the tokenizer's pad token is its EOS, so plain transformers' sequence classification "
                "would pool the token before the final EOS; preftune's scorer is unaffected")
    meta = preflight(run, model, tokenizer, train)
    reward_model = RewardHeadModel(model, **packing(run, model))
    ddp_model = distribute(run, reward_model, model)

    # 4. Optimizer, data order, resume.
    optimizer = build_optimizer(reward_model, cfg)
    sampler, steps = plan_steps(run, train)
    io = open_io(run, optimizer, model, tokenizer, meta)

    def measure(step: int) -> dict[str, float]:
        return evaluate(run, reward_model, held_out, eval_batch, lambda batch: loss_fn(cfg, reward_model, batch)[1],
                        keys)

    evaluate_rm = io.evaluation(held_out, measure, describe_eval)

    # 5. Held-out evaluation before training (a new head: rewards near 0, loss near log 2).
    io.eval_before(evaluate_rm)

    # 6. Train.
    def compute_loss(batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        loss, sums = loss_fn(cfg, ddp_model, batch)   # an MoE router's loss added, as in the other stages
        return with_router_aux(loss, sums, reward_model.take_aux_losses(), reward_model.router_aux_coef)

    state = train_loop(cfg=cfg, model=ddp_model, optimizer=optimizer, source=IndexedBatches(sampler, train_batch),
                       compute_loss=compute_loss, info=info, logger=io.logger, total_steps=steps, state=io.state,
                       evaluate=evaluate_rm, save=io.save, desc=cfg.loss_type)

    # 7. Evaluate after, save: the final folder plus the data settings a scorer must reproduce.
    result = io.finish(state, evaluate_rm, model, tokenizer)
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
