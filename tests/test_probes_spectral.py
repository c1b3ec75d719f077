"""Spectral estimators (Lanczos, power iteration, Hutchinson/Hutch++/deflated trace, SLQ) against
dense matrices with chosen spectra (``quadratic_with_spectrum``: the analytic oracle), float64."""

from __future__ import annotations

import math

import pytest
import torch

import landscope.probes.lanczos as lanczos_module
from landscope.probes.density import _lanczos_quadrature, slq
from landscope.probes.lanczos import _Lanczos, lanczos_eigs, power_iteration, spectral_summary
from landscope.probes.operator import Deflated, DenseOperator, quadratic_with_spectrum
from landscope.probes.trace import _projector, deflated_trace, hutchinson, hutchpp, probe_vector

F64 = torch.float64


def _uniform(n: int, lo: float, hi: float, seed: int) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _op(eigs: torch.Tensor, seed: int = 1) -> tuple[DenseOperator, torch.Tensor]:
    a, q = quadratic_with_spectrum(eigs, seed=seed)
    return DenseOperator(a), q


DECAY = 100.0 * 0.9 ** torch.arange(500, dtype=F64)                                # D = 500
# 10, 9.99, …
CLUSTER = torch.cat([10.0 - 0.01 * torch.arange(10, dtype=F64), _uniform(390, 0, 5, 0)])
NEGATIVE = torch.cat([torch.tensor([-3.0, -2.5, -2.5], dtype=F64),
                      torch.linspace(-1, 5, 297, dtype=F64)])


def _check_pairs(op: DenseOperator, res, expected: torch.Tensor) -> None:
    assert res.converged.all()
    assert ((res.eigenvalues - expected).abs() / expected.abs()).max() <= 1e-6
    a, v = op.matrix, res.eigenvectors
    assert torch.allclose(v.norm(dim=0), torch.ones(v.shape[1], dtype=F64), atol=1e-12)
    true_res = (a @ v - v * res.eigenvalues).norm(dim=0)
    assert (true_res <= res.residuals * (1 + 1e-6) + 1e-12).all()


@pytest.mark.parametrize("name,eigs,k,which", [
    ("decay", DECAY, 5, "largest"), ("cluster", CLUSTER, 5, "largest"),
    ("negative-bottom", NEGATIVE, 3, "smallest"), ("cluster-bottom", -CLUSTER, 3, "smallest")])
@pytest.mark.parametrize("seed", [0, 1])
def test_lanczos_top_and_bottom_eigenvalues(name, eigs, k, which, seed):
    op, q = _op(eigs)
    res = lanczos_eigs(op, k=k, which=which, seed=seed)
    expected = torch.sort(eigs, descending=(which == "largest")).values[:k]
    _check_pairs(op, res, expected)
    assert res.n_matvecs == res.iterations  # verified from the kept products: no extra products
    # eigenvectors span the right eigenspaces (simple eigenvalues here, except -2.5 twice)
    order = torch.argsort(eigs, descending=(which == "largest"))
    for j in range(k):
        space = q[:, (eigs - res.eigenvalues[j]).abs() < 1e-9]
        assert (space.T @ res.eigenvectors[:, j]).norm() >= 1 - 1e-9, (name, j, order[j])
    if name == "decay":
        assert res.n_matvecs < 60


def test_lanczos_verification_from_kept_products_matches_extra_products(monkeypatch):
    """verify=True computes ||A y - theta y|| from the kept products A q_j (no extra products);
    over the memory budget it falls back to k extra products. Both give the true residuals."""
    op, _ = _op(CLUSTER)
    kept = lanczos_eigs(op, k=5, seed=0)
    monkeypatch.setattr(lanczos_module, "KEEP_PRODUCTS_BYTES", 0)
    extra = lanczos_eigs(op, k=5, seed=0)
    assert kept.n_matvecs == kept.iterations and extra.n_matvecs == extra.iterations + 5
    assert torch.equal(kept.eigenvalues, extra.eigenvalues)
    true_res = (op.matrix @ kept.eigenvectors - kept.eigenvectors * kept.eigenvalues).norm(dim=0)
    for res in (kept, extra):
        assert torch.allclose(res.residuals, true_res, rtol=1e-6, atol=1e-13)
    estimate = lanczos_eigs(op, k=5, seed=0, verify=False)
    assert estimate.n_matvecs == kept.iterations


def test_lanczos_repeated_eigenvalue_behaviour():
    """Documented: a repeated eigenvalue is listed once when the wanted pairs converge before
    roundoff seeds its other copies (k=2), with multiplicity when they take longer (k=3)."""
    eigs = torch.cat([torch.tensor([8.0, 8.0, 6.0], dtype=F64), _uniform(397, 0, 1, 0)])
    op, q = _op(eigs, seed=3)
    two = lanczos_eigs(op, k=2, seed=0)
    assert two.converged.all() and torch.allclose(two.eigenvalues,
                                                  torch.tensor([8.0, 6.0], dtype=F64), rtol=1e-6)
    assert (q[:, :2].T @ two.eigenvectors[:, 0]).norm() >= 1 - 1e-9  # inside the 2-d eigenspace
    three = lanczos_eigs(op, k=3, seed=0)
    _check_pairs(op, three, torch.tensor([8.0, 8.0, 6.0], dtype=F64))
    v = three.eigenvectors[:, :2]  # both copies: an orthonormal basis of the space
    assert torch.allclose(v.T @ v, torch.eye(2, dtype=F64), atol=1e-8)
    assert torch.linalg.svdvals(q[:, :2].T @ v).min() >= 1 - 1e-8


def test_lanczos_float32_and_invariant_subspace_restart():
    op32 = DenseOperator(_op(DECAY)[0].matrix.float())
    res = lanczos_eigs(op32, k=5, seed=0)
    assert res.converged.all() and res.eigenvectors.dtype == torch.float32
    assert ((res.eigenvalues - DECAY[:5]) / DECAY[:5]).abs().max() <= 1e-5
    # rank-3 matrix: the Krylov space is invariant after 4 steps -> restart, still exact
    eigs = torch.cat([torch.tensor([3.0, 2.0, 1.0], dtype=F64), torch.zeros(97, dtype=F64)])
    op, _ = _op(eigs)
    res = lanczos_eigs(op, k=3, seed=0)
    _check_pairs(op, res, eigs[:3])
    # smallest 5: the first block holds one null vector; each restart (orthogonal to the basis,
    # so inside the null space) adds one more -> [0, 0, 1, 2, 3]: true eigenvalues, not all zeros
    low = lanczos_eigs(op, k=5, which="smallest", seed=0, atol=1e-10)
    assert low.n_restarts >= 1 and low.converged.all()
    assert torch.allclose(low.eigenvalues, torch.tensor([0.0, 0, 1, 2, 3], dtype=F64), atol=1e-10)


def test_power_iteration_agrees_on_separated_top():
    eigs = torch.cat([torch.tensor([10.0, 5.0], dtype=F64), _uniform(298, 0, 2, 1)])
    op, _ = _op(eigs)
    pw = power_iteration(op, k=2, seed=0)
    lz = lanczos_eigs(op, k=2, seed=0)
    assert pw.converged.all()
    assert torch.allclose(pw.eigenvalues, lz.eigenvalues, rtol=1e-9)
    assert abs(float(pw.eigenvectors[:, 0] @ lz.eigenvectors[:, 0])) >= 1 - 1e-9
    assert pw.n_matvecs > lz.n_matvecs


def test_spectral_summary():
    op, _ = _op(NEGATIVE)
    top, bottom = lanczos_eigs(op, k=3, seed=0), lanczos_eigs(op, k=2, which="smallest", seed=0)
    s = spectral_summary(top, bottom)
    assert (s["lambda_max"] == pytest.approx(5.0, rel=1e-9)
            and s["lambda_min"] == pytest.approx(-3.0, rel=1e-9))
    assert s["spectral_gap"] == pytest.approx(6 / 296, rel=1e-5)
    assert s["negative_ratio"] == pytest.approx(0.6, rel=1e-9)
    # λ1/λ3: bottom is negative
    assert s["condition_number"] == pytest.approx(5.0 / (5.0 - 12 / 296), rel=1e-6)
    pd, _ = _op(torch.cat([torch.tensor([1.0, 2.0, 20.0], dtype=F64), _uniform(197, 4, 10, 11)]))
    s = spectral_summary(lanczos_eigs(pd, k=2, seed=0),
                         lanczos_eigs(pd, k=2, which="smallest", seed=0))
    assert s["condition_number"] == pytest.approx(20.0, rel=1e-6)
    assert (s["all_converged"] == 1.0
            and math.isnan(spectral_summary(lanczos_eigs(pd, k=1))["lambda_2"]))


# ---------------------------------------------------------------- trace


def test_hutchinson_unbiased_and_stderr_calibrated():
    eigs = _uniform(200, -1, 3, 2)
    op, _ = _op(eigs)
    tr = float(eigs.sum())
    runs = [hutchinson(op, n_samples=20, seed=s) for s in range(100)]
    ests = torch.tensor([r.estimate for r in runs], dtype=F64)
    assert abs(float(ests.mean()) - tr) <= 3 * float(ests.std()) / 10  # mean of 100 runs
    single = hutchinson(op, n_samples=50, seed=123)
    assert single.n_matvecs == 50 and abs(single.estimate - tr) <= 3 * single.stderr
    covered = sum(abs(r.estimate - tr) <= 2 * r.stderr for r in runs)
    assert covered >= 85  # ~95% nominal coverage of ±2 stderr
    g = hutchinson(op, n_samples=50, seed=5, dist="gaussian")
    assert abs(g.estimate - tr) <= 3 * g.stderr


def test_hutchinson_auto_stop_reaches_target():
    eigs = _uniform(300, 0.5, 2.0, 3)
    op, _ = _op(eigs)
    res = hutchinson(op, seed=0, target_rse=0.01, min_samples=10)
    assert 10 <= res.n_samples < 10_000 and res.rse <= 0.01
    assert abs(res.estimate - float(eigs.sum())) <= 4 * res.stderr
    with pytest.raises(ValueError):
        hutchinson(op, n_samples=5, target_rse=0.01)


def test_hutchpp_beats_hutchinson_on_low_rank_plus_noise():
    eigs = torch.cat([_uniform(10, 50, 100, 4), _uniform(390, 0, 0.1, 5)])
    op, _ = _op(eigs)
    tr = float(eigs.sum())
    err_h = [abs(hutchinson(op, n_samples=60, seed=s).estimate - tr) for s in range(10)]
    pp = [hutchpp(op, 60, seed=s) for s in range(10)]
    err_pp = [abs(r.estimate - tr) for r in pp]
    assert all(r.n_matvecs == 60 for r in pp)
    assert sum(err_pp) * 20 <= sum(err_h)
    # stderr of 20 samples is itself noisy
    assert sum(abs(r.estimate - tr) <= 3 * r.stderr for r in pp) >= 8


def test_deflated_trace():
    rank = torch.cat([_uniform(8, 1, 10, 6), torch.zeros(192, dtype=F64)])
    op, _ = _op(rank)
    eig = lanczos_eigs(op, k=8, seed=0)
    res = deflated_trace(op, eig, n_samples=10, seed=0)
    assert res.n_matvecs == 10 and abs(res.estimate - float(rank.sum())) <= 1e-9 * float(rank.sum())
    assert res.stderr <= 1e-9
    eigs = torch.cat([_uniform(10, 50, 100, 4), _uniform(390, 0, 0.1, 5)])
    op, _ = _op(eigs)
    top = lanczos_eigs(op, k=10, seed=0)
    d, h = deflated_trace(op, top, n_samples=30, seed=1), hutchinson(op, n_samples=30, seed=1)
    assert abs(d.estimate - float(eigs.sum())) <= 3 * d.stderr and d.stderr * 50 <= h.stderr


# ---------------------------------------------------------------- SLQ


def test_quadrature_moments_exact():
    eigs = _uniform(300, -1.0, 2.0, 7)
    op, _ = _op(eigs)
    v = torch.randn(300, generator=torch.Generator().manual_seed(0), dtype=F64)
    m = 8
    nodes, weights = _lanczos_quadrature(op, v, m)
    assert op.n_matvecs == m and weights.sum() == pytest.approx(1.0, abs=1e-13)
    u, a = v / v.norm(), op.matrix
    apu = u.clone()                                    # A^p u
    for p in range(2 * m):
        exact = float(u @ apu)
        apu = a @ apu
        quad = float((weights * nodes**p).sum())
        assert quad == pytest.approx(exact, rel=1e-8, abs=1e-10 * 2.0**p), p
    # beyond 2m-1 the rule is no longer exact
    exact = float(u @ torch.linalg.matrix_power(a, 2 * m) @ u)
    assert abs(float((weights * nodes ** (2 * m)).sum()) - exact) > 1e-8 * abs(exact)


def test_slq_trace_logdet_density():
    eigs = _uniform(400, 0.1, 10.0, 8)
    op, _ = _op(eigs)
    res = slq(op, n_probes=10, m_steps=30, seed=0)
    assert res.nodes.shape == (10, 30) and res.n_matvecs == 300
    assert torch.allclose(res.weights.sum(1), torch.ones(10, dtype=F64), atol=1e-12)
    tr = res.trace_estimate()
    assert abs(tr.estimate - float(eigs.sum())) <= 3 * tr.stderr
    eps = 1e-3
    ld, exact = res.logdet(eps), float(torch.log(eigs + eps).sum())
    assert (abs(ld.estimate - exact) <= 0.05 * abs(exact)
            and abs(ld.estimate - exact) <= 3 * ld.stderr)
    assert res.moment(0) == pytest.approx(1.0)
    grid = torch.linspace(-2, 12, 2001, dtype=F64)
    dens = res.density(grid, sigma=0.1)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        res.logdet(-1.0)


def test_probe_logdet_only_where_h_plus_eps_is_positive_definite():
    """The probe suite's log-det: reported for a positive definite H + eps I (equal to the
    quadrature's), skipped with a reason when the bottom Lanczos eigenvalue (or, without one,
    the smallest node) is <= -eps, even if the quadrature's nodes stay above it."""
    import types

    from landscope.probes.run import logdet_scalars

    eigs = _uniform(60, 0.1, 5.0, 3)
    q = slq(_op(eigs)[0], n_probes=4, m_steps=20, seed=0)
    ok = logdet_scalars(q, 1e-3, None)
    assert ok["logdet"] == q.logdet(1e-3).estimate and "logdet_skipped" not in ok
    lanczos_says = types.SimpleNamespace(eigenvalues=torch.tensor([-0.0012], dtype=F64))
    skipped = logdet_scalars(q, 1e-3, lanczos_says)
    assert "logdet" not in skipped and "lambda_min (Lanczos) -0.0012" in skipped["logdet_skipped"]
    negative = torch.cat([eigs, torch.tensor([-0.5], dtype=F64)])
    q_neg = slq(_op(negative)[0], n_probes=4, m_steps=61, seed=0)
    assert "smallest SLQ node" in logdet_scalars(q_neg, 1e-3, None)["logdet_skipped"]


def test_slq_negative_mass_and_outliers():
    eigs = torch.cat([_uniform(80, -2.0, -0.5, 9), _uniform(317, 0.5, 3.0, 10),
                      torch.tensor([8.0, 15.0, 30.0], dtype=F64)])
    op, _ = _op(eigs)
    res = slq(op, n_probes=10, m_steps=30, seed=0)
    assert res.negative_mass() == pytest.approx(80 / 400, abs=0.03)
    out = res.outliers()
    assert out.count == 3
    assert torch.allclose(out.locations, torch.tensor([30.0, 15.0, 8.0], dtype=F64), rtol=1e-6)
    assert (((out.multiplicities - 1).abs() <= 1.5).all()
            and 2.5 <= out.bulk_edge <= out.threshold < 8.0)
    bulk_only = slq(_op(eigs[:397])[0], n_probes=10, m_steps=30, seed=0).outliers()
    assert bulk_only.count == 0
    assert out.tail_mass <= 1.5 / 400 and bulk_only.tail_mass <= 1.5 / 400


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_slq_outliers_stop_where_an_unresolved_tail_begins(seed):
    """Three isolated outliers above 10 eigenvalues packed into [2.0, 2.2] (too dense for 30
    Lanczos steps to separate) over a bulk in [0, 0.01], D = 2000. Without the multiplicity
    rule the packed group would be a 4th "outlier" standing for ~10 eigenvalues; with it the
    outliers are the 3 isolated ones and the group is tail_mass (~10 / D)."""
    eigs = torch.cat([_uniform(1987, 0.0, 0.01, 11), torch.linspace(2.0, 2.2, 10, dtype=F64),
                      torch.tensor([12.0, 20.0, 30.0], dtype=F64)])
    op, _ = _op(eigs)
    res = slq(op, n_probes=10, m_steps=30, seed=seed)
    out = res.outliers()
    assert out.count == 3 and (out.multiplicities <= 3.0).all()
    assert torch.allclose(out.locations, torch.tensor([30.0, 20.0, 12.0], dtype=F64), rtol=1e-6)
    assert 6 <= out.tail_mass * 2000 <= 15 and out.threshold < 2.0
    assert res.outliers(max_multiplicity=1e9).count == 4  # the old rule's extra "outlier"


@pytest.mark.parametrize("steps", [30, 8])
def test_slq_first_rule_from_the_top_k_krylov_space(steps):
    """``slq(first=top.krylov)``: the first probe is the top-k run's own start vector z. Its
    rule (the Krylov space grown to k + steps vectors, the top-k Ritz pairs left out) has the
    moments ``ẑᵀ (PAP)^p ẑ`` of ``ẑ = Pz/‖Pz‖`` (P = I − VVᵀ, V the top-k) to 1e-10, as a first
    run from Pz has, and costs the top-k's steps beyond k fewer products; the later probes are
    the same draws either way."""
    eigs = torch.cat([torch.tensor([5.0, 4.0, 3.0, 2.0, 1.5], dtype=torch.float64),
                      torch.rand(295, generator=torch.Generator().manual_seed(1),
                                 dtype=torch.float64)])
    op = DenseOperator(quadratic_with_spectrum(eigs, seed=1)[0])
    k = 5
    top = lanczos_eigs(op, k=k, seed=0, keep_krylov=True)
    m_top = top.iterations
    n0 = op.n_matvecs
    q = slq(op, n_probes=3, m_steps=steps, seed=0, deflate=top, resolution=0.01,
            first=top.krylov)
    spent = op.n_matvecs - n0
    again = lanczos_eigs(op, k=k, seed=0)
    n0 = op.n_matvecs
    own = slq(op, n_probes=3, m_steps=steps, seed=0, deflate=again, resolution=0.01)
    assert q.first_from_top and not own.first_from_top
    assert q.steps[0] == max(steps, m_top - k) and own.steps[0] == steps
    assert spent == op.n_matvecs - n0 - min(steps, m_top - k)
    z = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = top.eigenvectors
    proj = torch.eye(op.dim, dtype=torch.float64) - v @ v.T
    zh = proj @ z / torch.linalg.vector_norm(proj @ z)
    nodes, w = q.nodes[0, k:], q.weights[0, k:] * op.dim / (op.dim - k)
    assert torch.allclose(q.nodes[0, :k], top.eigenvalues)
    for p in range(2 * min(steps, 8)):
        exact = float(zh @ torch.linalg.matrix_power(proj @ op.matrix @ proj, p) @ zh)
        assert float((w * nodes ** p).sum()) == pytest.approx(exact, rel=1e-10)
    assert q.deflated == own.deflated == k and q.steps[1:] == own.steps[1:]
    for i in range(1, 3):  # the same probes, the same rules (rows padded to their widths)
        width = k + own.steps[i]
        assert torch.allclose(q.nodes[i, :width], own.nodes[i, :width], rtol=1e-12)
        assert torch.allclose(q.weights[i, :width], own.weights[i, :width], rtol=1e-12)
    with pytest.raises(ValueError, match="deflate"):
        slq(op, first=top.krylov)


def test_slq_first_is_not_read_when_its_pairs_are_not_the_deflated_ones():
    """The first rule leaves out the Ritz vectors that lie in the deflated span (matched by
    overlap, not by value); when not exactly k of them do, the first run is made on its own."""
    eigs = torch.cat([torch.tensor([5.0, 4.0, 3.0], dtype=torch.float64),
                      torch.rand(197, generator=torch.Generator().manual_seed(2),
                                 dtype=torch.float64)])
    op = DenseOperator(quadratic_with_spectrum(eigs, seed=2)[0])
    top = lanczos_eigs(op, k=3, seed=0, keep_krylov=True)
    q, _ = torch.linalg.qr(torch.randn(op.dim, 3, generator=torch.Generator().manual_seed(5),
                                       dtype=torch.float64))
    other = lanczos_eigs(op, k=3, seed=0)
    other.eigenvectors = q  # three directions the top-3's Krylov space does not hold
    got = slq(op, n_probes=2, m_steps=10, seed=0, deflate=other, resolution=0.01,
              first=top.krylov)
    own = slq(op, n_probes=2, m_steps=10, seed=0, deflate=other, resolution=0.01)
    assert not got.first_from_top
    assert torch.allclose(got.nodes, own.nodes, rtol=1e-12) and got.steps == own.steps


@pytest.mark.parametrize("dense", [True, False])
def test_slq_block_steps_the_later_probes_together_with_the_same_rules(dense):
    """``slq(block=4)``: the probes after the first run in lockstep, their products one batched
    backward on a cached HessianOperator (``dense``: a DenseOperator, single products): the
    same rules, steps, trace samples and product count as one run after another (float64; the
    spectral range seen is the first run's either way here), and a cap still cuts them."""
    from landscope.probes.batched import batched_available
    from landscope.probes.hvp import HessianOperator
    from landscope.probes.probe_data import ProbeData
    from probe_models import seeded_model

    if dense:
        eigs = torch.cat([torch.tensor([6.0, 5.0, 3.0]), torch.linspace(-0.5, 1.0, 197)]).double()
        op = DenseOperator(quadratic_with_spectrum(eigs, seed=3)[0])
    else:
        model, x, y = seeded_model(dict(name="mlp", width=6, depth=2), (1, 12), 3, 24)
        op = HessianOperator(model, ProbeData.from_tensors(x, y, 12))
        assert batched_available(op)
    top = lanczos_eigs(op, k=3, seed=0)
    m, res = (20, 0.01) if dense else (40, 0.01)
    runs = {}
    for block in (1, 4):
        n0 = op.n_matvecs
        runs[block] = (slq(op, n_probes=7, m_steps=m, seed=0, deflate=top, resolution=res,
                           block=block), op.n_matvecs - n0)
    (one, n1), (four, n4) = runs[1], runs[4]
    assert n1 == n4 == one.n_matvecs == four.n_matvecs and one.steps == four.steps
    assert torch.allclose(one.nodes, four.nodes, rtol=1e-9, atol=1e-12)
    assert torch.allclose(one.weights, four.weights, rtol=1e-9, atol=1e-12)
    assert torch.allclose(one.trace_samples, four.trace_samples, rtol=1e-9, atol=1e-12)
    assert four.n_probes == 7 and max(one.steps[1:]) < m  # the later runs stopped themselves
    assert dense or len(set(one.steps[1:])) > 1  # the MLP's at different steps
    budget = op.n_matvecs + one.steps[0] + 2 * 2  # the first run, then two lockstep steps
    cut = slq(op, n_probes=7, m_steps=m, seed=0, deflate=top, resolution=res, block=4,
              stop=lambda: "max_products" if op.n_matvecs >= budget else None)
    assert cut.stopped_by == "max_products" and cut.n_probes <= 5
    with pytest.raises(ValueError, match="block"):
        slq(op, block=0)


def test_deflated_product_is_the_projected_operator_with_one_pass_each_side():
    """``Deflated.matvec`` projects once before and once after the product: ``P A P v`` to
    rounding for any ``v`` (also one with large components along the basis), in float64 and
    float32, and nothing of the result lies along the basis."""
    eigs = torch.linspace(-3.0, 10.0, 60, dtype=torch.float64)
    a, q = quadratic_with_spectrum(eigs, seed=3)
    basis = q[:, -7:]  # the top-7 eigenvectors
    p = torch.eye(60, dtype=torch.float64) - basis @ basis.T
    v = torch.randn(60, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = v + 50.0 * basis[:, 0]
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 1e-5)):
        op = Deflated(DenseOperator(a.to(dtype)), basis.to(dtype))
        got = op.matvec(v.to(dtype)).double()
        want = p @ a @ p @ v
        assert (got - want).norm() <= tol * want.norm()
        assert (basis.T @ got).abs().max() <= tol * want.norm()
        assert op.n_matvecs == 1


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_one_projection_pass_of_a_probe_vector_is_as_exact_as_two(dist):
    """The deflated trace projects each probe vector once: for random probes the result lies
    along the basis only to rounding (float64 1e-13, float32 1e-6 of the norm), and its
    quadratic form ``zᵀPAPz`` is that of the exact projection to the same order."""
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(4000, 30, generator=gen, dtype=torch.float64))
    eigs = torch.linspace(-2.0, 5.0, 4000, dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 1e-6)):
        project = _projector(basis.to(dtype))
        for _ in range(5):
            z = probe_vector(4000, gen, dist, dtype, torch.device("cpu"))
            got = project(z).double()
            exact = z.double() - basis @ (basis.T @ z.double())
            assert (basis.T @ got).abs().max() <= tol * z.double().norm()
            assert (got - exact).norm() <= tol * z.double().norm()
            form, exact_form = (got * eigs) @ got, (exact * eigs) @ exact
            assert abs(form - exact_form) <= 10 * tol * (exact * exact * eigs.abs()).sum()


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_lanczos_on_a_deflated_operator_projects_once_per_step(dtype, tol):
    """A Lanczos run on ``Deflated(A, B)`` multiplies by A and projects each new vector once:
    its basis stays orthogonal to B, and its coefficients are those of a run on the explicit
    ``P A P``, also when B holds Ritz vectors with residuals of 1e-3 of the spectrum's range
    (the settled outliers the density deflates)."""
    gen = torch.Generator().manual_seed(4)
    eigs = torch.linspace(-3.0, 10.0, 300, dtype=torch.float64)
    a, q = quadratic_with_spectrum(eigs, seed=5)
    near = q[:, -7:] + 1e-3 * torch.randn(300, 7, generator=gen, dtype=torch.float64)
    basis, _ = torch.linalg.qr(near)
    p = torch.eye(300, dtype=torch.float64) - basis @ basis.T
    z = p @ (p @ torch.randn(300, generator=gen, dtype=torch.float64))
    dense, deflated = DenseOperator((p @ a @ p).to(dtype)), Deflated(DenseOperator(a.to(dtype)),
                                                                    basis.to(dtype))
    ref = _Lanczos(dense, z.to(dtype), restart=False, capacity=60)
    run = _Lanczos(deflated, z.to(dtype), restart=False, capacity=60)
    # a start outside the complement is projected first
    raw = _Lanczos(deflated, (z + basis @ torch.ones(7, dtype=torch.float64)).to(dtype),
                   restart=False, capacity=5)
    assert (basis.to(dtype).T @ raw._next).abs().max() <= tol
    assert run.product_op is deflated.op and run.lock is deflated.basis
    for _ in range(60):
        ref.step()
        run.step()
    assert deflated.n_matvecs == 60
    assert (basis.to(dtype).T @ run.V[:60].T).abs().max() <= tol
    scale = float(eigs.abs().max())
    assert max(abs(x - y) for x, y in zip(run.alpha, ref.alpha)) <= 10 * tol * scale
    assert max(abs(x - y) for x, y in zip(run.beta, ref.beta)) <= 10 * tol * scale
    # the Ritz values are those of the reference run, inside the spectrum of P A P
    spectrum = torch.linalg.eigvalsh(p @ a @ p)
    theta, _ = run.ritz()
    assert abs(theta - ref.ritz()[0]).max() <= 10 * tol * scale
    assert theta.max() <= float(spectrum[-1]) + 10 * tol * scale
    assert theta.min() >= float(spectrum[0]) - 10 * tol * scale


def test_a_restarted_deflated_run_stays_in_the_complement():
    """A breakdown on a deflated operator restarts from a random vector projected on the
    complement: the basis stays orthogonal to B and the Ritz values are eigenvalues of the
    complement."""
    a = torch.diag(torch.arange(1.0, 31.0, dtype=torch.float64))
    basis = torch.eye(30, dtype=torch.float64)[:, -2:]          # the top-2 eigenvectors
    z = torch.zeros(30, dtype=torch.float64)
    z[:3] = 1.0                                                 # an invariant 3-dim start
    op = Deflated(DenseOperator(a), basis)
    run = _Lanczos(op, z, restart=True, capacity=20, gen=torch.Generator().manual_seed(0))
    for _ in range(20):
        run.step()
    assert run.n_restarts >= 1
    assert (basis.T @ run.V[:20].T).abs().max() <= 1e-13
    theta, _ = run.ritz()
    assert theta.max() <= 28.0 + 1e-10 and theta.min() >= 1.0 - 1e-10
