"""Float32 master weights for a bf16 model: updates below bf16's resolution accumulate instead of rounding
away, the optimizer's state is float32, the masters follow exactly the trajectory of a float32 optimizer
given the same gradients, and a checkpoint restores them exactly."""

import torch

from preftune.train.master_weights import Float32Master


def _adamw(lr):
    return lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _weights():
    w = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.zeros(3))          # a float32 weight is stepped directly
    return w, b


def _step(opt, w, b, grad_w, grad_b):
    w.grad, b.grad = grad_w.to(w.dtype), grad_b.clone()
    opt.step()
    opt.zero_grad()


def test_small_updates_accumulate_in_the_master_and_reach_the_weights():
    w, b = _weights()
    plain = torch.optim.AdamW([w], lr=1e-4, weight_decay=0.0)       # steps the bf16 weight itself
    for _ in range(20):
        w.grad = torch.ones_like(w)
        plain.step()
    assert torch.equal(w, torch.ones_like(w))    # 20 updates of 1e-4 each: every one rounded away at 1.0
    w, b = _weights()
    opt = Float32Master([w, b], _adamw(1e-4))
    assert opt.masters[1] is b and opt.masters[0].dtype == torch.float32
    for _ in range(20):
        _step(opt, w, b, torch.ones(8), torch.ones(3))
    assert torch.allclose(opt.masters[0], torch.full((8,), 1 - 20e-4), atol=1e-6)
    assert torch.equal(w, opt.masters[0].to(torch.bfloat16)) and w.dtype == torch.bfloat16
    assert all(s.dtype == torch.float32 for state in opt.state.values() for s in state.values() if s.dim())


def test_masters_follow_a_float32_optimizer_given_the_same_gradients():
    w, b = _weights()
    opt = Float32Master([w, b], _adamw(1e-2))
    ref = torch.nn.Parameter(torch.ones(8))
    ref_opt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        grad = torch.randn(8, generator=g).to(torch.bfloat16).float()   # what the bf16 model's backward gives
        _step(opt, w, b, grad, torch.zeros(3))
        ref.grad = grad
        ref_opt.step()
    assert torch.equal(opt.masters[0], ref.detach())


def test_a_checkpoint_restores_the_masters_exactly():
    w, b = _weights()
    opt = Float32Master([w, b], _adamw(1e-3))
    for _ in range(3):
        _step(opt, w, b, torch.ones(8), torch.ones(3))
    saved = opt.state_dict()
    w2, b2 = _weights()
    with torch.no_grad():
        b2.copy_(b)
    resumed = Float32Master([w2, b2], _adamw(1e-3))
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.masters[0], opt.masters[0]) and torch.equal(w2, w)
    _step(opt, w, b, torch.ones(8), torch.ones(3))
    _step(resumed, w2, b2, torch.ones(8), torch.ones(3))
    assert torch.equal(resumed.masters[0], opt.masters[0]) and torch.equal(b2, b)


def test_the_setting_wraps_the_configured_optimizer_and_is_refused_with_fsdp():
    import pytest

    from preftune.config import SFTConfig, load_config
    from preftune.errors import ConfigError
    from preftune.train.optim import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3)).to(torch.bfloat16)
    cfg = load_config(SFTConfig, None, ["model_name_or_path=m", "fp32_master_weights=true", "learning_rate=0.1",
                                        "weight_decay=0.01"])
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, Float32Master) and isinstance(opt.optimizer, torch.optim.AdamW)
    assert opt.param_groups[0]["lr"] == 0.1
    # The Trainer's weight-decay groups hold the masters: decay on the weight, none on biases and the norm.
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert all(p.dtype == torch.float32 for g in opt.param_groups for p in g["params"])
    assert not isinstance(build_optimizer(model, load_config(SFTConfig, None, ["model_name_or_path=m"])),
                          Float32Master)
    with pytest.raises(ConfigError, match="fp32_master_weights must be false with fsdp"):
        load_config(SFTConfig, None, ["model_name_or_path=m", "fp32_master_weights=true", "fsdp=true"])
