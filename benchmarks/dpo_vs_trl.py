"""preftune vs TRL's DPOTrainer: same model, pairs, batch, β, lr, optimizer and precision, one invocation.

    pip install -e .[bench]        # adds trl, pinned (its DPOTrainer is what we compare against)
    python benchmarks/dpo_vs_trl.py --model tiny --steps 5 --repeats 1
    python benchmarks/dpo_vs_trl.py --model smollm2 --max-length 512 --batch 4 --steps 10 --repeats 2 \\
        --threads 2 [--bf16] [--device cpu|cuda] [--json out.json]

1. Equivalence check (in this process, before any timing; ``--check-only`` stops after it, ``--skip-check``
   skips it). Both frameworks build their own data pipeline from the same strings: every example must come
   out as the same token ids and the first batch as the same padded tensors. Then TRL's loss path
   (``DPOTrainer.compute_loss``, reference model run live) and preftune's (``SequenceLogprobModel`` + the
   pairwise objective, a frozen reference copy) compute loss and gradients on that batch, fp32, twice: at
   π = π_ref (the first step) and with π perturbed (so the log-ratios are not 0). Passing: loss and every
   gradient element within ``--tol`` (1e-5), or, failing that, within fp32 rounding: loss within
   16·β·2^-24·Σ|log π| and every parameter's ||Δg||/||g|| within ``--grad-rtol`` (1e-3; a mask, shift, EOS or
   β mismatch moves gradients by 1e-3..1). ``--strict`` demands ``--tol`` everywhere; ``--exact`` also
   measures both against a float64 full-logits computation (slow on SmolLM2). Why not 1e-5 absolute for
   every gradient: on SmolLM2 the RMSNorm weight gradients (sums over every token, |g| up to ~5) of TRL and
   of preftune each differ from the float64 values by 5e-5..1.5e-4 in fp32. Otherwise the comparison is
   void: the script says why and exits 1.
2. Timing: each framework trains in its own fresh subprocess, alternating TRL, preftune, TRL, preftune, ...
   (``--repeats`` rounds), so peak memory is per framework and neither inherits the other's allocator state.

Same settings on both sides: the model folder (tiny: a random Llama + byte-level BPE built in-process;
smollm2: the converted SmolLM2-135M-Instruct), the deterministic variable-length pairs (random words from
a fixed seed, sized so that nothing is truncated: both sides see every token), the data ORDER (TRL with
``train_sampling_strategy="sequential"``; preftune's shuffle is undone by handing it the pairs in the
inverse of its own seeded permutation; the per-step token counts of both runs are checked to be equal),
batch size and accumulation, β, lr (constant, no warm-up), AdamW (torch, non-fused, β1 0.9, β2 0.999,
ε 1e-8, no weight decay), max_grad_norm, precision, gradient checkpointing (off unless
``--gradient-checkpointing``: TRL's own default is on), threads, plain text (no chat template), no dropout.
Not the same, by design: the reference log-probs (``--reference``). By default each framework uses its
own default: TRL runs the reference model on every step, preftune precomputes them in one pass before
training. ``--reference live`` / ``precompute`` makes both do the same.

What the table reports (the training phase = everything after the model and the data are loaded: the
reference precompute, if any, then every optimizer step; the end is the last ``optimizer.step()``):

* tokens/s, end-to-end: non-padding tokens of the chosen + rejected sequences through the policy over all
  steps, divided by the training-phase wall time (so it includes the reference precompute);
* tokens/s, steady state: the same over steps 2..N divided by their wall time (step 1 warms up);
* peak memory: on CPU the peak RSS of the worker process during the training phase (VmHWM, reset at the
  start of the phase via /proc/self/clear_refs) and over the whole process (including model loading); on
  GPU ``torch.cuda.max_memory_allocated`` over the same two spans;
* both loss curves step by step, their difference, and preftune/TRL ratios. Medians over the repeats.

Model loading, tokenization and preftune's final save are outside the timed phase on both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# Words of the synthetic pairs: letters only, joined by single spaces, so every word after the first is
# its own pre-token (" word") for byte-level BPE tokenizers and a completion starting with " word"
# tokenizes the same alone as after its prompt.
PROMPT_WORDS = (
    "the a this that film movie story plot scene actor actress director camera music sound script "
    "character ending beginning middle review viewer audience night theater screen picture show series "
    "season episode role cast writer producer studio budget effect light color voice dialogue line moment "
    "question answer reason idea world city house road river mountain summer winter morning evening was is "
    "and but with about from into over under after before while because"
).split()
CHOSEN_WORDS = (
    "good great excellent fine wonderful brilliant lovely superb clever warm funny moving honest bright "
    "charming strong gentle rich vivid fresh elegant smart kind generous careful beautiful delightful "
    "memorable thoughtful inspiring solid"
).split()
REJECTED_WORDS = (
    "bad awful poor terrible boring dull weak flat messy silly cheap lazy tired noisy clumsy empty cold "
    "harsh bland stale shallow sloppy slow confusing painful forgettable tedious annoying wooden hollow"
).split()


@dataclasses.dataclass
class Settings:
    """Everything both workers must agree on (JSON round-trips to the subprocesses)."""

    model: str                  # tiny | smollm2
    model_dir: str
    max_length: int
    max_prompt_length: int
    batch: int
    grad_accum: int
    steps: int
    beta: float
    lr: float
    max_grad_norm: float
    bf16: bool
    device: str
    threads: int
    seed: int
    gradient_checkpointing: bool
    reference: str              # default | live | precompute
    preftune_settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # --preftune key=value

    @property
    def num_pairs(self) -> int:
        return self.batch * self.grad_accum * self.steps

    def precompute(self, framework: str) -> bool:
        if self.reference == "default":
            return framework == "preftune"  # TRL's default: live reference; preftune's: precomputed
        return self.reference == "precompute"


# ----------------------------------------------------------------------------------------------------
# Model and data


def prepare_model(kind: str, workdir: Path, max_length: int, seed: int = 0) -> Path:
    """A Hugging Face folder: a tiny random Llama + BPE tokenizer built here, or the converted SmolLM2."""
    if kind == "smollm2":
        from preftune.assets.smollm2 import ensure_smollm2

        return ensure_smollm2(log=lambda m: print(m, file=sys.stderr))
    if kind != "tiny":
        raise SystemExit(f"unknown --model {kind!r}")
    from preftune.testing import tiny_llama, tiny_tokenizer

    path = workdir / "tiny-llama"
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer), hidden_size=128, num_layers=4, num_heads=4, intermediate_size=256,
                       max_position_embeddings=max(512, max_length), seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_pairs(tokenizer: Any, n: int, max_length: int, max_prompt_length: int, seed: int) -> list[dict[str, str]]:
    """``n`` deterministic pairs {prompt, chosen, rejected} of varied lengths that need no truncation.

    Per pair: a total budget uniform in [max_length/4, max_length] tokens, a prompt of at most half of it
    (and < max_prompt_length), chosen and rejected completions each filling a random part of the rest,
    one token kept for the EOS both frameworks append.
    """
    rng = random.Random(seed)
    cache: dict[str, int] = {}

    def count(text: str) -> int:
        if text not in cache:
            cache[text] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return cache[text]

    def words(pool: list[str], budget: int, lead: str) -> str:
        """Random words from ``pool`` within ``budget`` tokens (at least one word), ``lead`` before them."""
        out: list[str] = []
        n = 0
        while n < budget:
            w = rng.choice(pool)
            c = count((lead if not out else " ") + w)  # per-word counts add up: each " word" is a pre-token
            if out and n + c > budget:
                break
            out.append(w)
            n += c
        text = lead + " ".join(out)
        while len(out) > 1 and len(tokenizer(text, add_special_tokens=False)["input_ids"]) > budget:
            out.pop()  # the additivity assumption failed for this tokenizer: trim to the budget
            text = lead + " ".join(out)
        return text

    pairs = []
    for _ in range(n):
        total = rng.randint(max(8, max_length // 4), max_length)
        prompt = words(PROMPT_WORDS, rng.randint(4, max(4, min(max_prompt_length - 1, total // 2))), "")
        room = max(1, total - len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) - 1)  # 1 for the EOS
        chosen = words(CHOSEN_WORDS, rng.randint(1, room), " ")
        rejected = words(REJECTED_WORDS, rng.randint(1, room), " ")
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def preftune_order(rows: list[dict], s: Settings) -> list[dict]:
    """The pairs arranged so that preftune's seeded sampler hands them out in ``rows`` order (TRL's order
    with its sequential sampler): preftune's position ``perm[j]`` gets ``rows[j]``."""
    from preftune.train.sampler import StepSampler

    sampler = StepSampler(len(rows), s.batch, s.grad_accum, 1, 0, s.seed)
    placed: list[dict | None] = [None] * len(rows)
    j = 0
    for step in range(s.steps):
        for micro in sampler.micro_batches(step):
            for i in micro:
                placed[i] = rows[j]
                j += 1
    if j != len(rows) or any(r is None for r in placed):
        raise RuntimeError("preftune's sampler does not visit every pair exactly once in one epoch")
    return placed  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# The two frameworks' configurations


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


def preftune_config(s: Settings, output_dir: str, precompute: bool, bf16: bool | None = None):
    from preftune.config import DPOConfig

    return DPOConfig(
        model_name_or_path=s.model_dir, output_dir=output_dir, max_length=s.max_length,
        max_prompt_length=s.max_prompt_length, use_chat_template=False, learning_rate=s.lr, optimizer="adamw",
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0, lr_scheduler_type="constant",
        warmup_steps=0, per_device_train_batch_size=s.batch, per_device_eval_batch_size=s.batch,
        gradient_accumulation_steps=s.grad_accum, max_steps=s.steps, max_grad_norm=s.max_grad_norm,
        bf16=s.bf16 if bf16 is None else bf16, gradient_checkpointing=s.gradient_checkpointing, seed=s.seed,
        threads=s.threads, device=s.device, logging_steps=1, report_to="none", progress_bar=False, beta=s.beta,
        loss_type=["sigmoid"], precompute_ref_log_probs=precompute, **s.preftune_settings,
    )


def _trl_trainer_class():
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


def _trl_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


# ----------------------------------------------------------------------------------------------------
# 1. Equivalence check


@dataclasses.dataclass
class CheckResult:
    ok: bool
    lines: list[str]
    details: dict[str, Any]


def _perturb(model: torch.nn.Module, scale: float, seed: int) -> None:
    """π ← π · (1 + scale·ε), ε ~ N(0, 1) drawn per parameter name: identical on both sides."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            g = torch.Generator().manual_seed(seed + sum(map(ord, name)) * 7919)
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device, p.dtype)
            p.mul_(1 + scale * noise)


@dataclasses.dataclass
class GradDiff:
    max_abs: float          # max |a - b| over every element of every parameter
    max_abs_param: str
    max_rel: float          # max over parameters of ||a - b|| / ||a|| (Frobenius)
    max_rel_param: str
    max_grad: float         # max |a|


def _grad_diff(a: dict[str, torch.Tensor | None], b: dict[str, torch.Tensor | None]) -> GradDiff:
    """How far gradients ``b`` are from ``a`` (a gradient on one side only counts as infinitely far)."""
    d = GradDiff(0.0, "", 0.0, "", 0.0)
    for name, ga in a.items():
        gb = b.get(name)
        if ga is None or gb is None:
            if (ga is None) != (gb is None):
                return GradDiff(math.inf, f"{name} (gradient on one side only)", math.inf, name, d.max_grad)
            continue
        ga, gb = ga.double(), gb.to(ga.device).double()
        diff = (ga - gb).abs().max().item()
        norm = ga.norm().item()
        rel = (ga - gb).norm().item() / norm if norm > 0 else (0.0 if diff == 0 else math.inf)
        d.max_grad = max(d.max_grad, ga.abs().max().item())
        if diff > d.max_abs:
            d.max_abs, d.max_abs_param = diff, name
        if rel > d.max_rel:
            d.max_rel, d.max_rel_param = rel, name
    return d


def exact_loss_and_grads(policy: torch.nn.Module, reference: torch.nn.Module, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, loss_mask: torch.Tensor, beta: float
                         ) -> tuple[float, dict[str, torch.Tensor]]:
    """The textbook computation in float64: full logits → log_softmax → gather, one sequence at a time
    (padding trimmed), sigmoid DPO loss over the [chosen | rejected] rows; gradients by the chain rule
    through the per-sequence log-probs. Slow; the arbiter when the two fp32 implementations disagree."""
    import copy

    pol = copy.deepcopy(policy).double()
    ref = copy.deepcopy(reference).double()
    pol.zero_grad(set_to_none=True)

    def seq_logp(model: torch.nn.Module, i: int) -> torch.Tensor:
        n = int(attention_mask[i].sum())
        ids = input_ids[i:i + 1, :n]
        logits = model(input_ids=ids, attention_mask=attention_mask[i:i + 1, :n], use_cache=False).logits[0, :-1]
        lp = torch.log_softmax(logits.double(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        return (lp * loss_mask[i, 1:n].double()).sum()

    rows = input_ids.shape[0]
    with torch.no_grad():
        ref_lp = torch.stack([seq_logp(ref, i) for i in range(rows)])
        pol_lp = torch.stack([seq_logp(pol, i) for i in range(rows)])
    x = pol_lp.clone().requires_grad_(True)
    pc, pr = x.chunk(2)
    rc, rr = ref_lp.chunk(2)
    loss = -torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()
    (coef,) = torch.autograd.grad(loss, x)
    for i in range(rows):
        seq_logp(pol, i).backward(coef[i])
    return loss.item(), {name: p.grad for name, p in pol.named_parameters() if p.grad is not None}


def equivalence_check(s: Settings, rows: list[dict], tol: float = 1e-5, grad_rtol: float = 1e-3, perturb: float = 0.02,
                      strict: bool = False, exact: bool = False, log=print) -> CheckResult:
    """Same token ids, same first batch, same loss and gradients (fp32) from both frameworks' own code."""
    from transformers import AutoTokenizer

    from preftune.data.dataset import DataSettings, build_preference_dataset
    from preftune.modeling.load import freeze, load_causal_lm, load_tokenizer
    from preftune.modeling.logprobs import SequenceLogprobModel
    from preftune.modeling.reference import FrozenReference
    from preftune.objectives import objective_for

    torch.set_num_threads(s.threads)
    device = torch.device(s.device)
    lines: list[str] = []
    details: dict[str, Any] = {"tol": tol}
    ok = True

    def say(msg: str) -> None:
        lines.append(msg)
        log(msg)

    with tempfile.TemporaryDirectory(prefix="dpo-check-") as tmp:
        # preftune's pipeline: render (plain text) → tokenize → collate.
        cfg = preftune_config(s, tmp, precompute=False, bf16=False)
        tokenizer = load_tokenizer(s.model_dir)
        built = build_preference_dataset(rows, tokenizer, DataSettings(
            max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, use_chat_template=False))
        objective = objective_for(cfg.loss_type)

        # TRL's pipeline: its own tokenization (prompt + completion + eos text) and collator.
        trainer = _trl_trainer_class()(
            model=s.model_dir, args=trl_config(s, tmp, precompute=False, bf16=False),
            train_dataset=_trl_dataset(rows), processing_class=AutoTokenizer.from_pretrained(s.model_dir))
        trl_rows = trainer.train_dataset

        # a) Every example: the same ids (TRL truncates at collation, keep_start at max_length; apply it).
        mismatched = []
        if len(trl_rows) != len(built.examples) or len(built.examples) != len(rows):
            mismatched.append(f"example counts: input {len(rows)}, TRL {len(trl_rows)}, preftune "
                              f"{len(built.examples)} (dropped: {dict(built.dropped)})")
        else:
            for i, (ex, tr) in enumerate(zip(built.examples, trl_rows)):
                for col in ("chosen", "rejected"):
                    theirs = (tr["prompt_ids"] + tr[f"{col}_ids"])[:s.max_length]
                    t_prompt = min(len(tr["prompt_ids"]), len(theirs))
                    ours = list(ex.prompt_ids) + list(getattr(ex, f"{col}_ids"))
                    if theirs != ours or t_prompt != len(ex.prompt_ids):
                        mismatched.append(f"example {i} {col}: TRL {len(theirs)} ids (prompt {t_prompt}), "
                                          f"preftune {len(ours)} ids (prompt {len(ex.prompt_ids)})")
        details["token_mismatches"] = len(mismatched)
        if mismatched:
            ok = False
            say(f"FAIL token ids differ in {len(mismatched)} place(s): " + "; ".join(mismatched[:3]))
        else:
            say(f"ok   token ids: all {len(rows)} pairs identical in both pipelines "
                f"(prompt + chosen, prompt + rejected, completion boundaries)")

        # b) The first batch as each trainer builds it.
        trl_batch = next(iter(trainer.get_train_dataloader()))
        p_batch = objective.collate(built.examples[:s.batch], list(range(s.batch)),
                                    pad_token_id=tokenizer.pad_token_id)
        same_batch = (
            trl_batch["input_ids"].shape == p_batch.input_ids.shape
            and torch.equal(trl_batch["attention_mask"].cpu().bool(), p_batch.attention_mask.bool())
            and torch.equal(trl_batch["completion_mask"].cpu().bool(), p_batch.loss_mask.bool())
            and torch.equal(trl_batch["input_ids"].cpu() * trl_batch["attention_mask"].cpu(),
                            p_batch.input_ids * p_batch.attention_mask))
        details["first_batch_identical"] = bool(same_batch)
        if same_batch:
            say(f"ok   first batch: identical {tuple(p_batch.input_ids.shape)} ids / attention / completion masks")
        else:
            ok = False
            say(f"FAIL first batch differs: TRL {tuple(trl_batch['input_ids'].shape)} vs preftune "
                f"{tuple(p_batch.input_ids.shape)}")

        # c) Loss and gradients, both with a live reference, fp32.
        policy = load_causal_lm(s.model_dir, device)
        if cfg.lean_activations:   # as the timed run's policy
            from preftune.modeling.lean_layers import make_lean

            make_lean(policy)
        if s.gradient_checkpointing:
            from preftune.stages.common import enable_gradient_checkpointing

            enable_gradient_checkpointing(policy)
        # The same log-prob path the timed run uses (chunk size, padding-free packing: the config's defaults).
        p_policy = SequenceLogprobModel(policy, cfg.logprob_chunk_size, padding_free=cfg.padding_free).train()
        p_ref = FrozenReference(SequenceLogprobModel(freeze(load_causal_lm(s.model_dir, device)),
                                                     cfg.logprob_chunk_size, padding_free=cfg.padding_free))
        t_model = trainer.model
        t_model.train()
        t_inputs = trainer._prepare_inputs(trl_batch)
        p_inputs = p_batch.to(device)
        params = dict(policy.named_parameters())
        if set(params) != set(dict(t_model.named_parameters())):
            ok = False
            say("FAIL the two policies have different parameter names")
        for label, scale in (("π = π_ref", 0.0), (f"π perturbed ×(1 + {perturb}·N(0,1))", perturb)):
            if scale:
                _perturb(t_model, scale, s.seed)
                _perturb(policy, scale, s.seed)
            t_model.zero_grad(set_to_none=True)
            policy.zero_grad(set_to_none=True)
            with trainer.compute_loss_context_manager():
                t_loss = trainer.compute_loss(t_model, t_inputs)
            t_loss.backward()
            p_loss, sums = objective.loss(cfg, lambda r: p_policy(r.input_ids, r.attention_mask, r.loss_mask),
                                          p_ref, p_inputs)
            # The log-ratios are differences of fp32 sums of hundreds of log-probs (|Σ| ~ 100s): rounding moves
            # the loss by ~β · 2^-24 · Σ|log π|. Allow 16 times that (a wrong token moves it by ~β · |log p|).
            mean_abs_logps = 2 * (sums["logps/chosen"].abs() + sums["logps/rejected"].abs()).item() / s.batch
            loss_tol = max(tol, 16 * s.beta * 2**-24 * mean_abs_logps)
            p_loss.backward()
            loss_diff = abs(t_loss.item() - p_loss.item())
            t_grads = {n: p.grad for n, p in t_model.named_parameters()}
            p_grads = {n: p.grad for n, p in policy.named_parameters()}
            g = _grad_diff(t_grads, p_grads)
            entry = {"trl_loss": t_loss.item(), "preftune_loss": p_loss.item(), "loss_abs_diff": loss_diff,
                     "loss_tol": loss_tol,
                     "grad_max_abs_diff": g.max_abs, "grad_max_abs_diff_param": g.max_abs_param,
                     "grad_max_rel_diff": g.max_rel, "grad_max_rel_diff_param": g.max_rel_param,
                     "grad_max_abs": g.max_grad}
            within_tol = loss_diff <= tol and g.max_abs <= tol
            # Same math, fp32 rounding: the loss within loss_tol, every parameter's gradient within grad_rtol
            # of TRL's (Frobenius norm). A mask, shift, EOS or β mismatch moves them by 1e-3 .. 1.
            same_math = loss_diff <= loss_tol and g.max_rel <= grad_rtol
            passed = within_tol if strict else (within_tol or same_math)
            status = "ok  " if passed else "FAIL"
            msg = (f"{label}: loss TRL {t_loss.item():.7f}, preftune {p_loss.item():.7f} (|Δ| {loss_diff:.1e}); "
                   f"gradients ({len(params)} tensors, largest |g| {g.max_grad:.2e}): max |Δ| {g.max_abs:.1e} "
                   f"(on {g.max_abs_param}), max per-tensor ||Δ||/||g|| {g.max_rel:.1e} (on {g.max_rel_param})")
            msg += (f" → within {tol:g}" if within_tol else
                    f" → beyond {tol:g} absolute, within fp32 rounding (loss ≤ {loss_tol:.1e}, ||Δ||/||g|| ≤ {grad_rtol:g})"
                    if same_math
                    else " → different results")
            if exact:
                e_loss, e_grads = exact_loss_and_grads(policy, p_ref.model.model, p_inputs.input_ids,
                                                       p_inputs.attention_mask, p_inputs.loss_mask, s.beta)
                te, pe = _grad_diff(e_grads, t_grads), _grad_diff(e_grads, p_grads)
                entry.update({"exact_loss": e_loss, "trl_loss_err": abs(t_loss.item() - e_loss),
                              "preftune_loss_err": abs(p_loss.item() - e_loss), "trl_grad_rel_err": te.max_rel,
                              "preftune_grad_rel_err": pe.max_rel, "trl_grad_abs_err": te.max_abs,
                              "preftune_grad_abs_err": pe.max_abs})
                msg += (f". Against float64: loss error TRL {entry['trl_loss_err']:.1e}, preftune "
                        f"{entry['preftune_loss_err']:.1e}; gradient max |err| TRL {te.max_abs:.1e}, preftune "
                        f"{pe.max_abs:.1e}; max ||err||/||g|| TRL {te.max_rel:.1e}, preftune {pe.max_rel:.1e}")
            ok &= passed
            details[label] = entry
            say(f"{status} {msg}")
    return CheckResult(ok=ok, lines=lines, details=details)


# ----------------------------------------------------------------------------------------------------
# 2. Timing workers (each in its own process)


def _rss_hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _reset_rss_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class Recorder:
    """Training-phase start, every optimizer step's end (a global torch.optim post-step hook, so both
    frameworks are timed at the same point) and the memory peaks."""

    def __init__(self, steps: int, device: torch.device) -> None:
        self.steps, self.device = steps, device
        self.t_start: float | None = None
        self.t_reference_done: float | None = None
        self.step_ends: list[float] = []
        self.mem: dict[str, Any] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def start_phase(self) -> None:
        if self.t_start is not None:
            return
        self._sync()
        self.mem["load_peak_rss_mib"] = _rss_hwm_mib()
        self.mem["rss_peak_reset"] = _reset_rss_hwm()
        if self.device.type == "cuda":
            self.mem["load_peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        self.t_start = time.perf_counter()

    def reference_done(self) -> None:
        if self.t_reference_done is None:
            self._sync()
            self.t_reference_done = time.perf_counter()

    def on_step(self, *_: Any) -> None:
        self._sync()
        self.step_ends.append(time.perf_counter())
        if len(self.step_ends) == self.steps:
            self.mem["train_peak_rss_mib"] = _rss_hwm_mib()
            if self.device.type == "cuda":
                self.mem["train_peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20

    def install(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(self.on_step)

    def summary(self) -> dict[str, Any]:
        load = self.mem.get("load_peak_rss_mib")
        train = self.mem.get("train_peak_rss_mib")
        out = dict(self.mem)
        out["process_peak_rss_mib"] = max(x for x in (load, train) if x is not None) if (load or train) else None
        if "load_peak_cuda_mib" in self.mem and "train_peak_cuda_mib" in self.mem:
            out["process_peak_cuda_mib"] = max(self.mem["load_peak_cuda_mib"], self.mem["train_peak_cuda_mib"])
        return {"t_start": self.t_start, "t_reference_done": self.t_reference_done, "step_ends": self.step_ends,
                "memory": out}


def worker_trl(s: Settings, rows: list[dict], workdir: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    device = torch.device(s.device)
    rec = Recorder(s.steps, device)
    t0 = time.perf_counter()
    precompute = s.precompute("trl")
    trainer = _trl_trainer_class()(
        model=s.model_dir, args=trl_config(s, str(workdir / "trl-out"), precompute=precompute),
        train_dataset=_trl_dataset(rows), processing_class=AutoTokenizer.from_pretrained(s.model_dir),
        recorder=rec)
    rec.start_phase()  # no-op when the precompute already started the phase
    rec.install()
    setup = (rec.t_start or time.perf_counter()) - t0
    threads = torch.get_num_threads()
    trainer.train()
    micro = [(float(loss), int(n)) for loss, n in trainer.micro_records]
    return {"framework": "trl", "setup_s": setup, "threads": threads, "micro": micro,
            "reference": "precomputed before training" if precompute else "reference model run every step",
            **rec.summary()}


def worker_preftune(s: Settings, rows: list[dict], workdir: Path) -> dict[str, Any]:
    # A fresh cache: preftune caches precomputed reference log-probs on disk and must not reuse a
    # previous repeat's (the converted SmolLM2 folder is passed by path, not looked up in the cache).
    os.environ["PREFTUNE_CACHE"] = str(workdir / "preftune-cache")
    from preftune.stages import dpo as stage

    device = torch.device(s.device)
    rec = Recorder(s.steps, device)
    t0 = time.perf_counter()
    original = stage.build_reference

    def build_reference(*args: Any, **kwargs: Any):
        rec.start_phase()  # the first call is the train split's reference: the training phase starts here
        out = original(*args, **kwargs)
        rec.reference_done()
        return out

    stage.build_reference = build_reference
    rec.install()
    precompute = s.precompute("preftune")
    try:
        result = stage.run_dpo(preftune_config(s, str(workdir / "preftune-out"), precompute=precompute),
                               train_data=preftune_order(rows, s))
    finally:
        stage.build_reference = original
    history = result.history
    seen = [0.0] + [h["tokens_seen"] for h in history]
    steps = [(h["loss"], int(seen[i + 1] - seen[i])) for i, h in enumerate(history)]
    return {"framework": "preftune", "setup_s": (rec.t_start or t0) - t0, "threads": torch.get_num_threads(),
            "steps": steps,
            "reference": "precomputed before training" if precompute else "reference model run every step",
            **rec.summary()}


def _worker_main(framework: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    s = Settings(**spec["settings"])
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    with tempfile.TemporaryDirectory(prefix=f"dpo-{framework}-") as tmp:
        fn = worker_trl if framework == "trl" else worker_preftune
        out = fn(s, spec["rows"], Path(tmp))
        out["final_peak_rss_mib"] = _rss_hwm_mib()
    Path(result_path).write_text(json.dumps(out))


# ----------------------------------------------------------------------------------------------------
# Parent: run the workers, summarise


def per_step(result: dict[str, Any], grad_accum: int) -> list[tuple[float, int]]:
    """(loss, tokens) per optimizer step; TRL's micro-batch records are averaged per step."""
    if "steps" in result:
        return [(float(loss), int(n)) for loss, n in result["steps"]]
    micro = result["micro"]
    out = []
    for i in range(0, len(micro), grad_accum):
        chunk = micro[i:i + grad_accum]
        out.append((sum(m[0] for m in chunk) / len(chunk), sum(m[1] for m in chunk)))
    return out


def throughput(result: dict[str, Any], grad_accum: int) -> dict[str, float]:
    steps = per_step(result, grad_accum)
    ends, start = result["step_ends"], result["t_start"]
    tokens = [n for _, n in steps]
    n = min(len(ends), len(tokens))
    out = {"phase_s": ends[n - 1] - start, "tokens": float(sum(tokens[:n]))}
    out["tokens_per_s"] = out["tokens"] / out["phase_s"]
    done = result.get("t_reference_done")
    out["reference_s"] = (done - start) if done is not None and result["reference"].startswith("precomputed") else 0.0
    out["first_step_s"] = ends[0] - start - out["reference_s"]
    if n >= 2:
        out["steady_tokens_per_s"] = sum(tokens[1:n]) / (ends[n - 1] - ends[0])
        out["steady_step_s"] = (ends[n - 1] - ends[0]) / (n - 1)
    return out


def run_worker(framework: str, spec_path: Path, workdir: Path, tag: str) -> dict[str, Any]:
    result_path = workdir / f"{tag}.json"
    log_path = workdir / f"{tag}.log"
    env = dict(os.environ, TQDM_DISABLE="1", TOKENIZERS_PARALLELISM="false")
    threads = json.loads(spec_path.read_text())["settings"]["threads"]
    env.setdefault("OMP_NUM_THREADS", str(threads))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, "--spec", str(spec_path),
           "--result", str(result_path)]
    t = time.perf_counter()
    with open(log_path, "w") as logf:
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not result_path.exists():
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(f"{framework} worker failed (exit {proc.returncode}); log tail:\n{tail}")
    out = json.loads(result_path.read_text())
    out["process_s"] = time.perf_counter() - t
    return out


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _fmt(xs: list[float], digits: int = 1) -> str:
    if not xs or any(x is None or math.isnan(x) for x in xs):
        return "n/a"
    med = _median(xs)
    if len(xs) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def summarise(s: Settings, runs: dict[str, list[dict]], data_stats: dict[str, Any], check: CheckResult | None,
              versions: dict[str, str]) -> tuple[str, dict[str, Any]]:
    cuda = s.device == "cuda"
    metrics: dict[str, dict[str, list[float]]] = {}
    for fw, results in runs.items():
        m: dict[str, list[float]] = {k: [] for k in ("tokens_per_s", "steady_tokens_per_s", "phase_s", "reference_s",
                                                      "first_step_s", "steady_step_s", "train_peak",
                                                      "process_peak", "setup_s")}
        for r in results:
            tp = throughput(r, s.grad_accum)
            m["tokens_per_s"].append(tp["tokens_per_s"])
            m["steady_tokens_per_s"].append(tp.get("steady_tokens_per_s", float("nan")))
            m["phase_s"].append(tp["phase_s"])
            m["reference_s"].append(tp["reference_s"])
            m["first_step_s"].append(tp["first_step_s"])
            m["steady_step_s"].append(tp.get("steady_step_s", float("nan")))
            m["setup_s"].append(r["setup_s"])
            mem = r["memory"]
            m["train_peak"].append(mem.get("train_peak_cuda_mib" if cuda else "train_peak_rss_mib"))
            m["process_peak"].append(mem.get("process_peak_cuda_mib" if cuda else "process_peak_rss_mib"))
        metrics[fw] = m

    def ratio(key: str) -> str:
        a, b = metrics["preftune"][key], metrics["trl"][key]
        if not a or not b or any(x is None or math.isnan(x) for x in a + b):
            return "n/a"
        return f"{_median(a) / _median(b):.2f}×"

    mem_what = "CUDA max_memory_allocated" if cuda else "peak RSS"
    ref = {fw: runs[fw][0]["reference"] for fw in runs}
    lines = [
        f"## preftune vs TRL {versions['trl']} DPOTrainer — {s.model} ({versions['params']})",
        "",
        f"{s.num_pairs} pairs ({data_stats['tokens_per_pair']:.0f} non-padding tokens per pair on average, "
        f"sequences {data_stats['min_seq']}–{data_stats['max_seq']} tokens, no truncation) · batch {s.batch} × "
        f"accumulation {s.grad_accum} · {s.steps} step(s) · β {s.beta} · lr {s.lr:g} constant · AdamW (torch, "
        f"non-fused) · max_grad_norm {s.max_grad_norm:g} · {'bf16 autocast' if s.bf16 else 'fp32'} · gradient "
        f"checkpointing {'on' if s.gradient_checkpointing else 'off'} · max_length {s.max_length} · "
        f"{s.device} · {s.threads} thread(s) · torch {versions['torch']} · transformers {versions['transformers']}"
        f" · median (min–max) of {len(runs['trl'])} repeat(s), TRL and preftune alternating",
        "",
        f"Reference log-probs — TRL: {ref['trl']}; preftune: {ref['preftune']}"
        + (" (each framework's default)." if s.reference == "default" else "."),
        "",
        "preftune settings beyond the shared ones: "
        + (", ".join(f"{k}={v}" for k, v in s.preftune_settings.items()) or "none (its defaults)") + ".",
        "",
        "| | TRL | preftune | preftune / TRL |",
        "|---|---|---|---|",
        f"| tokens/s, end-to-end training phase (incl. reference) | {_fmt(metrics['trl']['tokens_per_s'])} | "
        f"{_fmt(metrics['preftune']['tokens_per_s'])} | {ratio('tokens_per_s')} |",
        f"| tokens/s, steady state ({f'steps 2..{s.steps}' if s.steps > 1 else 'needs 2+ steps'}) | {_fmt(metrics['trl']['steady_tokens_per_s'])} | "
        f"{_fmt(metrics['preftune']['steady_tokens_per_s'])} | {ratio('steady_tokens_per_s')} |",
        f"| training phase wall time, s | {_fmt(metrics['trl']['phase_s'], 2)} | "
        f"{_fmt(metrics['preftune']['phase_s'], 2)} | {ratio('phase_s')} |",
        f"| … of which reference precompute, s | {_fmt(metrics['trl']['reference_s'], 2)} | "
        f"{_fmt(metrics['preftune']['reference_s'], 2)} | |",
        f"| … first optimizer step, s | {_fmt(metrics['trl']['first_step_s'], 2)} | "
        f"{_fmt(metrics['preftune']['first_step_s'], 2)} | {ratio('first_step_s')} |",
        f"| … later steps, s per step | {_fmt(metrics['trl']['steady_step_s'], 2)} | "
        f"{_fmt(metrics['preftune']['steady_step_s'], 2)} | {ratio('steady_step_s')} |",
        f"| {mem_what} during training phase, MiB | {_fmt(metrics['trl']['train_peak'], 0)} | "
        f"{_fmt(metrics['preftune']['train_peak'], 0)} | {ratio('train_peak')} |",
        f"| {mem_what} of the whole process (incl. loading), MiB | {_fmt(metrics['trl']['process_peak'], 0)} | "
        f"{_fmt(metrics['preftune']['process_peak'], 0)} | {ratio('process_peak')} |",
        f"| set-up before the phase (load model, tokenize), s | {_fmt(metrics['trl']['setup_s'], 2)} | "
        f"{_fmt(metrics['preftune']['setup_s'], 2)} | |",
        "",
        "| step | tokens | TRL loss | preftune loss | |Δ| |",
        "|---|---|---|---|---|",
    ]
    trl_steps = per_step(runs["trl"][0], s.grad_accum)
    pt_steps = per_step(runs["preftune"][0], s.grad_accum)
    max_diff = 0.0
    order_ok = len(trl_steps) == len(pt_steps)
    for i, ((tl, tn), (pl, pn)) in enumerate(zip(trl_steps, pt_steps)):
        d = abs(tl - pl)
        max_diff = max(max_diff, d)
        order_ok &= tn == pn
        lines.append(f"| {i + 1} | {tn}{'' if tn == pn else f' vs {pn} (!)'} | {tl:.6f} | {pl:.6f} | {d:.1e} |")
    # Curves of every repeat against each other (the runs are deterministic up to float noise).
    for results in runs.values():
        for r in results:
            steps = per_step(r, s.grad_accum)
            for (tl, _), (pl, _) in zip(trl_steps, steps):
                max_diff = max(max_diff, abs(tl - pl))
            order_ok &= [n for _, n in steps] == [n for _, n in trl_steps]
    lines += [
        "",
        f"Loss curves: max |Δ| {max_diff:.1e} over all steps and repeats; per-step token counts "
        f"{'identical (same data order)' if order_ok else 'DIFFER: the two runs did not see the same batches'}.",
    ]
    if check is not None:
        lines += ["", "Equivalence check (fp32, first batch, live reference):", ""]
        lines += [f"    {line}" for line in check.lines]
    summary = {
        "settings": dataclasses.asdict(s),
        "versions": versions,
        "data": data_stats,
        "medians": {fw: {k: _median([x for x in v if x is not None]) for k, v in m.items()}
                    for fw, m in metrics.items()},
        "loss_max_abs_diff": max_diff,
        "same_order": order_ok,
        "check": dataclasses.asdict(check) if check is not None else None,
        "runs": runs,
    }
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=None, help="default: max_length // 2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 tiny, 1e-6 smollm2")
    parser.add_argument("--max-grad-norm", type=float, default=10.0)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--reference", choices=("default", "live", "precompute"), default="default",
                        help="default: TRL live, preftune precomputed (their defaults); or the same for both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--grad-rtol", type=float, default=1e-3,
                        help="check: max per-tensor ||Δ||/||g|| that still counts as fp32 rounding")
    parser.add_argument("--strict", action="store_true", help="check: every difference within --tol, absolute")
    parser.add_argument("--exact", action="store_true",
                        help="check: also compare both with a float64 full-logits computation (slow)")
    parser.add_argument("--check-only", action="store_true", help="run the equivalence check, then stop")
    parser.add_argument("--skip-check", action="store_true")
    parser.add_argument("--preftune", nargs="*", default=[], metavar="KEY=VALUE",
                        help="preftune DPO settings beyond the shared ones, e.g. torch_compile=true padding_free=false "
                             "(YAML values; the equivalence check uses them too where they touch the log-prob path)")
    parser.add_argument("--frameworks", nargs="+", choices=("trl", "preftune"), default=["trl", "preftune"],
                        help="time only these (one alone: its figures, no comparison table; for iterating)")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the worker logs, data and tiny model")
    parser.add_argument("--worker", choices=("trl", "preftune"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        _worker_main(args.worker, args.spec, args.result)
        return

    try:
        import trl
    except ImportError:
        raise SystemExit("trl is not installed: pip install -e .[bench]") from None
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from preftune.config import read_settings

    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="dpo_vs_trl-"))
    model_dir = prepare_model(args.model, workdir, args.max_length, args.seed)
    s = Settings(
        model=args.model, model_dir=str(model_dir), max_length=args.max_length,
        max_prompt_length=args.max_prompt_length or args.max_length // 2, batch=args.batch,
        grad_accum=args.grad_accum, steps=args.steps, beta=args.beta,
        lr=args.lr if args.lr is not None else (1e-3 if args.model == "tiny" else 1e-6),
        max_grad_norm=args.max_grad_norm, bf16=args.bf16, device=args.device, threads=args.threads, seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing, reference=args.reference,
        preftune_settings=read_settings(None, args.preftune))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = make_pairs(tokenizer, s.num_pairs, s.max_length, s.max_prompt_length, s.seed)
    lens = []
    for r in rows:
        p = len(tokenizer(r["prompt"])["input_ids"])
        for col in ("chosen", "rejected"):
            lens.append(p + len(tokenizer(r[col], add_special_tokens=False)["input_ids"]) + 1)
    data_stats = {"pairs": len(rows), "tokens_per_pair": sum(lens) / len(rows), "min_seq": min(lens),
                  "max_seq": max(lens)}
    config = AutoConfig.from_pretrained(model_dir)
    n_params = None
    with contextlib.suppress(Exception):
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    versions = {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                "params": f"{n_params / 1e6:.1f}M parameters" if n_params else config.model_type}
    print(f"workdir {workdir} · model {model_dir} · {versions['params']} · {len(rows)} pairs", file=sys.stderr)

    check = None
    if not args.skip_check:
        print("equivalence check ...", file=sys.stderr)
        check = equivalence_check(s, rows, tol=args.tol, grad_rtol=args.grad_rtol, strict=args.strict,
                                  exact=args.exact, log=lambda m: print(f"  {m}", file=sys.stderr))
        if not check.ok:
            print("\nThe two frameworks do not compute the same thing on the same input: comparison void.")
            print("\n".join(check.lines))
            raise SystemExit(1)
        if args.check_only:
            print("\n".join(check.lines))
            if not args.keep_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            return

    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps({"settings": dataclasses.asdict(s), "rows": rows}))
    runs: dict[str, list[dict]] = {"trl": [], "preftune": []}
    for r in range(args.repeats):
        for fw in [f for f in ("trl", "preftune") if f in args.frameworks]:
            print(f"repeat {r + 1}/{args.repeats}: {fw} ...", file=sys.stderr)
            out = run_worker(fw, spec_path, workdir, f"{fw}-{r}")
            tp = throughput(out, s.grad_accum)
            print(f"  {tp['tokens_per_s']:.1f} tokens/s end-to-end, {tp.get('steady_tokens_per_s', float('nan')):.1f}"
                  f" steady, peak {out['memory'].get('train_peak_rss_mib') or 0:.0f} MiB RSS, "
                  f"process {out['process_s']:.1f} s", file=sys.stderr)
            runs[fw].append(out)
    if len(set(args.frameworks)) < 2:
        if args.json:
            args.json.write_text(json.dumps({"settings": dataclasses.asdict(s), "runs": runs}, indent=2))
        shutil.rmtree(workdir, ignore_errors=True)
        return
    table, summary = summarise(s, runs, data_stats, check, versions)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    if args.keep_workdir:
        print(f"worker logs and data: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
