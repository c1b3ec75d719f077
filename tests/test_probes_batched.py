"""Tests for landscope.probes.batched: ``matmat`` equals column-by-column products in
float64 on every model family, counts its products, and falls back where it must."""

from __future__ import annotations

import functools

import pytest
import torch

from landscope.errors import LandscopeError
from landscope.probes.batched import batched_available, matmat
from landscope.probes.hvp import HessianOperator
from landscope.probes.operator import DenseOperator
from landscope.probes.probe_data import ProbeData
from probe_models import seeded_model

torch.set_num_threads(1)

MODELS = {  # name -> (model config, input shape); small, float64, eval mode
    "mlp": (dict(name="mlp", width=6, depth=3), (1, 12)),
    "cnn_bn": (dict(name="cnn", width=2, depth=2, norm="batch"), (1, 6, 6)),
    "resnet_bn": (dict(name="resnet", width=2, depth=2, norm="batch", skip=True), (1, 6, 6)),
    "vit_ln": (dict(name="vit", width=4, depth=2, norm="layer", skip=True, heads=2,
                    patch_size=4, activation="gelu"), (1, 12)),
}


@functools.lru_cache(maxsize=None)
def operator_inputs(name: str):
    cfg, shape = MODELS[name]
    model, x, y = seeded_model(cfg, shape, 3, 9)
    return model, ProbeData.from_tensors(x, y, 5)  # two micro-batches


def columns(op, V: torch.Tensor) -> torch.Tensor:
    return torch.stack([op.matvec(V[:, j].contiguous()) for j in range(V.shape[1])], dim=1)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_batched_cached_equals_columns(name):
    model, data = operator_inputs(name)
    op = HessianOperator(model, data, method="cached")
    assert batched_available(op)
    V = torch.randn(op.dim, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = columns(op, V)
    before = op.n_matvecs
    out = matmat(op, V)
    assert op.n_matvecs - before == 4
    assert out.shape == (op.dim, 4)
    assert float((out - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
    # batched=False is the loop itself
    assert torch.allclose(matmat(op, V, batched=False), ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", ["double_backward", "forward_over_reverse"])
def test_other_methods_fall_back_to_single_products(method):
    model, data = operator_inputs("mlp")
    op = HessianOperator(model, data, method=method)
    assert not batched_available(op)
    V = torch.randn(op.dim, 3, dtype=torch.float64)
    out = matmat(op, V)
    assert op.n_matvecs == 3
    ref = HessianOperator(model, data, method="cached")
    assert float((out - columns(ref, V)).abs().max()) <= 1e-10 * float(out.abs().max())


def test_batched_failure_falls_back(monkeypatch):
    model, data = operator_inputs("mlp")
    op = HessianOperator(model, data, method="cached")
    V = torch.randn(op.dim, 3, dtype=torch.float64)
    ref = columns(op, V)
    op.n_matvecs = 0

    def refuse(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr("landscope.probes.batched._batched_cached", refuse)
    out = matmat(op, V)
    assert op.n_matvecs == 3  # counted once each, by the fallback's matvecs
    assert torch.allclose(out, ref, rtol=0, atol=1e-13)


def test_dense_operator_shapes_and_edge_cases():
    A = torch.randn(5, 5, dtype=torch.float64)
    op = DenseOperator(A + A.T)
    V = torch.randn(5, 2, dtype=torch.float64)
    assert torch.allclose(matmat(op, V), op.matrix @ V) and op.n_matvecs == 2
    assert matmat(op, torch.zeros(5, 0, dtype=torch.float64)).shape == (5, 0)
    assert op.n_matvecs == 2
    with pytest.raises(LandscopeError, match="shape"):
        matmat(op, torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(LandscopeError, match="shape"):
        matmat(op, torch.zeros(5, dtype=torch.float64))


def test_zero_hessian_gives_zeros():
    model, data = operator_inputs("mlp")
    op = HessianOperator(model, data, method="cached")
    op._cache = None  # a loss whose gradient does not depend on the parameters
    out = matmat(op, torch.randn(op.dim, 3, dtype=torch.float64))
    assert torch.equal(out, torch.zeros_like(out)) and op.n_matvecs == 3


def test_batched_through_checkpointed_graph():
    from landscope.probes.memory import activation_checkpointing

    class Checkpointed(HessianOperator):
        def _batch_loss(self, params, x, y):
            with activation_checkpointing(self.model):
                return super()._batch_loss(params, x, y)

    model, data = operator_inputs("resnet_bn")
    op = Checkpointed(model, data, method="cached")
    V = torch.randn(op.dim, 3, dtype=torch.float64)
    ref = columns(HessianOperator(model, data, method="cached"), V)
    assert float((matmat(op, V) - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
