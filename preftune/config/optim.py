"""The optimisation group: optimizer, learning-rate schedule, batch, length of training, clipping.

Names, values and defaults are transformers' ``TrainingArguments`` (as TRL 1.16 inherits them):
``optim`` names, every ``lr_scheduler_type`` with its ``lr_scheduler_kwargs``, warm-up as a step count
or a fraction (ceil), epochs rounded up to whole optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from preftune.config.fields import Problems, changed, setting

# transformers' schedules; the lr of optimizer step s is learning_rate × the schedule's factor at s.
SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
             "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")
SCHEDULES_REFUSED = {
    "reduce_lr_on_plateau": "it lowers the lr when an evaluation metric stalls, so the lr would depend on "
                            "held-out results rather than on the step (preftune's schedule is a function of the "
                            "step alone, which is what makes resuming exact); use cosine_with_min_lr",
    "greedy": "it adapts the lr to the training loss as it goes, so the lr is not a function of the step (what "
              "makes resuming exact); use cosine or linear",
}
# transformers' optim names preftune builds (torch.optim, and transformers' Adafactor), and what each
# reads of optim_args (as transformers parses "key=value,key=value").
# (weight_decay is the key weight_decay: transformers' parameter groups override optim_args' anyway.)
OPTIMIZERS = {"adamw_torch": (), "adamw_torch_fused": (), "paged_adamw_32bit": (), "adafactor": (),
              "sgd": ("momentum", "dampening", "nesterov"),
              "adagrad": ("lr_decay", "eps"),
              "rmsprop": ("momentum", "alpha", "eps", "centered")}
# paged_adamw_32bit is AdamW with 32-bit state that bitsandbytes pages to host memory under GPU memory
# pressure: the same update, so without bitsandbytes + CUDA it is torch's AdamW (said in the log).
ADAM = ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit")
OPTIMIZERS_REFUSED_BECAUSE = (
    "{name}: preftune builds adamw_torch, adamw_torch_fused, paged_adamw_32bit, adafactor, sgd, adagrad and "
    "rmsprop; the other "
    "transformers optimizers need bitsandbytes, GaLore, APOLLO, LOMO, torch-xla/NPU or schedule-free packages, or "
    "step layer by layer inside backward, which preftune's guarded step (skip a non-finite update, state "
    "unchanged) cannot wrap")


@dataclass(frozen=True)
class OptimGroup:
    """Optimisation: optimizer, learning-rate schedule, batch, length of training, clipping."""

    learning_rate: float = setting(1e-6, "Peak learning rate.")
    optim: str = setting("adamw_torch_fused", "Optimizer, by transformers' name: adamw_torch_fused (transformers' "
                                              "default), adamw_torch, paged_adamw_32bit (bitsandbytes on CUDA, else "
                                              "torch's AdamW: the same update), adafactor, sgd, adagrad or rmsprop "
                                              "(the DPO paper used RMSprop). preftune's older key optimizer=adamw|rmsprop "
                                              "still works.")
    optim_args: str | None = setting(None, "Extra optimizer settings 'key=value,key=value', as transformers reads "
                                           "them: sgd momentum, dampening, nesterov; adagrad lr_decay, eps; rmsprop "
                                           "momentum, alpha, eps, centered.")
    weight_decay: float = setting(0.0, "Weight decay (AdamW: decoupled), on every weight except biases and "
                                       "normalisation weights, as transformers' Trainer.")
    adam_beta1: float = setting(0.9, "AdamW β1.")
    adam_beta2: float = setting(0.999, "AdamW β2.")
    adam_epsilon: float = setting(1e-8, "AdamW ε.")
    lr_scheduler_type: str = setting("linear", "Any transformers schedule: " + ", ".join(SCHEDULES) + ".")
    lr_scheduler_kwargs: dict[str, Any] | None = setting(None, "The schedule's own settings, e.g. {num_cycles: 2} "
                                                               "(cosine_with_restarts), {min_lr_rate: 0.1} "
                                                               "(cosine_with_min_lr), {lr_end: 1e-7, power: 2} "
                                                               "(polynomial), {num_decay_steps: 100} "
                                                               "(warmup_stable_decay).")
    warmup_steps: float = setting(0, "Warm-up steps from lr 0 (an integer), or a fraction of the total steps in "
                                     "(0, 1), rounded up (as transformers; the DPO paper: 150).")
    warmup_ratio: float = setting(0.0, "Warm-up as a fraction of the total steps, rounded up (transformers 4's key; "
                                       "same as a fractional warmup_steps).")
    per_device_train_batch_size: int = setting(8, "Examples per process per micro-step.")
    per_device_eval_batch_size: int = setting(8, "Examples per process per evaluation batch.")
    gradient_accumulation_steps: int = setting(1, "Micro-steps per optimizer step.")
    num_train_epochs: float = setting(3.0, "Passes over the training data; a fraction is rounded up to whole "
                                           "optimizer steps (as transformers).")
    max_steps: int = setting(-1, "If > 0, stop after this many optimizer steps (overrides num_train_epochs).")
    max_grad_norm: float = setting(1.0, "Clip the global gradient norm to this (0 = no clipping); the pre-clip "
                                        "norm is logged as grad_norm. (The DPO paper's code: 10.)")
    group_by_length: bool = setting(False, "Batch examples of similar length together (windows of 16 global "
                                           "batches sorted by length, batches shuffled): less padding, faster steps.")
    data_seed: int | None = setting(None, "Seed of the data order only (null = seed).")

    def check(self, p: Problems) -> None:
        p.positive(self, "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "num_train_epochs", "adam_epsilon")
        if hasattr(self, "gradient_accumulation_steps"):
            p.positive(self, "gradient_accumulation_steps")
        p.non_negative(self, "weight_decay", "warmup_steps", "max_grad_norm")
        p.in_range(self, "warmup_ratio", "[0, 1]")
        p.in_range(self, "adam_beta1", "[0, 1)")
        p.in_range(self, "adam_beta2", "[0, 1)")
        p.in_range(self, "data_seed", "[0, 4294967295]")   # as seed
        if self.max_steps != -1 and self.max_steps <= 0:
            p.add(f"max_steps must be -1 (no limit) or > 0, got {self.max_steps}", "max_steps")
        if self.warmup_steps >= 1 and not float(self.warmup_steps).is_integer():
            p.add(f"warmup_steps must be a whole number of steps or a fraction in (0, 1), got {self.warmup_steps:g}",
                  "warmup_steps")
        if self.warmup_steps > 0 and self.warmup_ratio > 0:
            p.add(f"warmup_steps ({self.warmup_steps:g}) and warmup_ratio ({self.warmup_ratio:g}) are both set: give "
                  "one (a fractional warmup_steps is a ratio too)", "warmup_ratio")
        OptimGroup._check_optimizer(self, p)  # self: the composed stage config
        OptimGroup._check_schedule(self, p)

    def _check_optimizer(self, p: Problems) -> None:
        if self.optim not in OPTIMIZERS:
            p.add(f"optim {OPTIMIZERS_REFUSED_BECAUSE.format(name=repr(self.optim))}", "optim")
            return
        if self.optim not in ADAM:
            for key in changed(self, "adam_beta1", "adam_beta2", "adam_epsilon"):
                p.add(f"{key} is set but optim {self.optim} does not read it (transformers ignores it too)", key)
        try:
            optim_arguments(self.optim, self.optim_args)
        except ValueError as e:
            p.add(f"optim_args: {e}", "optim_args")

    def _check_schedule(self, p: Problems) -> None:
        if "lr_scheduler_type" in p.bad or "lr_scheduler_kwargs" in p.bad:
            return
        if self.lr_scheduler_type in SCHEDULES_REFUSED:
            p.add(f"lr_scheduler_type {self.lr_scheduler_type} is not supported: "
                  f"{SCHEDULES_REFUSED[self.lr_scheduler_type]}", "lr_scheduler_type")
            return
        if self.lr_scheduler_type not in SCHEDULES:
            p.add(f"lr_scheduler_type must be one of {', '.join(SCHEDULES)}, got {self.lr_scheduler_type!r}",
                  "lr_scheduler_type")
            return
        if self.lr_scheduler_type == "constant" and (self.warmup_steps > 0 or self.warmup_ratio > 0):
            p.add("lr_scheduler_type constant has no warm-up (transformers would skip it without a word): use "
                  "constant_with_warmup", "lr_scheduler_type")
            return
        if self.learning_rate <= 0:
            return
        from preftune.config.schedule import probe_schedule

        problem = probe_schedule(self.lr_scheduler_type, self.learning_rate, self.lr_scheduler_kwargs)
        if problem:
            p.add(f"lr_scheduler_kwargs {self.lr_scheduler_kwargs or {}} for {self.lr_scheduler_type}: {problem}",
                  "lr_scheduler_kwargs")


def optim_arguments(optim: str, text: str | None) -> dict[str, Any]:
    """``optim_args`` ("momentum=0.9,nesterov=true") as keyword arguments of ``optim``'s torch class."""
    if not text:
        return {}
    allowed = OPTIMIZERS.get(optim, ())
    if not allowed:
        raise ValueError(f"optim {optim} takes no optim_args (sgd, adagrad and rmsprop do)")
    out: dict[str, Any] = {}
    for item in text.replace(" ", "").split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise ValueError(f"{item!r}: {optim} reads {', '.join(f'{k}=...' for k in allowed)}")
        if key in ("nesterov", "centered"):
            out[key] = value.lower() in ("true", "1", "yes")
        else:
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"{item!r}: {key} must be a number") from None
    return out
