"""Parity with TRL 1.16's GRPOTrainer: same per-token log-probs, advantages and masks → same loss and
gradient (float64, within 1e-6), for every loss_type both libraries have.

TRL computes the loss inside ``GRPOTrainer._compute_loss`` (a method), so the harness calls that method
on a stand-in trainer carrying the attributes it reads, whose model forward
(``_get_per_token_logps_and_entropies``) returns the given per-token log-probs. Everything after the
forward is TRL's own code. Written against TRL 1.16; a TRL whose internals differ fails here loudly.
"""

from __future__ import annotations

import collections
import types

import pytest
import torch

from preftune.rl import LOSS_TYPES, grpo_loss, step_share

grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer")
GRPOTrainer = grpo_trainer.GRPOTrainer

B, T = 6, 5
MAX_LEN = 7


def _accelerator(num_processes: int = 1):
    return types.SimpleNamespace(num_processes=num_processes, gather=lambda x: x,
                                 reduce=lambda x, reduction="sum": x, gather_for_metrics=lambda x: x)


def trl_loss(logprobs: torch.Tensor, inputs: dict, *, loss_type: str, beta: float, epsilon: float = 0.2,
             epsilon_high: float | None = None, delta: float | None = None, level: str = "token",
             bias_correction: bool = True, accumulation: int = 1, steps_per_generation: int = 1,
             num_processes: int = 1, off_policy_mask_threshold: float | None = None) -> torch.Tensor:
    """TRL's training loss for one micro-batch, from its own ``_compute_loss``."""
    n = inputs["completion_mask"].shape[0]

    def forward(model, input_ids, attention_mask, logits_to_keep, **kwargs):
        return logprobs, torch.zeros_like(logprobs), None

    trainer = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=forward, aux_loss_enabled=False, top_entropy_quantile=1.0,
        off_policy_mask_threshold=off_policy_mask_threshold, get_off_policy_mask=GRPOTrainer.get_off_policy_mask,
        importance_sampling_level=level, beta=beta, loss_type=loss_type, epsilon_low=epsilon,
        epsilon_high=epsilon if epsilon_high is None else epsilon_high, use_vllm=False,
        vllm_importance_sampling_correction=False, model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=accumulation, max_completion_length=MAX_LEN,
        accelerator=_accelerator(num_processes), _entropy_bonus_enabled=False,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        args=types.SimpleNamespace(use_bias_correction_kl=bias_correction, delta=delta,
                                   steps_per_generation=steps_per_generation,
                                   sapo_temperature_pos=1.0, sapo_temperature_neg=1.05))
    full = {"prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
            "completion_ids": torch.zeros(n, logprobs.shape[1], dtype=torch.long), **inputs}
    return GRPOTrainer._compute_loss(trainer, None, full)


def _batch(seed: int, off_policy: bool, b: int = B):
    gen = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, T, generator=gen, dtype=torch.float64) * 3 - 0.05
    lengths = torch.tensor([5, 3, 1, 4, 2, 5][:b])
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    ref = lp + 0.4 * torch.randn(b, T, generator=gen, dtype=torch.float64)
    old = lp + 0.3 * torch.randn(b, T, generator=gen, dtype=torch.float64) if off_policy else None
    return lp, mask, adv, ref, old


def _inputs(mask, adv, ref, old, num_items=None):
    inputs = {"completion_mask": mask, "advantages": adv, "ref_per_token_logps": ref,
              "num_items_in_batch": torch.tensor(float(mask.sum())) if num_items is None else num_items}
    if old is not None:
        inputs["old_per_token_logps"] = old
    return inputs


SHARED = sorted(LOSS_TYPES)
CASES = [
    # (loss_type, level, beta, bias_correction, off_policy, epsilon_high, delta)
    *[(lt, "token", 0.0, True, True, None, None) for lt in SHARED],
    *[(lt, "token", 0.04, True, True, None, None) for lt in SHARED],
    *[(lt, "token", 0.04, False, True, None, None) for lt in SHARED],
    *[(lt, "sequence", 0.04, True, True, None, None) for lt in SHARED],
    *[(lt, "token", 0.04, True, False, None, None) for lt in SHARED],  # on-policy: ρ = 1, ∇ρ = ∇log π
    ("dapo", "token", 0.0, True, True, 0.28, None),  # clip-higher
    ("grpo", "token", 0.0, True, True, 0.28, 1.3),  # two-sided clip (INTELLECT-2)
    ("dapo", "sequence", 0.0, True, True, 0.28, 1.3),  # GSPO with both
    ("cispo", "token", 0.0, True, True, 5.0, None),  # the recommended ε_max
    ("cispo", "token", 0.0, True, True, 1.1, None),  # a cap that binds
]


def test_every_trl_loss_type_is_shared_or_named():
    # TRL 1.16 also has "vespo" (Gamma-weighted sequence loss), not in preftune: the exclusion is deliberate.
    trl_types = {"grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"}
    assert set(LOSS_TYPES) == trl_types - {"vespo"}
    assert {c[0] for c in CASES} == set(LOSS_TYPES)


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_loss_and_gradient_match_trl(case):
    loss_type, level, beta, bias, off_policy, eps_high, delta = case
    lp, mask, adv, ref, old = _batch(CASES.index(case), off_policy)
    a = lp.clone().requires_grad_(True)
    theirs = trl_loss(a, _inputs(mask, adv, ref, old), loss_type=loss_type, beta=beta, epsilon_high=eps_high,
                      delta=delta, level=level, bias_correction=bias)
    b = lp.clone().requires_grad_(True)
    out = grpo_loss(b, adv, mask, old_logprobs=old, ref_logprobs=ref, loss_type=loss_type, beta=beta,
                    epsilon_high=eps_high, delta=delta, importance_sampling_level=level,
                    use_bias_correction_kl=bias, max_completion_length=MAX_LEN)
    torch.testing.assert_close(out.loss, theirs, rtol=0, atol=1e-6)
    theirs.backward()
    out.loss.backward()
    assert float(a.grad.abs().max()) > 1e-3  # a live gradient, not two zeros
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("loss_type", SHARED)
def test_gradient_accumulation_and_ranks_match_trl(loss_type):
    """Two micro-batches × two ranks of one optimizer step. TRL: sum the micro-batch losses (its
    normaliser already divides by the accumulation steps), average the ranks (DDP). Ours: Σ total / Σ units
    over all four, and step_share per micro-batch for a DDP-style trainer."""
    lp, mask, adv, ref, old = _batch(7, True, b=B)
    lp2, mask2, adv2, ref2, old2 = _batch(8, True, b=B)
    parts = [(lp[:3], mask[:3], adv[:3], ref[:3], old[:3]), (lp[3:], mask[3:], adv[3:], ref[3:], old[3:]),
             (lp2[:3], mask2[:3], adv2[:3], ref2[:3], old2[:3]), (lp2[3:], mask2[3:], adv2[3:], ref2[3:], old2[3:])]
    ranks = [parts[:2], parts[2:]]
    # TRL's num_items_in_batch: the generation batch's tokens over all ranks (steps_per_generation = 2).
    num_items = torch.tensor(float(mask.sum() + mask2.sum()))
    kw = {"loss_type": loss_type, "beta": 0.04, "accumulation": 2, "steps_per_generation": 2, "num_processes": 2}
    trl_step = sum(trl_loss(p[0], _inputs(p[1], p[2], p[3], p[4], num_items), **kw)
                   for rank in ranks for p in rank) / 2
    outs = [grpo_loss(p[0], p[2], p[1], old_logprobs=p[4], ref_logprobs=p[3], loss_type=loss_type, beta=0.04,
                      max_completion_length=MAX_LEN) for p in parts]
    total, units = sum(o.total for o in outs), sum(o.units for o in outs)
    torch.testing.assert_close(total / units, trl_step, rtol=0, atol=1e-6)
    shares = sum(step_share(o.total, units, num_processes=2) for o in outs) / 2
    torch.testing.assert_close(shares, trl_step, rtol=0, atol=1e-6)


def test_off_policy_sequence_mask_matches_trl():
    lp, mask, adv, ref, old = _batch(3, True)
    sampling = lp + 0.8 * torch.randn(lp.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    inputs = {**_inputs(mask, adv, ref, old), "sampling_per_token_logps": sampling}
    a, b = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
    theirs = trl_loss(a, inputs, loss_type="dapo", beta=0.04, off_policy_mask_threshold=0.1)
    out = grpo_loss(b, adv, mask, old_logprobs=old, ref_logprobs=ref, loss_type="dapo", beta=0.04,
                    sampling_logprobs=sampling, off_policy_mask_threshold=0.1)
    keep = GRPOTrainer.get_off_policy_mask(adv[:, None], lp, sampling, mask, 0.1)
    assert 0 < float(keep.sum()) < B  # the mask drops some completions and keeps others
    torch.testing.assert_close(out.loss, theirs, rtol=0, atol=1e-6)
    theirs.backward()
    out.loss.backward()
    torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_trl_trainer(tmp_path_factory):
    """A real GRPOTrainer on an in-process tiny Llama (offline, CPU), for the advantages TRL computes inline
    in ``_generate_and_score_completions``; its reward function records what it returned."""
    datasets = pytest.importorskip("datasets")
    from preftune.testing import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    recorded: list[list[float | None]] = []

    def reward(prompts, completions, completion_ids, **kwargs):
        # Spread-out values, some unscorable (None → NaN in TRL), one group of four equal rewards.
        vals = [None if i % 5 == 1 else (1.0 if i >= 12 else float(sum(ids) % 7)) for i, ids in
                enumerate(completion_ids)]
        recorded.append(vals)
        return vals

    ds = datasets.Dataset.from_dict({"prompt": ["hello there", "good movie", "bad movie", "yes no"]})
    args = grpo_trainer.GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl_grpo")), per_device_train_batch_size=16, num_generations=4,
        max_completion_length=6, use_cpu=True, report_to=[], bf16=False, gradient_checkpointing=False)
    trainer = GRPOTrainer(model=tiny_llama(len(tok)), reward_funcs=reward, args=args, train_dataset=ds,
                          processing_class=tok)
    return trainer, [ds[i // 4] for i in range(16)], recorded


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trl(tiny_trl_trainer, scale):
    from preftune.rl import group_advantages

    trainer, batch, recorded = tiny_trl_trainer
    trainer.scale_rewards = scale
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    rewards = torch.tensor([float("nan") if v is None else v for v in recorded[-1]], dtype=torch.float32)
    assert torch.isnan(rewards).any() and len(set(rewards[~torch.isnan(rewards)].tolist())) > 2
    ours = group_advantages(rewards, 4, scale)
    torch.testing.assert_close(ours, out["advantages"].to(ours.dtype), rtol=0, atol=1e-6)
