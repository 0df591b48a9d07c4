"""PPO, value and policy-gradient losses: hand-derived values, float64 gradcheck, invariants."""


import pytest
import torch

from preftune.rl import (
    masked_mean,
    ppo_policy_loss,
    rloo_advantages,
    sequence_policy_gradient_loss,
    value_loss,
)

T, F = True, False
NAN, INF = float("nan"), float("inf")

# Six completion tokens, ε = 0.2 (band [0.8, 1.2]); ℓ = max(−Aρ, −A clip(ρ)), ∂ℓ/∂log π = −Aρ unless
# the clipped term is strictly larger (then 0):
#   A   ρ     −Aρ    −A clip(ρ)   ℓ      clipped?  ∂ℓ/∂log π
#   +1  1.1   −1.1   −1.1         −1.1   no        −1.1     inside the band
#   +1  1.5   −1.5   −1.2         −1.2   yes        0       past the band in A's direction: no gain
#   +1  0.5   −0.5   −0.8         −0.5   no        −0.5     against A's direction: charged in full
#   −1  1.5    1.5    1.2          1.5   no         1.5     against A's direction: charged in full
#   −1  0.5    0.5    0.8          0.8   yes        0       past the band in A's direction: no gain
#   −1  0.9    0.9    0.9          0.9   no         0.9     inside the band
# loss = (−1.1 − 1.2 − 0.5 + 1.5 + 0.8 + 0.9)/6 = 0.4/6; clipfrac = 2/6; ratio_mean = 6.0/6 = 1.
# approx_kl = mean of ρ − 1 − log ρ = (0.0046898 + 0.0945349 + 0.1931472 + 0.0945349 + 0.1931472
#             + 0.0053605)/6 = 0.5854145/6 = 0.0975691.
# Layout (2, 4): row 0 holds tokens 1–4, row 1 = [garbage, 5, 6, garbage]; garbage is masked out.
RATIOS = [[1.1, 1.5, 0.5, 1.5], [1.0, 0.5, 0.9, 1.0]]
ADVS = [[1.0, 1.0, 1.0, -1.0], [NAN, -1.0, -1.0, NAN]]
MASK = torch.tensor([[T, T, T, T], [F, T, T, F]])


def _clip_case():
    old = torch.full((2, 4), -1.0, dtype=torch.float64)
    new = old + torch.tensor(RATIOS, dtype=torch.float64).log()
    new[1, 0], new[1, 3] = -INF, NAN
    return new.requires_grad_(), old, torch.tensor(ADVS, dtype=torch.float64)


def test_ppo_clip_cases_hand_values():
    new, old, adv = _clip_case()
    loss, stats = ppo_policy_loss(new, old, adv, MASK, clip_range=0.2)
    assert loss.item() == pytest.approx(0.4 / 6, abs=1e-12)
    assert stats["clipfrac"].item() == pytest.approx(2 / 6, abs=1e-12)
    assert stats["ratio_mean"].item() == pytest.approx(1.0, abs=1e-12)
    assert stats["approx_kl"].item() == pytest.approx(0.0975691, abs=1e-7)
    loss.backward()
    expected = torch.tensor([[-1.1, 0.0, -0.5, 1.5], [0.0, 0.0, 0.9, 0.0]], dtype=torch.float64) / 6
    assert torch.allclose(new.grad, expected, atol=1e-12)  # finite, and 0 on the garbage


def test_ppo_stats_are_detached_tensors():
    new, old, adv = _clip_case()
    _, stats = ppo_policy_loss(new, old, adv, MASK, clip_range=0.2)
    assert set(stats) == {"clipfrac", "approx_kl", "ratio_mean"}
    for v in stats.values():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad


def test_ppo_at_ratio_one_is_vanilla_policy_gradient():
    torch.manual_seed(0)
    logprobs = (-3 * torch.rand(3, 5, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(3, 5, dtype=torch.float64)
    mask = torch.rand(3, 5) > 0.3
    loss, stats = ppo_policy_loss(logprobs, logprobs.detach(), adv, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(-masked_mean(adv, mask).item(), abs=1e-12)
    assert stats["clipfrac"].item() == 0.0 and stats["approx_kl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0
    (grad_ppo,) = torch.autograd.grad(loss, logprobs)
    (grad_pg,) = torch.autograd.grad(-masked_mean(adv * logprobs, mask), logprobs)
    assert torch.allclose(grad_ppo, grad_pg, atol=1e-15)


def test_ppo_gradcheck_float64_away_from_kinks():
    torch.manual_seed(1)
    logprobs = (-3 * torch.rand(2, 4, dtype=torch.float64)).requires_grad_()
    # log ρ with ρ ∈ {0.61, 0.95, 1.05, 1.65, 1.11, 0.74, 1.35, 0.9}: ≥ 0.06 from the kinks at 0.8, 1.2.
    log_ratio = torch.tensor([[-0.5, -0.05, 0.05, 0.5], [0.1, -0.3, 0.3, -0.1]], dtype=torch.float64)
    old = logprobs.detach() - log_ratio
    adv = torch.tensor([[1.0, -2.0, 0.5, -1.0], [-0.7, 1.3, 2.0, 0.4]], dtype=torch.float64)
    mask = torch.tensor([[T, T, T, T], [T, T, T, F]])
    assert torch.autograd.gradcheck(lambda lp: ppo_policy_loss(lp, old, adv, mask, 0.2)[0], (logprobs,))


def test_ppo_detaches_old_logprobs_and_advantages():
    new = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.1, -1.9]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    ppo_policy_loss(new, old, adv, torch.ones(1, 2, dtype=torch.bool), 0.2)[0].backward()
    assert old.grad is None and adv.grad is None and new.grad is not None
    with pytest.raises(ValueError, match="clip_range"):
        ppo_policy_loss(new, old, adv, torch.ones(1, 2, dtype=torch.bool), 0.0)


# Value loss, ε = 0.2, V_old = 1, R = 2 (the 4th token, garbage, is masked out):
#   V = 1.5: (V − R)² = 0.25; clip(V) = 1.2 → (1.2 − 2)² = 0.64; max 0.64 (clipped, ∂/∂V = 0)
#   V = 1.1: 0.81; inside the band → 0.81                        (∂/∂V = ½·2(1.1 − 2)/3 = −0.3)
#   V = 0.5: 2.25; clip(V) = 0.8 → 1.44; max 2.25 (unclipped)    (∂/∂V = (0.5 − 2)/3 = −0.5)
# clipped loss = ½ (0.64 + 0.81 + 2.25)/3 = 3.7/6; vf_clipfrac = 1/3.
# unclipped    = ½ (0.25 + 0.81 + 2.25)/3 = 3.31/6.
VALUES = [[1.5, 1.1, 0.5, NAN]]
VMASK = torch.tensor([[T, T, T, F]])


def _value_case():
    v = torch.tensor(VALUES, dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[1.0, 1.0, 1.0, INF]], dtype=torch.float64)
    ret = torch.tensor([[2.0, 2.0, 2.0, NAN]], dtype=torch.float64)
    return v, old, ret


def test_value_loss_hand_values_clipped():
    v, old, ret = _value_case()
    loss, stats = value_loss(v, old, ret, VMASK, clip_range_value=0.2)
    assert loss.item() == pytest.approx(3.7 / 6, abs=1e-12)
    assert stats["vf_clipfrac"].item() == pytest.approx(1 / 3, abs=1e-12)
    loss.backward()
    assert v.grad.tolist()[0] == pytest.approx([0.0, -0.3, -0.5, 0.0], abs=1e-12)


def test_value_loss_hand_values_unclipped():
    v, old, ret = _value_case()
    loss, stats = value_loss(v, old, ret, VMASK, clip_range_value=None)
    assert loss.item() == pytest.approx(3.31 / 6, abs=1e-12)
    assert stats["vf_clipfrac"].item() == 0.0 and not stats["vf_clipfrac"].requires_grad
    loss.backward()
    # ∂/∂V = (V − R)/3 = (−0.5, −0.9, −1.5)/3.
    assert v.grad.tolist()[0] == pytest.approx([-0.5 / 3, -0.3, -0.5, 0.0], abs=1e-12)


@pytest.mark.parametrize("clip", [0.2, None])
def test_value_loss_gradcheck_float64(clip):
    values = torch.tensor([[0.3, -1.2, 2.0], [0.7, 0.1, -0.4]], dtype=torch.float64, requires_grad=True)
    # V − V_old ∈ {0.05, −0.5, 0.6, −0.1, 0.35, −0.3}: away from ±ε; returns away from the points
    # where the clipped and unclipped squares are equal outside the band.
    old = values.detach() - torch.tensor([[0.05, -0.5, 0.6], [-0.1, 0.35, -0.3]], dtype=torch.float64)
    returns = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.5, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[T, T, T], [T, T, F]])
    assert torch.autograd.gradcheck(lambda v: value_loss(v, old, returns, mask, clip)[0], (values,))


def test_sequence_policy_gradient_hand_value_and_gradient():
    # L = −mean(2·(−1), (−1)·(−2)) = −mean(−2, 2) = 0; ∂L/∂log π_i = −A_i/N = (−1, 0.5).
    logps = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64, requires_grad=True)
    loss = sequence_policy_gradient_loss(logps, adv)
    assert loss.item() == 0.0
    loss.backward()
    assert logps.grad.tolist() == [-1.0, 0.5] and adv.grad is None


def test_sequence_policy_gradient_gradcheck_float64():
    torch.manual_seed(2)
    logps = (-5 * torch.rand(6, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda lp: sequence_policy_gradient_loss(lp, adv), (logps,))
    with pytest.raises(ValueError, match="shapes differ"):
        sequence_policy_gradient_loss(logps, adv[:5])


def test_rloo_sequence_gradient_is_unbiased():
    # A one-token "completion" from a softmax policy over 4 actions: exact ∇_θ E_π[r] = π ⊙ (r − E_π r).
    # 50 000 prompts × k = 4 RLOO samples; the estimate of −∇ must match within 0.01 (per-coordinate
    # standard errors here are ~0.0007–0.0012, so 0.01 is ~8 of them).
    theta = torch.tensor([0.2, -0.1, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    reward = torch.tensor([1.0, 0.0, -0.5, 2.0], dtype=torch.float64)
    pi = torch.softmax(theta.detach(), -1)
    exact = pi * (reward - (pi * reward).sum())
    y = torch.multinomial(pi, 200_000, replacement=True, generator=torch.Generator().manual_seed(7))
    logps = torch.log_softmax(theta, -1)[y]
    loss = sequence_policy_gradient_loss(logps, rloo_advantages(reward[y], k=4))
    (grad,) = torch.autograd.grad(loss, theta)
    assert torch.allclose(-grad, exact, atol=0.01)
