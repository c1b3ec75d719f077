"""PAC-Bayes bounds (Dziugaite & Roy 2017): Bernoulli kl and its inverses, Gaussian KLs against
torch.distributions and dense float64 references, the bound formula on hand-computed cases, and the
three bounds on a tiny trained MLP. Tolerances are stated per assertion."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from landscope.errors import LandscopeError
from landscope.probes.hvp import HessianOperator
from landscope.probes.lanczos import lanczos_eigs
from landscope.probes.pacbayes import Candidate, pac_bayes_bounds
from landscope.probes.pacbayes_bound import (
    choose_prior,
    dziugaite_roy_bound,
    gaussian_kl,
    gaussian_kl_eigenbasis,
    kl_bernoulli,
    kl_inverse_lower,
    kl_inverse_upper,
    mc_error_upper,
    occam_bound,
    prior_variance,
)
from landscope.probes.probe_data import ProbeData

F64 = torch.float64


# ------------------------------------------------------------------------ Bernoulli kl
def test_kl_bernoulli_hand_values():
    assert kl_bernoulli(0.5, 0.5) == 0.0
    assert kl_bernoulli(0.1, 0.3) == pytest.approx(0.1 * math.log(1 / 3)
                                                   + 0.9 * math.log(0.9 / 0.7), abs=1e-15)
    assert kl_bernoulli(0.0, 0.2) == pytest.approx(-math.log(0.8), abs=1e-15)
    assert kl_bernoulli(1.0, 0.2) == pytest.approx(-math.log(0.2), abs=1e-15)
    assert kl_bernoulli(0.3, 0.0) == math.inf and kl_bernoulli(0.3, 1.0) == math.inf
    # no cancellation near p = q: kl = x^2 / (2 q (1 - q)) + O(x^3), relative 1e-8 at x = 1e-9
    assert kl_bernoulli(0.2, 0.2 + 1e-9) == pytest.approx(1e-18 / 0.32, rel=1e-8)
    arr = kl_bernoulli(np.array([0.1, 0.2]), 0.3)
    assert isinstance(arr, np.ndarray) and arr[0] == kl_bernoulli(0.1, 0.3)


@pytest.mark.parametrize("q", [0.0, 1e-4, 0.05, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("c", [1e-6, 0.01, 0.3, 2.0])
def test_kl_inverses_invert_kl(q, c):
    up, low = kl_inverse_upper(q, c), kl_inverse_lower(q, c)
    assert q <= up <= 1 and 0 <= low <= q
    if up < 1 - 1e-6:  # away from the saturation at 1, kl(q || up) = c to 1e-10
        assert abs(kl_bernoulli(q, up) - c) <= 1e-10
    if q > 0 and low > 1e-6:
        assert abs(kl_bernoulli(q, low) - c) <= 1e-10


def test_kl_inverse_boundaries_and_closed_forms():
    for q in (0.0, 0.2, 0.7, 1.0):
        assert kl_inverse_upper(q, 0.0) == q and kl_inverse_lower(q, 0.0) == q
        assert kl_inverse_upper(q, 50.0) == pytest.approx(1.0, abs=1e-12)
        assert kl_inverse_upper(q, math.inf) == 1.0 and kl_inverse_lower(q, math.inf) == 0.0
    for c in (1e-3, 0.4, 3.0):  # kl(0 || p) = -ln(1 - p), kl(1 || p) = -ln p
        assert kl_inverse_upper(0.0, c) == pytest.approx(-math.expm1(-c), abs=1e-12)
        assert kl_inverse_lower(1.0, c) == pytest.approx(math.exp(-c), abs=1e-12)
    # tiny budgets: p - q = sqrt(2 c q (1 - q)) to leading order
    assert kl_inverse_upper(0.2, 1e-20) - 0.2 == pytest.approx(math.sqrt(2e-20 * 0.16), rel=1e-6)
    qs, cs = np.array([0.0, 0.1, 0.4]), np.array([0.5, 0.05, 0.2])
    vec = kl_inverse_upper(qs, cs)
    assert np.array_equal(vec, [kl_inverse_upper(q, c) for q, c in zip(qs, cs)])
    ups = kl_inverse_upper(0.1, np.array([0.01, 0.1, 1.0]))
    assert np.all(np.diff(ups) > 0)  # increasing in c
    assert np.all(np.diff(kl_inverse_upper(np.array([0.0, 0.1, 0.2]), 0.1)) > 0)  # and in q


# ------------------------------------------------------------------------ Gaussian KL
def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    d = 7
    mq, mp = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    vq = torch.rand(d, generator=g, dtype=F64) + 0.1
    vp = torch.rand(d, generator=g, dtype=F64) + 0.1
    ref = float(kl_divergence(Independent(Normal(mq, vq.sqrt()), 1),
                              Independent(Normal(mp, vp.sqrt()), 1)))
    assert abs(gaussian_kl(mq, vq, mp, vp) - ref) <= 1e-10
    ref_iso = float(kl_divergence(Independent(Normal(mq, vq.sqrt()), 1),
                                  Independent(Normal(mp, torch.full((d,), 0.7, dtype=F64).sqrt()),
                                             1)))
    assert abs(gaussian_kl(mq, vq, mp, 0.7) - ref_iso) <= 1e-10
    assert gaussian_kl(mq, vq, mq, vq) == pytest.approx(0.0, abs=1e-14)


def test_gaussian_kl_eigenbasis_matches_dense_reference():
    g = torch.Generator().manual_seed(1)
    d, k = 6, 2
    v, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64))
    mq, mp = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    s_v, s_perp, lam = torch.tensor([0.05, 0.8], dtype=F64), 0.3, 0.9
    cov = v @ torch.diag(s_v) @ v.T + s_perp * (torch.eye(d, dtype=F64) - v @ v.T)
    prior = MultivariateNormal(mp, lam * torch.eye(d, dtype=F64))
    ref = float(kl_divergence(MultivariateNormal(mq, cov), prior))
    assert abs(gaussian_kl_eigenbasis(mq, v, s_v, s_perp, mp, lam) - ref) <= 1e-10
    # s_v = s_perp: the isotropic posterior, same as the diagonal formula
    iso = gaussian_kl_eigenbasis(mq, v, torch.full((k,), s_perp, dtype=F64), s_perp, mp, lam)
    assert abs(iso - gaussian_kl(mq, s_perp, mp, lam)) <= 1e-12
    with pytest.raises(LandscopeError):
        gaussian_kl_eigenbasis(mq, v[:5], s_v, s_perp, mp, lam)
    with pytest.raises(LandscopeError):
        gaussian_kl_eigenbasis(mq, v, s_v[:1], s_perp, mp, lam)


def test_posterior_draws_have_the_eigenbasis_covariance():
    """A draw is w + A z with A = sqrt(s_perp) I + V diag(sqrt(s_v) - sqrt(s_perp)) V^T, so
    A A^T must equal V diag(s_v) V^T + s_perp (I - V V^T) (exact up to roundoff, 1e-12)."""
    g = torch.Generator().manual_seed(2)
    d = 6
    v, _ = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=F64))
    lam = torch.tensor([50.0, 2.0, -1.0], dtype=F64)
    cand = Candidate(0.2, 1.0, lam, 1e-12, d, dist2=1.0, b=100.0, c=1.0)
    assert torch.allclose(cand.s_v, torch.tensor([1 / 50, 0.2, 0.2], dtype=F64), rtol=0, atol=1e-15)
    eye = torch.eye(d, dtype=F64)
    a = torch.stack([cand.draw(torch.zeros(d, dtype=F64), e, v.T @ e, v) for e in eye], dim=1)
    cov = v @ torch.diag(cand.s_v) @ v.T + 0.2 * (eye - v @ v.T)
    assert (a @ a.T - cov).abs().max() <= 1e-12
    assert cand.kl == pytest.approx(gaussian_kl_eigenbasis(eye[0], v, cand.s_v, 0.2,
                                                           torch.zeros(d, dtype=F64), cand.lam),
                                    rel=1e-12)


# ------------------------------------------------------------------------ bound pieces
def test_dziugaite_roy_bound_hand_case():
    e_hat, kl, m, delta, j = 0.1, 5.0, 101, 0.05, 3
    budget = (5.0 + 2 * math.log(3) + math.log(math.pi ** 2 * 101 / (6 * 0.05))) / 100
    bound = dziugaite_roy_bound(e_hat, kl, m, delta, j)
    assert bound == kl_inverse_upper(0.1, budget)
    assert abs(kl_bernoulli(0.1, bound) - budget) <= 1e-10 and bound > 0.1
    # the grid: lambda_j = c exp(-j/b) and j = b ln(c / lambda_j)
    lam = prior_variance(37, b=100, c=0.1)
    assert lam == pytest.approx(0.1 * math.exp(-0.37), rel=1e-15)
    assert 100 * math.log(0.1 / lam) == pytest.approx(37, abs=1e-9)
    # Langford-Caruana and the Occam bound, by their formulas
    assert mc_error_upper(0.2, 400, 0.01) == kl_inverse_upper(0.2, math.log(200) / 400)
    assert occam_bound(0.0, 10, 1000, 0.1) == pytest.approx(
        -math.expm1(-(320 * math.log(2) + math.log(10)) / 1000), abs=1e-12)


def test_choose_prior_picks_best_neighbour_of_continuous_optimum():
    d, trace, dist2, logdet, b, c = 50, 50 * 1e-3, 0.4, 50 * math.log(1e-3), 100.0, 0.1
    j, lam, kl = choose_prior(trace, dist2, logdet, d, b, c)
    j_star = b * math.log(c / ((trace + dist2) / d))
    assert j in (math.floor(j_star), math.ceil(j_star)) and lam == prior_variance(j, b, c)

    def kl_at(jj):
        lj = prior_variance(jj, b, c)
        return 0.5 * ((trace + dist2) / lj - d + d * math.log(lj) - logdet)

    assert kl == pytest.approx(kl_at(j), rel=1e-12)
    other = math.floor(j_star) + math.ceil(j_star) - j
    assert kl + 2 * math.log(j) <= kl_at(other) + 2 * math.log(other) + 1e-12
    assert choose_prior(5.0, 100.0, 0.0, 10, b, c)[0] == 1  # lambda* >= c: the first grid point


def test_bound_monotonicity():
    kls = [0.0, 1.0, 10.0, 100.0]
    assert np.all(np.diff([dziugaite_roy_bound(0.05, k, 500, 0.025, 10) for k in kls]) > 0)
    ms = [50, 200, 1000, 10000]
    assert np.all(np.diff([dziugaite_roy_bound(0.05, 20.0, m, 0.025, 10) for m in ms]) < 0)
    assert np.all(np.diff([dziugaite_roy_bound(e, 20.0, 500, 0.025, 10) for e in (0, .1, .3)]) > 0)
    assert np.all(np.diff([mc_error_upper(0.1, n, 0.01) for n in (10, 100, 1000)]) < 0)
    assert np.all(np.diff([occam_bound(0.0, d, 10000, 0.025) for d in (1, 10, 100)]) > 0)


@pytest.mark.parametrize("call", [
    lambda: dziugaite_roy_bound(0.1, 1.0, 100, 0.0, 1),
    lambda: dziugaite_roy_bound(0.1, 1.0, 100, 1.0, 1),
    lambda: dziugaite_roy_bound(0.1, 1.0, 1, 0.05, 1),
    lambda: dziugaite_roy_bound(0.1, 1.0, 100, 0.05, 0),
    lambda: mc_error_upper(0.1, 10, 1.5),
    lambda: kl_inverse_upper(1.2, 0.1),
    lambda: kl_inverse_upper(0.2, -0.1),
    lambda: kl_bernoulli(-0.1, 0.5),
    lambda: gaussian_kl([0.0, 1.0], [1.0, -1.0], [0.0, 0.0], 1.0),
])
def test_bad_scalar_inputs_raise_one_line(call):
    with pytest.raises(LandscopeError) as err:
        call()
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------ on a tiny model
M, WIDTH = 300, 8
FAST = dict(n_mc=40, n_select=6, s_grid=(1e-3, 1e-2, 5e-2), beta_grid=(1e-2, 1e-1), c=1.0)


@pytest.fixture(scope="module")
def trained():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 2))
    init = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    data = ProbeData.from_tensors(x, y, M)
    eig = lanczos_eigs(HessianOperator(model, data), k=3, seed=0)
    return model, init, data, eig.eigenvalues, eig.eigenvectors


def test_three_bounds_on_tiny_model(trained):
    model, init, data, vals, vecs = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    out = pac_bayes_bounds(model, data, vals, vecs, w0=init, seed=3, **FAST)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    d = sum(p.numel() for p in model.parameters())
    assert out["m"] == M and out["D"] == d and out["k"] == 3
    for name in ("pacbayes_naive", "pacbayes_isotropic", "pacbayes_hessian"):
        assert math.isfinite(out[name]) and 0.0 <= out[name] <= 1.0
    assert out["pacbayes_hessian"] <= out["pacbayes_isotropic"]  # isotropic is in the family
    # every reported number follows from the reported pieces (exactly: same functions)
    for name in ("isotropic", "hessian"):
        assert out[f"{name}_e_upper"] == mc_error_upper(out[f"{name}_e_mc"], 40,
                                                        out["delta_mc"] / 2)
        assert out[f"{name}_e_upper"] >= out[f"{name}_e_mc"]
        assert out[f"pacbayes_{name}"] == dziugaite_roy_bound(
            out[f"{name}_e_upper"], out[f"kl_{name}"], M, out["delta"], int(out[f"{name}_prior_j"]))
        assert out[f"{name}_prior_var"] == prior_variance(int(out[f"{name}_prior_j"]), 100.0, 1.0)
    assert out["pacbayes_naive"] == occam_bound(out["train_error"], d, M, 0.025, 32)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    w0 = torch.cat([p.detach().reshape(-1) for p in init.parameters()])
    iso_kl = gaussian_kl(w, out["isotropic_s"], w0, out["isotropic_prior_var"])
    assert out["kl_isotropic"] == pytest.approx(iso_kl, rel=1e-9)
    assert out["isotropic_s"] in FAST["s_grid"] and out["hessian_s_perp"] in FAST["s_grid"]


def test_deterministic_given_seed(trained):
    model, init, data, vals, vecs = trained
    a = pac_bayes_bounds(model, data, vals, vecs, w0=init, seed=5, **FAST)
    b = pac_bayes_bounds(model, data, vals, vecs, w0=init, seed=5, **FAST)
    assert a == b


def test_no_positive_curvature_makes_hessian_posterior_isotropic(trained):
    """s_i = min(s_perp, beta / max(lambda_i, eps)) = s_perp when lambda_i <= 0."""
    model, init, data, vals, vecs = trained
    out = pac_bayes_bounds(model, data, -vals.abs(), vecs, w0=init, seed=1, **FAST)
    assert out["pacbayes_hessian"] == out["pacbayes_isotropic"]
    assert out["kl_hessian"] == out["kl_isotropic"] and out["hessian_n_shrunk"] == 0


def test_bad_inputs_raise_one_line(trained):
    model, init, data, vals, vecs = trained
    d = vecs.shape[0]
    tiny = ProbeData.from_tensors(data.batches[0][0][:1], data.batches[0][1][:1], 1)
    skew = vecs.clone()
    skew[:, 1] = skew[:, 0]
    cases = [dict(delta=0.0), dict(delta=1.0), dict(delta_mc=-0.1), dict(data=tiny),
             dict(vecs=vecs[:-1]), dict(vecs=vecs[:, :2]), dict(vecs=torch.zeros(d, 3, 1)),
             dict(vecs=skew), dict(w0=torch.zeros(d + 1)), dict(n_mc=0)]
    for case in cases:
        kw = dict(case)
        args = (kw.pop("data", data), vals, kw.pop("vecs", vecs))
        with pytest.raises(LandscopeError) as err:
            pac_bayes_bounds(model, *args, **{**FAST, **kw})
        assert "\n" not in str(err.value), case


# ------------------------------------------------------------------------ optimised posteriors
from landscope.probes.pacbayes_bound import complexity_term  # noqa: E402
from landscope.probes.pacbayes_optimize import (  # noqa: E402
    Posterior,
    interpolate_scale,
    optimize_posterior,
    optimized_pac_bayes_bounds,
)


def test_complexity_term_closed_form_and_bound():
    m, delta, kl, j = 1000, 0.025, 37.5, 40
    ref = (kl + 2 * math.log(j) + math.log(math.pi ** 2 * m / (6 * delta))) / (m - 1)
    assert complexity_term(kl, m, delta, j) == pytest.approx(ref, rel=1e-15)
    assert dziugaite_roy_bound(0.1, kl, m, delta, j) == kl_inverse_upper(0.1, ref)


def test_posterior_noise_covariance_and_kl_against_dense_references():
    """Noise is linear in z, so its covariance is exactly A A^T with A's columns noise(e_i)."""
    g = torch.Generator().manual_seed(2)
    d, k = 9, 3
    basis, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=F64))
    s_v, s_perp, t = torch.tensor([0.2, 0.05, 1.3], dtype=F64), 0.4, 1.7
    mean, w0 = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    post = Posterior("hessian", mean, s_perp, s_v, basis)
    a = torch.stack([post.noise(e, t) for e in torch.eye(d, dtype=F64)], dim=1)
    cov = t * (basis @ torch.diag(s_v) @ basis.T
               + s_perp * (torch.eye(d, dtype=F64) - basis @ basis.T))
    assert torch.allclose(a @ a.T, cov, atol=1e-12)
    j, lam, kl = post.kl_prior(w0, t, b=100.0, c=1.0)
    ref = float(kl_divergence(MultivariateNormal(mean, cov),
                              MultivariateNormal(w0, lam * torch.eye(d, dtype=F64))))
    assert kl == pytest.approx(ref, rel=1e-9) and lam == prior_variance(j, 100.0, 1.0)
    iso = Posterior("isotropic", mean, s_perp, torch.zeros(0, dtype=F64))
    assert iso.kl_prior(w0, 1.0, c=1.0)[2] == pytest.approx(
        gaussian_kl(mean, s_perp, w0, iso.kl_prior(w0, 1.0, c=1.0)[1]), rel=1e-12)


def test_interpolate_scale():
    scales = [0.25, 0.5, 1.0, 2.0, 4.0]
    errs = [0.1, 0.2, 0.15, 0.4, 0.6]  # made monotone: 0.1, 0.2, 0.2, 0.4, 0.6
    t, clipped = interpolate_scale(errs, scales, 0.3)
    assert t == pytest.approx(math.exp(math.log(1.0) + 0.5 * math.log(2.0))) and not clipped
    assert interpolate_scale(errs, scales, 0.05) == (0.25, True)
    assert interpolate_scale(errs, scales, 0.9) == (4.0, True)
    assert interpolate_scale(errs, scales, 0.1) == (0.25, False)


OPT = dict(n_mc=200, n_select=8, n_match=16, c=1.0)


def test_optimised_bounds_beat_the_start_and_the_grid(trained):
    """On the tiny problem: the optimised posteriors' bounds are below those of their starting
    point (steps=0) and not above the grid search's (same n_mc; tolerance 0.01 for Monte Carlo
    noise: measured 0.47-0.51 optimised vs 0.48-0.52 grid)."""
    model, init, data, vals, vecs = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start = optimized_pac_bayes_bounds(model, data, vals, vecs, w0=init, steps=0, seed=1, **OPT)
    opt = optimized_pac_bayes_bounds(model, data, vals, vecs, w0=init, steps=600,
                                     lr_mean=3e-3, seed=1, **OPT)
    grid = pac_bayes_bounds(model, data, vals, vecs, w0=init, n_mc=200, n_select=8, c=1.0, seed=1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for name in ("isotropic", "hessian"):
        assert opt[f"pacbayes_{name}"] < start[f"pacbayes_{name}"]
        assert opt[f"pacbayes_{name}"] <= grid[f"pacbayes_{name}"] + 0.01
        # every number follows from the reported pieces (same functions)
        assert opt[f"{name}_e_upper"] == mc_error_upper(opt[f"{name}_e_mc"], 200,
                                                        opt["delta_mc"] / 2)
        assert opt[f"complexity_{name}"] == complexity_term(
            opt[f"kl_{name}"], M, opt["delta"], int(opt[f"{name}_prior_j"]))
        assert opt[f"pacbayes_{name}"] == dziugaite_roy_bound(
            opt[f"{name}_e_upper"], opt[f"kl_{name}"], M, opt["delta"], int(opt[f"{name}_prior_j"]))
        assert opt[f"matched_complexity_{name}"] > 0 and opt[f"matched_scale_{name}"] > 0
    assert opt["matched_error"] == opt["isotropic_e_mc"] and opt["hessian_is_isotropic"] == 0.0
    assert start["hessian_is_isotropic"] == 1.0  # steps=0: both start at the same point
    assert opt["complexity_naive"] == pytest.approx(
        (32 * opt["D"] * math.log(2) + math.log(40)) / M)
    short = dict(OPT, n_mc=20, n_select=2, n_match=2)
    first = optimized_pac_bayes_bounds(model, data, vals, vecs, w0=init, steps=30, seed=4, **short)
    assert optimized_pac_bayes_bounds(model, data, vals, vecs, w0=init, steps=30, seed=4,
                                      **short) == first  # deterministic given the seed


def test_optimize_posterior_rejects_bad_inputs(trained):
    model, init, data, vals, vecs = trained
    for kw in (dict(family="diag"), dict(family="hessian"), dict(init_var=0.0),
               dict(steps=-1), dict(delta=1.5)):
        args = {"family": "isotropic", "init_var": 1e-3, **kw}
        with pytest.raises(LandscopeError) as err:
            optimize_posterior(model, data, w0=init, **args)
        assert "\n" not in str(err.value)
    with pytest.raises(LandscopeError):
        optimized_pac_bayes_bounds(model, data, vals, vecs, w0=init, n_match=0)


# ------------------------------------------------------------------------ the error evaluator
@pytest.mark.parametrize("cfg,shape", [
    (dict(name="mlp", width=6, depth=2, norm="batch"), (1, 12)),
    (dict(name="cnn", width=2, depth=2, norm="batch"), (1, 6, 6)),
    (dict(name="vit", width=4, depth=2, norm="layer", skip=True, heads=2, patch_size=4,
          activation="gelu"), (1, 12)),
])
def test_zero_one_error_is_the_geometry_evaluation_bit_for_bit(cfg, shape):
    """The bounds' error evaluator (probes, no geometry) gives exactly the error that
    ParamSpace.evaluate (which the bounds used before they moved next to the probes) gives,
    at perturbed points of models with BatchNorm and LayerNorm, and leaves the model alone."""
    from landscope.geometry.space import ParamSpace
    from landscope.probes.pacbayes import ZeroOneError
    from probe_models import seeded_model

    model, x, y = seeded_model(cfg, shape, 3, 40, seed=3)
    before = copy.deepcopy(model.state_dict())
    data = ProbeData.from_tensors(x, y, micro_batch=16)
    error, space = ZeroOneError(model, data), ParamSpace(model)
    assert torch.equal(error.theta0, space.theta0) and error.dim == space.dim
    g = torch.Generator().manual_seed(0)
    for scale in (0.0, 0.1, 0.5, 2.0):
        theta = space.theta0 + scale * torch.randn(space.dim, generator=g, dtype=F64)
        assert error(theta) == 1.0 - space.evaluate(theta, data)[0].acc
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(LandscopeError):
        error(theta[:-1])
