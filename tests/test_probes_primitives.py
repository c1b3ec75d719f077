"""Tests for landscope.probes.primitives: the rewritten layers give the plain model's loss,
gradient and Hessian (float64, against the dense Hessian of the plain model), rewrite exactly
what they claim, and leave every other case to the original function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscope.losses import task_loss
from landscope.probes.hvp import METHODS, HessianOperator
from landscope.probes.primitives import CurvaturePrimitives
from landscope.probes.probe_data import ProbeData
from landscope.probes.verify import dense_hessian
from probe_models import seeded_model

torch.set_num_threads(1)

CLASSES = 3
# name -> (model config, input shape, BatchNorm layers folded, ReLUs rewritten)
MODELS = {
    "mlp": (dict(name="mlp", width=6, depth=2), (1, 12), 0, 2),
    "mlp_bn": (dict(name="mlp", width=6, depth=2, norm="batch"), (1, 12), 2, 2),
    "cnn_bn": (dict(name="cnn", width=2, depth=2, norm="batch"), (1, 6, 6), 4, 4),
    "resnet_bn": (dict(name="resnet", width=2, depth=2, norm="batch", skip=True), (1, 6, 6),
                  None, None),
    "vit_ln": (dict(name="vit", width=4, depth=1, norm="layer", skip=True, heads=2,
                    patch_size=4, activation="gelu"), (1, 12), 0, 0),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def make(name: str, n: int = 7) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    cfg, shape, _, _ = MODELS[name]
    return seeded_model(cfg, shape, CLASSES, n)


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_and_loss_unchanged_and_rewrites_counted(name):
    model, x, y = make(name)
    with torch.no_grad():
        plain_out = model(x)
        plain_loss = F.cross_entropy(plain_out, y)
    with torch.no_grad(), CurvaturePrimitives() as prim:
        out = model(x)
        loss = task_loss(model, out, y)
    assert rel(out, plain_out) < 1e-13
    assert abs(float(loss - plain_loss)) < 1e-13 * abs(float(plain_loss))
    assert prim.n_cross_entropy == 1
    _, _, folded, relus = MODELS[name]
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if folded is None:  # the ResNet: every BatchNorm follows a convolution
        folded = n_bn
    assert prim.n_folded == folded
    if relus is not None:
        assert prim.n_relu == relus


@pytest.mark.parametrize("name", ["mlp_bn", "cnn_bn"])
def test_folded_operator_matches_dense_hessian_of_plain_model(name):
    model, x, y = make(name)
    data = ProbeData.from_tensors(x, y, 4)
    hessian = dense_hessian(model, data)  # plain model, no rewrites
    v = torch.randn(hessian.shape[0], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    for method in METHODS:
        op = HessianOperator(model, data, method=method)
        assert op.primitives
        assert rel(op.matvec(v), hessian @ v) < 1e-10, method
    plain = HessianOperator(model, data, primitives=False)
    fast = HessianOperator(model, data)
    assert abs(fast.loss() - plain.loss()) < 1e-13 * abs(plain.loss())
    assert rel(fast.gradient(), plain.gradient()) < 1e-12


def test_train_mode_batchnorm_is_not_folded():
    model, x, y = make("cnn_bn")
    model.train()
    with CurvaturePrimitives() as prim:
        model(x)
    assert prim.n_folded == 0
    model.eval()
    data = ProbeData.from_tensors(x, y, 4)
    hessian = dense_hessian(model, data, mode="train")
    op = HessianOperator(model, data, mode="train")
    v = torch.randn(hessian.shape[0], dtype=torch.float64)
    assert rel(op.matvec(v), hessian @ v) < 1e-10


class Unusual(nn.Module):
    """BatchNorm that must not be folded (after a ReLU, over a linear layer's 3-D output),
    and a convolution output used twice (folded BatchNorm plus a skip from before it)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm1d(3)
        self.conv2 = nn.Conv1d(3, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(3)
        self.lin = nn.Linear(8, 8)
        self.bn3 = nn.BatchNorm1d(3)  # normalizes dim 1 of (N, 3, 8): not the linear's out
        self.head = nn.Linear(24, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv(x)
        h = torch.tanh(self.bn(c)) + c  # folded, and the raw output reused
        h = self.bn2(F.relu(self.conv2(h)))  # ReLU in between: not folded
        h = self.bn3(self.lin(h))  # linear over the last axis: not folded
        return self.head(h.relu().flatten(1))


def test_unusual_models_fold_only_what_is_safe_and_stay_exact():
    torch.manual_seed(0)
    model = Unusual().double()
    x = torch.randn(6, 1, 8, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (6,))
    with torch.no_grad():
        model.train()
        model(x + 0.3)
    model.eval()
    with CurvaturePrimitives() as prim:
        out = model(x)
    assert prim.n_folded == 1 and prim.n_relu == 2  # F.relu and Tensor.relu
    assert rel(out, model(x)) < 1e-13
    data = ProbeData.from_tensors(x, y, 6)
    hessian = dense_hessian(model, data)
    v = torch.randn(hessian.shape[0], dtype=torch.float64)
    assert rel(HessianOperator(model, data).matvec(v), hessian @ v) < 1e-10


@pytest.mark.parametrize("kwargs", [dict(label_smoothing=0.1), dict(weight="w"),
                                    dict(reduction="sum"), dict(reduction="none"),
                                    dict(ignore=True)])
def test_cross_entropy_variants_match_torch(kwargs):
    z = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 2, 1])
    kw = dict(kwargs)
    if kw.pop("ignore", False):
        y = torch.tensor([0, -100, 1, 2, 1])
    if kw.get("weight") == "w":
        kw["weight"] = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    expected = F.cross_entropy(z, y, **kw)
    with CurvaturePrimitives() as prim:
        got = F.cross_entropy(z, y, **kw)
    assert torch.allclose(got, expected, rtol=1e-13, atol=0)
    rewritten = set(kwargs) <= {"reduction"}  # only the plain cases are rewritten
    assert prim.n_cross_entropy == int(rewritten)


def test_inplace_relu_and_other_calls_pass_through():
    z = torch.randn(4, 3)
    with CurvaturePrimitives() as prim:
        a = F.relu(z.clone(), inplace=True)
        b = torch.tanh(z)
        c = F.batch_norm(z, torch.zeros(3), torch.ones(3))  # no convolution before it
    assert prim.n_relu == 0 and prim.n_folded == 0
    assert torch.equal(a, z.clamp(min=0)) and torch.equal(b, torch.tanh(z))
    assert torch.allclose(c, z / (1 + 1e-5) ** 0.5)
