"""The hand-written backward of the chunked output layer against finite differences and autograd."""

import math

import pytest
import torch
import torch.nn.functional as F

from preftune.modeling.output_layer import ChunkedTokenLogprobs


def _inputs(m=7, h=5, v=11, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, h, generator=g, dtype=dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g, dtype=dtype).requires_grad_()
    bias = torch.randn(v, generator=g, dtype=dtype).requires_grad_()
    targets = torch.randint(0, v, (m,), generator=g)
    return hidden, weight, bias, targets


def _naive(hidden, weight, bias, targets, softcap, temperature, scale=1.0):
    z = F.linear(hidden, weight, bias) * scale
    if softcap is not None:
        z = torch.tanh(z / softcap) * softcap
    z = z / temperature
    return z.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)


@pytest.mark.parametrize("scale,softcap,temperature", [(1.0, None, 1.0), (1.0, None, 0.7), (1.0, 3.0, 1.0),
                                                       (1.0, 2.0, 1.3), (0.25, None, 1.0), (3.0, 2.0, 0.8)])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_gradients_match_finite_differences(chunk, scale, softcap, temperature):
    hidden, weight, bias, targets = _inputs()

    def f(h, w, b):
        return ChunkedTokenLogprobs.apply(h, w, b, targets, chunk, scale, softcap, temperature)

    # float64 throughout: central differences of the forward agree with the hand-written backward.
    assert torch.autograd.gradcheck(f, (hidden, weight, bias))


@pytest.mark.parametrize("scale,softcap,temperature", [(1.0, None, 1.0), (1.0, 2.0, 1.3), (0.125, None, 0.7),
                                                       (4.0, 2.0, 1.0)])
def test_values_and_gradients_equal_plain_autograd(scale, softcap, temperature):
    hidden, weight, bias, targets = _inputs(m=9, v=13, dtype=torch.float32, seed=1)
    upstream = torch.randn(9, generator=torch.Generator().manual_seed(2))
    out = ChunkedTokenLogprobs.apply(hidden, weight, bias, targets, 4, scale, softcap, temperature)
    grads = torch.autograd.grad((out * upstream).sum(), (hidden, weight, bias))
    ref = _naive(hidden, weight, bias, targets, softcap, temperature, scale)
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (hidden, weight, bias))
    assert torch.allclose(out, ref, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_hand_computed_gradient_of_a_two_word_vocabulary():
    # V = 2, W = I, h = (x, 0), target 0: log p = x − log(eˣ + 1), so d/dx = 1 − σ(x) = σ(−x).
    x = 0.3
    hidden = torch.tensor([[x, 0.0]], requires_grad=True)
    weight = torch.eye(2, requires_grad=True)
    out = ChunkedTokenLogprobs.apply(hidden, weight, None, torch.tensor([0]), 8, 1.0, None, 1.0)
    assert out.item() == pytest.approx(x - math.log(math.exp(x) + 1), abs=1e-6)
    out.backward()
    s = 1 / (1 + math.exp(x))  # σ(−x)
    assert hidden.grad.flatten().tolist() == pytest.approx([s, -s], abs=1e-6)
    # ∂W = (e_t − p) hᵀ: row 0 gets σ(−x)·h, row 1 gets −σ(−x)·h.
    assert weight.grad.flatten().tolist() == pytest.approx([s * x, 0.0, -s * x, 0.0], abs=1e-6)


def test_frozen_weight_gets_no_gradient_and_hidden_still_does():
    hidden, weight, _, targets = _inputs(dtype=torch.float32)
    weight.requires_grad_(False)
    ChunkedTokenLogprobs.apply(hidden, weight, None, targets, 2, 1.0, None, 1.0).sum().backward()
    assert weight.grad is None and hidden.grad is not None and hidden.grad.abs().sum() > 0


def test_bf16_autocast_keeps_float32_outputs_and_master_gradients():
    hidden, weight, _, targets = _inputs(m=6, h=8, v=10, dtype=torch.float32, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ChunkedTokenLogprobs.apply(hidden, weight, None, targets, 4, 1.0, None, 1.0)
    out.sum().backward()
    assert out.dtype == torch.float32 and weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    ref = _naive(hidden, weight, None, targets, None, 1.0)
    ref_grads = torch.autograd.grad(ref.sum(), (hidden, weight))
    # bf16 has 8 mantissa bits: the matmuls agree with fp32 to about 1e-2 relative.
    assert torch.allclose(out, ref, atol=5e-2)
    assert torch.allclose(weight.grad, ref_grads[1], atol=5e-2)
    assert torch.allclose(hidden.grad, ref_grads[0], atol=5e-2)


def test_empty_input():
    hidden, weight, _, _ = _inputs(m=0, dtype=torch.float32)
    out = ChunkedTokenLogprobs.apply(hidden, weight, None, torch.zeros(0, dtype=torch.long), 4, 1.0, None, 1.0)
    assert out.shape == (0,)
    out.sum().backward()
    assert weight.grad is not None and weight.grad.abs().sum() == 0
