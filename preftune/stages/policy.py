"""The model a stage trains, and the frozen ones it scores beside it.

:func:`load_policy` loads the policy (by name, as an object passed from Python, or from the checkpoint
resumed; a causal LM, or any :class:`ModelClass`, such as the reward-model stage's), then applies what
every stage applies in the same order: dropout off, lean activations, the MoE router's loss, LoRA,
gradient checkpointing. :func:`logprob_model` and :func:`distribute` wrap it for log-probs and for
DDP / FSDP; :func:`load_frozen` loads a reference the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from preftune.errors import ConfigError
from preftune.modeling.layers import compile_decoder_layers
from preftune.modeling.lean_layers import make_lean
from preftune.modeling.load import ensure_pad_token, freeze, load_causal_lm, load_tokenizer
from preftune.modeling.logprobs import SequenceLogprobModel
from preftune.modeling.moe import configure_router_aux
from preftune.modeling.packing import resolve_padding_free
from preftune.modeling.prefix_sharing import sharing_mode
from preftune.stages.inputs import (
    Objects,
    causal_lm_adapter,
    frozen_copy,
    load_weights_into,
    object_fingerprint,
    object_source,
    policy_path,
    reference_is_a_copy,
    with_adapter,
)
from preftune.stages.lifecycle import Run, reading_checkpoint
from preftune.train.checkpoint import is_peft
from preftune.train.distributed import wrap_ddp
from preftune.train.fsdp import shard


def policy_tokenizer(run: Run, objects: Objects | None = None) -> Any:
    """The policy's tokenizer (the object passed from Python, or loaded): the data needs it before the model."""
    cfg = run.cfg
    objects = objects or Objects()
    if objects.tokenizer is not None:
        return ensure_pad_token(objects.tokenizer)
    return load_tokenizer(policy_path(cfg) if objects.model is None else object_source(objects.model), **_trust(cfg))


@dataclass(frozen=True)
class ModelClass:
    """What :func:`load_policy` builds. ``load(path, device, tokenizer=, **model_kwargs)``: the model from a
    folder (its own or a checkpoint's); ``new_adapter(cfg, model)``: LoRA on a model that has none yet;
    ``role`` / ``head`` / ``lora``: the words of the log line that describes it."""

    load: Callable[..., nn.Module]
    new_adapter: Callable[[Any, nn.Module], nn.Module]
    role: str = "policy"
    head: str = ""
    lora: str = " (LoRA)"


CAUSAL_LM = ModelClass(load=lambda path, device, tokenizer=None, **kw: load_causal_lm(path, device, **kw),
                       new_adapter=causal_lm_adapter)


def load_policy(run: Run, objects: Objects | None = None, *, model_class: ModelClass = CAUSAL_LM,
                needs_reference: bool = True, tokenizer: Any = None) -> tuple[nn.Module, Any]:
    """The model to train (a ``model_class``: a causal LM unless told) and its tokenizer (``tokenizer`` if
    given): by name or the objects passed from Python; from the checkpoint when resuming. ``needs_reference``:
    the stage scores a frozen reference, so a model object's starting weights are copied when the reference
    cannot be read from the policy itself."""
    cfg = run.cfg
    resume_dir = run.resume_dir
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
            model = model_class.load(str(resume_dir / "model"), run.info.device, tokenizer=tokenizer,
                                     **model_kwargs(cfg))
    else:
        model = model_class.load(path, run.info.device, tokenizer=tokenizer, **model_kwargs(cfg))
    if cfg.disable_dropout:
        disable_dropout(model)
    apply_lean_activations(run, model)
    apply_router_aux(run, model)
    if cfg.use_peft:
        with reading_checkpoint(resume_dir) if resume_dir is not None else contextlib.nullcontext():
            model = with_adapter(cfg, model, objects.peft_config, resume_dir, model_class.new_adapter)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model, cfg.gradient_checkpointing_kwargs)
    if getattr(cfg, "torch_compile", False):  # the stages that compile have the key
        run.log(f"torch.compile: {compile_decoder_layers(model)} decoder layers (compiled on first use)"
                + ("; prefix sharing off with it" if cfg.prefix_sharing == "auto" else ""))
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    name = cfg.model_name_or_path + (f" @ {Path(path).name[:12]}" if path and path != cfg.model_name_or_path
                                     and Path(path).parent.name == "snapshots" else "")
    run.log(f"{model_class.role}: {name or f'a {type(given).__name__} object'}{model_class.head} · "
            f"{n_all / 1e6:.1f}M parameters, {n_train / 1e6:.2f}M trainable" + (model_class.lora if cfg.use_peft else ""))
    return model, tokenizer


def logprob_model(run: Run, lm: nn.Module, **options: Any) -> SequenceLogprobModel:
    """``lm`` scoring per-sequence (or per-token) log-probs in ``logprob_chunk_size`` chunks, packed as
    :func:`packing` resolves for it; ``options``: SequenceLogprobModel's (value_head, temperature)."""
    return SequenceLogprobModel(lm, run.cfg.logprob_chunk_size, **options, **packing(run, lm))


def load_frozen(run: Run, path: str) -> nn.Module:
    """A frozen causal LM (a reference, or the policy ``preftune eval`` scores), loaded as the policy is."""
    return freeze(load_causal_lm(path, run.info.device, **model_kwargs(run.cfg)))


def distribute(run: Run, policy: nn.Module, lm: nn.Module) -> nn.Module:
    """What the loop steps: ``policy`` sharded (``lm``'s decoder layers, then ``policy`` as the root) under
    ``fsdp`` with several processes, else DDP-wrapped (itself on one process)."""
    if getattr(run.cfg, "fsdp", False) and run.info.enabled:
        return shard(policy, lm)
    return wrap_ddp(policy, run.info)


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


def model_kwargs(cfg: Any) -> dict[str, Any]:
    """How ``load_causal_lm`` loads this run's models: dtype, attention kernel, 4-bit, from_pretrained extras."""
    return {"dtype": cfg.dtype or "float32", "attn_implementation": cfg.attn_implementation,
            "quantization": "4bit" if getattr(cfg, "load_in_4bit", False) else None,
            **(cfg.model_init_kwargs or {}), **_trust(cfg)}


def _trust(cfg: Any) -> dict[str, Any]:
    return {"trust_remote_code": True} if getattr(cfg, "trust_remote_code", False) else {}


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
