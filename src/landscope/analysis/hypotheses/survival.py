"""Censored log-normal accelerated-failure-time (AFT) regression and a cluster-level
permutation score test, the primary statistics of H3 (:mod:`landscope.analysis.hypotheses.h3`).

**Model.**  For row ``i`` with covariates ``x_i`` (the first column the constant) and time
``T_i`` observed (``event_i = 1``) or right-censored at ``c_i`` (``event_i = 0``)::

    log T_i = x_i' β + σ ε_i,   ε_i ~ N(0, 1)

(Kalbfleisch & Prentice 2002, "The statistical analysis of failure time data", §2.3 and §3.6;
the same likelihood as Tobit's with the censoring on the right).  With ``y_i`` the log of the
observed or censoring time and ``r_i = (y_i − x_i'β)/σ`` the log-likelihood is::

    ℓ = Σ_event [log φ(r_i) − log σ] + Σ_censored log(1 − Φ(r_i))

:func:`fit_aft` maximizes it over ``(β, log σ)`` with :func:`scipy.optimize.minimize`
(``trust-exact``, analytic gradient and Hessian; warm starts from OLS on ``y``).  Without
censoring the MLE is OLS with ``σ² = RSS / n`` (a test checks this).

**Permutation score test of a cluster-level covariate** (:func:`permutation_score_test`).
When the covariate ``a`` of interest is constant within clusters (H3: the alignment is a
property of the source minimum, and the continuations from one minimum share its basin), the
clusters are the independent units.  Fit the null model (without ``a``) once; its score per
row with respect to the linear predictor is ``w_i = ∂ℓ_i/∂(x_i'β)``, i.e. ``r_i/σ``
for an event and ``λ(r_i)/σ`` (the inverse Mills ratio ``φ/(1−Φ)``) for a censored row:
positive when the row lasts longer than the null model predicts.  With ``S_g = Σ_{i∈g} w_i``
and ``ã_g`` the covariate centred within its stratum, the statistic is
``U = Σ_g ã_g S_g`` (the score for ``a``'s coefficient at 0).  Its null distribution comes
from permuting ``a`` across clusters **within strata** (H3: minima of the same parameter
count), which is exact when, within a stratum, the clusters' outcome distributions do not
depend on ``a`` — whatever the null model's misspecification, because the ``S_g`` do not
depend on ``a`` and a stratum-level misfit cancels against the within-stratum centring.  The
two-sided p-value is ``(1 + #{|U_π| ≥ |U|}) / (1 + n_perm)`` for random permutations (all
within-strata permutations, the identity included, when there are at most ``n_perm``).

**Interval.**  Under the shift model ``log T = … + b·a``, ``y − b·a`` (observed and
censoring times shifted alike) follows the null model, so the set of ``b`` that the test does
not reject is a confidence set (test inversion; Lehmann & Romano 2005, §3.5).
:func:`inverted_interval` finds its ends by bracketing and bisection with one fixed set of
permutations (so ``p(b)`` is a deterministic function).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import optimize, special

from landscope.analysis.inference import invert_test

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class AFTFit:
    """A fitted log-normal AFT: ``params`` (β, the first the constant), ``sigma``,
    ``loglik``, ``cov`` (inverse observed information of (β, log σ); NaN when singular),
    ``converged`` and the per-row score ``w`` with respect to the linear predictor."""

    params: np.ndarray
    sigma: float
    loglik: float
    cov: np.ndarray
    converged: bool
    w: np.ndarray

    @property
    def bse(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov)[:-1], 0, None))


def _mills(r: np.ndarray) -> np.ndarray:
    """φ(r) / (1 − Φ(r)), computed on the log scale (stable for large r)."""
    return np.exp(-0.5 * r * r - _LOG_SQRT_2PI - special.log_ndtr(-r))


def _terms(theta: np.ndarray, y: np.ndarray, x: np.ndarray, event: np.ndarray):
    beta, s = theta[:-1], theta[-1]
    sigma = math.exp(s)
    r = (y - x @ beta) / sigma
    cens = ~event
    lam = _mills(r[cens])
    ll = float(np.sum(-0.5 * r[event] ** 2 - _LOG_SQRT_2PI - s)
               + np.sum(special.log_ndtr(-r[cens])))
    g = np.empty_like(r)  # dℓ/dr
    g[event], g[cens] = -r[event], -lam
    gp = np.empty_like(r)  # d²ℓ/dr²
    gp[event], gp[cens] = -1.0, -lam * (lam - r[cens])
    return ll, r, g, gp, sigma


def _negll(theta, y, x, event):
    ll, r, g, gp, sigma = _terms(theta, y, x, event)
    return -ll


def _neggrad(theta, y, x, event):
    ll, r, g, gp, sigma = _terms(theta, y, x, event)
    # ∇r: β -> −x/σ, log σ -> −r; the events' −log σ adds −1 each
    return -np.concatenate([x.T @ (-g / sigma), [float(np.sum(-g * r) - np.sum(event))]])


def _neghess(theta, y, x, event):
    ll, r, g, gp, sigma = _terms(theta, y, x, event)
    p = x.shape[1]
    h = np.empty((p + 1, p + 1))
    # d²ℓ = g'(r) ∇r∇r' + g(r) ∇²r;  ∇²r: ββ 0, β logσ x/σ, logσ logσ r
    h[:p, :p] = (x * (gp / sigma ** 2)[:, None]).T @ x
    cross = x.T @ (gp * r / sigma + g / sigma)
    h[:p, p] = h[p, :p] = cross
    h[p, p] = float(np.sum(gp * r * r + g * r))
    return -h


def fit_aft(y: np.ndarray, x: np.ndarray, event: np.ndarray,
            start: Optional[np.ndarray] = None) -> AFTFit:
    """Maximum-likelihood log-normal AFT of ``y`` (log times; censoring points where
    ``event`` is False) on the design ``x`` (n × p, include the constant).  ``start``: a
    previous ``(β, log σ)`` to warm-start from."""
    y, x = np.asarray(y, float), np.asarray(x, float)
    event = np.asarray(event, bool)
    if start is None:
        beta0 = np.linalg.lstsq(x, y, rcond=None)[0]
        res = y - x @ beta0
        start = np.concatenate([beta0, [math.log(max(float(np.std(res)), 1e-3))]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimize.minimize(_negll, np.asarray(start, float), args=(y, x, event),
                                jac=_neggrad, hess=_neghess, method="trust-exact",
                                options={"gtol": 1e-8, "maxiter": 200})
    theta = opt.x
    ll, r, g, gp, sigma = _terms(theta, y, x, event)
    grad = _neggrad(theta, y, x, event)
    try:
        cov = np.linalg.inv(_neghess(theta, y, x, event))
        # the Newton decrement gᵀH⁻¹g (scale-free): trust-exact can stop at round-off level
        # ("bad approximation") with an ill-conditioned design, e.g. log D beside the constant
        decrement = float(grad @ cov @ grad)
    except np.linalg.LinAlgError:
        cov = np.full((len(theta), len(theta)), np.nan)
        decrement = math.inf
    converged = bool(opt.success) or (0 <= decrement < 1e-10)
    return AFTFit(params=theta[:-1].copy(), sigma=sigma, loglik=ll, cov=cov,
                  converged=converged, w=-g / sigma)


def cluster_robust_se(fit: AFTFit, x: np.ndarray, event: np.ndarray, y: np.ndarray,
                      groups: np.ndarray) -> np.ndarray:
    """Cluster-robust (sandwich, CR1 factor G/(G−1)) standard errors of β: the bread is
    ``fit.cov``, the meat the outer products of the per-cluster score sums."""
    theta = np.concatenate([fit.params, [math.log(fit.sigma)]])
    ll, r, g, gp, sigma = _terms(theta, y, x, np.asarray(event, bool))
    rows = np.column_stack([x * (-g / sigma)[:, None], -g * r - np.asarray(event, float)])
    codes = np.unique(groups, return_inverse=True)[1]
    n_g = int(codes.max()) + 1
    sums = np.zeros((n_g, rows.shape[1]))
    np.add.at(sums, codes, rows)
    meat = sums.T @ sums * (n_g / (n_g - 1) if n_g > 1 else 1.0)
    cov = fit.cov @ meat @ fit.cov
    return np.sqrt(np.clip(np.diag(cov)[:-1], 0, None))


# --------------------------------------------------------------------------- permutations
def strata_permutations(strata: np.ndarray, n_perm: int, seed: int = 0
                        ) -> tuple[np.ndarray, bool]:
    """``(perms, exact)``: an ``m × G`` array of cluster indices, each row a permutation
    that moves clusters only within their stratum.  All of them (the identity included,
    ``exact=True``) when there are at most ``n_perm``; otherwise ``n_perm`` random ones."""
    strata = np.asarray(strata)
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    total = math.prod(math.factorial(len(g)) for g in groups)
    g_count = len(strata)
    if total <= n_perm:
        per = [list(itertools.permutations(g)) for g in groups]
        out = np.empty((total, g_count), dtype=int)
        for k, combo in enumerate(itertools.product(*per)):
            for g, perm in zip(groups, combo):
                out[k, g] = perm
        return out, True
    rng = np.random.default_rng(seed)
    out = np.tile(np.arange(g_count), (n_perm, 1))
    for g in groups:
        if len(g) > 1:
            out[:, g] = g[rng.permuted(np.tile(np.arange(len(g)), (n_perm, 1)), axis=1)]
    return out, False


def n_strata_permutations(strata: np.ndarray) -> int:
    """The number of permutations within strata: the product of the factorials of the
    strata sizes.

    >>> n_strata_permutations(np.array([32, 32, 32, 64, 64]))  # 3! · 2!
    12
    """
    strata = np.asarray(strata)
    return math.prod(math.factorial(int((strata == s).sum())) for s in np.unique(strata))


def centred_within(a: np.ndarray, strata: np.ndarray) -> np.ndarray:
    """``a`` minus its mean within each stratum.

    >>> centred_within([1.0, 2.0, 3.0, 10.0, 20.0], np.array([0, 0, 0, 1, 1])).tolist()
    [-1.0, 0.0, 1.0, -5.0, 5.0]
    """
    out = np.asarray(a, float).copy()
    for s in np.unique(strata):
        sel = strata == s
        out[sel] -= out[sel].mean()
    return out


def score_statistic(w: np.ndarray, codes: np.ndarray, a_tilde: np.ndarray,
                    perms: np.ndarray) -> tuple[float, np.ndarray]:
    """``(U, U_perm)``: ``U = Σ_g ã_g S_g`` with ``S_g`` the cluster sums of ``w`` (codes:
    the row's cluster index into ``a_tilde``), and ``U`` under each permutation of ``ã``."""
    s = np.bincount(codes, weights=w, minlength=len(a_tilde))
    return float(a_tilde @ s), a_tilde[perms] @ s


def perm_p(u: float, u_perm: np.ndarray, exact: bool) -> float:
    """Two-sided permutation p-value (ties count, with a relative tolerance)."""
    hits = int(np.sum(np.abs(u_perm) >= abs(u) * (1 - 1e-9) - 1e-12))
    return hits / len(u_perm) if exact else (1 + hits) / (1 + len(u_perm))


@dataclass
class PermTest:
    """The outcome of :func:`permutation_score_test`: the statistic, its p-value, the number
    of permutations (``exact``: all of them) and the null fit."""

    u: float
    p: float
    n_perm: int
    exact: bool
    null_fit: AFTFit


def permutation_score_test(y: np.ndarray, x0: np.ndarray, event: np.ndarray,
                           codes: np.ndarray, a_tilde: np.ndarray, perms: np.ndarray,
                           exact: bool, start: Optional[np.ndarray] = None) -> PermTest:
    """Test that the cluster-level covariate ``a`` (``a_tilde``: centred within strata, one
    value per cluster; ``codes``: each row's cluster) has no effect given the null design
    ``x0``, with the permutations ``perms`` of :func:`strata_permutations`."""
    fit = fit_aft(y, x0, event, start)
    u, u_perm = score_statistic(fit.w, codes, a_tilde, perms)
    return PermTest(u=u, p=perm_p(u, u_perm, exact), n_perm=len(perms), exact=exact,
                    null_fit=fit)


def inverted_interval(y: np.ndarray, x0: np.ndarray, event: np.ndarray, codes: np.ndarray,
                      a_row: np.ndarray, a_tilde: np.ndarray, perms: np.ndarray, exact: bool,
                      estimate: float, scale: float, alpha: float = 0.05, iters: int = 10
                      ) -> tuple[float, float]:
    """The ends of ``{b : p(b) ≥ alpha}`` where ``p(b)`` is the permutation score test on
    ``y − b·a_row`` (``a_row``: the covariate per row, in the units of ``estimate``).
    Bracketing steps of ``scale`` (doubling, at most 8) outward from ``estimate``, then
    ``iters`` bisections; an end that cannot be bracketed is ±inf."""
    start = None

    def p_at(b: float) -> float:
        nonlocal start
        fit = fit_aft(y - b * a_row, x0, event, start)
        start = np.concatenate([fit.params, [math.log(fit.sigma)]])
        u, u_perm = score_statistic(fit.w, codes, a_tilde, perms)
        return perm_p(u, u_perm, exact)

    def reset() -> None:  # each side starts its fits cold
        nonlocal start
        start = None

    steps = [max(scale, 1e-6) * 2 ** i for i in range(8)]
    return invert_test(p_at, estimate, steps, alpha, iters, before_side=reset)
