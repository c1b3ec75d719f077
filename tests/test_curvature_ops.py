"""Gauss-Newton, Fisher and NTK operators (landscope.probes.curvature_ops) against matrices
written out by hand in float64 from full Jacobians (torch.autograd.functional.jacobian) and the
output Hessians of the losses; the estimators on them; probe.curvature in a runner job."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import run_cli  # noqa: E402
from landscope.config import ProbeConfig  # noqa: E402
from landscope.errors import ConfigError, LandscopeError  # noqa: E402
from landscope.io import read_json  # noqa: E402
from landscope.losses import ClassificationLoss, attach  # noqa: E402
from landscope.probes.curvature_ops import (  # noqa: E402
    DifferenceOperator,
    FisherOperator,
    GGNOperator,
    NTKOperator,
)
from landscope.probes.density import slq  # noqa: E402
from landscope.probes.hvp import HessianOperator  # noqa: E402
from landscope.probes.lanczos import lanczos_eigs  # noqa: E402
from landscope.probes.probe_data import ProbeData  # noqa: E402
from landscope.probes.trace import hutchinson  # noqa: E402
from landscope.probes.verify import dense_hessian  # noqa: E402
from probe_models import seeded_model  # noqa: E402

MLP = {"name": "mlp", "width": 8, "depth": 2}
N, C = 30, 3


def _model(loss=None, cfg=MLP, seed=0):
    model, x, y = seeded_model(cfg, (1, 6), C, N, seed=seed)
    return attach(model, loss), x, y


def _jacobian(model, x):
    """``(f, J)``: outputs (n, C) and the full Jacobian (n, C, D) by hand."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    numels = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(th):
        return functional_call(model, {n: c.view(s) for n, c, s in
                                       zip(names, th.split(numels), shapes)}, (x,))
    return f(theta).detach(), torch.autograd.functional.jacobian(f, theta)


def _dense(op):
    eye = torch.eye(op.dim, dtype=torch.float64)
    return torch.stack([op.matvec(e) for e in eye], 1)


def _top_rel_error(op, exact, k=5):
    top = lanczos_eigs(op, k=k, tol=1e-8, seed=1)
    ref = torch.linalg.eigvalsh(exact).flip(0)[:k]
    return float(((top.eigenvalues - ref).abs() / ref.abs()).max())


def _ggn_by_hand(model, x, y, loss):
    f, jac = _jacobian(model, x)
    if loss == "mse":
        q = torch.eye(C, dtype=torch.float64).expand(len(y), C, C)
    else:
        p = torch.softmax(f, -1)
        q = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    return torch.einsum("icd,ice,ief->df", jac, q, jac) / len(y)


@pytest.mark.parametrize("loss", [None, ClassificationLoss("cross_entropy", 0.1),
                                  ClassificationLoss("mse")])
def test_ggn_equals_jacobian_form_and_estimators_agree(loss):
    model, x, y = _model(loss)
    data = ProbeData.from_tensors(x, y, 7)  # 5 micro-batches of unequal weight
    op = GGNOperator(model, data)
    g = _ggn_by_hand(model, x, y, "mse" if loss is not None and loss.name == "mse" else "ce")
    assert torch.allclose(_dense(op), g, rtol=0, atol=1e-12 * float(g.abs().max()))
    assert _top_rel_error(op, g) < 1e-6
    tr = hutchinson(op, n_samples=200, seed=3)
    assert abs(tr.estimate - float(g.trace())) <= 4 * tr.stderr
    # SLQ unchanged: a full-length run resolves the top eigenvalue as a node
    q = slq(op, n_probes=1, m_steps=op.dim, seed=0)
    assert float(q.nodes.max()) == pytest.approx(float(torch.linalg.eigvalsh(g)[-1]), rel=1e-8)


def test_ggn_of_a_linear_model_under_mse_is_the_hessian():
    torch.manual_seed(0)
    model = attach(nn.Linear(6, C).double(), ClassificationLoss("mse"))
    x, y = torch.randn(N, 6, dtype=torch.float64), torch.randint(0, C, (N,))
    data = ProbeData.from_tensors(x, y, 8)
    h = dense_hessian(model, data)
    assert torch.allclose(_dense(GGNOperator(model, data)), h, rtol=0, atol=1e-13)


def test_residual_h_minus_g_matches_the_dense_difference():
    model, x, y = _model()
    data = ProbeData.from_tensors(x, y, 10)
    hess, ggn = HessianOperator(model, data), GGNOperator(model, data)
    exact = dense_hessian(model, data) - _ggn_by_hand(model, x, y, "ce")
    diff = DifferenceOperator(hess, ggn)
    assert torch.allclose(_dense(diff), exact, rtol=0, atol=1e-12)
    assert _top_rel_error(diff, (exact + exact.T) / 2) < 1e-6
    assert diff.n_matvecs > 0 and hess.n_matvecs == ggn.n_matvecs == diff.n_matvecs


def test_empirical_fisher_is_the_mean_of_per_sample_gradient_outer_products():
    model, x, y = _model(ClassificationLoss("cross_entropy", 0.05))
    op = FisherOperator(model, ProbeData.from_tensors(x, y, 7), kind="empirical")
    grads = []
    for i in range(N):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1], label_smoothing=0.05).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    g = torch.stack(grads)
    exact = g.T @ g / N
    assert torch.allclose(_dense(op), exact, rtol=0, atol=1e-12 * float(exact.abs().max()))
    assert _top_rel_error(op, exact) < 1e-6


@pytest.mark.parametrize("name", ["cross_entropy", "mse"])
def test_true_fisher_at_its_drawn_labels_and_its_expectation_is_the_ggn(name):
    model, x, y = _model(ClassificationLoss(name))
    data = ProbeData.from_tensors(x, y, 16)
    op = FisherOperator(model, data, kind="true", mc_samples=2, seed=5)
    f, jac = _jacobian(model, x)
    sampled = torch.cat(op.sampled)  # labels (n, M) for CE, noise (n, M, C) for mse
    if name == "cross_entropy":
        r = torch.softmax(f, -1).unsqueeze(1) - F.one_hot(sampled, C).double()
    else:
        r = -sampled
    g = torch.einsum("icd,imc->imd", jac, r)
    exact = torch.einsum("imd,ime->de", g, g) / (N * 2)
    assert torch.allclose(_dense(op), exact, rtol=0, atol=1e-12 * float(exact.abs().max()))
    assert _top_rel_error(op, exact, k=3) < 1e-6
    again = FisherOperator(model, data, kind="true", mc_samples=2, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(op.sampled, again.sampled))  # seeded
    torch.manual_seed(0)  # E[F_MC] = G, on a linear model (21 products of 4000 draws each)
    lin = attach(nn.Linear(6, C).double(), ClassificationLoss(name))
    data = ProbeData.from_tensors(x.flatten(1), y, 16)
    many = _dense(FisherOperator(lin, data, kind="true", mc_samples=4000, seed=1))
    ggn = _dense(GGNOperator(lin, data))
    assert float((many - ggn).norm() / ggn.norm()) < 0.03  # MC error ~ 1/sqrt(n M)


def test_ntk_eigenvalues_are_those_of_j_jt_and_mse_ggn_times_n():
    model, x, y = _model(ClassificationLoss("mse"))
    data = ProbeData.from_tensors(x, y, 7)
    op = NTKOperator(model, data, samples=12)
    _, jac = _jacobian(model, x[:12])
    j = jac.reshape(12 * C, -1)
    assert op.dim == 12 * C
    assert torch.allclose(_dense(op), j @ j.T, rtol=0, atol=1e-12 * float((j @ j.T).abs().max()))
    assert _top_rel_error(op, j.T @ j) < 1e-6  # the nonzero eigenvalues of J^T J
    whole = NTKOperator(model, data)  # every sample: eig(K) / n = eig(G) for mse
    ggn_top = lanczos_eigs(GGNOperator(model, data), k=5, tol=1e-9, seed=0).eigenvalues
    ntk_top = lanczos_eigs(whole, k=5, tol=1e-9, seed=0).eigenvalues / N
    assert torch.allclose(ntk_top, ggn_top, rtol=1e-7)


class _OwnTask(nn.Module):
    """A model with a task of its own: loss = log cosh(out - y), not a ClassificationLoss."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return torch.tanh(self.lin(x))

    def task_loss(self, out, y, reduction="mean"):
        per = torch.log(torch.cosh(out - y.unsqueeze(-1).to(out.dtype))).sum(-1)
        return per.mean() if reduction == "mean" else per.sum() if reduction == "sum" else per


def test_own_task_ggn_by_autograd_and_true_fisher_refused():
    torch.manual_seed(0)
    model = _OwnTask().double()
    x, y = torch.randn(N, 4, dtype=torch.float64), torch.randint(0, 2, (N,))
    data = ProbeData.from_tensors(x, y, 9)
    f, jac = _jacobian(model, x)
    t = f - y.unsqueeze(-1).double()
    q = torch.diag_embed(1 - torch.tanh(t) ** 2)  # d^2 log cosh(t) / dt^2 = sech^2
    exact = torch.einsum("icd,ice,ief->df", jac, q, jac) / N
    assert torch.allclose(_dense(GGNOperator(model, data)), exact, rtol=0, atol=1e-13)
    with pytest.raises(LandscopeError, match="true Fisher needs the model's predictive"):
        FisherOperator(model, data, kind="true")


def test_dropout_is_refused_and_float32_products_follow_float64():
    torch.manual_seed(0)
    model, (x, y) = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, C)).double(), \
        (torch.randn(N, 6, dtype=torch.float64), torch.randint(0, C, (N,)))
    with pytest.raises(LandscopeError, match="ggn operator is not deterministic"):
        GGNOperator(model, ProbeData.from_tensors(x, y, 10), mode="train")
    GGNOperator(model, ProbeData.from_tensors(x, y, 10), mode="eval")  # dropout off
    model, x, y = _model()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    ref = GGNOperator(model, ProbeData.from_tensors(x, y, 10)).matvec(v)
    m32 = model.float()
    got = GGNOperator(m32, ProbeData.from_tensors(x.float(), y, 10)).matvec(v.float())
    assert float((got.double() - ref).norm() / ref.norm()) < 1e-5
    # many micro-batches: graphs rebuilt per product, same result
    few = GGNOperator(model, ProbeData.from_tensors(x, y, 3), max_cached_batches=2)
    assert not few.jac.cached
    again = GGNOperator(model, ProbeData.from_tensors(x, y, 3))
    assert torch.allclose(few.matvec(v.float()), again.matvec(v.float()), rtol=1e-5, atol=1e-7)


def test_probe_curvature_config():
    from landscope.probes.steps import step_curvature, steps_for

    assert ProbeConfig().curvature == []
    assert step_curvature not in steps_for(ProbeConfig(top_k=3))  # default: nothing runs
    assert step_curvature in steps_for(ProbeConfig(top_k=3, curvature=["ntk"]))
    ProbeConfig(top_k=2, curvature=["ggn", "ntk"]).check()
    for bad, key in ((["hessian"], "probe.curvature"), (["ggn", "ggn"], "probe.curvature"),
                     (["ggn"], "probe.top_k")):
        with pytest.raises(ConfigError, match=key):
            ProbeConfig(top_k=0 if key == "probe.top_k" else 2, curvature=bad).check()
    with pytest.raises(ConfigError, match="probe.ranks must be 1 with probe.curvature"):
        ProbeConfig(top_k=2, curvature=["ggn"], ranks=2).check()


TINY = ["model.width=6", "model.depth=1", "dataset.train_size=64", "dataset.test_size=32",
        "train.epochs=1", "train.batch_size=16", "landscape=none", "probe=basic",
        "probe.data_size=24", "probe.top_k=3", "probe.sharpness.enabled=false"]


def test_probe_curvature_in_a_job_matches_dense_references(compose, tmp_path):
    from landscope.jobs import train_job

    overrides = [*TINY, "probe.curvature=[ggn,fisher,fisher_empirical,ntk]",
                 "probe.curvature_ntk_samples=8", "probe.verify=true"]
    result = train_job(compose(overrides), tmp_path, overrides)
    p = result["probes"]
    for kind in ("ggn", "fisher", "fisher_empirical", "ntk"):
        assert len(p[f"{kind}_top_eigenvalues"]) == 3 and p[f"{kind}_converged"] is True
        assert p[f"{kind}_lambda_max"] == p[f"{kind}_top_eigenvalues"][0] > 0
        assert p[f"verify_{kind}_top_max_rel_error"] < 1e-4  # float32 run, float64 reference
        assert abs(p[f"verify_{kind}_trace_error_in_stderr"]) < 4
        assert p[f"{kind}_products"] > 0
    for kind in ("ggn", "fisher", "fisher_empirical"):
        assert 0 <= p[f"hessian_{kind}_overlap"] <= 1
        assert p[f"verify_hessian_{kind}_overlap_error"] < 1e-3
    assert p["ntk_samples"] == 8 and len(p["residual_top_eigenvalues"]) == 3
    assert p["verify_residual_top_max_rel_error"] < 1e-3
    assert read_json(tmp_path / "result.json")["probes"] == p
    arrays = np.load(tmp_path / "probes" / f"{result['probe_fingerprint']}.npz")
    assert np.allclose(arrays["eigenvalues_ggn"], p["ggn_top_eigenvalues"])
    assert "eigenvalues_residual" in arrays.files


def test_bad_curvature_value_is_one_config_error_line(tmp_path, data_dir):
    run = run_cli([*TINY, "probe.curvature=[kfac]"], tmp_path, data_dir=data_dir)
    lines = [ln for ln in run.stderr.strip().splitlines() if ln.strip()]
    assert run.returncode == 2 and len(lines) == 1 and "probe.curvature" in lines[0], run.stderr


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_ggn_of_a_batchnorm_cnn_in_either_mode(mode):
    """BatchNorm folded (eval, the primitives) or on batch statistics (train: the batch's
    outputs are coupled, the hand Jacobian is the whole batch's)."""
    from landscope.probes.hvp import forward_mode

    model, x, y = seeded_model(dict(name="cnn", width=2, depth=2, norm="batch"), (1, 6, 6), C, 16)
    op = GGNOperator(model, ProbeData.from_tensors(x, y, 16), mode=mode)
    with forward_mode(model, mode):
        exact = _ggn_by_hand(model, x, y, "ce")
    assert torch.allclose(_dense(op), exact, rtol=0, atol=1e-12 * float(exact.abs().max()))
    assert _top_rel_error(op, exact) < 1e-6


def test_dense_references_of_verify_mode():
    from landscope.probes.curvature_probes import dense_curvature

    model, x, y = _model()
    data = ProbeData.from_tensors(x, y, 7)
    assert torch.allclose(dense_curvature("ggn", model, data), _ggn_by_hand(model, x, y, "ce"),
                          rtol=0, atol=1e-14)
    _, jac = _jacobian(model, x[:5])
    j = jac.reshape(5 * C, -1)
    assert torch.allclose(dense_curvature("ntk", model, data, ntk_samples=5), j @ j.T,
                          rtol=0, atol=1e-13)
    op = FisherOperator(model, data, kind="true", mc_samples=3, seed=2)
    assert torch.allclose(dense_curvature("fisher", model, data, sampled=op.sampled), _dense(op),
                          rtol=0, atol=1e-14)


def test_curvature_is_in_the_plan_and_under_the_caps():
    """probe.curvature's products are in the plan (each kind's list and trace, the residual's
    Hessian and GGN products) and count against probe.max_products: a cap stops a kind or keeps
    the next from starting and the run says so; a small operator's trace (the NTK Gram here) is
    its exact sum over unit vectors once sampling would take more products."""
    from landscope.data import TensorSplit
    from landscope.probes.plan import curvature_sizes, fewest_products, most_products
    from landscope.probes.suite import run_probes

    model, x, y = _model()
    split = TensorSplit(x, y)
    cfg = ProbeConfig(top_k=2, curvature=["ggn", "ntk"], curvature_ntk_samples=8,
                      data_size=None, micro_batch=N, progress=False, verify=True)
    dim = sum(p.numel() for p in model.parameters())
    sizes = curvature_sizes(cfg, dim, N, C)
    assert sizes == [dim, 8 * C]
    lines: list[str] = []
    free = run_probes(model, split, cfg, log=lines.append).scalars
    assert free["probe_plan"]["curvature"] == most_products(cfg, dim, (), sizes)["curvature"]
    spent = free["probe_cost"]["curvature"]["products"]
    assert spent == free["ggn_products"] + 2 * free["residual_products"] + free["ntk_products"]
    assert fewest_products(cfg, dim, (), sizes) - fewest_products(cfg, dim) <= spent \
        <= free["probe_plan"]["curvature"]
    assert "curvature <= " in lines[0] and "curvature_stopped_by" not in free
    assert free["ntk_trace_unit_vectors"] is True and free["ntk_trace_stderr"] == 0
    assert abs(free["ntk_trace"] - free["verify_ntk_trace_exact"]) \
        <= 1e-5 * free["verify_ntk_trace_exact"]  # float32 products, float64 reference

    capped = ProbeConfig(**{**cfg.__dict__, "verify": False,
                            "max_products": free["hvps_top"] + free["ggn_products"] + 5})
    cut = run_probes(model, split, capped, log=lines.append).scalars
    assert cut["curvature_stopped_by"] == cut["residual_stopped_by"] == "max_products"
    assert cut["residual_converged"] is False and "ntk_lambda_max" not in cut
    assert cut["ggn_products"] == free["ggn_products"] and cut["residual_products"] == 3
    assert cut["probe_cost"]["curvature"]["products"] == cut["ggn_products"] + 2 * 3
    assert any("curvature (max_products)" in line for line in lines)
    none = run_probes(model, split, ProbeConfig(**{**capped.__dict__, "max_products": 1}))
    assert none.scalars["curvature_stopped_by"] == "max_products"
    assert "ggn_lambda_max" not in none.scalars
