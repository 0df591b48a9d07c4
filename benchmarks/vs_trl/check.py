"""The equivalence check that gates the timing (in the parent process, before any worker runs).

Both frameworks build their own data pipeline from the same strings: every example must come out as the
same token ids and the first batch as the same padded tensors. Then TRL's loss path
(``DPOTrainer.compute_loss``, reference model run live) and preftune's (``SequenceLogprobModel`` with the
run's packing and prefix sharing + the pairwise objective, a frozen reference copy) compute loss and
gradients on that batch, twice: at π = π_ref (the first step) and with π perturbed (so the log-ratios are
not 0). Passing in fp32: loss and every gradient element within ``tol`` (1e-5), or, failing that, within
fp32 rounding: loss within 16·β·2^-24·Σ|log π| and every parameter's ||Δg||/||g|| within ``grad_rtol``
(1e-3; a mask, shift, EOS or β mismatch moves gradients by 1e-3..1). ``strict`` demands ``tol``
everywhere; ``exact`` also measures both against a float64 full-logits computation (slow on SmolLM2).
Why not 1e-5 absolute for every gradient: on SmolLM2 the RMSNorm weight gradients (sums over every token,
|g| up to ~5) of TRL and of preftune each differ from the float64 values by 5e-5..1.5e-4 in fp32.
``bf16=True`` runs both under bf16 autocast (a GPU check): two bf16 computations of the same math differ
by bf16 rounding (8 bits of mantissa), so there the loss must agree within 2 % and every parameter's
||Δg||/||g|| within ``BF16_GRAD_RTOL``, which still catches a wrong mask, shift or EOS (they move
gradients by O(1)), but not a 2 % change of β.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
from typing import Any

import torch

from vs_trl.frameworks import preftune_config, trl_config, trl_dataset, trl_trainer_class
from vs_trl.settings import Settings

BF16_GRAD_RTOL = 5e-2


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
                      strict: bool = False, exact: bool = False, log=print, bf16: bool = False) -> CheckResult:
    """Same token ids, same first batch, same loss and gradients from both frameworks' own code (fp32, or
    both under bf16 autocast with ``bf16``: module docstring)."""
    from transformers import AutoTokenizer

    from preftune.data.dataset import DataSettings, build_preference_dataset
    from preftune.modeling.load import freeze, load_causal_lm, load_tokenizer
    from preftune.modeling.logprobs import SequenceLogprobModel
    from preftune.modeling.reference import FrozenReference
    from preftune.objectives import objective_for

    torch.set_num_threads(s.threads)
    device = torch.device(s.device)
    lines: list[str] = []
    details: dict[str, Any] = {"tol": tol, "precision": "bf16" if bf16 else "fp32"}
    if bf16:
        grad_rtol = max(grad_rtol, BF16_GRAD_RTOL)
    ok = True

    def say(msg: str) -> None:
        lines.append(msg)
        log(msg)

    with tempfile.TemporaryDirectory(prefix="dpo-check-") as tmp:
        # preftune's pipeline: render (plain text) → tokenize → collate.
        cfg = preftune_config(s, tmp, precompute=False, bf16=bf16)
        tokenizer = load_tokenizer(s.model_dir)
        built = build_preference_dataset(rows, tokenizer, DataSettings(
            max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, use_chat_template=False))
        objective = objective_for(cfg.loss_type)

        # TRL's pipeline: its own tokenization (prompt + completion + eos text) and collator.
        trainer = trl_trainer_class()(
            model=s.model_dir, args=trl_config(s, tmp, precompute=False, bf16=bf16),
            train_dataset=trl_dataset(rows), processing_class=AutoTokenizer.from_pretrained(s.model_dir))
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
        p_batch = objective.layout.collate(built.examples[:s.batch], list(range(s.batch)),
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
            from preftune.stages.policy import enable_gradient_checkpointing

            enable_gradient_checkpointing(policy)
        # The same log-prob path the timed run uses (chunk size, packing, prefix sharing: the config's).
        layout = {"padding_free": cfg.padding_free,
                  "prefix_sharing": "false" if cfg.torch_compile else cfg.prefix_sharing, "log": say}
        p_policy = SequenceLogprobModel(policy, cfg.logprob_chunk_size, **layout).train()
        p_ref = FrozenReference(SequenceLogprobModel(freeze(load_causal_lm(s.model_dir, device)),
                                                     cfg.logprob_chunk_size, **layout))
        t_model = trainer.model
        t_model.train()

        def autocast():
            return torch.autocast(device.type, torch.bfloat16) if bf16 else contextlib.nullcontext()

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
            with trainer.compute_loss_context_manager(), autocast():
                t_loss = trainer.compute_loss(t_model, t_inputs)
            t_loss.backward()
            with autocast():
                p_loss, sums = objective.loss(cfg, lambda r: p_policy(r.input_ids, r.attention_mask, r.loss_mask),
                                              p_ref, p_inputs)
            # The log-ratios are differences of fp32 sums of hundreds of log-probs (|Σ| ~ 100s): rounding moves
            # the loss by ~β · 2^-24 · Σ|log π|. Allow 16 times that (a wrong token moves it by ~β · |log p|).
            mean_abs_logps = 2 * (sums["logps/chosen"].abs() + sums["logps/rejected"].abs()).item() / s.batch
            loss_tol = max(tol, 16 * s.beta * 2**-24 * mean_abs_logps)
            if bf16:
                loss_tol = max(loss_tol, 0.02 * abs(t_loss.item()))
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
                    f" → beyond {tol:g} absolute, within {'bf16' if bf16 else 'fp32'} rounding (loss ≤ {loss_tol:.1e}, "
                    f"||Δ||/||g|| ≤ {grad_rtol:g})"
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
