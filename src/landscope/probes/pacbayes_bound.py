"""The Dziugaite–Roy PAC-Bayes bound's formula: Bernoulli kl and its inverses, Gaussian KLs,
the prior-variance grid, the complexity term, the Monte Carlo error's upper value and the naive
Occam bound. Pure numbers (float64, numpy and torch); the posteriors and the draws that use them
are in :mod:`landscope.probes.pacbayes` and :mod:`landscope.probes.pacbayes_optimize`.

References: G. K. Dziugaite and D. M. Roy, UAI 2017 (the bound); Langford & Caruana (2002)
(the Monte Carlo error's kl upper value); Langford (2005), "Tutorial on practical prediction
theory for classification", Thm. 4.6 (Occam's razor in kl form).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from landscope.errors import LandscopeError

F64 = torch.float64
_BISECT_STEPS = 200  # halvings of [q, 1]: far below 1e-12, i.e. to the last ulp


# ------------------------------------------------------------------------ Bernoulli KL
def _unit_interval(q: object, name: str) -> np.ndarray:
    arr = np.asarray(q, dtype=np.float64)
    if np.any(~np.isfinite(arr)) or np.any((arr < 0) | (arr > 1)):
        raise LandscopeError(f"{name} must lie in [0, 1] (got {q!r})")
    return arr


def _out(arr: np.ndarray) -> float | np.ndarray:
    return float(arr) if arr.ndim == 0 else arr


def _phi(t: np.ndarray) -> np.ndarray:
    """``t - ln(1 + t) >= 0`` for ``t >= -1``; by its series ``sum_n>=2 (-t)^n / n`` where
    ``|t| < 0.05`` (the direct form loses everything to cancellation there)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = t - np.log1p(t)
    small = np.abs(t) < 0.05
    ts = np.where(small, t, 0.0)
    series = sum((-ts) ** n / n for n in range(2, 24))
    return np.where(small, series, direct)


def _kl(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Bernoulli kl without cancellation: with ``x = p - q``,
    ``kl = q phi(x / q) + (1 - q) phi(-x / (1 - q))``, ``phi(t) = t - ln(1 + t)``, so it is
    accurate to a few ulps relative even for ``p`` within 1e-10 of ``q`` (the plain formula is a
    difference of two nearly equal terms there). ``q = 0``: ``-ln(1 - p)``; ``q = 1``: ``-ln p``."""
    q, p = np.broadcast_arrays(np.asarray(q, np.float64), np.asarray(p, np.float64))
    inner = (q > 0) & (q < 1)
    qs = np.where(inner, q, 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        mid = qs * _phi((p - qs) / qs) + (1.0 - qs) * _phi((qs - p) / (1.0 - qs))
        edge = np.where(q == 0, -np.log1p(-p), -np.log(p))
    return np.asarray(np.where(inner, mid, edge), dtype=np.float64)


def kl_bernoulli(q: object, p: object) -> float | np.ndarray:
    """``kl(q || p) = q ln(q/p) + (1-q) ln((1-q)/(1-p))`` (``0 ln 0 = 0``; ``inf`` where ``p``
    is 0 or 1 and ``q`` is not). Broadcasts over arrays; floats in, float out.

    >>> kl_bernoulli(0.5, 0.5), kl_bernoulli(0.1, 0.0)
    (0.0, inf)
    >>> kl_bernoulli(0.0, 0.5) == math.log(2)
    True
    """
    q, p = _unit_interval(q, "q"), _unit_interval(p, "p")
    return _out(_kl(q, p))


def _kl_inverse(q: object, c: object, upper: bool) -> float | np.ndarray:
    qa = _unit_interval(q, "q")
    ca = np.asarray(c, dtype=np.float64)
    if np.any(np.isnan(ca)) or np.any(ca < 0):
        raise LandscopeError(f"kl budget c must be >= 0 (got {c!r})")
    qa, ca = np.broadcast_arrays(qa, ca)
    # Invariant: kl(q || good) <= c (good starts at q, where kl = 0), bad past the boundary.
    good = qa.copy()
    bad = np.ones_like(qa) if upper else np.zeros_like(qa)
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (good + bad)
        ok = _kl(qa, mid) <= ca
        good = np.where(ok, mid, good)
        bad = np.where(ok, bad, mid)
    good = np.where(np.isinf(ca), 1.0 if upper else 0.0, good)
    return _out(good)


def kl_inverse_upper(q: object, c: object) -> float | np.ndarray:
    """``sup{p in [q, 1] : kl(q || p) <= c}`` by bisection (200 halvings: to the last ulp).

    ``c = 0`` gives ``q``; a large ``c`` gives (nearly) 1; ``q = 1`` gives 1. Broadcasts.

    >>> kl_inverse_upper(0.1, 0.0), kl_inverse_upper(1.0, 0.3)
    (0.1, 1.0)
    >>> round(kl_inverse_upper(0.0, math.log(2)), 12)  # kl(0 || p) = −ln(1 − p)
    0.5
    """
    return _kl_inverse(q, c, upper=True)


def kl_inverse_lower(q: object, c: object) -> float | np.ndarray:
    """``inf{p in [0, q] : kl(q || p) <= c}`` (the lower confidence value). Broadcasts."""
    return _kl_inverse(q, c, upper=False)


# ------------------------------------------------------------------------ Gaussian KL
def _f64(x: object, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to(F64).reshape(-1) if not isinstance(x, (int, float)) \
        else torch.tensor([float(x)], dtype=F64)
    if not torch.isfinite(t).all():
        raise LandscopeError(f"{name} has non-finite entries")
    return t


def _positive(x: object, name: str) -> Tensor:
    t = _f64(x, name)
    if not (t > 0).all():
        raise LandscopeError(f"{name} must be > 0 everywhere")
    return t


def gaussian_kl(mu_q: object, var_q: object, mu_p: object, var_p: object) -> float:
    """``KL(N(mu_q, diag var_q) || N(mu_p, diag var_p))`` in float64::

        1/2 sum_i [ var_q_i / var_p_i + (mu_q_i - mu_p_i)^2 / var_p_i - 1
                    + ln var_p_i - ln var_q_i ]

    Variances may be scalars (isotropic) or vectors of the means' length."""
    mq, mp = _f64(mu_q, "mu_q"), _f64(mu_p, "mu_p")
    if mq.shape != mp.shape:
        raise LandscopeError(f"means of different lengths: {mq.numel()} and {mp.numel()}")
    d = mq.numel()
    vq, vp = _positive(var_q, "var_q"), _positive(var_p, "var_p")
    for v, name in ((vq, "var_q"), (vp, "var_p")):
        if v.numel() not in (1, d):
            raise LandscopeError(f"{name} needs 1 or {d} entries (got {v.numel()})")
    vq, vp = vq.expand(d), vp.expand(d)
    terms = vq / vp + (mq - mp) ** 2 / vp - 1.0 + torch.log(vp) - torch.log(vq)
    return 0.5 * float(terms.sum())


def gaussian_kl_eigenbasis(mu_q: object, eigvecs: Tensor, s_v: object, s_perp: float,
                           mu_p: object, var_p: float) -> float:
    """KL of ``Q = N(mu_q, V diag(s_v) V^T + s_perp (I - V V^T))`` (``V`` = ``eigvecs``, D x k,
    orthonormal columns) to the isotropic ``P = N(mu_p, var_p I)``, without D x D matrices::

        1/2 [ (sum_i s_v_i + (D-k) s_perp + ||mu_q - mu_p||^2) / var_p - D + D ln var_p
              - sum_i ln s_v_i - (D-k) ln s_perp ]

    The isotropic prior makes the KL invariant under rotations, so ``V`` enters only through its
    shape (checked); the same posterior's draws (:func:`pac_bayes_bounds`) do use it."""
    mq, mp = _f64(mu_q, "mu_q"), _f64(mu_p, "mu_p")
    d = mq.numel()
    if mp.shape != mq.shape:
        raise LandscopeError(f"means of different lengths: {d} and {mp.numel()}")
    if eigvecs.dim() != 2 or eigvecs.shape[0] != d:
        raise LandscopeError(f"eigvecs must have shape ({d}, k) (got {tuple(eigvecs.shape)})")
    k = eigvecs.shape[1]
    sv = _positive(s_v, "s_v")
    if sv.numel() != k:
        raise LandscopeError(f"s_v needs {k} entries, one per eigenvector (got {sv.numel()})")
    sp, lam = float(_positive(s_perp, "s_perp")), float(_positive(var_p, "var_p"))
    trace = float(sv.sum()) + (d - k) * sp
    logdet = float(torch.log(sv).sum()) + (d - k) * math.log(sp)
    dist2 = float(((mq - mp) ** 2).sum())
    return 0.5 * ((trace + dist2) / lam - d + d * math.log(lam) - logdet)


# ------------------------------------------------------------------------ bound pieces
def check_delta(delta: float, name: str) -> None:
    if not 0.0 < float(delta) < 1.0:
        raise LandscopeError(f"{name} must lie in (0, 1) (got {delta!r})")


def check_m(m: int) -> None:
    if int(m) < 2:
        raise LandscopeError(f"the bound needs m >= 2 training samples (got {m})")


def prior_variance(j: int, b: float = 100.0, c: float = 0.1) -> float:
    """Grid point ``lambda_j = c exp(-j / b)``.

    >>> prior_variance(0), prior_variance(100) == 0.1 * math.exp(-1)
    (0.1, True)
    """
    return c * math.exp(-j / b)


def dziugaite_roy_bound(e_hat: float, kl: float, m: int, delta: float, j: int) -> float:
    """``kl_inverse_upper(e_hat, [kl + 2 ln j + ln(pi^2 m / (6 delta))] / (m - 1))`` with
    ``j = b ln(c / lambda) >= 1`` the prior's grid index (Dziugaite & Roy 2017, eq. in Sec. 4)."""
    check_delta(delta, "delta")
    check_m(m)
    if int(j) < 1 or kl < 0:
        raise LandscopeError(f"need grid index j >= 1 and KL >= 0 (got j={j}, KL={kl})")
    return float(kl_inverse_upper(e_hat, complexity_term(kl, m, delta, j)))


def complexity_term(kl: float, m: int, delta: float, j: int) -> float:
    """The kl budget of :func:`dziugaite_roy_bound`: ``[KL + 2 ln j + ln(pi^2 m / (6 delta))] /
    (m - 1)``, the part of the bound that does not depend on the posterior's error (H4 compares
    it between posteriors of matched error)."""
    check_delta(delta, "delta")
    check_m(m)
    return (kl + 2.0 * math.log(int(j)) + math.log(math.pi ** 2 * m / (6.0 * delta))) / (m - 1)


def mc_error_upper(e_mc: float, n_mc: int, delta_mc: float) -> float:
    """Langford & Caruana (2002): ``kl_inverse_upper(e_mc, ln(2 / delta_mc) / n_mc)``."""
    check_delta(delta_mc, "delta_mc")
    if int(n_mc) < 1:
        raise LandscopeError(f"n_mc must be >= 1 (got {n_mc})")
    return float(kl_inverse_upper(e_mc, math.log(2.0 / delta_mc) / n_mc))


def occam_bound(train_error: float, dim: int, m: int, delta: float, bits: int = 32) -> float:
    """Naive parameter-count bound: ``kl_inverse_upper(e_S, (bits D ln 2 + ln(1/delta)) / m)``
    (finite class of ``2^(bits D)`` weight vectors, uniform prior; module docstring)."""
    check_delta(delta, "delta")
    check_m(m)
    return float(kl_inverse_upper(train_error,
                                  (bits * dim * math.log(2.0) + math.log(1.0 / delta)) / m))


def choose_prior(trace: float, dist2: float, logdet: float, dim: int, b: float = 100.0,
                 c: float = 0.1) -> tuple[int, float, float]:
    """``(j, lambda_j, KL)``: the grid neighbour of ``lambda* = (trace + dist2) / D`` with the
    smaller ``KL + 2 ln j`` (``trace``/``logdet`` of the posterior covariance, ``dist2 =
    ||w - w0||^2``)."""
    lam_star = (trace + dist2) / dim
    j_star = b * math.log(c / lam_star) if lam_star < c else 1.0
    best: Optional[tuple[float, int, float, float]] = None
    for j in sorted({max(1, math.floor(j_star)), max(1, math.ceil(j_star))}):
        lam = prior_variance(j, b, c)
        kl = 0.5 * ((trace + dist2) / lam - dim + dim * math.log(lam) - logdet)
        if best is None or kl + 2 * math.log(j) < best[0]:
            best = (kl + 2 * math.log(j), j, lam, kl)
    assert best is not None
    return best[1], best[2], max(best[3], 0.0)
