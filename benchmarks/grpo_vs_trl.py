"""preftune's GRPO vs TRL 1.16's GRPOTrainer (``use_vllm=False``): same model, prompts, group size, lengths, steps.

    pip install -e .[bench]        # adds trl, pinned
    python benchmarks/grpo_vs_trl.py --model tiny --steps 3 --repeats 1
    python benchmarks/grpo_vs_trl.py --model smollm2 --prompts 8 --generations 8 --max-completion-length 32 \\
        --steps 10 --repeats 2 --threads 2 [--json out.json]

1. Equivalence check (in this process, before any timing; ``--check-only`` stops after it, ``--skip-check``
   skips it). Both frameworks tokenize the same prompts (the offline addition task, conversational, each
   with its ``answer``) through their own pipelines: the ids must be equal. Then one generation batch —
   ``--prompts`` prompts × ``--generations`` completions, sampled once with preftune's sampler and scored
   with the shared reward (``exact_answer``), group-relative advantages — goes through TRL's own
   ``GRPOTrainer._compute_loss`` and through preftune's (``SequenceLogprobModel`` per-token log-probs +
   ``preftune.rl.grpo_loss``), loss_type dapo, fp32: the first-step loss and every gradient must agree
   within ``--tol`` (1e-5), or within fp32 rounding (every parameter's ||Δg||/||g|| ≤ ``--grad-rtol``, 1e-3).
   Otherwise the timing would compare different computations: the script says why and exits 1.
2. Timing: each framework trains ``--steps`` optimizer steps in its own fresh subprocess, alternating TRL,
   preftune, ... (``--repeats`` rounds). Same on both sides: the model folder, the prompt set, num_generations,
   per-step batch (prompts × generations completions, one optimizer step per generation), max_completion_length,
   temperature 1 (no top-k / top-p), beta 0 (no reference model), loss_type dapo, lr (constant), AdamW (torch,
   non-fused), max_grad_norm, fp32, no gradient checkpointing (TRL's default is on), threads. Not the same:
   the order of prompts and the random draws (each framework samples with its own generator), so completion
   lengths differ by chance; the table reports them.

Reported (the training phase: from the first step's start to the last step's end; model loading outside):

* tokens/s: prompt + completion tokens of every sampled completion (non-padding), over the training phase;
* generation time share: time inside the generate call (TRL's ``_generate_single_turn``, preftune's
  ``HFSampler.generate``) over the training phase; generated tokens/s: completion tokens per second of it;
* seconds per step, mean completion length, peak RSS of the worker process. Medians over the repeats.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The DPO benchmark's pieces: the equivalence verdict, gradient comparison, model preparation, workers, table.
from vs_trl.check import CheckResult, _grad_diff  # noqa: E402
from vs_trl.report import _fmt, _median  # noqa: E402
from vs_trl.workers import _rss_hwm_mib, run_worker  # noqa: E402
from vs_trl.workload import prepare_model  # noqa: E402


@dataclasses.dataclass
class Settings:
    model: str
    model_dir: str
    prompts: int                # per optimizer step (= per generation)
    generations: int
    max_completion_length: int
    steps: int
    lr: float
    max_grad_norm: float
    threads: int
    seed: int

    @property
    def completions(self) -> int:
        return self.prompts * self.generations


def task_rows(n: int, seed: int) -> list[dict]:
    """``n`` distinct addition problems (operands 0–20, conversational prompts with an ``answer``)."""
    from preftune.tasks.arithmetic import addition_problems, split_problems

    rows, _ = split_problems(addition_problems(random.Random(seed), 0, 20, "plain"), n, 0)
    return rows


def reward(completions: list, answer: list, **kwargs: Any) -> list:
    from preftune.rewards.verifiable import exact_answer

    return exact_answer(completions, answer)


def trl_config(s: Settings, output_dir: str):
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir, per_device_train_batch_size=s.completions, gradient_accumulation_steps=1,
        num_generations=s.generations, max_completion_length=s.max_completion_length, max_steps=s.steps,
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", weight_decay=0.0,
        max_grad_norm=s.max_grad_norm, bf16=False, use_cpu=True, gradient_checkpointing=False, beta=0.0,
        loss_type="dapo", temperature=1.0, top_p=1.0, top_k=0, use_vllm=False, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, seed=s.seed, dataloader_num_workers=0)


def preftune_config(s: Settings, output_dir: str):
    from preftune.config import GRPOConfig

    return GRPOConfig(
        model_name_or_path=s.model_dir, output_dir=output_dir, per_device_train_batch_size=s.completions,
        num_generations=s.generations, max_completion_length=s.max_completion_length, max_steps=s.steps,
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, optimizer="adamw", weight_decay=0.0,
        max_grad_norm=s.max_grad_norm, beta=0.0, loss_type="dapo", temperature=1.0, threads=s.threads,
        seed=s.seed, logging_steps=1, report_to="none", progress_bar=False,
        reward_funcs=["benchmarks.grpo_vs_trl:reward"], max_prompt_length=None, gradient_checkpointing=False,
        disable_dropout=False)


def _trl_trainer(s: Settings, rows: list[dict], output_dir: str):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    return GRPOTrainer(model=s.model_dir, reward_funcs=[reward], args=trl_config(s, output_dir),
                       train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(s.model_dir))


# ----------------------------------------------------------------------------------------------------
# 1. Equivalence check


def equivalence_check(s: Settings, rows: list[dict], tol: float = 1e-5, grad_rtol: float = 1e-3,
                      log=print) -> CheckResult:
    """Same prompt ids, then the same first-step GRPO loss and gradients from TRL's and preftune's code."""
    from preftune import rl
    from preftune.data.dataset import DataSettings
    from preftune.data.prompts import build_prompt_dataset
    from preftune.modeling.generation import HFSampler, SamplingSettings, row_seed
    from preftune.modeling.load import load_causal_lm, load_tokenizer
    from preftune.modeling.logprobs import SequenceLogprobModel
    from preftune.stages.online import make_rows, per_token

    torch.set_num_threads(s.threads)
    lines: list[str] = []
    details: dict[str, Any] = {"tol": tol}

    def say(msg: str) -> None:
        lines.append(msg)
        log(msg)

    with tempfile.TemporaryDirectory(prefix="grpo-check-") as tmp:
        trainer = _trl_trainer(s, rows, tmp)
        tokenizer = load_tokenizer(s.model_dir)
        built = build_prompt_dataset(rows, tokenizer, DataSettings(max_length=None, max_prompt_length=None))
        trl_ids, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
        mismatched = [i for i, (a, b) in enumerate(zip(trl_ids, built.examples)) if list(a) != list(b.prompt_ids)]
        details["prompt_id_mismatches"] = len(mismatched)
        say(f"prompt ids: {len(rows) - len(mismatched)}/{len(rows)} identical")
        if mismatched:
            return CheckResult(False, lines, details)

        # One generation batch, sampled once, scored, group-relative advantages (both sides get the same).
        policy_lm = load_causal_lm(s.model_dir)
        examples = built.examples[:s.prompts]
        prompt_ids = [ex.prompt_ids for ex in examples for _ in range(s.generations)]
        sampler = HFSampler(policy_lm.eval(), tokenizer.eos_token_id, tokenizer.pad_token_id,
                            SamplingSettings(max_new_tokens=s.max_completion_length), torch.device("cpu"))
        completions = sampler.generate(prompt_ids, [row_seed(s.seed, i) for i in range(len(prompt_ids))]).completion_ids
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        rewards = torch.tensor(reward([[{"role": "assistant", "content": t}] for t in texts],
                                      [ex.columns["answer"] for ex in examples for _ in range(s.generations)]))
        details["reward_mean"] = rewards.mean().item()
        if bool(rl.zero_std_groups(rewards, s.generations).all()):
            # No group has a learning signal (e.g. a random model never answers right): advantages of 0 would
            # make every gradient 0 on both sides and the check void. Score by length instead.
            rewards = torch.tensor([float(len(c)) for c in completions])
            say("every group's reward is constant: the check scores completions by their length instead")
        advantages = rl.group_advantages(rewards, s.generations, "group")

        # preftune: per-token log-probs of the policy, grpo_loss (dapo).
        policy_lm.train()
        rows_t = make_rows(prompt_ids, completions, tokenizer.pad_token_id, torch.device("cpu"))
        out = per_token(SequenceLogprobModel(policy_lm, padding_free=True), rows_t)
        ours = rl.grpo_loss(out.tokens, advantages, rows_t.loss_mask, loss_type="dapo").loss
        ours.backward()
        ours_grads = {n: p.grad for n, p in policy_lm.named_parameters()}

        # TRL: its own _compute_loss on the same prompt | completion ids (left-padded prompts, right-padded
        # completions, as its generation step builds them).
        pad = tokenizer.pad_token_id
        width = max(len(p) for p in prompt_ids)
        p_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompt_ids])
        p_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
        length = max(len(c) for c in completions)
        c_ids = torch.tensor([c + [pad] * (length - len(c)) for c in completions])
        c_mask = torch.tensor([[1] * len(c) + [0] * (length - len(c)) for c in completions])
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1    # what Trainer.train sets before each step
        theirs = trainer._compute_loss(trainer.model, {
            "prompt_ids": p_ids, "prompt_mask": p_mask, "completion_ids": c_ids, "completion_mask": c_mask,
            "advantages": advantages, "num_items_in_batch": c_mask.sum()})
        theirs.backward()
        trl_grads = {n: p.grad for n, p in trainer.model.named_parameters()}

    diff = _grad_diff(trl_grads, ours_grads)
    loss_diff = abs(ours.item() - theirs.item())
    details["first_step"] = {"trl_loss": theirs.item(), "preftune_loss": ours.item(), "loss_abs_diff": loss_diff,
                             "grad_max_abs_diff": diff.max_abs, "grad_max_rel_diff": diff.max_rel}
    say(f"first-step loss: TRL {theirs.item():.8f}, preftune {ours.item():.8f} (|Δ| {loss_diff:.2e}); gradients: "
        f"max |Δ| {diff.max_abs:.2e} ({diff.max_abs_param}), max ||Δg||/||g|| {diff.max_rel:.2e} ({diff.max_rel_param})")
    ok = loss_diff <= tol and (diff.max_abs <= tol or diff.max_rel <= grad_rtol) and diff.max_grad > 0
    say("equivalence: " + ("PASS" if ok else "FAIL — the frameworks do not compute the same loss; timings void"))
    return CheckResult(ok, lines, details)


# ----------------------------------------------------------------------------------------------------
# 2. Timing workers (each in its own process)


class Clock:
    """The training phase, the time inside the generate call, and the tokens of every sampled completion."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None
        self.generating = 0.0
        self.tokens = 0
        self.completion_tokens = 0
        self.completions = 0

    def timed(self, fn):
        def wrapper(*args: Any, **kwargs: Any):
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            self.generating += time.perf_counter() - t
            return out
        return wrapper

    def summary(self, steps: int) -> dict[str, Any]:
        phase = self.end - self.start
        return {"phase_s": phase, "tokens": self.tokens, "tokens_per_s": self.tokens / phase,
                "generation_share": self.generating / phase,
                "generated_tokens_per_s": self.completion_tokens / max(self.generating, 1e-9),
                "step_s": phase / steps, "mean_completion_length": self.completion_tokens / max(self.completions, 1),
                "peak_rss_mib": _rss_hwm_mib()}


def worker_trl(s: Settings, rows: list[dict], workdir: Path) -> dict[str, Any]:
    clock = Clock()
    trainer = _trl_trainer(s, rows, str(workdir / "trl-out"))
    trainer._generate_single_turn = clock.timed(trainer._generate_single_turn)
    score = trainer._generate_and_score_completions

    def counted(inputs):
        out = score(inputs)
        clock.tokens += int(out["prompt_mask"].sum() + out["completion_mask"].sum())
        clock.completion_tokens += int(out["completion_mask"].sum())
        clock.completions += int(out["completion_mask"].shape[0])
        return out

    trainer._generate_and_score_completions = counted
    clock.start = time.perf_counter()
    trainer.train()
    clock.end = time.perf_counter()
    return {"framework": "trl", **clock.summary(s.steps)}


def worker_preftune(s: Settings, rows: list[dict], workdir: Path) -> dict[str, Any]:
    from preftune.modeling import generation
    from preftune.stages import grpo as stage

    clock = Clock()
    original_generate, original_loop = generation.HFSampler.generate, stage.train_loop

    def generate(self, prompt_ids, seeds):
        out = clock.timed(original_generate)(self, prompt_ids, seeds)
        if self.settings is not None and not self.settings.greedy:
            clock.completion_tokens += sum(len(c) for c in out.completion_ids)
            clock.completions += len(out.completion_ids)
        return out

    def train_loop(**kwargs: Any):
        clock.start, clock.generating = time.perf_counter(), 0.0
        state = original_loop(**kwargs)
        clock.end = time.perf_counter()
        clock.tokens = state.tokens_seen
        return state

    generation.HFSampler.generate, stage.train_loop = generate, train_loop
    try:
        stage.run_grpo(preftune_config(s, str(workdir / "preftune-out")), train_data=rows)
    finally:
        generation.HFSampler.generate, stage.train_loop = original_generate, original_loop
    return {"framework": "preftune", **clock.summary(s.steps)}


def _worker_main(framework: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    s = Settings(**spec["settings"])
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # benchmarks.grpo_vs_trl:reward imports
    with tempfile.TemporaryDirectory(prefix=f"grpo-{framework}-") as tmp:
        out = (worker_trl if framework == "trl" else worker_preftune)(s, spec["rows"], Path(tmp))
    Path(result_path).write_text(json.dumps(out))


# ----------------------------------------------------------------------------------------------------
# Parent: run the workers, summarise


def summarise(s: Settings, runs: dict[str, list[dict]], check: CheckResult | None) -> tuple[str, dict]:
    rows = [("tokens/s (training phase)", "tokens_per_s", 1), ("generation time share", "generation_share", 3),
            ("generated tokens/s", "generated_tokens_per_s", 1), ("seconds per step", "step_s", 2),
            ("mean completion length", "mean_completion_length", 1), ("peak RSS (MiB)", "peak_rss_mib", 0)]
    out = [f"GRPO, {s.model}: {s.prompts} prompts × {s.generations} completions per step, max "
           f"{s.max_completion_length} new tokens, {s.steps} steps, {s.threads} thread(s), fp32, "
           f"{len(runs['trl'])} repeat(s) (median, range)", "",
           "| | TRL | preftune | preftune / TRL |", "|---|---|---|---|"]
    table = {}
    for label, key, digits in rows:
        a, b = [r[key] for r in runs["trl"]], [r[key] for r in runs["preftune"]]
        ratio = _median(b) / _median(a) if _median(a) else float("nan")
        out.append(f"| {label} | {_fmt(a, digits)} | {_fmt(b, digits)} | {ratio:.2f}× |")
        table[key] = {"trl": a, "preftune": b, "ratio": ratio}
    if check is not None:
        out += ["", *check.lines]
    return "\n".join(out), table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny", choices=("tiny", "smollm2"))
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--grad-rtol", type=float, default=1e-3)
    p.add_argument("--check-only", action="store_true")
    p.add_argument("--skip-check", action="store_true")
    p.add_argument("--json", help="write the settings, check and table here")
    p.add_argument("--worker", choices=("trl", "preftune"), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker_main(args.worker, args.spec, args.result)
    with tempfile.TemporaryDirectory(prefix="grpo-bench-") as tmp:
        workdir = Path(tmp)
        model_dir = prepare_model(args.model, workdir, max_length=512, seed=args.seed)
        s = Settings(args.model, str(model_dir), args.prompts, args.generations, args.max_completion_length,
                     args.steps, args.lr, args.max_grad_norm, args.threads, args.seed)
        rows = task_rows(s.prompts * s.steps, s.seed)
        check = None
        if not args.skip_check:
            check = equivalence_check(s, rows, args.tol, args.grad_rtol)
            if not check.ok:
                raise SystemExit(1)
            if args.check_only:
                return
        spec = workdir / "spec.json"
        spec.write_text(json.dumps({"settings": dataclasses.asdict(s), "rows": rows}))
        runs: dict[str, list[dict]] = {"trl": [], "preftune": []}
        for r in range(args.repeats):
            for framework in ("trl", "preftune"):
                print(f"repeat {r + 1}/{args.repeats}: {framework} ...", file=sys.stderr, flush=True)
                runs[framework].append(run_worker(framework, spec, workdir, f"{framework}-{r}",
                                                        Path(__file__).resolve()))
        text, table = summarise(s, runs, check)
        print(text)
        if args.json:
            Path(args.json).write_text(json.dumps({"settings": dataclasses.asdict(s), "table": table, "runs": runs,
                                                   "check": check.details if check else None}, indent=1))


if __name__ == "__main__":
    main()
