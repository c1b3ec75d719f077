"""Tests for landscope.probes.objective.ModelObjective: the private copy of the model it
evaluates gives the values ``functional_call`` gives, bit for bit (every model family, both
modes, a subset of the parameters, float64 values on a float32 model); the model is never
written; a model that cannot be copied falls back to ``functional_call``."""

from __future__ import annotations

import threading

import pytest
import torch

from landscope.probes.objective import ModelObjective
from landscope.probes.probe_data import ProbeData
from probe_models import seeded_model

torch.set_num_threads(1)

MODELS = {
    "mlp": ({"name": "mlp", "width": 8, "depth": 2}, (1, 12)),
    "cnn_batch": ({"name": "cnn", "width": 2, "depth": 2, "norm": "batch"}, (1, 6, 6)),
    "resnet_layer_noskip": ({"name": "resnet", "width": 4, "depth": 2, "norm": "layer",
                             "skip": False}, (1, 6, 6)),
    "vit": ({"name": "vit", "width": 8, "depth": 1, "norm": "layer"}, (1, 16)),
}


def points(obj: ModelObjective) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    step = torch.randn(obj.theta0.shape, generator=gen, dtype=torch.float64).to(obj.dtype)
    return [obj.theta0, obj.theta0 + 0.05 * step, obj.theta0 - 0.3 * step]


def evaluations(obj: ModelObjective) -> list:
    out = []
    for theta in points(obj):
        loss, grad = obj.loss_and_grad(theta)
        out += [obj.loss(theta), loss, grad, obj.accuracy(theta)]
    return out


def assert_same(a: list, b: list) -> None:
    for u, v in zip(a, b, strict=True):
        if isinstance(u, torch.Tensor):
            assert u.dtype == v.dtype and torch.equal(u, v)
        else:
            assert u == v


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_copy_and_functional_call_give_the_same_values_bit_for_bit(name: str, mode: str) -> None:
    cfg, shape = MODELS[name]
    model, x, y = seeded_model(cfg, shape, 3, 20)
    data = ProbeData.from_tensors(x, y, micro_batch=8)  # three micro-batches, exact weights
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = ModelObjective(model, data, mode=mode)
    plain = ModelObjective(model, data, mode=mode, copy_model=False)
    assert fast._replica is not None and plain._replica is None
    assert_same(evaluations(fast), evaluations(plain))
    assert (fast.n_loss, fast.n_grad, fast.n_acc) == (6, 3, 3)
    # the model is never written: values, running statistics, flags, gradients
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_a_subset_of_float64_values_on_a_float32_model() -> None:
    cfg, shape = MODELS["cnn_batch"]
    model, x, y = seeded_model(cfg, shape, 3, 20)
    model = model.float()
    names = [n for n, _ in model.named_parameters()][-2:]  # the head only
    params = {n: p.detach().double() + 0.01 for n, p in model.named_parameters() if n in names}
    data = ProbeData.from_tensors(x, y, micro_batch=8)
    fast = ModelObjective(model, data, params=params)
    plain = ModelObjective(model, data, params=params, copy_model=False)
    assert fast.dtype == torch.float64 and fast.theta0.numel() == sum(
        p.numel() for p in params.values())
    assert_same(evaluations(fast), evaluations(plain))
    # the copy differentiates the probed parameters only, and in float64
    work, probed = fast._replica
    assert [p.requires_grad for p in work.parameters()].count(True) == len(names)
    assert all(p.dtype == torch.float64 for p in work.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())


class Uncopyable(torch.nn.Module):
    """A model holding a lock, which ``copy.deepcopy`` refuses."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.lock = inner, threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def test_a_model_that_cannot_be_copied_falls_back_to_functional_call() -> None:
    cfg, shape = MODELS["mlp"]
    inner, x, y = seeded_model(cfg, shape, 3, 20)
    data = ProbeData.from_tensors(x, y, micro_batch=8)
    obj = ModelObjective(Uncopyable(inner), data)
    assert obj._replica is None
    assert_same(evaluations(obj), evaluations(ModelObjective(inner, data)))


def test_the_copy_is_taken_when_the_objective_is_made() -> None:
    """Values at the given point only depend on the model as it was then (the probed
    parameters are the point; the rest are the model's at construction)."""
    cfg, shape = MODELS["cnn_batch"]
    model, x, y = seeded_model(cfg, shape, 3, 20)
    data = ProbeData.from_tensors(x, y, micro_batch=8)
    obj = ModelObjective(model, data)
    first = evaluations(obj)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert_same(evaluations(obj), first)


def test_an_unknown_mode_is_one_clear_error() -> None:
    from landscope.errors import LandscopeError

    cfg, shape = MODELS["mlp"]
    model, x, y = seeded_model(cfg, shape, 3, 20)
    with pytest.raises(LandscopeError, match="probe mode must be one of eval, train"):
        ModelObjective(model, ProbeData.from_tensors(x, y, 8), mode="nope")  # type: ignore[arg-type]
