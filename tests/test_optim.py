"""Tests for landscope.optim: SAM/ASAM against hand formulas, checkpoint round trips,
optimizer and scheduler factories."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from landscope.config import BaseOptimizerName, OptimizerConfig, OptimizerName, Schedule
from landscope.errors import ConfigError
from landscope.optim import SAM, build_optimizer, build_scheduler, is_sam

A = torch.tensor([[3.0, 0.5, 0.2], [0.5, 2.0, -0.3], [0.2, -0.3, 1.5]], dtype=torch.float64)
W0 = torch.tensor([0.7, -1.2, 0.4], dtype=torch.float64)
LR, RHO = 0.1, 0.05


def _quadratic_sam_step(adaptive: bool, eta: float = 0.01, explicit: bool = False) -> torch.Tensor:
    """One SAM step on L(w) = 0.5 w^T A w, w split over two tensors in two param groups."""
    w1 = W0[:2].clone().requires_grad_(True)
    w2 = W0[2:].clone().requires_grad_(True)
    opt = SAM([{"params": [w1]}, {"params": [w2]}], torch.optim.SGD, rho=RHO,
              adaptive=adaptive, eta=eta, lr=LR)

    def loss_fn():
        w = torch.cat([w1, w2])
        return 0.5 * w @ A @ w

    loss_fn().backward()
    if explicit:
        opt.first_step(zero_grad=True)
        loss_fn().backward()
        opt.second_step(zero_grad=True)
    else:
        def closure():
            loss = loss_fn()
            loss.backward()
            return loss

        opt.step(closure)
    return torch.cat([w1, w2]).detach()


@pytest.mark.parametrize("explicit", [False, True])
def test_sam_quadratic_matches_hand_formula(explicit):
    g = A @ W0
    expected = W0 - LR * A @ (W0 + RHO * g / (g.norm() + 1e-12))
    got = _quadratic_sam_step(adaptive=False, explicit=explicit)
    assert (got - expected).abs().max() <= 1e-12


@pytest.mark.parametrize("eta", [0.01, 0.0])
def test_asam_quadratic_matches_hand_formula(eta):
    g = A @ W0
    t = W0.abs() + eta  # T_w = diag(|w| + eta)
    e = RHO * t**2 * g / ((t * g).norm() + 1e-12)
    expected = W0 - LR * A @ (W0 + e)
    got = _quadratic_sam_step(adaptive=True, eta=eta)
    assert (got - expected).abs().max() <= 1e-12


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).double()


def _data(n: int = 3):
    g = torch.Generator().manual_seed(123)
    return [(torch.randn(16, 5, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def _train(model, opt, sched, batches):
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()

        def closure(x=x, y=y):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        sched.step()


def _sam_cfg(base: str) -> OptimizerConfig:
    return OptimizerConfig(name=OptimizerName.sam, base=BaseOptimizerName(base), lr=0.05,
                           momentum=0.9, weight_decay=1e-3, rho=0.05,
                           schedule=Schedule.cosine, min_lr=0.001)


@pytest.mark.parametrize("base", ["momentum", "adam", "adamw"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_checkpoint_resume_is_bit_identical(base, adaptive):
    cfg = _sam_cfg(base)
    cfg.adaptive = adaptive
    first, second = _data(3), _data(6)[3:]
    model = _model(0)
    opt = build_optimizer(model.parameters(), cfg)
    sched = build_scheduler(opt, cfg, epochs=6)
    _train(model, opt, sched, first)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict()}, buf)
    _train(model, opt, sched, second)

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = _model(1)  # different init: everything must come from the checkpoint
    opt2 = build_optimizer(model2.parameters(), cfg)
    sched2 = build_scheduler(opt2, cfg, epochs=6)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.param_groups[0]["rho"] == cfg.rho
    _train(model2, opt2, sched2, second)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
    key = "momentum_buffer" if base == "momentum" else "exp_avg_sq"
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(opt.base_optimizer.state[p][key], opt2.base_optimizer.state[q][key])


def test_scheduler_on_sam_changes_base_lr_without_warning():
    model = _model(0)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
    assert opt.param_groups is opt.base_optimizer.param_groups
    group = opt.base_optimizer.param_groups[0]
    assert group["rho"] == 0.1 and group["momentum"] == 0.9 and group["adaptive"] is False
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    (x, y), = _data(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.first_step(zero_grad=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.second_step(zero_grad=True)
        sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert not opt.state or all(not s for s in opt.state.values())  # perturbation cleared


def test_sam_skips_params_without_grad():
    w = torch.nn.Parameter(W0.clone())
    unused = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = SAM([w, unused], torch.optim.SGD, rho=RHO, lr=LR)
    (0.5 * w @ A @ w).backward()
    assert unused.grad is None

    def closure():
        loss = 0.5 * w @ A @ w
        loss.backward()
        return loss

    loss = opt.step(closure)
    g = A @ W0
    w_adv = W0 + RHO * g / (g.norm() + 1e-12)
    assert loss.item() == pytest.approx(float(0.5 * w_adv @ A @ w_adv), rel=1e-12)
    assert (w.detach() - (W0 - LR * A @ w_adv)).abs().max() <= 1e-12
    assert torch.equal(unused.detach(), torch.ones(4, dtype=torch.float64))
    assert unused not in opt.state or not opt.state[unused]
    # no gradient at all: first_step is a no-op
    opt.zero_grad()
    before = w.detach().clone()
    opt.first_step()
    assert torch.equal(w.detach(), before)


def test_sam_step_requires_closure():
    opt = SAM([torch.nn.Parameter(torch.zeros(2))], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        opt.step()


@pytest.mark.parametrize("as_dictconfig", [False, True])
def test_build_optimizer_every_name(as_dictconfig):
    def build(**kw):
        cfg = OptimizerConfig(**kw)
        if as_dictconfig:
            cfg = OmegaConf.structured(cfg)
        return build_optimizer([torch.nn.Parameter(torch.zeros(3))], cfg)

    opt = build(name=OptimizerName.sgd, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    assert type(opt) is torch.optim.SGD and not is_sam(opt)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.1, 0.0, False, 0.01)

    opt = build(name=OptimizerName.momentum, lr=0.1, momentum=0.8, nesterov=True)
    g = opt.param_groups[0]
    assert type(opt) is torch.optim.SGD and (g["momentum"], g["nesterov"]) == (0.8, True)

    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        opt = build(name=OptimizerName(name), lr=1e-3, betas=[0.8, 0.99], eps=1e-6,
                    weight_decay=0.1)
        g = opt.param_groups[0]
        assert type(opt) is cls
        assert (g["lr"], g["betas"], g["eps"], g["weight_decay"]) == (1e-3, (0.8, 0.99), 1e-6, 0.1)

    for base, cls in (("sgd", torch.optim.SGD), ("momentum", torch.optim.SGD),
                      ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        opt = build(name=OptimizerName.sam, base=BaseOptimizerName(base), momentum=0.9,
                    rho=0.2, adaptive=True, lr=0.3)
        assert is_sam(opt) and type(opt.base_optimizer) is cls
        g = opt.param_groups[0]
        assert (g["rho"], g["adaptive"], g["lr"]) == (0.2, True, 0.3)
        if base in ("sgd", "momentum"):
            assert g["momentum"] == (0.9 if base == "momentum" else 0.0)


def test_build_optimizer_momentum_zero_is_config_error():
    params = [torch.nn.Parameter(torch.zeros(2))]
    for cfg in (OptimizerConfig(name=OptimizerName.momentum, momentum=0.0),
                OptimizerConfig(name=OptimizerName.sam, base=BaseOptimizerName.momentum,
                                momentum=0.0)):
        with pytest.raises(ConfigError) as info:
            build_optimizer(params, OmegaConf.structured(cfg))
        assert "\n" not in str(info.value) and "momentum" in str(info.value)


def _lrs(cfg, epochs, n):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, epochs)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_build_scheduler_sequences():
    lr = 0.4
    const = OptimizerConfig(lr=lr, schedule=Schedule.constant)
    assert _lrs(const, 5, 5) == [lr] * 5
    step = OptimizerConfig(lr=lr, schedule=Schedule.step, step_size=2, gamma=0.5)
    assert _lrs(step, 6, 6) == pytest.approx([0.4, 0.4, 0.2, 0.2, 0.1, 0.1], rel=1e-12)
    cos = OmegaConf.structured(OptimizerConfig(lr=lr, schedule=Schedule.cosine, min_lr=0.01))
    seq = _lrs(cos, 4, 5)
    want = [0.01 + 0.5 * (lr - 0.01) * (1 + math.cos(math.pi * e / 4)) for e in range(5)]
    assert seq == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert seq[0] == lr and seq[4] == pytest.approx(0.01, rel=1e-9)
    assert _lrs(OptimizerConfig(lr=lr, schedule=Schedule.cosine), 0, 1) == [lr]  # T_max >= 1


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_scheduler_state_dict_round_trip(schedule):
    cfg = OptimizerConfig(lr=0.3, schedule=Schedule(schedule), step_size=2, gamma=0.5,
                          min_lr=0.003)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, epochs=8)
    for _ in range(3):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    rest = []
    for _ in range(4):
        opt.step()
        sched.step()
        rest.append(opt.param_groups[0]["lr"])
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched2 = build_scheduler(opt2, cfg, epochs=8)
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    rest2 = []
    for _ in range(4):
        opt2.step()
        sched2.step()
        rest2.append(opt2.param_groups[0]["lr"])
    assert rest2 == rest


def test_unknown_names_are_config_errors():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ConfigError, match="optimizer.name"):
        build_optimizer(params, OmegaConf.create({"name": "lbfgs", "lr": 0.1,
                                                  "weight_decay": 0.0}))
    opt = torch.optim.SGD(params, lr=0.1)
    with pytest.raises(ConfigError, match="optimizer.schedule"):
        build_scheduler(opt, OmegaConf.create({"schedule": "linear"}), 3)
