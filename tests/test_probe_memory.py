"""Tests for landscope.probes.memory: activation checkpointing gives the same Hessian-vector
products (float64, 1e-10) on every model family and method it supports, inside
functional_call and with the curvature primitives; the model is restored after the context;
the CPU memory measure sees the activations that checkpointing drops."""

from __future__ import annotations

import functools
import types

import pytest
import torch
from torch import nn

from landscope.models import build_model
from landscope.probes.hvp import HessianOperator
from landscope.probes.memory import (
    LiveTensorBytes,
    activation_checkpointing,
    checkpoint_blocks,
    peak_memory,
)
from landscope.probes.probe_data import ProbeData
from probe_models import seeded_model

torch.set_num_threads(1)

MODELS = {  # name -> (model config, input shape, number of checkpointed blocks)
    "mlp": (dict(name="mlp", width=6, depth=3), (1, 12), 2),
    "cnn_bn": (dict(name="cnn", width=2, depth=2, norm="batch"), (1, 6, 6), 2),
    "resnet_bn": (dict(name="resnet", width=2, depth=3, norm="batch", skip=True), (1, 6, 6), 3),
    "vit_ln": (dict(name="vit", width=4, depth=2, norm="layer", skip=True, heads=2,
                    patch_size=4, activation="gelu"), (1, 12), 2),
    "vit_bn_noskip": (dict(name="vit", width=4, depth=2, norm="batch", skip=False, heads=2,
                           patch_size=4), (1, 12), 2),
}


@functools.lru_cache(maxsize=None)
def inputs(name: str):
    """Model, data (two micro-batches) and parameters away from the model's own: a
    recomputation that used the module's parameters instead of the substituted ones would
    show."""
    cfg, shape, _ = MODELS[name]
    model, x, y = seeded_model(cfg, shape, 3, 9)
    g = torch.Generator().manual_seed(3)
    params = {n: p.detach() + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype)
              for n, p in model.named_parameters()}
    return model, ProbeData.from_tensors(x, y, 5), params


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("primitives", [True, False])
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("method", ["cached", "double_backward"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_checkpointed_products_match(name, method, mode, primitives):
    model, data, params = inputs(name)
    kw = dict(params=params, method=method, mode=mode, primitives=primitives)
    plain = HessianOperator(model, data, **kw)
    v = torch.randn(plain.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with activation_checkpointing(model) as blocks:
        assert len(blocks) == MODELS[name][2]
        op = HessianOperator(model, data, **kw)  # its determinism check runs checkpointed too
        hv, grad, loss = op.matvec(v), op.gradient(), op.loss()
        hv2 = op.matvec(v)  # the cached graph survives a second product
    ref = plain.matvec(v)
    assert rel(hv, ref) <= 1e-10 and rel(hv2, ref) <= 1e-10
    assert rel(grad, plain.gradient()) <= 1e-10
    assert abs(loss - plain.loss()) <= 1e-12 * abs(plain.loss())


def test_blocks_per_model_family_and_nested_containers():
    for name, (cfg, shape, n) in MODELS.items():
        model = build_model(cfg, types.SimpleNamespace(input_shape=shape, num_classes=3))
        assert len(checkpoint_blocks(model)) == n, name

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear, self.act = nn.Linear(4, 4), nn.Tanh()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.act(self.linear(x))

    block = Block

    class Stages(nn.Module):  # resnet18-style: layer1..layer2, each a Sequential of blocks
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Linear(3, 4), nn.ReLU())  # single layers: no block
            self.layer1 = nn.Sequential(block(), block())
            self.layer2 = nn.Sequential(nn.Sequential(block()), block(), nn.Linear(4, 4))
            self.head = nn.Linear(4, 2)

    m = Stages()
    assert checkpoint_blocks(m) == [m.layer1[0], m.layer1[1], m.layer2[0][0], m.layer2[1]]
    assert checkpoint_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) == []
    assert checkpoint_blocks(nn.Linear(2, 2)) == []


def test_model_restored_after_context_and_exception():
    model, data, _ = inputs("resnet_bn")
    x = data.batches[0][0]
    blocks = checkpoint_blocks(model)
    custom = blocks[0].forward  # an instance-level forward set before must come back
    blocks[0].forward = custom
    before = model(x)
    with activation_checkpointing(model):
        assert all("forward" in b.__dict__ for b in blocks)
        assert blocks[0].forward is not custom
    assert blocks[0].forward is custom
    assert all("forward" not in b.__dict__ for b in blocks[1:])
    with pytest.raises(ValueError, match="boom"):
        with activation_checkpointing(model):
            raise ValueError("boom")
    assert blocks[0].forward is custom
    assert all("forward" not in b.__dict__ for b in blocks[1:])
    del blocks[0].forward
    assert torch.equal(model(x), before)


def test_no_grad_and_plain_gradient_unchanged():
    model, data, _ = inputs("vit_ln")
    x, y = data.batches[0]
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    ref = torch.autograd.grad(loss, list(model.parameters()))
    with activation_checkpointing(model):
        with torch.no_grad():
            assert torch.equal(model(x), model.__call__(x))
        loss = nn.functional.cross_entropy(model(x), y)
        got = torch.autograd.grad(loss, list(model.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(got, ref))


def test_live_tensor_bytes_counts_allocations_not_views():
    keep = torch.zeros(1000, dtype=torch.float64)

    def work():
        a = torch.ones(1000, dtype=torch.float64)      # 8000 bytes
        b = a * 2                                       # 8000 more: peak 16000
        del a
        c = b.view(10, 100).t()                         # a view: nothing new
        c.add_(1)                                       # in place: nothing new
        keep.add_(1)                                    # storage from before: not counted
        return (b + 1).sum()                            # 8000 + 8 while b lives

    with LiveTensorBytes() as tracker:
        work()
    assert tracker.peak == 16008
    assert tracker.live == 0  # everything allocated inside was freed
    m = peak_memory(work, device="cpu")
    assert m.peak_bytes == 16008 and "live tensor" in m.measure and float(m.result) > 0


def deep_mlp_problem():
    torch.manual_seed(0)
    model = build_model(dict(name="mlp", width=64, depth=12),
                        types.SimpleNamespace(input_shape=(1, 20), num_classes=4)).double()
    x, y = torch.randn(256, 1, 20, dtype=torch.float64), torch.randint(0, 4, (256,))
    return model.eval(), ProbeData.from_tensors(x, y, 256)


def test_checkpointing_lowers_the_measured_peak_on_a_deep_model():
    model, data = deep_mlp_problem()

    def gradient():
        return HessianOperator(model, data, method="double_backward",
                               check_determinism=False).gradient()

    def product():
        op = HessianOperator(model, data, method="double_backward", check_determinism=False)
        v = torch.ones(op.dim, dtype=torch.float64)
        return peak_memory(lambda: op.matvec(v), device="cpu").peak_bytes

    plain_grad = peak_memory(gradient, device="cpu").peak_bytes
    plain_product = product()
    with activation_checkpointing(model):
        ck_grad = peak_memory(gradient, device="cpu").peak_bytes
        ck_product = product()
    # 11 checkpointed blocks: a gradient keeps their inputs, not their activations
    assert ck_grad < 0.8 * plain_grad
    # a product differentiates the whole gradient graph, which holds the (recomputed)
    # activations again: the peak falls, but far less (see scripts/bench_memory.py)
    assert ck_product < plain_product


class CheckpointedOperator(HessianOperator):
    """The wiring proposed for ``probe.checkpointing``: only the forward of ``_batch_loss``
    runs inside the context; the recomputations happen later, in backward, without it."""

    def _batch_loss(self, params, x, y):
        with activation_checkpointing(self.model):
            return super()._batch_loss(params, x, y)


@pytest.mark.parametrize("method", ["cached", "double_backward"])
@pytest.mark.parametrize("name", ["mlp", "resnet_bn", "vit_ln"])
def test_context_around_the_forward_only(name, method):
    model, data, params = inputs(name)
    plain = HessianOperator(model, data, params=params, method=method)
    op = CheckpointedOperator(model, data, params=params, method=method)
    v = torch.randn(plain.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert rel(op.matvec(v), plain.matvec(v)) <= 1e-10
    assert rel(op.matvec(v), plain.matvec(v)) <= 1e-10
    assert all("forward" not in b.__dict__ for b in checkpoint_blocks(model))
