"""Tests for LLP (landscope.optim.llp): the curvature estimator against closed forms on a
quadratic, stability beyond 2/lambda_max, exact gradient-evaluation counts, exact resume,
and the runner's one-line errors for impossible options."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import cut_back_to_epoch_2, metrics_without_time, run_cli
from landscope.config import (
    BaseOptimizerName,
    LLPAggregate,
    LLPConfig,
    OptimizerConfig,
    OptimizerName,
    validate,
)
from landscope.errors import ConfigError
from landscope.optim import LLP, build_optimizer, build_scheduler, is_llp, is_sam

TINY = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=32",
        "probe=none", "landscape=none"]  # 8 steps per epoch


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _spectrum_matrix(eigs, seed=0) -> torch.Tensor:
    """A symmetric matrix with the given eigenvalues in a random orthonormal basis (float64)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def _quadratic(a: torch.Tensor, w: torch.Tensor):
    def closure():
        loss = 0.5 * w @ a @ w
        loss.backward()
        return loss
    return closure


def _sphere_var(m: torch.Tensor) -> float:
    """Var(d^T M d) for d uniform on the unit sphere in D dimensions:
    2 / (D (D + 2)) * (tr(M^2) - tr(M)^2 / D)."""
    d = m.shape[0]
    return float(2.0 / (d * (d + 2)) * (torch.trace(m @ m) - torch.trace(m) ** 2 / d))


def test_estimator_mean_matches_closed_form_on_a_quadratic():
    """E||Hd||^2 = tr(H^2)/D and E d^T H d = tr(H)/D for d uniform on the sphere: with
    N = 1000 directions the estimates lie within 4 Monte-Carlo standard errors (computed
    from the exact variance of a quadratic form on the sphere, see _sphere_var)."""
    eigs = [10.0, 5.0, 2.0, 1.0, 0.5, 0.2, 0.1, -0.3, -1.0, 0.0, 0.05, 0.01]
    h = _spectrum_matrix(eigs)
    dim, n = h.shape[0], 1000
    w = torch.nn.Parameter(torch.linspace(-1, 1, dim, dtype=torch.float64))
    opt = LLP([w], torch.optim.SGD, n_probes=n, probe_eps=1e-4, every=1, ema=0.0, seed=3, lr=0.1,
              aggregate="mean")
    _quadratic(h, w)()
    theta, grad = w.detach().clone(), w.grad.clone()
    assert opt.probe(_quadratic(h, w)) == n
    assert torch.equal(w.detach(), theta) and torch.equal(w.grad, grad)  # left untouched
    est = opt.last
    h2 = h @ h
    # frobenius curvature with aggregate=mean: kappa^2 = D * mean ||h_i||^2 ~ tr(H^2)
    se_sq = dim * math.sqrt(_sphere_var(h2) / n)
    assert abs(est["curvature"] ** 2 - float(torch.trace(h2))) <= 4 * se_sq
    # directional curvature: D * mean d^T H d ~ tr(H) (Hutchinson with sphere vectors)
    se_tr = dim * math.sqrt(_sphere_var(h) / n)
    assert abs(est["trace_est"] - float(torch.trace(h))) <= 4 * se_tr
    assert abs(est["dir_curv_mean"] - float(torch.trace(h)) / dim) <= 4 * se_tr / dim
    # per direction the gradient change is H d exactly (a quadratic): max >= mean, bounded
    assert est["curv_mean"] <= est["curv_max"] <= max(abs(e) for e in eigs) * (1 + 1e-9)


def test_one_probe_is_the_exact_hessian_vector_product():
    h = _spectrum_matrix([4.0, 3.0, 1.0, 0.5])
    w = torch.nn.Parameter(torch.tensor([0.3, -0.2, 1.0, 0.7], dtype=torch.float64))
    opt = LLP([w], torch.optim.SGD, n_probes=1, probe_eps=1e-3, every=1, ema=0.0, seed=11,
              curvature="raw", lr=0.1)
    _quadratic(h, w)()
    opt.probe(_quadratic(h, w))
    d = torch.randn(4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    d = d / d.norm()  # the same draw as LLP's generator
    assert opt.last["curv_mean"] == pytest.approx(float((h @ d).norm()), rel=1e-9)
    assert opt.last["dir_curv_mean"] == pytest.approx(float(d @ h @ d), rel=1e-8)
    assert opt.kappa == pytest.approx(float((h @ d).norm()), rel=1e-9)  # raw, one direction


def _run_gd(opt, h, w, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss = _quadratic(h, w)()
        if not math.isfinite(loss.item()) or loss.item() > 1e12:
            return float("inf")
        if isinstance(opt, LLP):
            opt.probe(_quadratic(h, w))
        opt.step()
    return float(0.5 * w.detach() @ h @ w.detach())


@pytest.mark.parametrize("base,kwargs", [("sgd", {}), ("momentum", {"momentum": 0.9})])
def test_beyond_two_over_lambda_max_gd_diverges_and_llp_converges(base, kwargs):
    eigs = [10.0, 6.0, 3.0, 1.0, 0.5, 0.2]
    h = _spectrum_matrix(eigs, seed=1)
    mu = kwargs.get("momentum", 0.0)
    lr = 1.25 * 2 * (1 + mu) / max(eigs)  # 25% beyond the stability limit 2(1 + mu)/lambda_max
    w0 = torch.ones(len(eigs), dtype=torch.float64)

    w = torch.nn.Parameter(w0.clone())
    plain = _run_gd(torch.optim.SGD([w], lr=lr, **kwargs), h, w, 300)
    assert not plain < 1e6  # diverged

    w = torch.nn.Parameter(w0.clone())
    opt = LLP([w], torch.optim.SGD, n_probes=4, every=10, seed=0, lr=lr,
              momentum_scale=1 + mu, **kwargs)
    start = float(0.5 * w0 @ h @ w0)
    final = _run_gd(opt, h, w, 300)
    assert final < 1e-6 * start  # converged
    lr_used = opt.lr_for(lr)
    assert lr_used < 2 * (1 + mu) / max(eigs) and lr_used < lr  # the rule bound the step


def test_rule_none_and_cap_in_flat_regions():
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    h = torch.diag(torch.tensor([1e-3, 1e-3, 1e-3], dtype=torch.float64))  # flat
    opt = LLP([w], torch.optim.SGD, n_probes=2, every=1, seed=0, lr=0.5)
    _quadratic(h, w)()
    opt.probe(_quadratic(h, w))
    assert opt.lr_for(0.5) == 0.5  # c / kappa ~ 577: capped at the configured lr
    none = LLP([w], torch.optim.SGD, n_probes=2, every=1, seed=0, rule="none", lr=0.5)
    none.kappa = 1e6
    assert none.lr_for(0.5) == 0.5


def test_damping_removes_the_gradient_along_the_probed_directions():
    h = _spectrum_matrix([8.0, 1.0, 0.5, 0.25, 0.1], seed=2)
    w = torch.nn.Parameter(torch.linspace(0.2, 1.0, 5, dtype=torch.float64))
    opt = LLP([w], torch.optim.SGD, n_probes=2, every=1, seed=0, damping=1.0, rule="none",
              lr=0.1)
    _quadratic(h, w)()
    g = w.grad.clone()
    w0 = w.detach().clone()
    opt.probe(_quadratic(h, w))
    q = opt.basis  # orthonormal rows spanning {H d_1, H d_2}
    assert q.shape == (2, 5)
    torch.testing.assert_close(q @ q.T, torch.eye(2, dtype=torch.float64))
    opt.step()
    expected = w0 - 0.1 * (g - q.T @ (q @ g))
    torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-12)


def test_probes_leave_the_global_rng_alone():
    w = torch.nn.Parameter(torch.ones(6))
    opt = LLP([w], torch.optim.SGD, n_probes=3, every=1, seed=0, lr=0.1)
    before = torch.get_rng_state()
    h = torch.eye(6)
    _quadratic(h, w)()
    opt.step(_quadratic(h, w))
    assert torch.equal(torch.get_rng_state(), before)


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).double()


def _batches(n, start=0):
    g = torch.Generator().manual_seed(123)
    out = [(torch.randn(16, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]
    return out[start:]


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.probe(lambda x=x, y=y: torch.nn.functional.cross_entropy(model(x), y).backward())
        opt.step()


@pytest.mark.parametrize("base", ["sgd", "momentum", "adam"])
def test_state_dict_round_trip_resumes_bit_identically(base):
    cfg = OptimizerConfig(name=OptimizerName.llp, base=BaseOptimizerName(base), lr=0.3,
                          momentum=0.9, llp=LLPConfig(every=3, probes=2, damping=0.5, seed=7,
                                                      aggregate=LLPAggregate.max))
    model = _model(0)
    opt = build_optimizer(model.parameters(), cfg)
    assert is_llp(opt) and not is_sam(opt)
    _train(model, opt, _batches(4))  # 4 steps: mid-way through a probe cycle of 3
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _train(model, opt, _batches(9, 4))

    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model2 = _model(1)
    opt2 = build_optimizer(model2.parameters(), OptimizerConfig(
        name=OptimizerName.llp, base=BaseOptimizerName(base), lr=0.3, momentum=0.9,
        llp=LLPConfig(every=3, probes=2, damping=0.5, seed=99,  # generator from the ckpt
                      aggregate=LLPAggregate.max)))
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    _train(model2, opt2, _batches(9, 4))
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert opt.kappa == opt2.kappa and opt.n_steps == opt2.n_steps == 9
    assert opt.pop_epoch_metrics() == opt2.pop_epoch_metrics()


def test_scheduler_moves_the_cap():
    cfg = OptimizerConfig(name=OptimizerName.llp, base=BaseOptimizerName.sgd, lr=0.4,
                          schedule="step", step_size=1, gamma=0.5)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], OmegaConf.structured(cfg))
    sched = build_scheduler(opt, cfg, 3)
    assert opt.param_groups is opt.base_optimizer.param_groups
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- in the loop
@pytest.fixture
def job(tiny_job):
    """One job with this module's TINY overrides (conftest's tiny_job)."""
    return tiny_job


def test_grad_evals_count_the_probes_exactly_and_metrics_are_logged(job):
    # 8 steps per epoch, probes at steps 0, 3, 6 | 9, 12, 15 | 18, 21: 3, 3, 2 probe steps
    result, path = job(["optimizer=llp", "optimizer.llp.every=3", "optimizer.llp.probes=2",
                        "train.epochs=3"])
    rows = metrics_without_time(path)
    assert [r["llp_probe_steps"] for r in rows] == [3, 3, 2]
    assert [r["grad_evals"] for r in rows] == [8 + 6, 16 + 12, 24 + 16]
    assert result["final"]["grad_evals"] == 40
    for r in rows:
        assert r["llp_probe_evals"] == 2 * r["llp_probe_steps"]
        for key in ("llp_curv_mean", "llp_curv_max", "llp_dir_curv_mean", "llp_curvature",
                    "llp_lr", "llp_trace_est"):
            assert math.isfinite(r[key])
        assert 0 < r["llp_lr"] <= r["lr"] and r["llp_curv_mean"] <= r["llp_curv_max"]


def test_resume_matches_uninterrupted(job):
    full = ["optimizer=llp", "optimizer.llp.every=3", "optimizer.llp.damping=0.5",
            "model.norm=batch", "model.width=16", "train.epochs=3", "train.keep_checkpoints=3",
            "train.checkpoint_interval_s=0"]
    job(full, "full")
    _, part = job(full, "part")
    cut_back_to_epoch_2(part)
    result, part = job(full, "part")
    assert result["resumed_from_epoch"] == 2
    assert metrics_without_time(part) == metrics_without_time(part.parent / "full")


def test_probes_do_not_update_batchnorm_statistics(compose):
    import copy
    from types import SimpleNamespace

    from landscope.data import TensorSplit
    from landscope.models import build_model
    from landscope.train import TrainState, epoch_generator, train_epoch

    cfg = compose(["model.norm=batch", "optimizer=llp", "optimizer.llp.every=1",
                   "model.width=8"])
    torch.manual_seed(0)
    model = build_model(cfg.model, SimpleNamespace(input_shape=(1, 40), num_classes=10))
    reference = copy.deepcopy(model).train()
    x, y = torch.randn(16, 1, 40), torch.randint(0, 10, (16,))
    reference(x)  # one forward at w: what the running statistics should see
    opt = build_optimizer(model.parameters(), cfg.optimizer)
    state = TrainState(model, opt, build_scheduler(opt, cfg.optimizer, 1))
    run = train_epoch(state, TensorSplit(x, y), 16, epoch_generator(0, 0))
    assert state.grad_evals == 1 + cfg.optimizer.llp.probes and run["optimizer"]
    ours, ref = dict(model.named_buffers()), dict(reference.named_buffers())
    for name in (n for n in ours if "running" in n):
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-6, atol=1e-7)


def test_max_grad_evals_stops_at_the_budget(job):
    # SAM: 2 evaluations per step; a budget of 20 stops after 10 steps (epoch 2, 2 steps)
    result, path = job(["optimizer=sam", "train.epochs=5", "train.max_grad_evals=20"], "sam")
    rows = metrics_without_time(path)
    assert result["status"] == "completed" and result["stop_reason"] == "max_grad_evals"
    assert [r["steps"] for r in rows] == [8, 2] and rows[-1]["grad_evals"] == 20
    # SGD: the budget falls on an epoch boundary
    result, path = job(["optimizer=sgd", "train.epochs=5", "train.max_grad_evals=16"], "sgd")
    assert result["stop_reason"] == "max_grad_evals" and result["epochs_completed"] == 2
    # budget reached on the last epoch: max_epochs
    result, _ = job(["optimizer=sgd", "train.epochs=2", "train.max_grad_evals=16"], "last")
    assert result["stop_reason"] == "max_epochs"


def test_llp_seed_defaults_to_the_job_seed(compose):
    def directions(seed, llp_seed=None):
        torch.manual_seed(seed)  # what the runner does before building the optimizer
        extra = [] if llp_seed is None else [f"optimizer.llp.seed={llp_seed}"]
        opt = build_optimizer([torch.nn.Parameter(torch.zeros(3))],
                              compose(["optimizer=llp", *extra]).optimizer)
        return torch.randn(3, generator=opt.generator)
    assert torch.equal(directions(0), directions(0))
    assert not torch.equal(directions(0), directions(1))
    assert torch.equal(directions(0, 5), directions(1, 5))


@pytest.mark.parametrize("override,key", [
    ("optimizer.llp.probes=0", "optimizer.llp.probes"),
    ("optimizer.llp.eps=0", "optimizer.llp.eps"),
    ("optimizer.llp.every=0", "optimizer.llp.every"),
    ("optimizer.llp.c=-1", "optimizer.llp.c"),
    ("optimizer.llp.ema=1", "optimizer.llp.ema"),
    ("optimizer.llp.damping=1.5", "optimizer.llp.damping"),
    ("optimizer.llp.seed=-1", "optimizer.llp.seed"),
    ("train.max_grad_evals=0", "train.max_grad_evals"),
    ("optimizer.llp.meta_ridge=0", "optimizer.llp.meta_ridge"),
    ("optimizer.llp.meta_warmup=0", "optimizer.llp.meta_warmup"),
    ("optimizer.llp.meta_horizon=0", "optimizer.llp.meta_horizon"),
    ("optimizer.llp.meta_min_scale=1.5", "optimizer.llp.meta_min_scale"),
    ("optimizer.llp.meta_min_scale=0", "optimizer.llp.meta_min_scale"),
])
def test_impossible_values_are_one_line_config_errors(compose, override, key):
    with pytest.raises(ConfigError) as info:
        validate(compose(["optimizer=llp", "optimizer.llp.meta=true", override]))
    assert key in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("args,needle", [
    (["optimizer.llp.probes=0"], "optimizer.llp.probes"),
    (["optimizer.llp.rule=cubic"], "inverse, none"),
])
def test_runner_rejects_bad_options_with_one_line(tmp_path, data_dir, args, needle):
    proc = run_cli(["optimizer=llp", "experiment=smoke", *args], tmp_path, data_dir=data_dir)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert not (tmp_path / "outputs").exists()


def test_preset_composes_and_sweeps_llp(compose):
    for preset in ("optimizer_study", "optimizer_study_budget"):
        cfg = compose([f"experiment={preset}"], with_data_dir=False)
        validate(cfg)
        assert str(cfg.probe.name.value if hasattr(cfg.probe.name, "value") else cfg.probe.name) \
            == "standard"
    assert np.isfinite(compose(["experiment=optimizer_study_budget"]).train.max_grad_evals)
