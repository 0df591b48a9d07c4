"""The three objectives of the DPO stage on hand-made batches: values derived by hand, not by the code.

``score`` and ``reference`` are callables over Rows; here they read fixed log-probs per (example,
column), so every number below can be checked on paper.
"""

import math

import pytest
import torch

from preftune.config import DPOConfig, load_config
from preftune.data.collate import PreferenceBatch, RankingBatch, Rows, UnpairedBatch
from preftune.modeling.logprobs import SequenceLogps
from preftune.objectives import objective_for, reference_as_policy
from preftune.objectives.kto import kto_loss
from preftune.objectives.listwise import listwise_loss, ranking_metrics
from preftune.objectives.pairwise import pairwise_loss


def cfg(*overrides):
    return load_config(DPOConfig, None, ["model_name_or_path=x", *overrides])


def rows(example, column, length=4):
    """Rows whose token content is irrelevant (the callables below read (example, column))."""
    n = len(example)
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[:, 2:] = True  # two completion tokens... the shifted count is length - 2
    return Rows(torch.zeros(n, length, dtype=torch.long), torch.ones(n, length, dtype=torch.long), mask,
                torch.tensor(example), torch.tensor(example), torch.tensor(column))


def table_score(table):
    return lambda r: SequenceLogps(logps=table[r.example, r.column], lengths=r.loss_mask[:, 1:].sum(1).float())


def table_reference(table):
    return lambda r: table[r.example, r.column]


def sigma(x):
    return 1 / (1 + math.exp(-x))


def test_objective_is_picked_by_the_loss_kind():
    assert objective_for(["sigmoid", "ipo"]).kind == "pairwise"
    assert objective_for(["kto"]).kind == "unpaired"
    assert objective_for(["plackett_luce"]).kind == "listwise"


def test_kto_loss_against_hand_values():
    # Example 0 desirable, 1 undesirable. Own completions: policy (−1, −2), reference (−1.5, −1.0) → r = (0.5, −1).
    # KL partners: policy (−3, −4), reference (−3.5, −3.8) → z = mean(0.5, −0.2) = 0.15.
    policy = torch.tensor([[-1.0, -3.0], [-2.0, -4.0]])
    ref = torch.tensor([[-1.5, -3.5], [-1.0, -3.8]])
    batch = UnpairedBatch(main=rows([0, 1], [0, 0]), kl=rows([0, 1], [1, 1]), labels=torch.tensor([True, False]),
                          index=torch.tensor([0, 1]))
    c = cfg("loss_type=kto", "beta=0.1", "desirable_weight=1.5")
    loss, sums = kto_loss(c, table_score(policy), table_reference(ref), batch)
    desirable = 1.5 * (1 - sigma(0.1 * (0.5 - 0.15)))
    undesirable = 1 - sigma(0.1 * (0.15 - (-1.0)))
    assert loss.item() == pytest.approx((desirable + undesirable) / 2, abs=1e-6)
    assert sums["kl"].item() == pytest.approx(2 * 0.15, abs=1e-6)
    assert sums["rewards/chosen"].item() == pytest.approx(0.05, abs=1e-6)       # β r of the desirable one
    assert sums["rewards/rejected"].item() == pytest.approx(-0.1, abs=1e-6)
    assert sums["rewards/accuracies"].item() == 2.0   # 0.5 > 0.15 (desirable), −1 < 0.15 (undesirable)
    assert sums["count:rewards/chosen"].item() == 1.0 and sums["count"].item() == 2.0


def test_kto_reference_point_is_clamped_at_zero_and_reduced_across_ranks():
    policy = torch.tensor([[-1.0, -5.0], [-2.0, -5.0]])
    ref = torch.tensor([[-1.0, -3.0], [-2.0, -3.0]])   # mismatched log-ratios −2: z = max(0, −2) = 0
    batch = UnpairedBatch(main=rows([0, 1], [0, 0]), kl=rows([0, 1], [1, 1]), labels=torch.tensor([True, True]),
                          index=torch.tensor([0, 1]))
    loss, sums = kto_loss(cfg("loss_type=kto"), table_score(policy), table_reference(ref), batch)
    assert sums["kl"].item() == 0.0 and loss.item() == pytest.approx(0.5, abs=1e-6)   # 1 − σ(0)
    # A reduction that adds another rank's (sum 6, count 2) makes z = (−4 + 6) / 4 = 0.5.
    loss, sums = kto_loss(cfg("loss_type=kto", "beta=1"), table_score(policy), table_reference(ref), batch,
                          lambda t: t + torch.tensor([6.0, 2.0]))
    assert sums["kl"].item() == pytest.approx(2 * 0.5)
    assert loss.item() == pytest.approx(1 - sigma(-0.5), abs=1e-6)


def test_kto_scores_partners_without_a_graph():
    policy = torch.tensor([[-1.0, -3.0], [-2.0, -4.0]], requires_grad=True)
    seen = []

    def score(r):
        seen.append(torch.is_grad_enabled())
        return table_score(policy)(r)

    batch = UnpairedBatch(main=rows([0, 1], [0, 0]), kl=rows([0, 1], [1, 1]), labels=torch.tensor([True, False]),
                          index=torch.tensor([0, 1]))
    loss, _ = kto_loss(cfg("loss_type=kto"), score, table_reference(policy.detach() - 0.1), batch)
    loss.backward()
    assert seen == [False, True]
    assert policy.grad[:, 1].abs().sum() == 0   # z is detached: partners get no gradient


def ranking_batch(lengths):
    example, column, position = [], [], []
    for b, k in enumerate(lengths):
        example += [b] * k
        column += list(range(k))
        position += [b] * k
    r = rows(example, column)
    r.position = torch.tensor(position)
    return RankingBatch(rows=r, index=torch.arange(len(lengths)), num_columns=max(lengths))


def test_listwise_loss_against_hand_values_with_ragged_lists():
    # List 0 has 3 completions with rewards β(π − ref) = (2, 0, 1)·β; list 1 has 2 with (−1, 1)·β.
    policy = torch.tensor([[2.0, 0.0, 1.0], [-1.0, 1.0, 0.0]])
    ref = torch.zeros(2, 3)
    batch = ranking_batch([3, 2])
    loss, sums = listwise_loss(cfg("loss_type=plackett_luce", "beta=1"), table_score(policy), table_reference(ref),
                               batch)
    lse = math.log
    first = -(2 - lse(math.exp(2) + 1 + math.exp(1))) - (0 - lse(1 + math.exp(1)))
    second = -(-1 - lse(math.exp(-1) + math.exp(1)))
    assert loss.item() == pytest.approx((first + second) / 2, abs=1e-6)
    # Pair accuracy: list 0 orders (0≻1 ✓, 0≻2 ✓, 1≻2 ✗) = 2/3; list 1 (0≻1 ✗) = 0.
    assert sums["rewards/accuracies"].item() == pytest.approx(2 / 3, abs=1e-6)
    assert sums["rewards/top1"].item() == 1.0
    assert sums["rewards/margins"].item() == pytest.approx((2 - 1) + (-1 - 1), abs=1e-6)   # best − worst
    assert sums["logps/worst"].item() == pytest.approx(1.0 + 1.0, abs=1e-6)


def test_listwise_with_two_completions_equals_pairwise_sigmoid():
    policy = torch.tensor([[-1.0, -2.5], [-3.0, -1.0], [-2.0, -2.2]])
    ref = torch.tensor([[-1.2, -2.0], [-2.5, -1.5], [-2.0, -2.0]])
    c_pl, c_dpo = cfg("loss_type=plackett_luce", "beta=0.5"), cfg("beta=0.5")
    pl, pl_sums = listwise_loss(c_pl, table_score(policy), table_reference(ref), ranking_batch([2, 2, 2]))
    pair = PreferenceBatch(torch.zeros(6, 4, dtype=torch.long), torch.ones(6, 4, dtype=torch.long),
                           rows([0] * 6, [0] * 6).loss_mask, torch.arange(3))
    dpo, dpo_sums = pairwise_loss(c_dpo, table_score(policy), table_reference(ref), pair)
    assert pl.item() == pytest.approx(dpo.item(), abs=1e-6)
    assert pl_sums["rewards/accuracies"].item() == dpo_sums["rewards/accuracies"].item()
    assert pl_sums["rewards/margins"].item() == pytest.approx(dpo_sums["rewards/margins"].item(), abs=1e-6)


def test_ranking_metrics_ignore_padding():
    rewards = torch.tensor([[1.0, 0.0, 99.0]])
    mask = torch.tensor([[True, True, False]])
    m = ranking_metrics(rewards, mask)
    assert m["rewards/top1"].item() == 1.0 and m["rewards/accuracies"].item() == 1.0
    assert m["rewards/worst"].item() == 0.0


def test_reference_as_policy_gives_zero_rewards_for_every_objective():
    ref = torch.tensor([[-1.0, -2.0, -3.0], [-2.0, -1.0, -0.5]])
    reference = table_reference(ref)
    score = reference_as_policy(reference)
    _, s = listwise_loss(cfg("loss_type=plackett_luce"), score, reference, ranking_batch([3, 3]))
    assert s["rewards/best"].item() == 0.0 and s["rewards/margins"].item() == 0.0
    batch = UnpairedBatch(main=rows([0, 1], [0, 0]), kl=rows([0, 1], [1, 1]), labels=torch.tensor([True, False]),
                          index=torch.tensor([0, 1]))
    loss, s = kto_loss(cfg("loss_type=kto"), score, reference, batch)
    assert s["kl"].item() == 0.0 and loss.item() == pytest.approx(0.5)
