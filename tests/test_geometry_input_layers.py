"""Tests for landscope.geometry.input_layers: layers reading the data, evaluated on a scan as
``f(x; theta0) + sum c_k f(x; d_k)``, give the plain forward's values (float64, 1e-12), the
centre bit for bit, and are used only where that identity is safe."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import vector_to_parameters

from landscope.geometry import input_layers
from landscope.geometry.directions import random_directions
from landscope.geometry.slices import line_slice, plane_slice, symmetric_grid
from landscope.geometry.space import ParamSpace
from landscope.probes.probe_data import ProbeData

pytestmark = pytest.mark.usefixtures("one_torch_thread")
IN, CLASSES = 80, 4  # fan-in 80 >= MIN_FAN_IN


def _mlp(first: nn.Module | None = None, inplace: bool = False, bn: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Flatten(), first or nn.Linear(IN, 12)]
    if bn:
        layers.append(nn.BatchNorm1d(12))
    layers += [nn.ReLU(inplace=inplace), nn.Linear(12, CLASSES)]
    model = nn.Sequential(*layers).double()
    if bn:
        with torch.no_grad():
            model.train()
            model(torch.randn(64, 1, IN, dtype=torch.float64) + 0.5)
    return model.eval()


def _data(n: int = 60, micro_batch: int = 25) -> ProbeData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, IN, generator=g, dtype=torch.float64)
    return ProbeData.from_tensors(x, torch.randint(0, CLASSES, (n,), generator=g), micro_batch)


def _reference(model: nn.Module, theta: torch.Tensor, data: ProbeData, bn: str = "keep"
               ) -> tuple[float, float]:
    m = copy.deepcopy(model)
    with torch.no_grad():
        vector_to_parameters(theta.clone(), m.parameters())
        if bn == "recompute":
            for mod in m.modules():
                if isinstance(mod, nn.BatchNorm1d):
                    mod.reset_running_stats()
                    mod.momentum = None
            m.train()
            for x, _ in data.batches:
                m(x)
            m.eval()
        loss = acc = 0.0
        for x, y in data.batches:
            out = m(x)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            acc += float((out.argmax(1) == y).sum())
    return loss / data.n, acc / data.n


def _check_plane(model: nn.Module, workers: int = 1, bn: str = "keep") -> tuple:
    space = ParamSpace(model)
    d = random_directions(space, 2, seed=2)
    data = _data()
    xs = symmetric_grid(1.0, 5)
    plane = plane_slice(space, d[0], d[1], xs, xs, data, workers=workers, bn=bn)
    for i, a in enumerate(xs):
        for j, b in enumerate(xs):
            loss, acc = _reference(model, space.theta0 + a * d[0] + b * d[1], data, bn)
            assert abs(plane.train_loss[i, j] - loss) < 1e-12
            assert plane.train_acc[i, j] == acc
    return space, plane


def test_plane_matches_plain_forward_and_centre_is_exact():
    model = _mlp()
    space, plane = _check_plane(model)
    assert len(space.input_layers._layers) == 1
    # 5 x 5 points, batches 25 + 25 + 10; + 2: the flat forward's one-time check runs the
    # first batch of each shape (25, 10) through the module path as well
    assert space.input_layers.n_hits == 25 * 3 + 2
    centre = space.evaluate(space.theta0, _data())[0]
    assert plane.train_loss[2, 2] == centre.loss and plane.train_acc[2, 2] == centre.acc
    assert not any(layer.entries for layer in space.input_layers._layers)  # freed


def test_workers_inplace_relu_and_recomputed_batchnorm():
    one = _check_plane(_mlp())[1]
    two = _check_plane(_mlp(), workers=2)[1]
    assert np.array_equal(one.train_loss, two.train_loss)
    space, _ = _check_plane(_mlp(inplace=True))  # in-place ReLU must not corrupt the terms
    assert space.input_layers.n_hits > 0
    space, _ = _check_plane(_mlp(bn=True), bn="recompute")
    assert space.input_layers.n_hits == 25 * 3 * 2 + 2  # recompute pass + evaluation + check


class Doubled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(IN, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(2 * x)  # not the data itself


class MyLinear(nn.Linear):
    pass


@pytest.mark.parametrize("case", ["computed_input", "subclass", "parametrized", "hooked",
                                  "small_fan_in", "budget"])
def test_unsafe_or_unprofitable_layers_run_as_usual(case, monkeypatch):
    first: nn.Module | None = None
    if case == "computed_input":
        first = Doubled()
    elif case == "subclass":
        first = MyLinear(IN, 12)
    elif case == "parametrized":
        first = nn.utils.parametrizations.weight_norm(nn.Linear(IN, 12))
    elif case == "hooked":
        first = nn.Linear(IN, 12)
        first.register_forward_hook(lambda m, i, o: None)
    elif case == "small_fan_in":
        monkeypatch.setattr(input_layers, "MIN_FAN_IN", IN + 1)
    model = _mlp(first)
    if case == "budget":
        space = ParamSpace(model)
        space.input_layers.budget_bytes = 1000  # less than one batch's terms
        d = random_directions(space, 1, seed=1)
        line = line_slice(space, d, symmetric_grid(1.0, 3), _data())
        assert space.input_layers.n_hits == 0
        for a, loss in zip(line.coords, line.train_loss[0]):
            assert abs(loss - _reference(model, space.theta0 + a * d[0], _data())[0]) < 1e-12
        return
    space, _ = _check_plane(model)
    assert space.input_layers.n_hits == 0


def test_outside_a_scan_nothing_is_served():
    model = _mlp()
    space = ParamSpace(model)
    d = random_directions(space, 1, seed=1)[0]
    ev = space.evaluate(space.theta0 + 0.5 * d, _data())[0]
    assert space.input_layers.n_hits == 0
    assert abs(ev.loss - _reference(model, space.theta0 + 0.5 * d, _data())[0]) < 1e-12
