"""Mode connectivity: barrier conventions, linear path, BatchNorm handling, Bezier bends.

Every check is against an exact answer: hand-made arrays, an independent per-t float64
computation (deepcopy + vector_to_parameters + plain forward) to 1e-12, or the closed-form
values of a toy valley.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscope.errors import LandscopeError
from landscope.geometry.connectivity import (
    Bend,
    barrier_interp,
    barrier_mean,
    bezier_path,
    bezier_point,
    check_ts,
    linear_path,
    linear_point,
    path_stats,
    path_ts,
    train_bezier,
    trapezoid,
)
from landscope.geometry.space import ParamSpace
from landscope.probes.probe_data import ProbeData

torch.set_num_threads(1)
TOL = 1e-12


# ---------------------------------------------------------------------- barriers
def test_barriers_on_hand_made_arrays():
    t = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    v = np.array([1.0, 2.0, 4.0, 3.5, 3.0])
    # mean of endpoints = 2; max = 4 -> 2.  Interpolation 1 + 2t = [1, 1.5, 2, 2.5, 3];
    # differences [0, .5, 2, 1, 0] -> 2 at t = 0.5.
    assert barrier_mean(v) == 2.0
    assert barrier_interp(t, v) == 2.0
    # the two conventions differ when the maximum sits near the higher endpoint
    w = np.array([0.0, 0.5, 1.0, 2.5, 2.0])
    assert barrier_mean(w) == 1.5  # 2.5 - 1
    assert barrier_interp(t, w) == 1.0  # 2.5 - 1.5 at t = 0.75
    # a convex path has no barrier in either convention (up to rounding)
    convex = np.array([2.0, 1.0, 0.5, 1.0, 2.0])
    assert barrier_mean(convex) == 0.0 and barrier_interp(t, convex) == 0.0
    # trapezoid: exact for piecewise linear data; uneven spacing
    assert trapezoid([0.0, 0.2, 1.0], [0.0, 1.0, 1.0]) == pytest.approx(0.1 + 0.8, abs=1e-15)
    s = path_stats(t, w)
    assert s == {"barrier_mean": 1.5, "barrier_interp": 1.0, "max": 2.5, "argmax_t": 0.75,
                 "mean": 1.2, "integral": pytest.approx(0.25 * (0.25 + 0.75 + 1.75 + 2.25)),
                 "start": 0.0, "end": 2.0}


def test_path_ts_and_check_ts():
    ts = path_ts(11)
    assert ts[0] == 0.0 and ts[-1] == 1.0 and len(ts) == 11
    np.testing.assert_allclose(ts, np.linspace(0, 1, 11), atol=1e-15)
    for bad in ([0.0, 0.5], [0.1, 1.0], [0.0, 0.6, 0.5, 1.0], [0.0], [[0.0, 1.0]]):
        with pytest.raises(LandscopeError):
            check_ts(bad)
    with pytest.raises(LandscopeError):
        path_ts(1)


# ---------------------------------------------------------------------- small models
def _mlp(seed: int, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 7)] + ([nn.BatchNorm1d(7)] if bn else []) + [nn.Tanh(),
                                                                        nn.Linear(7, 3)]
    model = nn.Sequential(*layers).double()
    if bn:  # give the running statistics distinct, non-trivial values
        model.train()
        with torch.no_grad():
            model(torch.randn(64, 5, dtype=torch.float64) * (1 + seed) + seed)
        model.eval()
    return model


def _data(n: int, seed: int, micro_batch: int) -> ProbeData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return ProbeData.from_tensors(x, y, micro_batch)


def _reference(model: nn.Module, theta: torch.Tensor, data: ProbeData, buffers=None,
               recompute_on: ProbeData | None = None) -> tuple[float, float]:
    """Independent evaluation: a fresh deepcopy moved to theta, plain forward passes."""
    m = copy.deepcopy(model)
    nn.utils.vector_to_parameters(theta, m.parameters())
    if buffers is not None:
        with torch.no_grad():
            for name, buf in m.named_buffers():
                buf.copy_(buffers[name])
    if recompute_on is not None:
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm1d):
                mod.reset_running_stats()
                mod.momentum = None
        m.train()
        with torch.no_grad():
            for x, _ in recompute_on.batches:
                m(x)
    m.eval()
    x = torch.cat([b[0] for b in data.batches])
    y = torch.cat([b[1] for b in data.batches])
    with torch.no_grad():
        out = m(x)
    return float(F.cross_entropy(out, y)), float((out.argmax(-1) == y).double().mean())


def _snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.training,
            [p.requires_grad for p in model.parameters()])


def _same(model: nn.Module, snap) -> bool:
    state, training, grads = snap
    now = model.state_dict()
    return (all(torch.equal(now[k], v) for k, v in state.items()) and model.training == training
            and [p.requires_grad for p in model.parameters()] == grads)


# ---------------------------------------------------------------------- linear path
def test_linear_path_matches_independent_computation_and_endpoints_exact():
    ma, mb = _mlp(0), _mlp(1)
    snap = _snapshot(ma)
    space = ParamSpace(ma)
    a = space.theta0
    b = space.flatten_params(dict(mb.named_parameters()))
    train, test = _data(50, 0, 16), _data(30, 1, 7)
    ts = path_ts(6)
    res = linear_path(space, a, b, ts, train, test)
    for i, t in enumerate(ts):
        theta = (1 - t) * a + t * b
        for split, data in (("train", train), ("test", test)):
            loss, acc = _reference(ma, theta, data)
            assert abs(getattr(res, f"{split}_loss")[i] - loss) <= TOL
            assert getattr(res, f"{split}_acc")[i] == acc
    # endpoints: the points are theta_a / theta_b bit for bit, and so are the values
    assert torch.equal(linear_point(a, b, 0.0), a) and torch.equal(linear_point(a, b, 1.0), b)
    ev_a = space.evaluate(a, [train, test])
    ev_b = space.evaluate(b, [train, test])
    assert (res.train_loss[0], res.test_loss[0]) == (ev_a[0].loss, ev_a[1].loss)
    assert (res.train_loss[-1], res.test_loss[-1]) == (ev_b[0].loss, ev_b[1].loss)
    assert _same(ma, snap)
    arrays = res.arrays()
    assert set(arrays) == {"t", "train_loss", "train_acc", "test_loss", "test_acc"}
    assert all(v.shape == (6,) for v in arrays.values())
    sc = res.scalars("lin")
    assert sc["lin_train_loss_barrier_mean"] == barrier_mean(res.train_loss)
    assert sc["lin_test_error_barrier_interp"] == barrier_interp(ts, 1 - res.test_acc)
    assert sc["lin_points"] == 6 and sc["lin_grad_evals"] == 0
    assert {f"lin_{s}_{m}_{k}" for s in ("train", "test") for m in ("loss", "error")
            for k in ("barrier_mean", "barrier_interp", "max", "argmax_t", "mean", "integral",
                      "start", "end")} | {"lin_points", "lin_grad_evals"} == set(sc)
    no_test = linear_path(space, a, b, ts, train)
    assert "test_loss" not in no_test.arrays()
    assert not any("_test_" in k for k in no_test.scalars())


def test_linear_path_batchnorm_keep_interpolates_buffers():
    ma, mb = _mlp(0, bn=True), _mlp(1, bn=True)
    space = ParamSpace(ma)
    a, b = space.theta0, space.flatten_params(dict(mb.named_parameters()))
    buf_a, buf_b = dict(ma.named_buffers()), dict(mb.named_buffers())
    assert not torch.equal(buf_a["1.running_mean"], buf_b["1.running_mean"])
    train = _data(40, 2, 16)
    ts = [0.0, 0.3, 1.0]
    res = linear_path(space, a, b, ts, train, bn="keep", buffers_a=buf_a, buffers_b=buf_b)
    for i, t in enumerate(ts):
        mixed = {k: ((1 - t) * buf_a[k] + t * buf_b[k]) if buf_a[k].is_floating_point()
                 else buf_a[k] for k in buf_a}
        loss, _ = _reference(ma, (1 - t) * a + t * b, train, buffers=mixed)
        assert abs(res.train_loss[i] - loss) <= TOL
    assert res.bn == "keep" and res.has_batchnorm


def test_linear_path_batchnorm_recompute_matches_independent_reestimation():
    ma, mb = _mlp(0, bn=True), _mlp(1, bn=True)
    snap = _snapshot(ma)
    space = ParamSpace(ma)
    a, b = space.theta0, space.flatten_params(dict(mb.named_parameters()))
    train, test, bn_data = _data(40, 2, 16), _data(20, 3, 20), _data(48, 4, 10)
    ts = path_ts(4)
    res = linear_path(space, a, b, ts, train, test, bn="recompute", bn_data=bn_data)
    for i, t in enumerate(ts):
        theta = linear_point(a, b, float(t))
        for split, data in (("train", train), ("test", test)):
            loss, acc = _reference(ma, theta, data, recompute_on=bn_data)
            assert abs(getattr(res, f"{split}_loss")[i] - loss) <= TOL
            assert getattr(res, f"{split}_acc")[i] == acc
    # default bn_data: the train data
    res2 = linear_path(space, a, b, ts, train, bn="recompute")
    loss, _ = _reference(ma, linear_point(a, b, float(ts[1])), train, recompute_on=train)
    assert abs(res2.train_loss[1] - loss) <= TOL
    assert _same(ma, snap)


def test_bad_inputs_raise_one_line_errors():
    m = _mlp(0)
    space = ParamSpace(m)
    a = space.theta0
    train = _data(10, 0, 5)
    cases = [
        lambda: linear_path(space, a, a[:-1], path_ts(3), train),
        lambda: linear_path(space, a, a, [0.0, 0.5], train),
        lambda: linear_path(space, a, a, path_ts(3), train, bn="freeze"),
        lambda: linear_path(space, a, a, path_ts(3), [(torch.zeros(1, 5), torch.zeros(1))]),
        lambda: train_bezier(m, a, a, train, epochs=0, lr=0.1, batch_size=4, seed=0),
        lambda: train_bezier(m, a, a, train, epochs=1, lr=-1.0, batch_size=4, seed=0),
        lambda: train_bezier(m, a, a, train, epochs=1, lr=0.1, batch_size=0, seed=0),
        lambda: train_bezier(m, a, a, train, epochs=1, lr=0.1, batch_size=4, seed=0,
                             optimizer="lbfgs"),
        lambda: train_bezier(m, a, torch.zeros(3), train, epochs=1, lr=0.1, batch_size=4,
                             seed=0),
        lambda: train_bezier(m, a, a, train, epochs=1, lr=0.1, batch_size=4, seed=0,
                             theta_c=a * float("nan")),  # diverged
    ]
    for case in cases:
        with pytest.raises(LandscopeError) as info:
            case()
        assert "\n" not in str(info.value) and str(info.value)


# ---------------------------------------------------------------------- Bezier
class Valley(nn.Module):
    """Two parameters w = (w_x, w_y); loss (w_y - 1 + w_x^2)^2 for every sample.

    The zero-loss valley is the parabola w_y = 1 - w_x^2, which is exactly the quadratic
    Bezier curve from a = (-1, 0) to b = (1, 0) with bend c* = (0, 2):
    phi(t) = (2t - 1, 4t(1 - t)).  c* is the unique bend with zero expected loss, so the
    trained curve's barrier is 0.  The straight line a -> b has w_y = 0 and loss
    (4t(1-t))^2 = 16 t^2 (1-t)^2: barrier 1 at t = 1/2 in both conventions (endpoint
    losses are 0) and integral 8/15.  A sample is correct when its loss is < 1/4, so the
    line's error is 1 for t(1-t) >= 1/8 (error barrier 1); the bend's error is 0 everywhere.
    """

    def __init__(self, w=(-1.0, 0.0)) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        return self.w.expand(len(x), 2)

    def task_loss(self, out, y, reduction="mean"):
        loss = (out[:, 1] - 1 + out[:, 0] ** 2) ** 2
        return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()

    def task_correct(self, out, y):
        return self.task_loss(out, y, "none") < 0.25


def _valley_data(n=40, micro_batch=40) -> ProbeData:
    return ProbeData.from_tensors(torch.zeros(n, 1, dtype=torch.float64),
                                  torch.zeros(n, dtype=torch.long), micro_batch)


def test_bezier_finds_the_curved_valley_and_is_deterministic():
    model = Valley()
    snap = _snapshot(model)
    a = torch.tensor([-1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([1.0, 0.0], dtype=torch.float64)
    data = _valley_data()
    ts = path_ts(21)
    space = ParamSpace(model)
    lin = linear_path(space, a, b, ts, data)
    np.testing.assert_allclose(lin.train_loss, 16 * ts ** 2 * (1 - ts) ** 2, rtol=0, atol=TOL)
    sl = lin.scalars()
    assert sl["linear_train_loss_barrier_mean"] == pytest.approx(1.0, abs=TOL)
    assert sl["linear_train_loss_barrier_interp"] == pytest.approx(1.0, abs=TOL)
    assert sl["linear_train_loss_argmax_t"] == 0.5
    assert sl["linear_train_error_barrier_mean"] == 1.0
    # trapezoid on 21 points vs 8/15: error h^2/12 * [f'(1) - f'(0)] = 0 for this quartic
    # up to the h^4 term; 1e-3 bounds it
    assert sl["linear_train_loss_integral"] == pytest.approx(8 / 15, abs=1e-3)

    kw = dict(epochs=30, lr=0.1, batch_size=4, seed=3)  # 300 steps
    bend = train_bezier(model, a, b, data, **kw)
    assert isinstance(bend, Bend) and bend.grad_evals == 300 == bend.steps
    c = bend.theta_c
    assert torch.allclose(c, torch.tensor([0.0, 2.0], dtype=torch.float64), atol=1e-3)
    bez = bezier_path(space, a, b, c, ts, data, grad_evals=bend.grad_evals)
    sb = bez.scalars("bezier")
    assert sb["bezier_train_loss_barrier_mean"] < 1e-5  # closed form: 0 (linear: 1)
    assert sb["bezier_train_error_max"] == 0.0  # closed form: 0 (linear: 1)
    assert sb["bezier_grad_evals"] == 300 and bez.bn == "recompute"
    assert torch.equal(bezier_point(a, b, c, 0.0), a) and torch.equal(bezier_point(a, b, c, 1.0), b)
    assert bend.loss_history[-1] < bend.loss_history[0]

    again = train_bezier(model, a, b, data, **kw)
    assert torch.equal(again.theta_c, c) and again.loss_history == bend.loss_history
    other = train_bezier(model, a, b, data, **{**kw, "seed": 4})
    assert not torch.equal(other.theta_c, c)
    sgd = train_bezier(model, a, b, data, **{**kw, "optimizer": "sgd", "lr": 0.05})
    assert torch.allclose(sgd.theta_c, torch.tensor([0.0, 2.0], dtype=torch.float64), atol=1e-2)
    assert _same(model, snap)


def test_bezier_with_batchnorm_leaves_model_untouched_and_recomputes_statistics():
    ma, mb = _mlp(0, bn=True), _mlp(1, bn=True)
    ma.train()  # the mode must be preserved too
    snap = _snapshot(ma)
    ma.eval()
    space = ParamSpace(ma)
    ma.train()
    a, b = space.theta0, space.flatten_params(dict(mb.named_parameters()))
    train = _data(48, 5, 12)
    bend = train_bezier(ma, a, b, train, epochs=2, lr=0.01, batch_size=16, seed=0)
    assert bend.grad_evals == 6
    assert _same(ma, snap)
    ts = [0.0, 0.5, 1.0]
    res = bezier_path(space, a, b, bend.theta_c, ts, train)
    for i, t in enumerate(ts):
        theta = bezier_point(a, b, bend.theta_c, t)
        loss, _ = _reference(ma, theta, train, recompute_on=train)
        assert abs(res.train_loss[i] - loss) <= TOL
    # the midpoint of the curve is the straight line's midpoint moved by c - (a+b)/2 / 2
    mid = bezier_point(a, b, bend.theta_c, 0.5)
    assert torch.allclose(mid, 0.25 * a + 0.5 * bend.theta_c + 0.25 * b, atol=0, rtol=0)
    assert _same(ma, snap)


def test_a_nan_loss_on_the_path_is_an_infinite_barrier():
    """issue #17 defect 12's rule for every search: a non-finite loss midway (the path left
    the region the model can evaluate) counts as +inf, never as a missing or flat value."""
    from landscope.geometry.connectivity import barrier_interp, barrier_mean, path_stats

    ts, v = [0.0, 0.5, 1.0], [0.1, float("nan"), 0.2]
    assert barrier_mean(v) == float("inf") and barrier_interp(ts, v) == float("inf")
    stats = path_stats(ts, v)
    assert stats["max"] == float("inf") and stats["argmax_t"] == 0.5
    assert barrier_mean([0.1, 0.3, 0.2]) == pytest.approx(0.15)  # finite paths unchanged
