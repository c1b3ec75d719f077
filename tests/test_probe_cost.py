"""Bounded, visible, shared probe cost (issue #18 items 1-4): caps that stop estimators and say so,
a trace stop that is well posed for indefinite spectra with traces near zero, the density's Lanczos
runs deflated by the top-k pairs and feeding the trace, and the suite's ledger and plan."""

from __future__ import annotations

import math
import types
from dataclasses import replace

import numpy as np
import pytest
import torch

from landscope.config import DensityConfig, ProbeConfig, SharpnessConfig, TraceConfig
from landscope.data import TensorSplit
from landscope.probes.cost import ProbeLedger
from landscope.probes.density import slq
from landscope.probes.lanczos import lanczos_eigs
from landscope.probes.operator import DenseOperator, quadratic_with_spectrum
from landscope.probes.probe_data import ProbeData
from landscope.probes.suite import run_probes
from landscope.probes.trace import deflated_trace, hutchinson
from probe_models import seeded_model

torch.set_num_threads(1)


def _op(eigs: torch.Tensor, seed: int = 0) -> DenseOperator:
    a, _ = quadratic_with_spectrum(eigs.to(torch.float64), seed=seed)
    return DenseOperator(a)


def _indefinite(d: int = 300) -> torch.Tensor:
    """Eigenvalues ±u (u in [0.1, 1]) plus a few outliers: trace exactly 8.0 - 3.0 = 5.0,
    sum |lambda| about 170, so |tr| is 3% of the nuclear norm."""
    g = torch.Generator().manual_seed(1)
    u = 0.1 + 0.9 * torch.rand(d // 2 - 2, generator=g, dtype=torch.float64)
    return torch.cat([u, -u, torch.tensor([5.0, 3.0, -2.0, -1.0], dtype=torch.float64)])


def test_relative_trace_stop_never_fires_on_a_near_zero_indefinite_trace():
    op = _op(_indefinite())
    tr = hutchinson(op, seed=0, target_rse=0.01, max_samples=300)
    assert tr.n_samples == 300  # |tr| is tiny against the spread: the cap decides


@pytest.mark.parametrize("seed", range(5))
def test_trace_stop_relative_to_the_nuclear_norm_is_well_posed(seed):
    eigs = _indefinite()
    op = _op(eigs)
    nuclear = float(eigs.abs().sum())
    tr = hutchinson(op, seed=seed, target_rse=0.01, max_samples=5000, scale=nuclear)
    assert tr.n_samples < 5000 and tr.stderr <= 0.01 * nuclear
    assert abs(tr.estimate - float(eigs.sum())) <= 4 * tr.stderr


def test_deflated_trace_scale_is_at_least_the_deflated_eigenvalues():
    """By pinching, sum |lambda_i| of the deflated pairs never exceeds the nuclear norm, so
    it is a valid reference and the stop fires on the indefinite spectrum too."""
    eigs = _indefinite()
    op = _op(eigs)
    top = lanczos_eigs(op, k=4, seed=0)
    tr = deflated_trace(op, top, seed=0, target_rse=0.05, max_samples=3000)
    assert tr.n_samples < 3000
    assert abs(tr.estimate - float(eigs.sum())) <= 4 * tr.stderr


@pytest.mark.parametrize("eigs", [_indefinite(),
                                  torch.linspace(0, 1, 500, dtype=torch.float64) ** 4],
                         ids=["indefinite", "decaying"])
def test_the_lanczos_runs_start_estimates_the_nuclear_norm(eigs):
    """``abs_trace``: the start vector's Gauss rule on |A| scaled by D, one SLQ sample of
    sum |lambda| (unbiased; measured over 20 seeds: mean ratio 0.99 and 1.01, sd 0.05 and 0.09)."""
    nuclear = float(eigs.abs().sum())
    ratios = torch.tensor([lanczos_eigs(_op(eigs), k=1, seed=s).abs_trace / nuclear
                           for s in range(12)])
    assert abs(float(ratios.mean()) - 1) < 0.06 and 0.75 < float(ratios.min())
    assert float(ratios.max()) < 1.3


@pytest.mark.parametrize("seed", range(4))
def test_a_trace_deflated_by_the_top_one_alone_stops_on_its_runs_scale(seed):
    """probe=basic's trace (top-1, no density): |lambda_1| = 5 is 3 % of sum |lambda| here, so
    a stop relative to it waited for the cap; the top-1 run's own estimate of sum |lambda|
    stops it, at a stderr of 1 % of that estimate, and the estimate holds the exact trace."""
    eigs = _indefinite()
    top = lanczos_eigs(_op(eigs), k=1, seed=seed)
    without = deflated_trace(_op(eigs), replace(top, abs_trace=None), seed=seed,
                             target_rse=0.01, min_samples=30, max_samples=300)
    assert without.n_samples == 300  # the cap decided (too low for the unit vectors)
    tr = deflated_trace(_op(eigs), top, seed=seed, target_rse=0.01, min_samples=30,
                        max_samples=1500)
    assert 30 <= tr.n_samples < 200 and tr.reference == pytest.approx(top.abs_trace)
    assert tr.stderr <= 0.01 * top.abs_trace
    assert abs(tr.estimate - float(eigs.sum())) <= 4 * tr.stderr


def test_a_trace_that_needs_more_samples_than_dimensions_takes_the_unit_vectors():
    """Once the samples the target still asks for (projected from the stderr) outnumber the
    dimension, the trace is the exact sum of e_i^T A e_i: dim products, stderr 0. An operator
    no larger than the minimum of samples goes there at once; a cap inside the unit vectors
    keeps the samples' estimate and says so; a sample cap below n + dim keeps sampling."""
    eigs = _indefinite(80)  # tr = 5 exactly, sum |lambda| about 50
    op = _op(eigs)
    tr = hutchinson(op, seed=0, target_rse=1e-3, min_samples=30, max_samples=2000)
    assert tr.unit_vectors and tr.stderr == 0.0 and tr.n_samples == 30
    assert tr.n_matvecs == op.n_matvecs == 30 + 80
    assert tr.estimate == pytest.approx(5.0, abs=1e-10)
    top = lanczos_eigs(_op(eigs), k=3, seed=0)
    dtr = deflated_trace(_op(eigs), top, seed=0, target_rse=1e-3, min_samples=30)
    assert dtr.unit_vectors and dtr.estimate == pytest.approx(5.0, abs=1e-10)

    small = _op(eigs[:20] - 0.5)
    tiny = hutchinson(small, seed=0, target_rse=1e-3, min_samples=30)
    assert tiny.unit_vectors and tiny.n_samples == 0 and small.n_matvecs == 20
    assert tiny.estimate == pytest.approx(float((eigs[:20] - 0.5).sum()), abs=1e-10)

    cut_op = _op(eigs)
    cap = ProbeLedger(counter=lambda: cut_op.n_matvecs, max_products=60)
    cut = hutchinson(cut_op, seed=0, target_rse=1e-3, min_samples=30, stop=cap.stop)
    assert cut.stopped_by == "max_products" and not cut.unit_vectors
    assert cut.n_samples == 30 and cut.estimate == pytest.approx(tr.samples.mean().item())
    capped = hutchinson(_op(eigs), seed=0, target_rse=1e-3, min_samples=30, max_samples=100)
    assert not capped.unit_vectors and capped.n_samples == 100


def test_lanczos_stopped_by_a_cap_says_so():
    op = _op(torch.linspace(0.0, 1.0, 200, dtype=torch.float64) ** 3)
    budget = ProbeLedger(counter=lambda: op.n_matvecs, max_products=12)
    r = lanczos_eigs(op, k=3, tol=1e-10, seed=0, stop=budget.stop)
    assert r.stopped_by == "max_products" and op.n_matvecs == 12
    assert not bool(r.converged.all()) and len(r.eigenvalues) == 3
    free = lanczos_eigs(_op(torch.linspace(0.0, 1.0, 200, dtype=torch.float64) ** 3), k=3,
                        tol=1e-10, seed=0)
    assert free.stopped_by is None and bool(free.converged.all())


def test_trace_and_slq_stopped_by_a_cap():
    op = _op(torch.linspace(-1.0, 1.0, 100, dtype=torch.float64))
    budget = ProbeLedger(counter=lambda: op.n_matvecs, max_products=15)
    tr = hutchinson(op, seed=0, target_rse=1e-6, max_samples=100, stop=budget.stop)
    assert tr.stopped_by == "max_products" and tr.n_samples == 15
    op2 = _op(torch.linspace(-1.0, 1.0, 100, dtype=torch.float64))
    budget2 = ProbeLedger(counter=lambda: op2.n_matvecs, max_products=25)
    q = slq(op2, n_probes=5, m_steps=10, seed=0, stop=budget2.stop)
    assert q.stopped_by == "max_products" and op2.n_matvecs == 25 and q.n_probes == 3
    spent = _op(torch.linspace(-1.0, 1.0, 100, dtype=torch.float64))
    q1 = slq(spent, n_probes=5, m_steps=10, seed=0, stop=lambda: "max_products")
    assert q1.n_probes == 1 and q1.steps == [1] and q1.stopped_by == "max_products"
    assert torch.allclose(q.weights.sum(1), torch.ones(q.n_probes, dtype=torch.float64))


def test_a_trace_without_samples_is_no_estimate():
    """A cap spent before the first sample leaves no trace: NaN (inf stderr), not the exact part
    alone (the deflating eigenvalues' sum) or 0 passed off as an estimate."""
    eigs = torch.linspace(-1.0, 2.0, 60, dtype=torch.float64)
    op = _op(eigs)
    top = lanczos_eigs(op, k=3, which="largest", seed=0)
    spent = lambda: "budget_s"  # noqa: E731
    for tr in (hutchinson(op, target_rse=0.1, stop=spent),
               deflated_trace(op, top, target_rse=0.1, stop=spent)):
        assert tr.n_samples == 0 and tr.stopped_by == "budget_s" and op.n_matvecs == top.n_matvecs
        assert math.isnan(tr.estimate) and tr.stderr == math.inf and tr.rse == math.inf
    one = deflated_trace(op, top, target_rse=0.1, prior=[0.5], stop=spent)
    assert one.n_samples == 1 and one.estimate == pytest.approx(float(top.eigenvalues.sum()) + 0.5)


def test_budget_in_seconds():
    ledger = ProbeLedger(counter=lambda: 0, budget_s=1e-9)
    assert ledger.stop() == "budget_s" and ledger.stop(products=False) == "budget_s"
    assert ProbeLedger(counter=lambda: 10, max_products=5).stop(products=False) is None


def _spectrum_with_outliers(d: int = 1200) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    bulk = torch.randn(d - 8, generator=g, dtype=torch.float64).abs() * 0.2 - 0.05
    return torch.cat([torch.tensor([40.0, 30.0, 22.0, 15.0, 11.0, 8.0, 6.5, 5.0],
                                   dtype=torch.float64), bulk])


def test_deflated_slq_has_exact_top_nodes_and_unbiased_moments():
    eigs = _spectrum_with_outliers()
    op = _op(eigs)
    top = lanczos_eigs(op, k=3, seed=0)
    q = slq(op, n_probes=30, m_steps=20, seed=0, deflate=top)
    assert q.deflated == 3
    np.testing.assert_allclose(q.nodes[:, :3].numpy(), np.tile(top.eigenvalues.numpy(), (30, 1)))
    assert torch.allclose(q.weights.sum(1), torch.ones(30, dtype=torch.float64))
    for p in (1, 2):
        exact = float((eigs ** p).sum())
        est = q.trace_f(q.nodes ** p)
        assert abs(est.estimate - exact) <= 4 * est.stderr, p
    # each run's first step is a Hutchinson sample of the deflated trace
    rest = float(eigs.sum() - top.eigenvalues.sum())
    ts = q.trace_samples
    assert abs(float(ts.mean()) - rest) <= 4 * float(ts.std()) / math.sqrt(len(ts))


def test_adaptive_slq_resolves_the_outliers_once_and_takes_fewer_steps():
    eigs = _spectrum_with_outliers()
    full = slq(_op(eigs), n_probes=10, m_steps=40, seed=0,
               deflate=lanczos_eigs(_op(eigs), k=3, seed=0))
    op = _op(eigs)
    top = lanczos_eigs(op, k=3, seed=0)
    ada = slq(op, n_probes=10, m_steps=40, seed=0, deflate=top, resolution=0.01)
    assert ada.steps[0] == 40 and max(ada.steps[1:]) < 40
    assert ada.deflated == 8  # the 5 outliers the top-3 missed come from the first run
    np.testing.assert_allclose(np.sort(ada.deflation.eigenvalues.numpy())[::-1],
                               eigs[:8].numpy(), rtol=1e-6)
    assert ada.outliers().count == full.outliers().count == 8
    grid = torch.linspace(-1.0, 41.0, 800, dtype=torch.float64)
    dx = float(grid[1] - grid[0])
    l1 = float((ada.density(grid, 0.42) - full.density(grid, 0.42)).abs().sum()) * dx
    assert l1 < 0.1
    tr = deflated_trace(op, ada.deflation, seed=1, target_rse=0.01, max_samples=4000,
                        prior=ada.trace_samples.tolist(), min_samples=30)
    assert abs(tr.estimate - float(eigs.sum())) <= 4 * tr.stderr


META = types.SimpleNamespace(input_shape=(1, 12), num_classes=3)


def _split_and_model(n: int = 60):
    model, x, y = seeded_model(dict(name="mlp", width=8, depth=2), META.input_shape,
                               META.num_classes, n, shift=0.3)
    return model.float(), TensorSplit(x.float(), y)


def test_suite_records_costs_plan_and_what_a_cap_cut():
    model, split = _split_and_model()
    lines: list[str] = []
    cfg = ProbeConfig(top_k=3, trace=TraceConfig(enabled=True),
                      density=DensityConfig(enabled=True, steps=12),
                      sharpness=SharpnessConfig(enabled=True, rhos=[0.05]), data_size=None,
                      micro_batch=60, progress=False)
    s = run_probes(model, split, cfg, log=lines.append).scalars
    # the fewest products the stopping rules allow: 3 top-k steps and the check's one, the
    # density's first run of 12 steps and 9 later runs of 6, the trace's 30 samples less the
    # density's 10
    assert lines and lines[0].startswith("probe plan: 90 to 2301 Hessian-vector products")
    assert "the sharpness measures' usual 8 loss-and-gradient evaluations" in lines[0]
    assert set(s["probe_cost"]) == {"top", "density", "trace", "sharpness"}
    assert set(s["probe_cost_seconds"]) == {f"{k}_seconds" for k in s["probe_cost"]}
    # the top-k's plan holds one round of the multiplicity check (a k=1 run and its residual)
    assert s["probe_plan"] == {"top": 50 + 20 * 3 + 71, "density": 10 * 12, "trace": 2000}
    assert sum(c["products"] for c in s["probe_cost"].values()) <= s["hvps"]
    assert s["probe_cost"]["sharpness"]["loss_evals"] > 0
    assert s["top_converged"] and s["trace_converged"]
    assert not any(k.endswith("_stopped_by") for k in s)
    assert s["probe_dtype"] == "float32"

    capped = ProbeConfig(top_k=3, trace=TraceConfig(enabled=True),
                         density=DensityConfig(enabled=True, steps=12), data_size=None,
                         micro_batch=60, max_products=20, progress=False)
    lines.clear()
    c = run_probes(model, split, capped, log=lines.append).scalars
    assert c["hvps"] <= 21  # the cap, and at most the one product timed for the plan
    assert "max_products" in c.values() and any("cut short" in line for line in lines)
    # the cap was spent in the top-k: the density and the trace never started (no trace value:
    # the top-k's sum alone is no estimate), and their results say why
    assert c["trace_stopped_by"] == c["density_stopped_by"] == "max_products"
    assert not any(k in c for k in ("trace", "trace_stderr", "trace_converged"))
    # spent during the density: the trace keeps the density's samples and reports them
    some = run_probes(model, split, replace(capped, max_products=36)).scalars
    assert some["trace_stopped_by"] == "max_products" and not some["trace_converged"]
    assert some["trace_samples"] >= 1 and math.isfinite(some["trace"])

    timed = ProbeConfig(top_k=3, sharpness=SharpnessConfig(enabled=True, family=True),
                        data_size=None, micro_batch=60, budget_s=1e-6, progress=False)
    t = run_probes(model, split, timed).scalars
    assert t["top_stopped_by"] == "budget_s" and t["sharpness_stopped_by"] == "budget_s"
    assert "pac_bayes_sigma" not in t and "pac_bayes" in t["sharpness_skipped"]


def test_suite_progress_bars_and_verify_accuracy(capsys):
    """Bars on request; verify mode keeps the accuracy: top-k to 1e-6 relative (float64),
    the trace within 4 of its standard errors of the dense Hessian's."""
    model, split = _split_and_model(80)
    cfg = ProbeConfig(top_k=5, trace=TraceConfig(enabled=True),
                      density=DensityConfig(enabled=True), data_size=None, micro_batch=80,
                      verify=True, progress=True)
    s = run_probes(model.double(), TensorSplit(split.x.double(), split.y), cfg).scalars
    assert "probe top" in capsys.readouterr().err
    assert s["verify_top_max_rel_error"] <= 1e-6
    assert abs(s["verify_trace_error_in_stderr"]) <= 4


@pytest.mark.parametrize("top_k", [1, 0])
@pytest.mark.parametrize("name, most", [("mlp", 100), ("resnet", 1000)])
def test_the_basic_presets_trace_at_initialization_stops_and_holds_the_dense_trace(name, most,
                                                                                    top_k):
    """probe=basic (top-1 and the trace, no density) and the trace alone (top_k=0: a short SLQ
    run gives its scale) on models at their seeded initialization, whose traces are small
    against sum |lambda| (dense: 2.87 against 32.1 on the MLP, D = 1013; 14.3 against 67.8 on
    the plain ResNet, D = 501, where |lambda_1| is 8.3): it stops before the cap (measured with
    top-1: 32 samples, and on the ResNet 30 samples and its 501 unit vectors; before, the cap,
    2000), within 4 of its standard errors of the dense float64 Hessian's trace (verify mode)."""
    cfg = {"mlp": dict(name="mlp", width=16, depth=2),
           "resnet": dict(name="resnet", width=8, depth=1, norm="layer", skip=False)}[name]
    model, x, y = seeded_model(cfg, (1, 40), 5, 60)
    probe = ProbeConfig(top_k=top_k, trace=TraceConfig(enabled=True, max_samples=2000),
                        data_size=None, micro_batch=60, verify=True, progress=False)
    s = run_probes(model, TensorSplit(x, y), probe).scalars
    assert s["trace_samples"] < most and s["probe_cost"]["trace"]["products"] < 600
    assert abs(s["verify_trace_error_in_stderr"]) <= 4
    assert s["probe_plan"]["trace"] == 2000 + (20 if top_k == 0 else 0)


def test_batched_trace_samples_match_single_products():
    """block > 1 (the GPU path) uses the same samples in the same order: same stop, same
    estimate to rounding, at most block - 1 unused products."""
    model, split = _split_and_model(60)
    from landscope.probes.hvp import HessianOperator

    data = ProbeData.from_tensors(split.x.double(), split.y, micro_batch=60)
    one = HessianOperator(model.double(), data)
    many = HessianOperator(model.double(), data)
    a = hutchinson(one, seed=3, target_rse=0.02, max_samples=200)
    b = hutchinson(many, seed=3, target_rse=0.02, max_samples=200, block=4)
    assert a.n_samples == b.n_samples and a.estimate == pytest.approx(b.estimate, rel=1e-10)
    assert 0 <= b.n_matvecs - a.n_matvecs <= 3


def test_a_job_logs_its_plan_and_records_what_the_cap_cut(compose, tmp_path, caplog):
    import logging

    from landscope.jobs import train_job

    overrides = ["probe=standard", "probe.max_products=25", "probe.data_size=100",
                 "model.width=8", "model.depth=2", "train.epochs=1", "landscape=none",
                 "dataset.train_size=256", "dataset.test_size=128", "train.batch_size=32"]
    with caplog.at_level(logging.INFO):
        result = train_job(compose(overrides), tmp_path, overrides)
    p = result["probes"]
    assert p["hvps"] <= 27 and "top_converged" in p  # top-k runs at least k products
    cut = {k: v for k, v in p.items() if k.endswith("_stopped_by")}
    assert cut and set(cut.values()) == {"max_products"}
    assert p["probe_plan"]["top"] == 150 + 71 and p["probe_dtype"] == "float32"
    text = caplog.text
    assert "Hessian-vector products" in text and "probe caps cut short" in text


def test_density_without_top_k_runs_fixed_steps():
    model, split = _split_and_model()
    cfg = ProbeConfig(top_k=0, trace=TraceConfig(enabled=True),
                      density=DensityConfig(enabled=True, steps=10), data_size=None,
                      micro_batch=60, progress=False)
    s = run_probes(model, split, cfg).scalars
    assert s["density_deflated"] == 0 and s["density_steps_mean"] == 10
    assert s["trace_samples"] >= 30 and s["trace_converged"] in (True, False)


def test_negative_mass_broadened_and_its_bracket():
    """A resolved spectrum: the broadened mass equals the count below 0 and the bracket is
    tight around it; an unresolved one: the bracket is wide and holds the true fraction."""
    eigs = torch.cat([torch.linspace(-2.0, -1.0, 40), torch.linspace(1.0, 3.0, 160)]).double()
    q = slq(_op(eigs), n_probes=8, m_steps=200, seed=0)  # exact rules (Krylov space exhausted)
    assert q.negative_mass(sigma=0.01) == pytest.approx(0.2, abs=0.03)
    lo, hi = q.negative_mass_bracket()
    assert lo <= q.negative_mass() <= hi and hi - lo < 0.05
    g = torch.Generator().manual_seed(0)
    bulk = (torch.randn(2000, generator=g, dtype=torch.float64) * 1e-3)
    rough = slq(_op(torch.cat([bulk, torch.tensor([50.0, 40.0], dtype=torch.float64)])),
                n_probes=8, m_steps=10, seed=0)
    exact = float((bulk < 0).double().sum()) / 2002
    lo, hi = rough.negative_mass_bracket()
    assert hi - lo > 0.5 and lo - 0.05 <= exact <= hi + 0.05
    assert abs(rough.negative_mass(sigma=0.5) - 0.5) < 0.1  # unresolved: about half, not 0 or 1


def test_the_timed_product_pays_no_first_call_imports():
    """A process's first ``autograd.grad`` with ``grad_outputs`` imports part of torch (about
    0.45 s here: ``runner.probe``'s plan read 274 ms a product for products of 6 ms).
    After :func:`warm_autograd` such a call imports nothing, so the plan's product is one."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from landscope.probes.cost import warm_autograd\n"
        "warm_autograd('cpu', torch.float32)\n"
        "before = set(sys.modules)\n"
        "w = torch.randn(4, 3, requires_grad=True)\n"
        "g, = torch.autograd.grad((w ** 3).sum(), w, create_graph=True)\n"
        "torch.autograd.grad(g, w, grad_outputs=torch.ones_like(g))\n"
        "print(sorted(set(sys.modules) - before))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
