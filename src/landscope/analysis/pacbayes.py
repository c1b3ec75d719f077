"""PAC-Bayes generalization bounds with isotropic and Hessian-informed Gaussian posteriors (H4).

Reference: G. K. Dziugaite and D. M. Roy, "Computing nonvacuous generalization bounds for deep
(stochastic) neural networks with many more parameters than training data", UAI 2017.

**The bound.** Prior ``P_j = N(w0, lambda_j I)`` with ``lambda_j = c * exp(-j / b)``, ``j = 1, 2,
...``, and ``w0`` a data-independent point (the initialization). With probability ``>= 1 - delta``
over the ``m`` training samples, simultaneously for every posterior ``Q`` and every ``j`` (union
bound with weights ``6 / (pi^2 j^2)``)::

    kl(e_S(Q) || e(Q)) <= [KL(Q || P_j) + 2 ln(b ln(c / lambda_j)) + ln(pi^2 m / (6 delta))] / (m - 1)

so ``e(Q) <= kl_inverse_upper(e_S(Q), that / (m - 1))``, with ``kl`` the Bernoulli KL and ``e`` the
0-1 error (``2 ln(b ln(c/lambda_j)) = 2 ln j``). Because the statement is uniform over ``Q``,
choosing ``Q`` after seeing the data (searching variances) costs nothing in this term; only the
prior must be fixed in advance, which the grid over ``j`` pays for.

**The empirical error** ``e_S(Q)`` (mean training error of a network drawn from ``Q``) is estimated
by ``n_mc`` i.i.d. draws, each evaluated exactly on all ``m`` samples with
:class:`~landscope.geometry.space.ParamSpace`; Langford and Caruana's sample-convergence bound
makes it rigorous: with probability ``>= 1 - delta'`` over the draws,
``e_S(Q) <= kl_inverse_upper(e_mc, ln(2 / delta') / n_mc)`` (each draw's error lies in [0, 1],
so the Chernoff kl bound applies). As ``kl_inverse_upper`` is increasing in ``q``, substituting
this upper value gives a bound that holds with probability ``>= 1 - delta - delta'``.

**Posteriors and the search** (:func:`pac_bayes_bounds`). Isotropic: ``Q = N(w, s I)``.
Hessian-informed: covariance diagonal in the basis of the top-k Hessian eigenvectors ``V``,
``s_i = min(s_perp, beta / max(lambda_i, eps))`` along ``v_i`` and ``s_perp`` on the orthogonal
complement (``beta`` is the tolerated loss rise per direction: ``1/2 lambda_i s_i <= beta/2``);
``beta = inf`` is the isotropic posterior, so the isotropic family is a subfamily. The search runs
in two stages with independent draws:

1. *selection*: every candidate ``(s_perp, beta)`` of the grids is scored with ``n_select`` draws
   (common random numbers across candidates) by the bound computed from the plain MC mean; the
   isotropic winner (``beta = inf`` only) and the Hessian-family winner are kept. No confidence is
   claimed for these estimates.
2. *final*: fresh draws (independent of the selection), ``n_mc`` per winner, each winner's MC upper
   value at confidence ``delta' / 2`` (a union bound over the two winners, so every reported MC
   statement holds simultaneously with probability ``>= 1 - delta'``). The Hessian bound is the
   smaller of the bounds of the two winners (both are members of the Hessian family), so
   ``pacbayes_hessian <= pacbayes_isotropic`` by construction.

The selection is independent of the final draws given the data, so the final statements are valid
for the selected posteriors; the two PAC-Bayes bounds hold simultaneously with probability
``>= 1 - delta - delta'``. Noise is drawn in float64 and added in the model's dtype (the rounding
to the float grid is ignored, as in Dziugaite & Roy).

**Prior variance.** For a posterior with covariance trace ``T`` the KL is minimized over
continuous ``lambda`` at ``lambda* = (T + ||w - w0||^2) / D``; we take the grid index
``j* = b ln(c / lambda*)`` and use whichever of its two integer neighbours (at least 1) gives the
smaller ``KL + 2 ln j`` (valid: the union bound covers every ``j``). ``lambda* >= c`` gives ``j = 1``.

**Naive bound.** Occam's razor for a finite class with a uniform prior (Langford 2005, "Tutorial on
practical prediction theory for classification", Thm. 4.6 in kl form): the network's weights are
one of ``|H| = 2^(bits D)`` bit patterns (``bits`` = 32 for float32), so with probability
``>= 1 - delta`` ``e(w) <= kl_inverse_upper(e_S(w), (bits D ln 2 + ln(1/delta)) / m)``, with the
exact training error of the trained network. It grows with ``D`` and is vacuous for real networks,
which is its purpose as a baseline.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscope.errors import LandscopeError
from landscope.geometry.space import ParamSpace
from landscope.probes.probe_data import ProbeData

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
    is 0 or 1 and ``q`` is not). Broadcasts over arrays; floats in, float out."""
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

    ``c = 0`` gives ``q``; a large ``c`` gives (nearly) 1; ``q = 1`` gives 1. Broadcasts."""
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

        1/2 sum_i [ var_q_i / var_p_i + (mu_q_i - mu_p_i)^2 / var_p_i - 1 + ln var_p_i - ln var_q_i ]

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
def _check_delta(delta: float, name: str) -> None:
    if not 0.0 < float(delta) < 1.0:
        raise LandscopeError(f"{name} must lie in (0, 1) (got {delta!r})")


def _check_m(m: int) -> None:
    if int(m) < 2:
        raise LandscopeError(f"the bound needs m >= 2 training samples (got {m})")


def prior_variance(j: int, b: float = 100.0, c: float = 0.1) -> float:
    """Grid point ``lambda_j = c exp(-j / b)``."""
    return c * math.exp(-j / b)


def dziugaite_roy_bound(e_hat: float, kl: float, m: int, delta: float, j: int) -> float:
    """``kl_inverse_upper(e_hat, [kl + 2 ln j + ln(pi^2 m / (6 delta))] / (m - 1))`` with
    ``j = b ln(c / lambda) >= 1`` the prior's grid index (Dziugaite & Roy 2017, eq. in Sec. 4)."""
    _check_delta(delta, "delta")
    _check_m(m)
    if int(j) < 1 or kl < 0:
        raise LandscopeError(f"need grid index j >= 1 and KL >= 0 (got j={j}, KL={kl})")
    return float(kl_inverse_upper(e_hat, complexity_term(kl, m, delta, j)))


def complexity_term(kl: float, m: int, delta: float, j: int) -> float:
    """The kl budget of :func:`dziugaite_roy_bound`: ``[KL + 2 ln j + ln(pi^2 m / (6 delta))] /
    (m - 1)``, the part of the bound that does not depend on the posterior's error (H4 compares
    it between posteriors of matched error)."""
    _check_delta(delta, "delta")
    _check_m(m)
    return (kl + 2.0 * math.log(int(j)) + math.log(math.pi ** 2 * m / (6.0 * delta))) / (m - 1)


def mc_error_upper(e_mc: float, n_mc: int, delta_mc: float) -> float:
    """Langford & Caruana (2002): ``kl_inverse_upper(e_mc, ln(2 / delta_mc) / n_mc)``."""
    _check_delta(delta_mc, "delta_mc")
    if int(n_mc) < 1:
        raise LandscopeError(f"n_mc must be >= 1 (got {n_mc})")
    return float(kl_inverse_upper(e_mc, math.log(2.0 / delta_mc) / n_mc))


def occam_bound(train_error: float, dim: int, m: int, delta: float, bits: int = 32) -> float:
    """Naive parameter-count bound: ``kl_inverse_upper(e_S, (bits D ln 2 + ln(1/delta)) / m)``
    (finite class of ``2^(bits D)`` weight vectors, uniform prior; module docstring)."""
    _check_delta(delta, "delta")
    _check_m(m)
    return float(kl_inverse_upper(train_error, (bits * dim * math.log(2.0) + math.log(1.0 / delta)) / m))


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


# ------------------------------------------------------------------------ the bounds
def _flat_prior_mean(w0: Tensor | nn.Module | None, dim: int) -> Tensor:
    if w0 is None:
        return torch.zeros(dim, dtype=F64)
    if isinstance(w0, nn.Module):
        w0 = torch.cat([p.detach().reshape(-1) for p in w0.parameters()])
    flat = w0.detach().to(F64).reshape(-1)
    if flat.numel() != dim:
        raise LandscopeError(f"prior mean w0 has {flat.numel()} entries, the model {dim}")
    return flat


def _basis(eigvals: Tensor, eigvecs: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    lam = torch.as_tensor(eigvals).detach().to(F64).reshape(-1)
    vecs = torch.as_tensor(eigvecs).detach().to(F64)
    k = lam.numel()
    if vecs.dim() != 2 or vecs.shape != (dim, k) or not 1 <= k <= dim:
        raise LandscopeError(f"eigvecs must have shape (D={dim}, k={k}) with 1 <= k <= D "
                             f"(got {tuple(vecs.shape)})")
    if not (torch.isfinite(lam).all() and torch.isfinite(vecs).all()):
        raise LandscopeError("eigvals/eigvecs have non-finite entries")
    gram_err = float((vecs.T @ vecs - torch.eye(k, dtype=F64)).abs().max())
    if gram_err > 1e-3:
        raise LandscopeError(f"eigvecs are not orthonormal (max |V^T V - I| = {gram_err:.2e})")
    q, r = torch.linalg.qr(vecs)  # exact orthonormal basis of (almost) the same directions
    return lam, q * torch.sign(torch.diagonal(r))


class _Candidate:
    """One Gaussian posterior of the family: variances along V and on the complement."""

    def __init__(self, s_perp: float, beta: float, lam: Tensor, eps: float, dim: int,
                 dist2: float, b: float, c: float) -> None:
        self.s_perp, self.beta = s_perp, beta
        self.s_v = (torch.full_like(lam, s_perp) if math.isinf(beta)
                    else torch.clamp(beta / torch.clamp(lam, min=eps), max=s_perp))
        k = lam.numel()
        trace = float(self.s_v.sum()) + (dim - k) * s_perp
        logdet = float(torch.log(self.s_v).sum()) + (dim - k) * math.log(s_perp)
        self.j, self.lam, self.kl = choose_prior(trace, dist2, logdet, dim, b, c)
        self.scale_v = self.s_v.sqrt() - math.sqrt(s_perp)

    def draw(self, w: Tensor, z: Tensor, vtz: Tensor, basis: Tensor) -> Tensor:
        """``w + sqrt(s_perp) z + V ((sqrt(s_v) - sqrt(s_perp)) * V^T z)`` ~ this posterior."""
        u = math.sqrt(self.s_perp) * z + basis @ (self.scale_v * vtz)
        return (w.to(F64) + u).to(w.dtype)


def pac_bayes_bounds(model: nn.Module, train: ProbeData, eigvals: Tensor, eigvecs: Tensor, *,
                     w0: Tensor | nn.Module | None = None, delta: float = 0.025,
                     delta_mc: float = 0.01, n_mc: int = 300, n_select: int = 24,
                     s_grid: Optional[Sequence[float]] = None,
                     beta_grid: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0), eps: float = 1e-12,
                     b: float = 100.0, c: float = 0.1, seed: int = 0) -> dict[str, float]:
    """Naive, isotropic and Hessian-informed PAC-Bayes bounds on the 0-1 error (module docstring).

    ``eigvals``/``eigvecs``: top-k Hessian eigenpairs, ``eigvecs`` (D, k) in ``ParamSpace(model)``
    parameter order (that of :class:`~landscope.probes.hvp.HessianOperator` when every parameter
    is trainable). ``w0``: the data-independent prior mean (the initialization: a flat vector or a
    model of the same architecture); ``None`` centres the prior at 0. ``s_grid``: posterior
    variances searched (default ``||w||^2 / D * 10^{-6, -5.5, ..., 0}``); ``beta_grid``: the
    Hessian rule's constants (``inf``, the isotropic member, is always added). Errors are those of
    the network in eval mode (BatchNorm running statistics kept). The model is not modified;
    results depend only on the inputs and ``seed``. Cost: ``n_select * len(s_grid) *
    (len(beta_grid) + 1) + 2 * n_mc`` evaluations on the ``m`` samples.
    """
    _check_delta(delta, "delta")
    _check_delta(delta_mc, "delta_mc")
    m = train.n
    _check_m(m)
    if int(n_mc) < 1 or int(n_select) < 1:
        raise LandscopeError(f"n_mc and n_select must be >= 1 (got {n_mc}, {n_select})")
    space = ParamSpace(model)
    dim = space.dim
    lam, basis = _basis(eigvals, eigvecs, dim)
    w = space.theta0
    w64 = w.to(F64)
    dist2 = float(((w64 - _flat_prior_mean(w0, dim)) ** 2).sum())
    if s_grid is None:
        scale = max(float((w64 ** 2).mean()), 1e-12)
        s_grid = [scale * 10.0 ** (e / 2) for e in range(-12, 1)]
    if not s_grid or any(not (math.isfinite(s) and s > 0) for s in s_grid):
        raise LandscopeError("s_grid needs at least one finite positive variance")
    if any(not beta > 0 for beta in beta_grid):
        raise LandscopeError("beta_grid entries must be > 0")
    train_error = 1.0 - space.evaluate(w, train)[0].acc
    bits = 8 * torch.empty((), dtype=space.dtype).element_size()

    betas = [math.inf, *sorted(float(x) for x in beta_grid)]
    cands = [_Candidate(float(s), beta, lam, eps, dim, dist2, b, c) for s in s_grid for beta in betas]
    gen = torch.Generator().manual_seed(int(seed))

    def errors(chosen: list[_Candidate], n: int) -> list[float]:
        total = [0.0] * len(chosen)
        for _ in range(n):
            z = torch.randn(dim, generator=gen, dtype=F64)
            vtz = basis.T @ z
            for i, cand in enumerate(chosen):
                total[i] += 1.0 - space.evaluate(cand.draw(w, z, vtz, basis), train)[0].acc
        return [t / n for t in total]

    # Stage 1: selection (common random numbers, plain MC means, no confidence claimed).
    sel = errors(cands, int(n_select))
    score = [dziugaite_roy_bound(e, cd.kl, m, delta, cd.j) for e, cd in zip(sel, cands)]
    iso_i = min((i for i, cd in enumerate(cands) if math.isinf(cd.beta)), key=lambda i: score[i])
    hes_i = min(range(len(cands)), key=lambda i: score[i])
    # Stage 2: fresh draws, each winner's MC upper value at delta_mc / 2 (union over the two).
    finals = [cands[iso_i], cands[hes_i]]
    e_fin = errors(finals, int(n_mc))
    upper = [mc_error_upper(e, int(n_mc), delta_mc / 2) for e in e_fin]
    bounds = [dziugaite_roy_bound(u, cd.kl, m, delta, cd.j) for u, cd in zip(upper, finals)]
    h = 1 if bounds[1] <= bounds[0] else 0  # the Hessian bound: the better member of its family

    out: dict[str, float] = {
        "pacbayes_naive": occam_bound(train_error, dim, m, delta, bits),
        "complexity_naive": (bits * dim * math.log(2.0) + math.log(1.0 / delta)) / m,
        "pacbayes_isotropic": bounds[0],
        "pacbayes_hessian": bounds[h],
        "train_error": train_error, "naive_log_hypotheses": bits * dim * math.log(2.0),
        "m": float(m), "D": float(dim), "k": float(lam.numel()), "n_mc": float(n_mc),
        "n_select": float(n_select), "n_candidates": float(len(cands)),
        "delta": float(delta), "delta_mc": float(delta_mc), "dist2_to_prior_mean": dist2,
    }
    for name, cd, e_mc, up in (("isotropic", finals[0], e_fin[0], upper[0]),
                               ("hessian", finals[h], e_fin[h], upper[h])):
        out.update({f"kl_{name}": cd.kl, f"complexity_{name}": complexity_term(cd.kl, m, delta, cd.j),
                    f"{name}_prior_var": cd.lam, f"{name}_prior_j": float(cd.j),
                    f"{name}_e_mc": e_mc, f"{name}_e_upper": up})
    out["isotropic_s"] = finals[0].s_perp
    out.update({"hessian_s_perp": finals[h].s_perp, "hessian_beta": finals[h].beta,
                "hessian_s_min": float(finals[h].s_v.min()),
                "hessian_n_shrunk": float((finals[h].s_v < finals[h].s_perp).sum()),
                "hessian_is_isotropic": float(math.isinf(finals[h].beta))})
    return out
