"""Tests for landscope.probes.{probe_data, hvp, verify}: every HVP method against a dense
float64 Hessian, exact loss weighting, train/eval semantics, determinism check."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscope.data import StreamSplit, TensorSplit, _RawDataset
from landscope.errors import LandscopeError
from landscope.probes.hvp import METHODS, HessianOperator, Mode
from landscope.probes.operator import Operator
from landscope.probes.probe_data import ProbeData
from landscope.probes.verify import dense_hessian, spectrum
from probe_models import seeded_model

torch.set_num_threads(1)

CLASSES = 3
MODELS = {  # name -> (model config, input shape); D stays in the low hundreds
    "mlp": (dict(name="mlp", width=6, depth=2), (1, 12)),
    "cnn_bn": (dict(name="cnn", width=2, depth=2, norm="batch"), (1, 6, 6)),
    "resnet_bn": (dict(name="resnet", width=2, depth=2, norm="batch", skip=True), (1, 6, 6)),
    "vit_ln": (dict(name="vit", width=4, depth=1, norm="layer", skip=True, heads=2,
                    patch_size=4, activation="gelu"), (1, 12)),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@functools.lru_cache(maxsize=None)
def make(name: str, n: int = 7, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 model in eval mode with non-trivial BatchNorm running stats, and data."""
    cfg, shape = MODELS[name]
    return seeded_model(cfg, shape, CLASSES, n, seed=seed)


@functools.lru_cache(maxsize=None)
def dense(name: str, micro_batch: int, mode: Mode = "eval") -> torch.Tensor:
    model, x, y = make(name)
    return dense_hessian(model, ProbeData.from_tensors(x, y, micro_batch), mode=mode)


# ------------------------------------------------------------------------ ProbeData
def test_probe_data_seeded_subset_and_exact_weights():
    x, y = torch.randn(50, 1, 4), torch.arange(50) % 3
    split = TensorSplit(x, y)
    a = ProbeData.from_split(split, 23, seed=5, micro_batch=10)
    b = ProbeData.from_split(split, 23, seed=5, micro_batch=10)
    assert a.n == 23 and [len(yb) for _, yb in a.batches] == [10, 10, 3]
    assert a.weights == [10 / 23, 10 / 23, 3 / 23]
    for (xa, ya), (xb, yb) in zip(a.batches, b.batches):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(5))[:23]
    assert torch.equal(torch.cat([xb for xb, _ in a.batches]), x[order])
    small = ProbeData.from_split(split, 7, seed=5, micro_batch=100)  # nested prefix
    assert torch.equal(small.batches[0][0], x[order[:7]])
    other = ProbeData.from_split(split, 23, seed=6, micro_batch=10)
    assert not torch.equal(other.batches[0][1], a.batches[0][1])
    full = ProbeData.from_split(split, None, seed=0, micro_batch=16)
    assert full.n == 50 and sorted(torch.cat([yb for _, yb in full.batches]).tolist()) == \
        sorted(y.tolist())
    d64 = a.to(torch.float64)
    assert d64.dtype == torch.float64 and d64.batches[0][1].dtype == torch.int64
    assert a.dtype == torch.float32
    with pytest.raises(LandscopeError):
        ProbeData.from_split(split, 0, seed=0, micro_batch=4)
    with pytest.raises(LandscopeError):
        ProbeData.from_split(split, 5, seed=0, micro_batch=0)


def test_probe_data_from_streamed_split_matches_in_memory():
    raw = torch.randint(0, 256, (30, 1, 3, 3), dtype=torch.uint8)
    targets = torch.arange(30) % 4
    stream = StreamSplit(_RawDataset(raw, targets), lambda r: r.float() / 255)
    memory = TensorSplit(raw.float() / 255, targets)
    a = ProbeData.from_split(stream, 12, seed=1, micro_batch=5)
    b = ProbeData.from_split(memory, 12, seed=1, micro_batch=5)
    for (xa, ya), (xb, yb) in zip(a.batches, b.batches, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ------------------------------------------------------------------------ HVP vs dense
@pytest.mark.parametrize("name", list(MODELS))
def test_every_method_matches_dense_hessian(name):
    model, x, y = make(name)
    data = ProbeData.from_tensors(x, y, 4)  # batches 4 + 3
    hessian = dense(name, 4)
    assert (hessian - hessian.T).abs().max() <= 1e-12 * hessian.abs().max()
    vs = torch.randn(2, hessian.shape[0], dtype=torch.float64,
                     generator=torch.Generator().manual_seed(1))
    for method in METHODS:
        op = HessianOperator(model, data, method=method)
        assert isinstance(op, Operator) and op.method == method
        assert op.dim == hessian.shape[0] and op.dtype == torch.float64
        assert (op.n_matvecs, op.n_check_matvecs) == (0, 2)
        for v in vs:
            assert rel(op.matvec(v), hessian @ v) < 1e-10, method
        assert op.n_matvecs == 2 and op.n_check_matvecs == 2
        u, v = vs
        uhv, vhu = float(u @ op.matvec(v)), float(v @ op.matvec(u))
        assert abs(uhv - vhu) <= 1e-12 * (abs(uhv) + 1e-300)


def test_dense_hessian_matches_finite_differences_on_layernorm_vit():
    """Guards the reference itself (torch.func.hessian is wrong for LayerNorm nets)."""
    model, x, y = make("vit_ln")
    data = ProbeData.from_tensors(x, y, 4)
    hessian = dense("vit_ln", 4)
    op = HessianOperator(model, data, method="double_backward", check_determinism=False)
    theta, eps = op.flat_params(), 1e-5
    for i in (0, op.dim - 20, op.dim - 5):  # cls token, final norm, head
        e = torch.zeros(op.dim, dtype=torch.float64)
        e[i] = eps

        def grad_at(t: torch.Tensor) -> torch.Tensor:
            return HessianOperator(model, data, params=op.unflatten(t), check_determinism=False,
                                   method="double_backward").gradient()
        column = (grad_at(theta + e) - grad_at(theta - e)) / (2 * eps)
        assert rel(column, hessian[:, i]) < 1e-6


def test_float32_operator_and_cached_fallback():
    model, x, y = make("cnn_bn")
    data = ProbeData.from_tensors(x, y, 2)  # 4 batches
    hessian = dense("cnn_bn", 4)  # eval mode: same Hessian for any partition
    v = torch.randn(hessian.shape[0], dtype=torch.float64)
    op = HessianOperator(model, data, max_cached_batches=3)
    assert op.requested_method == "cached" and op.method == "double_backward"
    assert rel(op.matvec(v), hessian @ v) < 1e-10
    op32 = HessianOperator(copy.deepcopy(model).float(), data.to(torch.float32))
    assert op32.method == "cached" and op32.dtype == torch.float32
    out = op32.matvec(v.float())
    assert out.dtype == torch.float32 and rel(out.double(), hessian @ v) < 1e-4


# ------------------------------------------------------------------------ loss, gradient
@pytest.mark.parametrize("name", ["cnn_bn", "vit_ln"])
def test_loss_and_gradient_exact_for_any_micro_batch(name):
    model, x, y = make(name)
    params = dict(model.named_parameters())
    full = F.cross_entropy(model(x), y)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(full, list(params.values()))])
    for micro_batch in (1, 3, 4, 7, 100):
        for method in METHODS:
            op = HessianOperator(model, ProbeData.from_tensors(x, y, micro_batch), method=method,
                                 check_determinism=False)
            assert abs(op.loss() - full.item()) <= 1e-12 * full.item()
            assert rel(op.gradient(), grad) < 1e-10
    flat = op.flat_params()
    assert torch.equal(flat, torch.cat([p.detach().reshape(-1) for p in params.values()]))
    back = op.unflatten(flat)
    assert list(back) == op.param_names == list(params)
    assert all(torch.equal(back[k], params[k]) for k in params)


def test_params_subset_is_the_matching_block():
    model, x, y = make("mlp")
    data = ProbeData.from_tensors(x, y, 4)
    full = dense("mlp", 4)
    head = {k: v.detach() for k, v in model.named_parameters() if k.startswith("head.")}
    op = HessianOperator(model, data, params=head)
    start = full.shape[0] - op.dim
    block = full[start:, start:]
    assert torch.allclose(dense_hessian(model, data, params=head), block, rtol=1e-12, atol=1e-14)
    v = torch.randn(op.dim, dtype=torch.float64)
    assert rel(op.matvec(v), block @ v) < 1e-10
    with pytest.raises(LandscopeError):
        HessianOperator(model, data, params={"nope": torch.zeros(1)})


# ------------------------------------------------------------------------ modes, purity
@pytest.mark.parametrize("name", ["cnn_bn", "resnet_bn"])
def test_train_mode_uses_batch_stats_and_leaves_model_untouched(name):
    model, x, y = make(name)
    model = copy.deepcopy(model).train()
    model.head.eval()  # mixed flags must survive
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    data = ProbeData.from_tensors(x, y, 4)
    hessian = dense_hessian(model, data, mode="train")
    assert rel(hessian, dense(name, 4)) > 1e-3  # batch stats differ from running stats
    v = torch.randn(hessian.shape[0], dtype=torch.float64)
    explicit = 0.0
    probe = copy.deepcopy(model).train()
    for xb, yb in data.batches:
        explicit += len(yb) / data.n * F.cross_entropy(probe(xb), yb).item()
    for method in METHODS:
        op = HessianOperator(model, data, mode="train", method=method)
        assert op.mode == "train"
        assert rel(op.matvec(v), hessian @ v) < 1e-10
        assert abs(op.loss() - explicit) <= 1e-12 * explicit
        op_eval = HessianOperator(model, data, mode="eval", method=method)
        assert rel(op_eval.matvec(v), dense(name, 4) @ v) < 1e-10
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # params, running stats
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name,mode", [("mlp", "eval"), ("cnn_bn", "train")])
def test_shard_operators_add_up_to_the_whole_set(name, mode):
    """What the ranks of a data-parallel operator all-reduce: the shards' products, losses
    and gradients (weights over the whole set) sum to the whole set's, for any number of
    shards; train mode keeps whole micro-batches, so BatchNorm's statistics are unchanged."""
    model, x, y = make(name, n=11)
    data = ProbeData.from_tensors(x, y, 2)
    whole = HessianOperator(model, data, mode=mode)
    v = torch.randn(whole.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for world in (2, 3, 6):
        parts = [HessianOperator(model, data.shard(r, world, keep_batches=mode == "train"),
                                 mode=mode, check_determinism=False) for r in range(world)]
        assert rel(sum(p.matvec(v) for p in parts), whole.matvec(v)) < 1e-12
        assert rel(sum(p.gradient() for p in parts), whole.gradient()) < 1e-12
        assert abs(sum(p.loss() for p in parts) - whole.loss()) < 1e-12 * whole.loss()
    with pytest.raises(LandscopeError, match="6 micro-batches for 7 ranks"):
        data.shard(0, 7, keep_batches=True)


# ------------------------------------------------------------------------ determinism
class DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(12, 8), nn.Dropout(0.5), nn.Linear(8, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.tanh(self.fc1(x.flatten(1)))))


@pytest.mark.parametrize("method", METHODS)
def test_determinism_check_refuses_dropout_in_train_mode(method):
    torch.manual_seed(0)
    model = DropoutNet().double()
    _, x, y = make("mlp")
    data = ProbeData.from_tensors(x, y, 4)
    with pytest.raises(LandscopeError, match="not deterministic") as info:
        HessianOperator(model, data, mode="train", method=method)
    assert "\n" not in str(info.value) and "dropout" in str(info.value)
    unchecked = HessianOperator(model, data, mode="train", method=method, check_determinism=False)
    assert (unchecked.n_matvecs, unchecked.n_check_matvecs) == (0, 0)
    ok = HessianOperator(model, data, mode="eval", method=method)  # dropout off
    assert (ok.n_matvecs, ok.n_check_matvecs) == (0, 2)
    v = torch.randn(ok.dim, dtype=torch.float64)
    assert rel(ok.matvec(v), dense_hessian(model, data) @ v) < 1e-10
    assert ok.n_matvecs == 1 and model.training  # flag restored


@pytest.mark.parametrize("method", METHODS)
def test_checked_product_serves_the_top_k_first_step(method, monkeypatch):
    """The determinism check's first product is on lanczos_eigs(seed)'s start vector: that
    run's first step reads it (one product fewer computed), with exactly the same results."""
    from landscope.probes.lanczos import lanczos_eigs
    model, x, y = make("mlp")
    data = ProbeData.from_tensors(x, y, 4)
    computed = []
    real = HessianOperator._product
    monkeypatch.setattr(HessianOperator, "_product",
                        lambda self, v, m: computed.append(m) or real(self, v, m))
    checked = HessianOperator(model, data, method=method, seed=5)
    assert checked.first_product_seconds > 0 and len(computed) == 2
    plain = HessianOperator(model, data, method=method, check_determinism=False)
    a = lanczos_eigs(checked, k=3, tol=1e-8, seed=5)
    n_checked = len(computed) - 2
    computed.clear()
    b = lanczos_eigs(plain, k=3, tol=1e-8, seed=5)
    assert n_checked == len(computed) - 1 and checked.n_matvecs == plain.n_matvecs
    assert torch.equal(a.eigenvalues, b.eigenvalues) and torch.equal(a.residuals, b.residuals)
    # another start vector (or dtype) computes its own product; the kept one is dropped
    other = HessianOperator(model, data, method=method, seed=5)
    computed.clear()
    v = torch.randn(other.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    assert rel(other.matvec(v), dense_hessian(model, data) @ v) < 1e-10 and len(computed) == 1
    assert other._kept is None and other.n_matvecs == 1
    # without the check, prime() keeps a timed product for the same first step
    computed.clear()
    assert plain.prime(5) > 0 and len(computed) == 1 and plain.n_matvecs == b.n_matvecs
    c = lanczos_eigs(plain, k=3, tol=1e-8, seed=5)
    assert len(computed) == 1 + n_checked and torch.equal(c.eigenvalues, b.eigenvalues)


# ------------------------------------------------------------------------ verify, errors
def test_spectrum_and_guards():
    model, x, y = make("mlp")
    data = ProbeData.from_tensors(x, y, 4)
    hessian = dense("mlp", 4)
    evals = spectrum(hessian)
    assert torch.all(evals[1:] >= evals[:-1])
    assert torch.allclose(evals.sum(), torch.trace(hessian), rtol=1e-12)
    with pytest.raises(LandscopeError, match="max_params"):
        dense_hessian(model, data, max_params=100)
    with pytest.raises(LandscopeError):
        spectrum(torch.zeros(2, 3))
    with pytest.raises(LandscopeError):
        HessianOperator(model, data, method="magic")  # type: ignore[arg-type]
    with pytest.raises(LandscopeError):
        HessianOperator(model, data, mode="sometimes")  # type: ignore[arg-type]
    op = HessianOperator(model, data, check_determinism=False)
    with pytest.raises(LandscopeError):
        op.matvec(torch.zeros(3, dtype=torch.float64))
