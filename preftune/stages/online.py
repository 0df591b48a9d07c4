"""Pieces every online stage wires together: the policy and its sampler, the per-token reference,
sampling + scoring one generation, and held-out evaluation of sampled completions.

The stages (``rl.py`` for ppo / rloo / reinforce, ``grpo.py``, ``online_dpo.py``) turn what
:func:`sample_and_score` returns into a :class:`~preftune.stages.rollout.Rollout` and hand a
:class:`~preftune.stages.rollout.RolloutSource` to the shared loop.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from preftune.config.rl import reward_specs
from preftune.data.collate import Rows, pad_rows
from preftune.data.dataset import BuiltDataset
from preftune.data.mask import completion_sequence
from preftune.data.prompts import TokenizedPrompt
from preftune.modeling.generation import HFSampler, Sampler, SamplingSettings, row_seed
from preftune.modeling.logprobs import SequenceLogprobModel, unwrap_causal_lm
from preftune.rewards import RewardSet, Scores, load_rewards
from preftune.stages.common import eval_mode
from preftune.stages.inputs import policy_path
from preftune.stages.lifecycle import Run
from preftune.stages.policy import distribute, load_frozen, logprob_model
from preftune.stages.rollout import EVAL, MakeRollout, RolloutSource, Schedule
from preftune.train.distributed import all_reduce_sum
from preftune.train.fsdp import is_fsdp, shard
from preftune.train.loop import autocast, reduce_means

__all__ = ["OnlinePolicy", "Samples", "describe_eval", "evaluate_online", "gather_rows", "global_mean_std", "global_whiten",
           "make_rows", "online_parts", "online_policy", "per_token", "reward_extras", "reward_set", "rollout_source", "sample_and_score",
           "sampling_settings", "token_reference"]


def make_rows(prompts: list[tuple[int, ...]], completions: list[list[int]], pad_id: int,
              device: torch.device) -> Rows:
    """Right-padded prompt | completion rows, the layout every log-prob computation here expects."""
    ids, attention, mask = pad_rows([completion_sequence(p, c) for p, c in zip(prompts, completions)], pad_id, None)
    n = torch.arange(len(prompts))
    return Rows(ids, attention, mask, n, n, torch.zeros_like(n)).to(device)


def per_token(model: nn.Module, rows: Rows):
    return model(rows.input_ids, rows.attention_mask, rows.loss_mask, per_token=True)


@dataclass
class OnlinePolicy:
    """The policy three ways: ``policy`` scores rows (log-probs, values), ``trained`` is what the loop
    steps (DDP- or FSDP-wrapped ``policy``), ``sampler`` generates from the same weights (and
    ``eval_sampler``, with the held-out evaluation's settings, e.g. greedy)."""

    policy: SequenceLogprobModel
    trained: nn.Module
    sampler: Sampler
    eval_sampler: Sampler

    @contextlib.contextmanager
    def generating(self) -> Iterator[None]:
        """Evaluation mode, and under FSDP the root's own weights (embeddings, output layer) gathered:
        generation calls the language model directly, past the root's forward that gathers them."""
        with eval_mode(self.policy):
            if is_fsdp(self.trained):
                self.trained.unshard()
                try:
                    yield
                finally:
                    self.trained.reshard()
            else:
                yield


def sampling_settings(cfg: Any, max_new_tokens: int, greedy: bool = False) -> SamplingSettings:
    """The sampler's settings from a config's SamplingGroup keys."""
    return SamplingSettings(max_new_tokens=max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            top_k=cfg.top_k, min_p=cfg.min_p, repetition_penalty=cfg.repetition_penalty,
                            greedy=greedy)


def online_policy(run: Run, model: nn.Module, tokenizer: Any, max_new_tokens: int,
                  value_head: nn.Module | None = None, score_temperature: float | None = None) -> OnlinePolicy:
    """The policy, its sampler (the config's sampling keys, up to ``max_new_tokens``) and its evaluation
    sampler (greedy under ``eval_greedy``). ``score_temperature``: the distribution the trainer's log-probs
    are of (default: the sampling temperature, as a policy gradient needs; online DPO scores the model
    itself, T = 1, as DPO does)."""
    cfg = run.cfg
    temperature = cfg.temperature if score_temperature is None else score_temperature
    policy = logprob_model(run, model, value_head=value_head, temperature=temperature)
    sharded = cfg.fsdp and run.info.enabled
    trained = distribute(run, policy, model)
    if sharded:
        # FSDP2 sets up its state on the root's first forward, and generation calls the language model
        # inside the root directly: run one tiny forward through the root first (no dropout, no graph).
        ids = torch.full((1, 2), tokenizer.eos_token_id, device=run.info.device)
        with torch.no_grad(), eval_mode(policy):
            trained(ids, torch.ones_like(ids), torch.tensor([[False, True]], device=run.info.device))
    # Sharded weights make every forward a collective: all processes keep stepping until all are done.
    settings = (sampling_settings(cfg, max_new_tokens), sampling_settings(cfg, max_new_tokens, cfg.eval_greedy))
    samplers = [HFSampler(unwrap_causal_lm(model), tokenizer.eos_token_id, tokenizer.pad_token_id, s,
                          run.info.device, synced=sharded) for s in settings]
    return OnlinePolicy(policy, trained, *samplers)


def online_parts(run: Run, model: nn.Module, tokenizer: Any, max_new_tokens: int, *,
                 value_head: nn.Module | None = None, score_temperature: float | None = None,
                 reference: bool = True) -> tuple[OnlinePolicy, Any, RewardSet]:
    """Step 3 of every online stage: the policy and its samplers (:func:`online_policy`), π_ref's per-token
    log-probs (:func:`token_reference`; none when ``reference`` is false, a run without a KL term) and the
    reward functions (:func:`reward_set`)."""
    online = online_policy(run, model, tokenizer, max_new_tokens, value_head, score_temperature)
    ref = token_reference(run, online) if reference else None
    if ref is None:
        run.log("reference: none (beta = 0: no KL term, no reference model loaded)")
    return online, ref, reward_set(run)


def rollout_source(run: Run, schedule: Schedule, prompts: BuiltDataset, make_rollout: MakeRollout,
                   what: str = "generations") -> tuple[RolloutSource, int]:
    """The loop's batch source (``stages/rollout.py``) and the optimizer steps it makes (``max_steps``, else
    ``num_train_epochs`` over the prompts), said in the log."""
    cfg = run.cfg
    source = RolloutSource(schedule, prompts, make_rollout, run.info, cfg.seed)
    steps = source.total_steps(cfg.num_train_epochs, cfg.max_steps)
    run.log(f"{what}: {source.describe()}; {steps} optimizer steps")
    return source, steps


def reward_set(run: Run) -> RewardSet:
    """The config's reward functions (``reward_funcs`` / ``reward_model_path`` ...) and their weights."""
    cfg = run.cfg
    rewards = load_rewards(reward_specs(cfg), cfg.reward_weights, run.info.device, batch_size=cfg.reward_batch_size)
    run.log(f"reward: {rewards.describe()}")
    return rewards


def token_reference(run: Run, online: OnlinePolicy):
    """``reference(rows) -> [N, T]`` per-token log-probs of π_ref (fresh samples: nothing to precompute):
    the policy with its LoRA adapter disabled, or a frozen copy (sharded like the policy under fsdp)."""
    cfg = run.cfg
    policy = online.policy
    if cfg.use_peft and cfg.ref_model_name_or_path is None:
        run.log("reference: the policy with its LoRA adapter disabled")

        def adapter_disabled(rows: Rows) -> Tensor:
            with policy.model.disable_adapter():
                return per_token(policy, rows).tokens
        return adapter_disabled
    if run.reference_model is not None:   # a reference object passed from Python, or a model object's copy
        frozen, path = run.reference_model, "the reference object"
    else:
        path = cfg.ref_model_name_or_path or policy_path(cfg)
        frozen = load_frozen(run, path)
    ref = logprob_model(run, frozen, temperature=policy.temperature)
    if cfg.fsdp and run.info.enabled:
        shard(ref, ref.model)
    run.log(f"reference: {path} (frozen copy)")
    return lambda rows: per_token(ref, rows).tokens


@dataclass
class Samples:
    """One batch of sampled completions (rows of one prompt consecutive), decoded and scored."""

    examples: list[TokenizedPrompt]          # one per row
    completion_ids: list[list[int]]
    sampler_logprobs: list[list[float]] | None
    ended: list[bool]
    texts: list[str]
    scores: Scores
    rows: Rows

    def group_index(self, generations: int) -> Tensor:
        return torch.arange(len(self.examples), device=self.rows.input_ids.device) // generations

    def stats(self, device: torch.device) -> dict[str, Tensor]:
        """Per-completion numbers every online stage logs: reward (NaN where no function scored it), each
        function's reward, completion length, and whether it stopped at EOS."""
        stats = {"reward": self.scores.total.to(device)}
        for j, name in enumerate(self.scores.names):
            stats[f"rewards/{name}"] = self.scores.per_function[:, j].to(device)
        stats["response_length"] = self.rows.loss_mask.sum(1).float()
        stats["eos_fraction"] = torch.tensor(self.ended, dtype=torch.float32, device=device)
        return stats


def columns_of(examples: list[TokenizedPrompt]) -> dict[str, list[Any]]:
    """The prompt records' other fields, one list entry per row (None where a record lacks the field)."""
    keys = sorted({k for ex in examples for k in ex.columns})
    return {k: [ex.columns.get(k) for ex in examples] for k in keys}


@torch.no_grad()
def sample_and_score(run: Run, online: OnlinePolicy, tokenizer: Any, rewards: RewardSet,
                     examples: list[TokenizedPrompt], slots: list[int], generations: int, stream: int,
                     generation: int, trainer_state: tuple[int, int] | None = None) -> Samples:
    """Sample ``generations`` completions of each prompt (seeded by (seed, stream, generation, slot, j);
    the evaluation sampler for the EVAL stream), decode them (special tokens removed) and score them
    with every reward function (which may read ``trainer_state``: (step, total steps), see :func:`reward_extras`)."""
    cfg = run.cfg
    rows_examples = [ex for ex in examples for _ in range(generations)]
    seeds = [row_seed(cfg.seed, stream, generation, slot, j) for slot in slots for j in range(generations)]
    sampler = online.eval_sampler if stream == EVAL else online.sampler
    with online.generating(), autocast(cfg.bf16, run.info.device):
        out = sampler.generate([ex.prompt_ids for ex in rows_examples], seeds)
    texts = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
    scores = rewards([ex.prompt for ex in rows_examples], texts, out.completion_ids, columns_of(rows_examples),
                     reward_extras(*trainer_state) if trainer_state is not None else None)
    rows = make_rows([ex.prompt_ids for ex in rows_examples], out.completion_ids, tokenizer.pad_token_id,
                     run.info.device)
    return Samples(rows_examples, out.completion_ids, out.logprobs, out.ended, texts, scores, rows)


def gather_rows(x: Tensor, info) -> Tensor:
    """Every process's ``x`` (equal shapes), concatenated in rank order along the first dimension."""
    if not info.enabled:
        return x
    import torch.distributed as dist

    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def global_mean_std(x: Tensor, info) -> tuple[Tensor, Tensor]:
    """Mean and population standard deviation of ``x`` over every process's entries (two passes)."""
    totals = all_reduce_sum(torch.stack([x.sum(), torch.tensor(float(x.numel()), device=x.device)]), info)
    mean = totals[0] / totals[1]
    var = all_reduce_sum(((x - mean) ** 2).sum(), info) / totals[1]
    return mean, var.sqrt()


def global_whiten(x: Tensor, mask: Tensor, info, eps: float = 1e-8) -> Tensor:
    """:func:`preftune.rl.masked_whiten` over the masked entries of every process: the statistics of the
    whole rollout, not of each process's share (so N processes take the steps of one)."""
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    x = torch.where(mask, x, zero)
    totals = all_reduce_sum(torch.stack([x.sum(), mask.sum().to(x.dtype)]), info)
    count = totals[1].clamp_min(1)
    mean = totals[0] / count
    var = all_reduce_sum(torch.where(mask, (x - mean) ** 2, zero).sum(), info) / count
    return torch.where(mask, (x - mean) * torch.rsqrt(var + eps), zero)


def reward_extras(step: int, total_steps: int) -> dict[str, Any]:
    """What TRL-style reward functions may read besides the data: ``trainer_state.global_step`` etc."""
    return {"trainer_state": SimpleNamespace(global_step=step, max_steps=total_steps)}


def describe_eval(step: int, metrics: dict[str, float]) -> str:
    """The log line of an evaluation with a reference (rl, online-dpo)."""
    return (f"eval @ step {step}: reward {metrics['reward']:.4f} · KL {metrics['kl']:.4f} · length "
            f"{metrics['response_length']:.1f}")


@torch.no_grad()
def evaluate_online(run: Run, online: OnlinePolicy, tokenizer: Any, rewards: RewardSet, reference,
                    dataset: BuiltDataset, generations: int = 1, trainer_state: tuple[int, int] | None = None
                    ) -> dict[str, float]:
    """Mean reward (total and per function), KL (k1, per completion; when there is a reference), length
    and EOS fraction of ``generations`` sampled completions per held-out prompt. The seeds depend on the
    prompt's index only: the same noise at every evaluation (before / after training compare like with
    like), and the training stream untouched. ``completions`` is their count (for standard errors)."""
    cfg = run.cfg
    info = run.info
    batch = max(1, cfg.per_device_eval_batch_size // generations)
    per_rank = math.ceil(len(dataset) / info.world_size)
    sums: dict[str, Tensor] = {}
    for start in range(0, per_rank, batch):
        index = [i for i in range(info.rank + start * info.world_size, len(dataset), info.world_size)][:batch]
        # Under fsdp every process must generate as often as the others (each forward is a collective):
        # one with no prompt left runs the first one and discards the result.
        dummy = not index
        if dummy:
            if not is_fsdp(online.trained):
                continue
            index = [0]
        samples = sample_and_score(run, online, tokenizer, rewards, [dataset.examples[i] for i in index], index,
                                   generations, EVAL, 0, trainer_state)
        stats = samples.stats(info.device)
        if reference is not None:
            with eval_mode(online.policy), autocast(cfg.bf16, info.device):
                logps = per_token(online.policy, samples.rows).tokens.float()
                ref = reference(samples.rows).float()
            stats["kl"] = ((logps - ref) * samples.rows.loss_mask).sum(1)
        if dummy:
            continue
        stats["reward_sq"] = stats["reward"] ** 2
        for key, values in stats.items():
            kept = ~torch.isnan(values)
            add = {key: torch.where(kept, values, 0.0).sum(), f"count:{key}": kept.sum().float()}
            for k, v in add.items():
                sums[k] = sums[k] + v if k in sums else v
    names = ["reward", "reward_sq", "response_length", "eos_fraction"] + [f"rewards/{n}" for n in rewards.names]
    names += ["kl"] if reference is not None else []
    for key in names:   # a process with no held-out prompt still joins the reduction
        for k in (key, f"count:{key}"):
            sums.setdefault(k, torch.zeros((), device=info.device))
    sums["count"] = sums["count:response_length"]
    completions = all_reduce_sum(sums["count"].clone(), info).item()
    metrics = reduce_means(sums, info)
    metrics["reward_std"] = math.sqrt(max(metrics.pop("reward_sq", 0.0) - metrics.get("reward", 0.0) ** 2, 0.0))
    metrics["completions"] = completions
    return metrics
