"""Pieces every stage script wires together: run set-up, data, policy model, batches, saving.

Stages call these as plain functions (composition, not a base class), so each stage script still
reads top to bottom.
"""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from preftune.config import TrainingConfig, to_dict
from preftune.data.dataset import BuiltDataset, DataSettings
from preftune.data.example import num_tokens as data_num_tokens
from preftune.data.load import DEFAULT_MAX_ROW_BYTES
from preftune.errors import ConfigError
from preftune.modeling.layers import compile_decoder_layers
from preftune.modeling.lean_layers import make_lean
from preftune.modeling.load import (
    ensure_pad_token,
    freeze,
    load_causal_lm,
    load_tokenizer,
)
from preftune.modeling.moe import configure_router_aux
from preftune.modeling.packing import resolve_padding_free
from preftune.modeling.prefix_sharing import sharing_mode
from preftune.stages.inputs import (
    Objects,
    frozen_copy,
    load_weights_into,
    object_fingerprint,
    object_source,
    policy_path,
    reference_is_a_copy,
    resolve_data,
    row_format,
    with_adapter,
)
from preftune.stages.lifecycle import (  # noqa: F401 - stage scripts import these from here
    Run,
    RunResult,
    checkpoint_saver,
    eval_after,
    eval_before,
    hold,
    publish,
    reading_checkpoint,
    require_optimizer_state,
    restore_state,
    stage,
)
from preftune.stages.publish import prepare_push
from preftune.stages.startup import apply_runtime_settings, check_before_model, ignored_lines
from preftune.train import faults, signals
from preftune.train.cadence import Cadence
from preftune.train.checkpoint import (
    checkpoint_run_id,
    folder_run_id,
    is_peft,
    list_checkpoints,
    save_final,
)
from preftune.train.distributed import barrier, init_distributed, shutdown
from preftune.train.loop import LoopState
from preftune.train.metrics import MetricsLogger
from preftune.train.preflight import (
    check_free_space,
    check_resume,
    checkpoint_bytes,
    peak_bytes,
    run_fingerprints,
)
from preftune.train.reporters import open_reporters
from preftune.train.run_folder import claim_output_dir
from preftune.train.sampler import StepSampler, total_steps
from preftune.train.seeding import seed_everything


def start_run(cfg: TrainingConfig) -> Run:
    """Threads, process group, seeds, and an output folder that is writable, locked for this process and
    not another run's (``preftune.train.run_folder``), all before any work; SIGTERM/SIGINT stop cleanly."""
    quiet_transformers()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    apply_runtime_settings(cfg)
    info = init_distributed(cfg.device)
    seed_everything(cfg.seed)
    output_dir = Path(cfg.output_dir)
    run = Run(cfg=cfg, info=info, output_dir=output_dir)
    if info.is_main:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            # A name of our own: two processes started on one folder must not delete each other's probe
            # (the folder lock, taken next, is what tells the second one the folder is busy).
            with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write_test-"):
                pass
        except OSError as e:
            raise ConfigError(f"output_dir {output_dir}: not writable ({e})") from None
        claim = claim_output_dir(output_dir, resume=cfg.resume, overwrite=cfg.overwrite_output_dir,
                                 stage=type(cfg).__name__, log=run.log)
        hold(claim.lock.release)
        (output_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    barrier(info)
    run.run_id = claim.run_id if info.is_main else folder_run_id(output_dir)
    hold(signals.install())
    run.log(f"{type(cfg).__name__} · {info.world_size} process(es) · device {info.device} · "
            f"threads {torch.get_num_threads()} · output {output_dir} · run {run.run_id}")
    for line in ignored_lines(cfg):
        run.log(line)
    if info.is_main:
        run.reporters = open_reporters(cfg.report_to, output_dir, run_name=cfg.run_name, project=cfg.project,
                                       config=to_dict(cfg))
        run.publisher = prepare_push(cfg)
        if run.publisher is not None:
            run.log(f"push_to_hub: {run.publisher.repo_id} (checked: reachable, token accepted)")
    return run


def quiet_transformers() -> None:
    """transformers' own per-shard progress bars would interleave with ours."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def packing(run: Run, model: nn.Module) -> dict[str, Any]:
    """The packed-layout options of SequenceLogprobModel / RewardHeadModel for ``model``: ``padding_free``
    (resolved for the model, ``packing.resolve_padding_free``: auto packs where a probe shows it exact, else
    one log line; call before sharding), ``prefix_sharing`` (auto is off under torch_compile, whose compiled
    layers would recompile for every batch's layout, and without packing) and the run's log for the one line
    per model that says whether sharing is on."""
    cfg = run.cfg
    padding_free = resolve_padding_free(model, cfg.padding_free, run.note)
    mode = sharing_mode(cfg.prefix_sharing)
    if mode == "true" and not padding_free:
        raise ConfigError(f"prefix_sharing=true needs packed rows, which model type {model.config.model_type!r} "
                          f"cannot use (padding_free=auto chose padded rows); set prefix_sharing=auto or false")
    if mode == "auto" and (getattr(cfg, "torch_compile", False) or not padding_free):
        mode = "false"
    return {"padding_free": padding_free, "prefix_sharing": mode, "log": run.note}


def data_settings(cfg: Any) -> DataSettings:
    """Online stages have no max_length: their completions are sampled, with their own length limit."""
    return DataSettings(max_length=getattr(cfg, "max_length", None), max_prompt_length=cfg.max_prompt_length,
                        use_chat_template=cfg.use_chat_template, row_format=row_format(cfg),
                        max_completion_length=getattr(cfg, "max_completion_length", None),
                        truncation_mode=getattr(cfg, "truncation_mode", "keep_start"),
                        max_row_bytes=getattr(cfg, "max_row_bytes", DEFAULT_MAX_ROW_BYTES))


def split_off_eval(train: BuiltDataset, eval_size: int, seed: int) -> tuple[BuiltDataset, BuiltDataset]:
    """Hold out ``eval_size`` examples (seeded) that no training step will see."""
    if eval_size >= len(train):
        raise ConfigError(f"eval_size={eval_size} leaves no training examples ({len(train)} in total)")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    held = set(order[:eval_size])
    keep = [ex for i, ex in enumerate(train.examples) if i not in held]
    out = [ex for i, ex in enumerate(train.examples) if i in held]
    # Drop and cut counts stay with the training part: they describe the file as it was read.
    return (BuiltDataset(keep, train.dropped, train.source, train.settings, train.truncated),
            BuiltDataset(out, type(train.dropped)(), f"{train.source} (held out {eval_size})", train.settings))


def load_data(run: Run, build, train_data: Any, eval_data: Any, tokenizer: Any, **kw: Any
              ) -> tuple[BuiltDataset, BuiltDataset | None]:
    """Build train (and eval) datasets with ``build`` (a ``preftune.data.dataset`` builder) from the
    sources :func:`~preftune.stages.inputs.resolve_data` found (resolved here if it was not called);
    ``train_data``/``eval_data``: objects passed from Python, or None for the config's data."""
    cfg = run.cfg
    if run.sources is None:
        resolve_data(run, train_data, eval_data)
    train_source, eval_source = run.sources
    settings = data_settings(cfg)
    train = build(train_source, tokenizer, settings, **kw)
    run.data_report.append(f"train data: {train.summary()}")
    run.log(run.data_report[-1])
    evaluation = None
    if eval_source is not None:
        evaluation = build(eval_source, tokenizer, settings, **kw)
    elif cfg.eval_size > 0:
        train, evaluation = split_off_eval(train, cfg.eval_size, cfg.seed)
    if evaluation is not None:
        run.data_report.append(f"eval data: {evaluation.summary()}")
        run.log(run.data_report[-1])
    check_before_model(cfg, len(train), evaluation is not None, run.info.world_size, run.log)
    return train, evaluation


def metrics_logger(run: Run, resume_step: int | None) -> MetricsLogger:
    """metrics.jsonl and the reporters of ``report_to`` (rank 0 writes; the others hold a silent logger)."""
    return MetricsLogger(run.output_dir, enabled=run.info.is_main, resume_step=resume_step, reporters=run.reporters,
                         log=run.log)


def model_kwargs(cfg: Any) -> dict[str, Any]:
    """How ``load_causal_lm`` loads this run's models: dtype, attention kernel, 4-bit, from_pretrained extras."""
    return {"dtype": cfg.dtype or "float32", "attn_implementation": cfg.attn_implementation,
            "quantization": "4bit" if getattr(cfg, "load_in_4bit", False) else None,
            **(cfg.model_init_kwargs or {}), **_trust(cfg)}


def disable_dropout(model: nn.Module) -> None:
    """Every dropout off (TRL's ``disable_dropout``, and further): ``nn.Dropout`` modules, and the dropout
    rates attention code reads as plain numbers (Llama's ``attention_dropout``), on modules and config."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for holder in (module, getattr(module, "config", None)):
            for name, value in list(vars(holder).items()) if holder is not None else ():
                if isinstance(value, float) and (name.endswith("dropout") or name.endswith("pdrop")):
                    setattr(holder, name, 0.0)


def policy_tokenizer(run: Run, objects: Objects | None = None) -> Any:
    """The policy's tokenizer (the object passed from Python, or loaded): the data needs it before the model."""
    cfg = run.cfg
    objects = objects or Objects()
    if objects.tokenizer is not None:
        return ensure_pad_token(objects.tokenizer)
    return load_tokenizer(policy_path(cfg) if objects.model is None else object_source(objects.model), **_trust(cfg))


def load_policy(run: Run, resume_dir: Path | None, objects: Objects | None = None, *,
                needs_reference: bool = True, tokenizer: Any = None) -> tuple[nn.Module, Any]:
    """The model to train and its tokenizer (``tokenizer`` if given): by name or the objects passed from
    Python; from the checkpoint when resuming. ``needs_reference``: the stage scores a frozen reference, so a
    model object's starting weights are copied when the reference cannot be read from the policy itself."""
    cfg = run.cfg
    objects = objects or Objects()
    objects.check(cfg)
    given = objects.model
    path = policy_path(cfg) if given is None else None
    tokenizer = tokenizer if tokenizer is not None else policy_tokenizer(run, objects)
    if objects.ref_model is not None:
        run.reference_model = freeze(objects.ref_model.to(run.info.device))
    if given is not None:
        model = given.to(run.info.device)  # in place: the caller's object is the one trained
        run.model_fingerprint = object_fingerprint(model)
        if needs_reference and reference_is_a_copy(cfg, run, resume_dir):
            run.reference_model = frozen_copy(model)
        if resume_dir is not None and not cfg.use_peft and not getattr(cfg, "fsdp", False):
            with reading_checkpoint(resume_dir):
                load_weights_into(model, resume_dir / "model")
    elif resume_dir is not None and not cfg.use_peft and not getattr(cfg, "fsdp", False):
        with reading_checkpoint(resume_dir):
            model = load_causal_lm(str(resume_dir / "model"), run.info.device, **model_kwargs(cfg))
    else:
        model = load_causal_lm(path, run.info.device, **model_kwargs(cfg))
    if cfg.disable_dropout:
        disable_dropout(model)
    apply_lean_activations(run, model)
    apply_router_aux(run, model)
    if cfg.use_peft:
        with reading_checkpoint(resume_dir) if resume_dir is not None else contextlib.nullcontext():
            model = with_adapter(cfg, model, objects.peft_config, resume_dir)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model, cfg.gradient_checkpointing_kwargs)
    if getattr(cfg, "torch_compile", False):  # the stages that compile have the key
        run.log(f"torch.compile: {compile_decoder_layers(model)} decoder layers (compiled on first use)"
                + ("; prefix sharing off with it" if cfg.prefix_sharing == "auto" else ""))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    name = cfg.model_name_or_path + (f" @ {Path(path).name[:12]}" if path and path != cfg.model_name_or_path
                                     and Path(path).parent.name == "snapshots" else "")
    run.log(f"policy: {name or f'a {type(given).__name__} object'} · {n_all / 1e6:.1f}M parameters, "
            f"{n_train / 1e6:.2f}M trainable" + (" (LoRA)" if cfg.use_peft else ""))
    return model, tokenizer


def _trust(cfg: Any) -> dict[str, Any]:
    return {"trust_remote_code": True} if getattr(cfg, "trust_remote_code", False) else {}


def apply_lean_activations(run: Run, model: nn.Module) -> None:
    """``lean_activations``; call it before LoRA wraps the model (the lean MLP calls whatever gate / up /
    down modules it holds at call time, adapters included). auto: where it applies, else one log line;
    true: an error on a model it does not apply to."""
    setting = run.cfg.lean_activations
    if setting is False:
        return
    counts = make_lean(model)
    if not (counts["norms"] or counts["mlps"] or counts["attention"]):
        what = (f"lean_activations: nothing in model type {model.config.model_type!r} has a lean form (no RMSNorm or "
                f"SwiGLU MLP of the Llama formula, no grouped-query SDPA on CPU)")
        if setting is True:
            raise ConfigError(f"{what}; set lean_activations=auto or false")
        run.note(f"{what}: it runs its own forward (lean_activations=auto)")
        return
    run.note(f"lean activations: {counts['norms']} RMSNorms, {counts['mlps']} SwiGLU MLPs"
             + (", grouped-query SDPA" if counts["attention"] else "")
             + (f" ({counts['kept']} modules of another formula keep their own forward)" if counts["kept"] else ""))


def apply_router_aux(run: Run, model: nn.Module) -> None:
    """``router_aux_loss_coef`` on an MoE model (``moe.configure_router_aux``: TRL's rule), said in the log."""
    line = configure_router_aux(model, run.cfg.router_aux_loss_coef)
    if line is not None:
        run.note(line)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Evaluation mode (no dropout) inside the block, the previous mode after it."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def enable_gradient_checkpointing(model: nn.Module, kwargs: dict[str, Any] | None = None) -> None:
    """Recompute decoder activations in backward (non-reentrant unless ``kwargs`` say otherwise), LoRA-wrapped
    or not."""
    base = model.get_base_model() if is_peft(model) else model
    kwargs = kwargs if kwargs is not None else {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers ≥ 5.x name
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if kwargs.get("use_reentrant", True) and hasattr(base, "enable_input_require_grads"):
        base.enable_input_require_grads()  # reentrant checkpoints need an input that requires grad (LoRA)
    base.config.use_cache = False


def num_tokens(examples: list[Any]) -> int:
    """Non-padding tokens the policy runs over for these examples; each layout counts its own."""
    return data_num_tokens(examples)


def write_summary(run: Run, result: RunResult) -> None:
    if not run.info.is_main:
        return
    payload = {"eval_before": result.eval_before, "eval_after": result.eval_after, "seconds": result.seconds,
               "final_dir": str(result.final_dir) if result.final_dir else None}
    (run.output_dir / "summary.json").write_text(json.dumps(payload, indent=2))



def plan_steps(run: Run, train: BuiltDataset) -> tuple[StepSampler, int]:
    """The data order and the number of optimizer steps."""
    cfg = run.cfg
    lengths = [num_tokens([ex]) for ex in train.examples] if cfg.group_by_length else None
    accumulation = getattr(cfg, "gradient_accumulation_steps", 1)  # RL: one batch per rollout
    seed = cfg.seed if getattr(cfg, "data_seed", None) is None else cfg.data_seed
    sampler = StepSampler(len(train), cfg.per_device_train_batch_size, accumulation,
                          run.info.world_size, run.info.rank, seed, lengths=lengths)
    steps = total_steps(sampler.steps_per_epoch, cfg.num_train_epochs, cfg.max_steps)
    run.log(f"data order: {sampler.describe()}; {steps} optimizer steps")
    return sampler, steps


def planned_saves(cfg: Any, num_examples: int, world_size: int) -> int:
    """Checkpoints the run will write: its save strategy over the steps its sampler will count (at least
    one, which a SIGTERM / SIGINT writes even with save_strategy=no). Fewer examples than one global
    batch is a ConfigError here, before any expensive work."""
    sampler = StepSampler(num_examples, cfg.per_device_train_batch_size, getattr(cfg, "gradient_accumulation_steps", 1),
                          world_size)
    steps = total_steps(sampler.steps_per_epoch, cfg.num_train_epochs, cfg.max_steps)
    cadence = Cadence.of(cfg, steps, sampler.steps_per_epoch)
    return max(sum(cadence.save(step) for step in range(1, steps + 1)), 1)


def preflight(run: Run, resume_dir: Path | None, model: nn.Module, tokenizer: Any, train: BuiltDataset
              ) -> dict[str, Any]:
    """Before any expensive work: a resumed run must match its checkpoint (seed, data, tokenizer, model
    config, settings), and the output folder must have room. Returns the meta every checkpoint stores."""
    cfg = run.cfg
    fingerprints = run_fingerprints(None if run.model_fingerprint else policy_path(cfg), tokenizer, train,
                                    model_config=run.model_fingerprint)
    meta = {"config": to_dict(cfg), "fingerprints": fingerprints, "world_size": run.info.world_size}
    if resume_dir is not None:
        check_resume(resume_dir, meta["config"], meta["fingerprints"], cfg.force_resume, run.log,
                     run.info.world_size)
    saves = planned_saves(cfg, len(train), run.info.world_size)   # every rank: too little data fails everywhere
    if run.info.is_main:
        one, final = checkpoint_bytes(model, cfg.optim, cfg.use_peft)
        ours = [p for p in list_checkpoints(run.output_dir) if checkpoint_run_id(p) == run.run_id]
        need, how = peak_bytes(one, final, saves, cfg.save_total_limit, kept_already=len(ours))
        check_free_space(run.output_dir, need, how)
    return meta


def finish(run: Run, result: RunResult, state: LoopState, logger: MetricsLogger, model: nn.Module,
           tokenizer: Any, save: Any, started: float, root: nn.Module | None = None) -> RunResult:
    """Last checkpoint, the final Hugging Face folder, summary.json; leaves the process group.
    ``root``: the FSDP-sharded module holding ``model`` (as attribute ``model``), if sharded."""
    result.history = state.history
    for line in run.data_report:   # what was dropped or cut, again where the user reads last
        run.log(line)
    if state.skipped_steps:
        run.log(f"{state.skipped_steps} step(s) skipped for a non-finite loss or gradient")
    if run.cfg.save_strategy != "no":
        save(state)
    faults.kill_if("kill_before_final", state.step, run.info.rank)
    from preftune.train.fsdp import gather_full_state, is_fsdp

    if root is not None and is_fsdp(root):
        full = gather_full_state(root, "model.")          # a collective: every rank takes part
        if run.info.is_main:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(model.config)
            model.load_state_dict(full)
    if run.info.is_main:
        result.final_dir = save_final(run.output_dir / "final", model, tokenizer)
        run.log(f"final model: {result.final_dir} · metrics: {logger.path}"
                + (f" · TensorBoard: {logger.tensorboard_dir}" if logger.tensorboard_dir else ""))
        run.log(f"curves: preftune plot {run.output_dir}")
        publish(run, result.final_dir, "End of training", final=True)
    logger.close()
    result.seconds = time.perf_counter() - started
    write_summary(run, result)
    shutdown(run.info)
    return result
