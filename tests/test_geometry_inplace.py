"""Tests for landscope.geometry.inplace: activations of the working copy become in-place only
where nothing else reads their input; values stay bit for bit those of the model."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from landscope.geometry.inplace import make_activations_inplace
from landscope.geometry.space import ParamSpace
from landscope.models import build_model

META = types.SimpleNamespace(input_shape=(1, 12), num_classes=3)


@pytest.mark.parametrize("cfg, expected", [
    (dict(name="mlp", width=8, depth=2), 2),
    (dict(name="mlp", width=8, depth=2, norm="batch", skip=True), 2),
    (dict(name="cnn", width=2, depth=1, norm="batch"), None),
    (dict(name="resnet", width=2, depth=2, norm="batch", skip=True), None),
])
def test_model_families_switch_and_stay_exact(cfg, expected):
    torch.manual_seed(0)
    model = build_model(cfg, META).eval()
    space = ParamSpace(model)
    assert space.n_inplace > 0 if expected is None else space.n_inplace == expected
    assert not any(getattr(m, "inplace", False) for m in model.modules())  # user's model
    x = torch.randn(9, 1, 12)
    with torch.no_grad():
        assert torch.equal(space.working_model(x), model(x))


class Reuse(nn.Module):
    """The pre-activation is read again after the activation."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.act, self.head = nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x.flatten(1))
        return self.head(h + self.act(h))


class Shared(nn.Module):
    """One activation module called twice: safely, then on a tensor read again."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.act = nn.Linear(12, 6), nn.Linear(6, 6), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.a(x.flatten(1)))
        g = self.b(h)
        return g - self.act(g)


class Branchy(nn.Module):
    """Data-dependent control flow: not traceable."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.act = nn.Linear(12, 3), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x.flatten(1))
        return self.act(h) if float(h.sum()) > 0 else -h


@pytest.mark.parametrize("model", [
    Reuse(), Shared(), Branchy(),
    nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(12, 3)),  # on a view of the input
])
def test_unsafe_or_untraceable_models_are_left_alone(model):
    model.eval()
    assert make_activations_inplace(model) == 0
    space = ParamSpace(model)
    x = torch.randn(9, 1, 12)
    x0 = x.clone()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(space.working_model(x), expected)
    assert torch.equal(x, x0)
