"""DPO training, top to bottom (Rafailov et al. 2023; docs/maths.md §dpo).

    1. run set-up: threads, process group, seeds, output folder
    2. tokenizer and data: load → render → tokenize (train, held-out eval)
    3. policy model (optionally LoRA), wrapped for per-sequence log-probs and DDP
    4. reference: precomputed table (default) | frozen copy (TR-DPO: updated every N steps) | adapter disabled
    5. optimizer, data order, resume state
    6. held-out evaluation before training
    7. the optimizer-step loop
    8. held-out evaluation after training, final save

The same script trains every loss in ``preftune.losses``: ``loss_type`` picks an
:class:`~preftune.objectives.Objective` — preference pairs, unpaired labelled completions (kto) or
ranked lists (plackett_luce) — which supplies the data layout and the loss; the steps stay these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from preftune import losses
from preftune.config import DPOConfig
from preftune.data.collate import Rows
from preftune.data.dataset import BuiltDataset
from preftune.modeling.logprobs import SequenceLogprobModel, unwrap_causal_lm
from preftune.modeling.moe import with_router_aux
from preftune.modeling.reference import (
    AdapterDisabledReference,
    FrozenReference,
    NoReference,
    PrecomputedReference,
    cache_key,
    mix_into,
    model_fingerprint,
    precompute_reference,
)
from preftune.objectives import Objective, Reference, Score, objective_for, reference_as_policy
from preftune.stages.common import eval_mode, plan_steps, preflight, start_run, tokenizer_and_data
from preftune.stages.inputs import Objects, policy_path, with_peft_config
from preftune.stages.lifecycle import Run, RunResult, stage
from preftune.stages.offline import GetBatch, evaluate_objective, make_batches, scorer
from preftune.stages.policy import distribute, load_frozen, load_policy, logprob_model
from preftune.stages.run_io import open_io
from preftune.train.distributed import all_reduce_sum
from preftune.train.fsdp import shard
from preftune.train.loop import IndexedBatches, autocast, train_loop
from preftune.train.optim import build_optimizer
from preftune.train.preflight import tokenizer_fingerprint


def reference_batch_size(cfg: DPOConfig, split: str) -> int:
    """precompute_ref_batch_size, else the split's own batch size (as TRL)."""
    if cfg.precompute_ref_batch_size is not None:
        return cfg.precompute_ref_batch_size
    return cfg.per_device_train_batch_size if split == "train" else cfg.per_device_eval_batch_size


def build_reference(run: Run, objective: Objective, policy: SequenceLogprobModel, dataset: BuiltDataset,
                    split: str, get_batch: GetBatch, ref_path: Path | None = None, *, tokenizer: Any) -> Reference:
    """Step 4. Returns ``reference(rows) -> log-probs [R]``. ``ref_path``: load the frozen copy from there (a
    resumed TR-DPO run's updated reference) instead of the configured model. ``tokenizer``: part of the
    precomputed table's cache key."""
    cfg: DPOConfig = run.cfg
    if set(cfg.loss_type) <= losses.REFERENCE_FREE and cfg.ref_model_name_or_path is None:
        run.log(f"reference ({split}): none ({', '.join(cfg.loss_type)} never read it; rewards report β log π_θ)")
        return NoReference()
    reduce = objective.reference_reduce(cfg)  # e.g. LD-DPO's weighted sums instead of plain ones
    adapter_ref = cfg.use_peft and cfg.ref_model_name_or_path is None and run.reference_model is None
    if adapter_ref:
        live, source, ref_lm = AdapterDisabledReference(policy, reduce), "policy with LoRA adapter disabled", None
    elif cfg.ref_model_name_or_path is None and run.reference_model is None and run.resume_dir is None \
            and cfg.precompute_ref_log_probs:
        # Before the first step the policy *is* the reference: score with it, load nothing twice.
        ref_lm, source = policy, cfg.model_name_or_path or "the policy object"
        live = FrozenReference(policy, reduce)
    else:
        if ref_path is None and run.reference_model is not None:  # ref_model=, or a model object's start
            path, lm = "a reference model object", run.reference_model
        else:
            path = str(ref_path or cfg.ref_model_name_or_path or policy_path(cfg))
            lm = load_frozen(run, path)
        ref_lm = logprob_model(run, lm)
        if cfg.fsdp and run.info.enabled:  # the frozen copy is sharded too: it is as large as the policy
            shard(ref_lm, ref_lm.model)
        live, source = FrozenReference(ref_lm, reduce), path
    if not cfg.precompute_ref_log_probs:
        synced = (f"; moved towards the policy every {cfg.ref_model_sync_steps} steps with α = "
                  f"{cfg.ref_model_mixup_alpha} (TR-DPO)" if cfg.sync_ref_model else "")
        run.log(f"reference ({split}): {source}, computed every step{synced}")
        return live

    from preftune.assets.cache import cache_dir

    lm_for_key = unwrap_causal_lm(policy.model) if adapter_ref else unwrap_causal_lm(ref_lm.model)
    precision = "bf16" if cfg.bf16 else "fp32"
    data_key = dataset.fingerprint() if reduce is None else f"{dataset.fingerprint()}|{reduce}"
    key = cache_key(model_fingerprint(lm_for_key), tokenizer_fingerprint(tokenizer), data_key, precision)
    cache_file = cache_dir() / "reference_logps" / f"{key}.safetensors"

    def compute(indices: list[int]) -> list[tuple[Rows, Tensor]]:
        batch, _ = get_batch(indices)
        # One pass over every sequence of the batch: KTO's KL partners share their example's prompt.
        rows = Rows.concat(objective.rows(batch))
        with autocast(cfg.bf16, run.info.device):
            return [(rows, live(rows))]

    with eval_mode(policy):
        table = precompute_reference(
            compute, len(dataset), num_columns=dataset.num_columns, batch_size=reference_batch_size(cfg, split),
            cache_file=cache_file, rank=run.info.rank, world_size=run.info.world_size,
            all_reduce=lambda t: all_reduce_sum(t, run.info), log=run.log, desc=f"reference ({split}, {source})")
    return PrecomputedReference(table.to(run.info.device))


def describe_eval(step: int, metrics: dict[str, float]) -> str:
    shown = [f"loss {metrics['loss']:.4f}"]
    if "rewards/accuracies" in metrics:
        shown.append(f"reward accuracy {metrics['rewards/accuracies']:.3f}")
    for key in ("rewards/margins", "kl"):
        if key in metrics:
            shown.append(f"{key.removeprefix('rewards/').rstrip('s')} {metrics[key]:.4f}")
    return f"eval @ step {step}: " + " · ".join(shown)


@stage
def run_dpo(cfg: DPOConfig, *, train_data: Any = None, eval_data: Any = None, model: nn.Module | None = None,
            ref_model: nn.Module | None = None, tokenizer: Any = None, processing_class: Any = None,
            peft_config: Any = None) -> RunResult:
    """Train with DPO (or any registered loss: pairs, kto, plackett_luce).

    From Python, as TRL's ``DPOTrainer`` takes them: ``train_data``/``eval_data`` (a ``datasets.Dataset``,
    a ``DatasetDict`` — its ``dataset_train_split`` / ``dataset_test_split`` —, a pandas DataFrame or a
    list of dicts), ``model`` (a causal LM object, trained in place), ``ref_model``, ``tokenizer`` (or
    ``processing_class``) and ``peft_config`` (a ``peft.LoraConfig``); see :mod:`preftune.stages.inputs`.
    """
    objects = Objects.of(model, tokenizer, processing_class, peft_config, ref_model)
    objects.check(cfg)
    cfg = with_peft_config(cfg, objects)
    # 1. Run set-up: the folder, the checkpoint to resume from, the objective.
    run = start_run(cfg)
    info = run.info
    objective = objective_for(cfg.loss_type)
    run.log(f"objective: {', '.join(cfg.loss_type)} on {objective.kind} data, {objective.layout.data_format}")

    # 2-3. Tokenizer and data (found before any model loads; checked against the batch and the eval
    #      settings), then the policy.
    tokenizer, train, held_out = tokenizer_and_data(run, objective.layout.build, train_data, eval_data, objects)
    train = objective.prepare(train, cfg.seed)
    held_out = objective.prepare(held_out, cfg.seed) if held_out is not None else None
    model, tokenizer = load_policy(run, objects, tokenizer=tokenizer)
    meta = preflight(run, model, tokenizer, train)
    policy = logprob_model(run, model)
    ddp_policy = distribute(run, policy, model)
    train_batch = make_batches(objective.layout.collate, train, tokenizer.pad_token_id, info.device)
    eval_batch = make_batches(objective.layout.collate, held_out, tokenizer.pad_token_id, info.device)

    # 4. Reference log-probs (train and held-out). A live reference serves both splits (one model in
    #    memory; under TR-DPO, evaluation must see the updated reference too).
    synced_ref = run.resume_dir / "reference" if cfg.sync_ref_model and run.resume_dir is not None else None
    reference = build_reference(run, objective, policy, train, "train", train_batch, synced_ref, tokenizer=tokenizer)
    eval_reference = None
    if held_out is not None:
        eval_reference = (reference if not cfg.precompute_ref_log_probs else
                          build_reference(run, objective, policy, held_out, "eval", eval_batch, tokenizer=tokenizer))

    # 5. Optimizer, data order, resume.
    optimizer = build_optimizer(policy, cfg)
    sampler, steps = plan_steps(run, train)
    reference_lm = reference.model.model if cfg.sync_ref_model else None  # the frozen copy's language model
    io = open_io(run, optimizer, policy.model, tokenizer, meta, root=policy,
                 extra_models={"reference": reference_lm} if reference_lm is not None else None)

    def measure(step: int, score: Score | None = None) -> dict[str, float]:
        return evaluate_objective(run, policy, objective, score or scorer(policy), eval_reference, held_out,
                                  eval_batch)

    evaluate = io.evaluation(held_out, measure, describe_eval)

    # 6. Held-out evaluation before training. When the reference table was scored by this very
    #    policy (π_θ = π_ref at step 0), the policy's log-probs *are* the table: no second forward.
    def measure_before(step: int) -> dict[str, float]:
        from_table = (isinstance(eval_reference, PrecomputedReference) and cfg.ref_model_name_or_path is None
                      and not objective.score_options(cfg))  # the table holds sums, not per-token statistics
        if not from_table:
            return measure(step)
        run.log("eval @ step 0: π_θ = π_ref, so the policy's log-probs are read from the reference table")
        return measure(step, reference_as_policy(eval_reference))

    io.eval_before(io.evaluation(held_out, measure_before, describe_eval))

    # 7. Train.
    def compute_loss(batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        aux_losses: list[Tensor | None] = []   # an MoE router's loss, added to the objective's as TRL does
        loss, sums = objective.loss(cfg, scorer(ddp_policy, aux_losses), reference, batch,
                                    lambda t: all_reduce_sum(t, info))
        return with_router_aux(loss, sums, aux_losses, policy.router_aux_coef)

    def sync_reference(state: Any) -> None:  # TR-DPO: θ_ref ← α θ + (1 − α) θ_ref every N steps
        if state.step % cfg.ref_model_sync_steps == 0:
            mix_into(reference_lm, policy.model, cfg.ref_model_mixup_alpha)

    state = train_loop(cfg=cfg, model=ddp_policy, optimizer=optimizer, source=IndexedBatches(sampler, train_batch),
                       compute_loss=compute_loss, info=info, logger=io.logger, total_steps=steps, state=io.state,
                       evaluate=evaluate, save=io.save, after_step=sync_reference if reference_lm is not None else None,
                       desc=cfg.loss_type[0])

    # 8. Evaluate after, save.
    return io.finish(state, evaluate, policy.model, tokenizer, root=policy)


def main(config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunResult:
    from preftune.config import load_config

    return run_dpo(load_config(DPOConfig, config_path, overrides))
