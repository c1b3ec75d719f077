"""The ``loss`` group: cross-entropy (with label smoothing) and the squared loss on one-hot
targets, checked against formulas written here and against dense float64 Hessians of the
loss computed in the test (not by the library), through the probes, the slices, PAC-Bayes'
surrogate, the notebook API and the runner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from conftest import run_cli
from landscope.errors import ConfigError
from landscope.losses import ClassificationLoss, attach, error_surrogate, loss_of, task_loss

TINY = ["model.width=8", "model.depth=1", "dataset.train_size=64", "dataset.test_size=64",
        "train.epochs=2", "train.batch_size=16", "landscape=none"]




@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _mse_by_hand(out, y):
    onehot = torch.zeros_like(out)
    onehot[torch.arange(len(y)), y] = 1.0
    return 0.5 * ((out - onehot) ** 2).sum(1).mean()


def test_the_losses_match_their_formulas():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=gen)
    mse = ClassificationLoss("mse")
    assert float(mse(out, y)) == pytest.approx(float(_mse_by_hand(out, y)), rel=1e-14)
    assert float(mse(out, y, "sum")) == pytest.approx(7 * float(_mse_by_hand(out, y)), rel=1e-14)
    assert mse(out, y, "none").shape == (7,)
    s = 0.1
    smoothed = (1 - s) * F.one_hot(y, 4).double() + s / 4
    by_hand = -(smoothed * out.log_softmax(1)).sum(1).mean()
    assert float(ClassificationLoss("cross_entropy", s)(out, y)) == pytest.approx(
        float(by_hand), rel=1e-14)
    assert ClassificationLoss().plain and not ClassificationLoss("mse").plain
    # per-sample losses under vmap (the gradient-noise probes) equal the batch's
    per = torch.func.vmap(lambda o, t: mse(o, t))(out, y)
    assert torch.allclose(per, mse(out, y, "none"), rtol=0, atol=1e-15)
    with pytest.raises(ConfigError, match="loss.name must be one of"):
        ClassificationLoss("hinge")


def test_attach_leaves_plain_cross_entropy_and_the_state_dict_alone():
    net = nn.Linear(3, 2)
    keys = list(net.state_dict())
    assert attach(net, ClassificationLoss()) is net and not hasattr(net, "task_loss")
    attach(net, loss_of({"name": "mse", "label_smoothing": 0.0}))
    assert isinstance(net.task_loss, ClassificationLoss) and list(net.state_dict()) == keys
    out, y = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    assert float(task_loss(net, out, y)) == pytest.approx(float(_mse_by_hand(out, y)))

    class OwnTask(nn.Linear):
        def task_loss(self, out, y, reduction="mean"):
            return out.sum()

    with pytest.raises(ConfigError, match="defines its own task loss"):
        attach(OwnTask(2, 2), ClassificationLoss("mse"))


def test_the_error_surrogate_bounds_the_zero_one_error():
    gen = torch.Generator().manual_seed(1)
    net = nn.Identity()
    for name, k in (("mse", 4.0), ("cross_entropy", 1 / math.log(2))):
        loss = ClassificationLoss(name)
        holder = attach(nn.Linear(1, 1), loss)  # a model carrying the loss
        assert loss.error_bound_scale == pytest.approx(k)
        for _ in range(20):
            out = torch.randn(50, 3, generator=gen) * 2
            y = torch.randint(0, 3, (50,), generator=gen)
            errors = (out.argmax(1) != y).double()
            per = loss(out, y, "none") * k
            assert bool((per[errors == 1] >= 1 - 1e-12).all())
            assert float(error_surrogate(holder, out, y)) >= float(errors.mean())
    # the bound is tight for mse: a tie at 1/2 costs exactly 1
    tie = torch.tensor([[0.5, 0.5]])
    assert float(ClassificationLoss("mse")(tie, torch.tensor([0]))) * 4 == pytest.approx(1.0)
    # a model without a loss of its own: cross-entropy / ln 2, as before
    out, y = torch.randn(4, 3, generator=gen), torch.tensor([0, 1, 2, 0])
    assert float(error_surrogate(net, out, y)) == pytest.approx(
        float(F.cross_entropy(out, y)) / math.log(2))


def _flat_hessian(model, x, y, loss_by_hand):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()

    def f(flat):
        parts = dict(zip(names, (t.view(s) for t, s in zip(flat.split(sizes), shapes))))
        return loss_by_hand(functional_call(model, parts, (x,)), y)

    return hessian(f)(theta)


def test_probes_see_the_hessian_of_the_squared_loss():
    """A linear model under the squared loss: H = I_C (x) (1/n) sum [x;1][x;1]^T, in closed
    form; the Lanczos top eigenvalue and the operator's products match it."""
    from landscope.probes.hvp import HessianOperator
    from landscope.probes.lanczos import lanczos_eigs
    from landscope.probes.probe_data import ProbeData

    gen = torch.Generator().manual_seed(2)
    n, d, c = 40, 5, 3
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=gen)
    net = attach(nn.Linear(d, c).double(), ClassificationLoss("mse"))
    xt = torch.cat([x, torch.ones(n, 1, dtype=torch.float64)], 1)
    gram = np.linalg.eigvalsh((xt.T @ xt / n).numpy())
    op = HessianOperator(net, ProbeData([(x, y)]))
    top = lanczos_eigs(op, k=1, tol=1e-10, seed=0)
    assert float(top.eigenvalues[0]) == pytest.approx(gram[-1], rel=1e-9)
    dense = _flat_hessian(net, x, y, _mse_by_hand)
    # every Gram eigenvalue, C times
    assert np.allclose(np.linalg.eigvalsh(dense.numpy()), np.sort(np.repeat(gram, c)),
                       rtol=0, atol=1e-12)
    probe = torch.randn(dense.shape[0], dtype=torch.float64, generator=gen)
    assert torch.allclose(op.matvec(probe), dense @ probe, rtol=1e-10, atol=1e-12)


def test_label_smoothing_changes_the_probed_hessian():
    from landscope.probes.hvp import HessianOperator
    from landscope.probes.probe_data import ProbeData

    torch.manual_seed(3)
    x, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    smoothed = attach(net, ClassificationLoss("cross_entropy", 0.2))
    dense = _flat_hessian(smoothed, x, y,
                          lambda out, t: F.cross_entropy(out, t, label_smoothing=0.2))
    op = HessianOperator(smoothed, ProbeData([(x, y)]))
    v = torch.randn(dense.shape[0], dtype=torch.float64)
    assert torch.allclose(op.matvec(v), dense @ v, rtol=1e-10, atol=1e-12)
    plain = _flat_hessian(smoothed, x, y, F.cross_entropy)
    assert not torch.allclose(plain, dense, atol=1e-6)  # the smoothing is seen


def test_the_notebook_api_uses_the_models_loss():
    from landscope.analyzer import Analyzer

    torch.manual_seed(4)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    net = attach(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)),
                 ClassificationLoss("mse"))
    an = Analyzer(net, [(x, y)], device="cpu")
    res = an.full_analysis(top_k=1)
    dense = _flat_hessian(net.double(), x.double(), y, _mse_by_hand)
    net.float()
    lam = float(torch.linalg.eigvalsh(dense)[-1])
    assert res.lambda_max == pytest.approx(lam, rel=1e-4)


def test_a_mse_job_probes_and_slices_its_own_loss(compose, tmp_path):
    """Through the runner: the train loss, the slice centre and lambda_max of a job with
    loss=mse equal the squared loss and its dense float64 Hessian computed here."""
    from landscope.data import load_data
    from landscope.jobdir import JobDir
    from landscope.jobs import train_job

    cfg = compose([*TINY, "loss=mse", "probe=basic", "probe.data_size=null",
                   "probe.sharpness.enabled=false", "landscape=basic",
                   "landscape.data_size=64"])
    result = train_job(cfg, tmp_path, [])
    model, data = JobDir(tmp_path).load_model()
    assert isinstance(model.task_loss, ClassificationLoss) and model.task_loss.name == "mse"
    x = torch.cat([xb for xb, _ in data.train.batches(1000, shuffle=False)])
    y = torch.cat([yb for _, yb in data.train.batches(1000, shuffle=False)])
    model.eval()
    with torch.no_grad():
        train_loss = float(_mse_by_hand(model(x), y))
    assert result["final"]["train_loss"] == pytest.approx(train_loss, rel=1e-5)
    assert result["landscape"]["line_train_loss_centre"] == pytest.approx(train_loss, rel=1e-5)
    dense = _flat_hessian(model.double(), x.double(), y, _mse_by_hand)
    lam = float(torch.linalg.eigvalsh(dense)[-1])
    assert result["probes"]["lambda_max"] == pytest.approx(lam, rel=1e-4)
    assert result["probes"]["trace"] == pytest.approx(float(torch.trace(dense)),
                                                      abs=4 * result["probes"]["trace_stderr"])
    # the same job under cross-entropy trains another model: the loss is in the fingerprint
    from landscope.fingerprints import fingerprint

    assert fingerprint(cfg) != fingerprint(compose([*TINY, "probe=basic"]))
    assert load_data(cfg.dataset).meta.num_classes == 10


def test_label_smoothing_reaches_the_training_loss(compose, tmp_path):
    from landscope.jobdir import JobDir
    from landscope.jobs import train_job

    cfg = compose([*TINY, "loss.label_smoothing=0.1", "probe=none"])
    result = train_job(cfg, tmp_path, [])
    model, data = JobDir(tmp_path).load_model()
    x = torch.cat([xb for xb, _ in data.train.batches(1000, shuffle=False)])
    y = torch.cat([yb for _, yb in data.train.batches(1000, shuffle=False)])
    with torch.no_grad():
        expected = float(F.cross_entropy(model.eval()(x), y, label_smoothing=0.1))
    assert result["final"]["train_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("override,message", [
    ("loss=hinge", "loss"),
    ("loss.label_smoothing=1.5", "loss.label_smoothing must be in [0, 1)"),
    ("loss.label_smoothing=-0.1", "loss.label_smoothing must be in [0, 1)"),
])
def test_bad_loss_options_fail_in_one_line(tmp_path, data_dir, override, message):
    run = run_cli(["train.epochs=1", override], tmp_path, data_dir=data_dir)
    assert run.returncode == 2, run.stderr
    lines = [ln for ln in run.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert not (tmp_path / "outputs").exists()


def test_mse_with_smoothing_or_a_synthetic_task_is_refused(tmp_path, data_dir):
    run = run_cli(["loss=mse", "loss.label_smoothing=0.1"], tmp_path, data_dir=data_dir)
    assert run.returncode == 2 and "0 with loss=mse" in run.stderr, run.stderr
    run = run_cli(["dataset=quadratic", "model=quadratic", "loss=mse"], tmp_path,
                  data_dir=data_dir)
    assert run.returncode == 2 and "synthetic problems define their own task" in run.stderr
    assert not (tmp_path / "outputs").exists()


def test_sharpness_sees_the_squared_loss():
    """A linear model under the squared loss is an exact quadratic in the parameters:
    L(theta + delta) - L(theta) = g.delta + delta^T H delta / 2, so SAM's worst case at radius
    rho lies between the rise along the gradient and rho ||g|| + rho^2 lambda_max / 2."""
    from landscope.probes.objective import ModelObjective
    from landscope.probes.probe_data import ProbeData
    from landscope.probes.sharpness import worst_case_sharpness

    gen = torch.Generator().manual_seed(5)
    n, d, c = 40, 5, 3
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=gen)
    net = attach(nn.Linear(d, c).double(), ClassificationLoss("mse"))
    obj = ModelObjective(net, ProbeData([(x, y)]))
    with torch.no_grad():
        assert obj.loss(obj.theta0) == pytest.approx(float(_mse_by_hand(net(x), y)), rel=1e-14)
    dense = _flat_hessian(net, x, y, _mse_by_hand)
    g = obj.grad(obj.theta0)
    lam = float(torch.linalg.eigvalsh(dense)[-1])
    rho = 0.5
    u = g / g.norm()
    along_gradient = rho * float(g.norm()) + 0.5 * rho ** 2 * float(u @ dense @ u)
    worst = worst_case_sharpness(obj, [rho], steps=40, restarts=2, seed=0).values[0]
    assert along_gradient - 1e-12 <= worst <= rho * float(g.norm()) + 0.5 * rho ** 2 * lam + 1e-12
