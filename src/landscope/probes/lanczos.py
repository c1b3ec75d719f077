"""Extreme eigenpairs of a symmetric operator: Lanczos (full reorthogonalization) and power
iteration.

Lanczos (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, §10.1) builds an orthonormal
basis ``Q_m = [q_1 … q_m]`` of the Krylov space ``K_m(A, q_1)`` with
``A Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ``, ``T_m`` tridiagonal (diagonal α, off-diagonal β).
The Ritz pairs ``(θ_i, y_i = Q_m s_i)`` from ``T_m s_i = θ_i s_i`` approximate the extreme
eigenpairs, and the Ritz residual is available without products:
``‖A y_i − θ_i y_i‖ = β_m |e_mᵀ s_i|`` (Parlett, *The Symmetric Eigenvalue Problem*, §13.2).
Every new vector is orthogonalized against the whole basis twice (CGS2, "twice is enough",
Giraud et al. 2005): no ghost copies of converged eigenvalues. Vectors in the operator's dtype.

Convergence (GUIDE §3): pair i is converged when ``‖A y_i − θ_i y_i‖ ≤ max(tol·|θ_i|, atol,
floor)`` with ``floor = 100·eps(dtype)·‖T‖`` (the working-precision limit, which only matters in
float32). For a symmetric A a residual r puts an exact eigenvalue within r of θ (and within
r²/gap), so the default ``tol = 1e-6`` guarantees relative eigenvalue error ≤ 1e-6 even for
clustered spectra, where the r²/gap bound is weak. Looser stops fail there by *mis-convergence*
(a cluster member not yet in the Krylov space is skipped, which no residual can reveal). The
worst relative error and the products per ``tol`` on decaying and clustered test spectra:
see docs/measurements.md#probes-lanczos.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from landscope.probes.operator import Deflated, Operator

Which = Literal["largest", "smallest"]
# lanczos_eigs(verify=True) keeps A q_j for explicit residuals when they take at most this much
KEEP_PRODUCTS_BYTES = 1 << 30


@dataclass
class EigResult:
    """k eigenpairs: ``eigenvalues`` (k,) float64, sorted descending for "largest", ascending for
    "smallest"; ``eigenvectors`` (dim, k) unit columns in the operator's dtype (None if not asked);
    ``residuals`` ‖A v − λ v‖ (true residuals if verified, else Lanczos estimates); ``converged``
    (k,) bool; ``n_matvecs`` products used; ``iterations`` Krylov dimension (Lanczos) or total
    power steps; ``n_restarts`` invariant-subspace restarts."""

    eigenvalues: Tensor
    eigenvectors: Tensor | None
    residuals: Tensor
    converged: Tensor
    n_matvecs: int
    iterations: int
    which: str = "largest"
    n_restarts: int = 0
    stopped_by: str | None = None  # the cap that ended the run early (``stop``), else None
    # the complement check for missed copies of repeated eigenvalues
    # (:func:`~landscope.probes.complement.complement_check`): whether it reached its
    # conclusion, and how many pairs it put in the list
    checked: bool = False
    added_by_check: int = 0
    # the run's Krylov space (``lanczos_eigs(keep_krylov=True)``): the spectral density takes
    # its first quadrature rule from it instead of running Lanczos again from the same start
    # (:func:`~landscope.probes.density.slq`, ``first=``); None once the density has read it
    krylov: _Lanczos | None = field(default=None, repr=False, compare=False)
    # one SLQ sample of Σ|λ(A)|, D·Σ_j w_j|θ_j| from the run's random start: the trace's scale
    abs_trace: float | None = None


def _random_vector(op: Operator, gen: torch.Generator) -> Tensor:
    return torch.randn(op.dim, generator=gen, dtype=op.dtype).to(op.device)


def start_vector(op: Operator, seed: int) -> Tensor:
    """The unit vector :func:`lanczos_eigs` with ``seed`` starts from on ``op`` (a seeded
    Gaussian, normalized as :class:`_Lanczos` normalizes its start)."""
    q = _random_vector(op, torch.Generator().manual_seed(int(seed)))
    return q / torch.linalg.vector_norm(q)


class _Lanczos:
    """The Lanczos recurrence with full (CGS2) reorthogonalization, one step at a time.

    After ``m`` steps: basis ``V[:m]`` (rows), ``alpha`` (m), ``beta`` (m; ``beta[j]`` couples
    q_j and q_{j+1}, ``beta[m-1]`` is the β_m of the residual formula). On breakdown
    (``β ≤ 100·eps·‖T‖``: the Krylov space is invariant) β is set to 0 and, if ``restart``, a
    random vector orthogonal to the basis starts a new block (T stays block-tridiagonal, the
    Lanczos relation still holds); otherwise the recurrence stops (``exhausted``), which is what
    quadrature wants (the rule is then exact for every moment).
    """

    def __init__(self, op: Operator, v0: Tensor, *, restart: bool, capacity: int,
                 gen: torch.Generator | None = None, keep_products: bool = False) -> None:
        self.op, self.restart, self.gen = op, restart, gen
        # On a deflated operator ``P A P`` (P = I − BBᵀ) the start is projected and then every
        # new vector once, after its reorthogonalization, and the products are A's: every basis
        # vector stays in the complement, so A q = P A P q up to components along B of the size
        # of B's residuals, which that one pass removes (one projection per step instead of one
        # on each side of the product: docs/measurements.md#probes-lanczos-lock)
        self.lock: Tensor | None = None
        self.product_op: Operator = op
        if isinstance(op, Deflated) and not keep_products:
            self.lock, self.product_op = op.basis, op.op
            v0 = op.project(v0, 1)  # the callers' starts are in the complement already
        self.V = torch.empty(max(1, min(capacity, op.dim)), op.dim, dtype=op.dtype,
                             device=op.device)
        # AV[j] = A q_j as returned by the operator (before orthogonalization), when kept
        self.AV = torch.empty_like(self.V) if keep_products else None
        self.alpha: list[float] = []
        self.beta: list[float] = []
        self.m, self.n_restarts, self.anorm, self.exhausted = 0, 0, 0.0, False
        self.tiny = 100.0 * torch.finfo(op.dtype).eps
        self._next = v0 / torch.linalg.vector_norm(v0)

    def _orthogonalize(self, w: Tensor, upto: int) -> tuple[Tensor, float]:
        """Classical Gram–Schmidt twice against ``V[:upto]``; returns w and its coefficient on
        the last basis vector (α when w = A q_last)."""
        basis = self.V[:upto]
        h = torch.mv(basis, w)
        w = w - torch.mv(basis.T, h)
        h2 = torch.mv(basis, w)
        w = w - torch.mv(basis.T, h2)
        return w, float(h[-1] + h2[-1])

    def step(self, av: Tensor | None = None) -> None:
        """One step; ``av``: the product ``A q`` of the next vector ``q`` (``_next``) when the
        caller computed it (batched with other runs' products), else the step computes it."""
        j = self.m
        if j == self.V.shape[0]:  # grow the basis buffers geometrically
            self.V = self._grown(self.V, j)
            if self.AV is not None:
                self.AV = self._grown(self.AV, j)
        self.V[j] = self._next
        av = self.product_op.matvec(self.V[j]) if av is None else av
        if self.AV is not None:
            self.AV[j] = av
        w, a = self._orthogonalize(av, j + 1)
        if self.lock is not None:
            w = w - self.lock @ (self.lock.T @ w)
        b = float(torch.linalg.vector_norm(w))
        self.alpha.append(a)
        self.anorm = max(self.anorm, abs(a) + b + (self.beta[-1] if self.beta else 0.0))
        self.m += 1
        if self.m == self.op.dim:
            self.beta.append(0.0)
            self.exhausted = True
        elif b > self.tiny * self.anorm:
            self.beta.append(b)
            self._next = w / b
        else:
            self.beta.append(0.0)
            if not self.restart or self.gen is None:
                self.exhausted = True
                return
            r = _random_vector(self.op, self.gen)
            if isinstance(self.op, Deflated):
                r = self.op.project(r)
            r, _ = self._orthogonalize(r, self.m)
            self._next = r / torch.linalg.vector_norm(r)
            self.n_restarts += 1

    def _grown(self, buf: Tensor, j: int) -> Tensor:
        grown = torch.empty(min(2 * j, self.op.dim), self.op.dim, dtype=buf.dtype,
                            device=buf.device)
        grown[:j] = buf
        return grown

    def ritz_vectors(self, s_cols: np.ndarray) -> Tensor:
        """The unit Ritz vectors ``V_mᵀ s`` of the columns ``s_cols`` (m × j) of :meth:`ritz`'s S,
        in the operator's dtype and device (dim × j)."""
        coeffs = torch.from_numpy(np.ascontiguousarray(s_cols)).to(self.V.dtype).to(self.V.device)
        vecs = self.V[: self.m].T @ coeffs
        return vecs / torch.linalg.vector_norm(vecs, dim=0, keepdim=True).clamp_min(1e-300)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigen-decomposition of T_m in float64: ascending θ and eigenvectors S (m×m)."""
        d = np.asarray(self.alpha, dtype=np.float64)
        if len(d) == 1:
            return d.copy(), np.ones((1, 1))
        return scipy.linalg.eigh_tridiagonal(d, np.asarray(self.beta[:-1], dtype=np.float64))


def lanczos_eigs(op: Operator, k: int = 5, which: Which = "largest", tol: float = 1e-6, *,
                 atol: float = 0.0, max_iter: int | None = None, seed: int = 0,
                 return_vectors: bool = True, verify: bool = True,
                 stop: Callable[[], str | None] | None = None,
                 keep_krylov: bool = False) -> EigResult:
    """The k algebraically largest (``which="largest"``, top-k) or smallest (``"smallest"``, the
    most negative) eigenpairs of the symmetric operator by Lanczos with full reorthogonalization.

    The Krylov space grows one product at a time from a seeded Gaussian start vector until the k
    wanted Ritz pairs satisfy ``β_m |s_{m,i}| ≤ max(tol·|θ_i|, atol, floor)`` (module docstring),
    or ``max_iter`` (default ``min(dim, 50 + 20k)``) is reached. With ``verify`` the true residuals
    ``‖A y_i − θ_i y_i‖`` are then computed explicitly and decide ``converged``: from the products
    ``A q_j`` kept during the recurrence (``A y_i = Σ_j s_ji A q_j``, no extra products) when they
    fit in ``KEEP_PRODUCTS_BYTES``, else with k extra products (counted in ``n_matvecs``). Unlike
    the Lanczos estimate ``β_m |s_{m,i}|`` this does not rely on the recurrence's orthogonality.
    Without ``verify`` the (free) Lanczos estimates are reported, which agree with the true
    residuals up to roundoff.

    ``stop`` (a cap, :class:`~landscope.probes.cost.ProbeLedger`) is asked before each product
    once the space holds k vectors; when it names a cap the run ends there, the pairs are the
    current Ritz pairs with their true residuals (``converged`` says which meet the tolerance) and
    ``stopped_by`` is the cap's name. No extra verification products are spent then.

    Repeated eigenvalues: the Krylov space of one start vector holds only the start vector's
    projection onto an eigenspace, so an exactly repeated eigenvalue is found once (its eigenvector
    is that projection, normalized) in exact arithmetic (unless the Krylov space becomes invariant
    and a restart reaches the other copies). In floating point, roundoff (~eps·‖A‖ per product)
    seeds the other copies once the first has converged, and full reorthogonalization lets them
    grow and converge after roughly as many further steps again. So a repeated eigenvalue is listed
    with its multiplicity only if the wanted pairs take long enough to converge; otherwise it is
    listed once and the list goes on with the next distinct eigenvalue (an example with a double
    eigenvalue: docs/measurements.md#probes-lanczos). Every returned value is an eigenvalue to
    within its residual either way. :func:`~landscope.probes.complement.complement_check` puts
    the missed copies in their place (the probe suite runs it: ``probe.multiplicity_check``).
    ``keep_krylov``: the result keeps the run in ``krylov``, for ``density.slq(first=...)``.
    """
    max_iter = _eigs_iterations(op, k, which, max_iter)
    start = op.n_matvecs
    gen = torch.Generator().manual_seed(seed)
    itemsize = torch.empty((), dtype=op.dtype).element_size()
    keep = verify and max_iter * op.dim * itemsize <= KEEP_PRODUCTS_BYTES
    lz = _Lanczos(op, _random_vector(op, gen), restart=True, capacity=min(max_iter, 2 * k + 20),
                  gen=gen, keep_products=keep)
    want = _Wanted(lz, k, which, tol, atol)
    stopped_by = _grow_until_converged(lz, want, max_iter, stop)
    theta, s = lz.ritz()
    idx = want.indices(theta)
    m = lz.m
    vals = theta[idx]
    est = abs(lz.beta[-1]) * np.abs(s[-1, idx])
    vecs, res = _ritz_pairs(op, lz, s[:, idx], vals, est, return_vectors,
                            verify and (lz.AV is not None or stopped_by is None))
    lz.AV = None  # the kept products served the residuals
    return EigResult(
        eigenvalues=torch.from_numpy(vals.copy()),
        eigenvectors=vecs if return_vectors else None,
        residuals=torch.from_numpy(np.asarray(res, dtype=np.float64)),
        converged=torch.from_numpy(res <= want.thresholds(vals)),
        n_matvecs=op.n_matvecs - start, iterations=m, which=which, n_restarts=lz.n_restarts,
        stopped_by=stopped_by, krylov=lz if keep_krylov else None, abs_trace=op.dim * float(
            s[0] ** 2 @ np.abs(theta)))


def default_iterations(k: int, dim: int) -> int:
    """The Krylov dimension limit of a k-pair run when none is given: ``min(dim, 50 + 20k)``."""
    return min(dim, 50 + 20 * k)


def _eigs_iterations(op: Operator, k: int, which: str, max_iter: int | None) -> int:
    """The checked arguments' Krylov dimension limit (at least k, at most dim)."""
    if which not in ("largest", "smallest"):
        raise ValueError(f"which must be 'largest' or 'smallest', got {which!r}")
    if not 1 <= k <= op.dim:
        raise ValueError(f"need 1 <= k <= dim={op.dim}, got k={k}")
    max_iter = min(op.dim, max_iter) if max_iter is not None else default_iterations(k, op.dim)
    return max(max_iter, k)


class _Wanted:
    """The k wanted Ritz pairs of :func:`lanczos_eigs` and their convergence thresholds."""

    def __init__(self, lz: _Lanczos, k: int, which: str, tol: float, atol: float) -> None:
        self.lz, self.k, self.which, self.tol, self.atol = lz, k, which, tol, atol
        self.floor_c = 100.0 * torch.finfo(lz.op.dtype).eps

    def indices(self, theta: np.ndarray) -> np.ndarray:
        order = np.argsort(-theta if self.which == "largest" else theta, kind="stable")
        return order[:self.k]

    def thresholds(self, theta_k: np.ndarray) -> np.ndarray:
        return np.maximum(np.maximum(self.tol * np.abs(theta_k), self.atol),
                          self.floor_c * self.lz.anorm)


def _grow_until_converged(lz: _Lanczos, want: _Wanted, max_iter: int,
                          stop: Callable[[], str | None] | None) -> str | None:
    """Lanczos steps until the wanted pairs' estimates meet their thresholds, ``max_iter`` or
    an invariant space; the cap ``stop`` named when it ended the run (else None)."""
    k = want.k
    while lz.m < max_iter and not lz.exhausted:
        if stop is not None and lz.m >= k:
            stopped_by = stop()
            if stopped_by is not None:
                return stopped_by
        lz.step()
        if lz.m >= k:
            theta, s = lz.ritz()
            idx = want.indices(theta)
            est = abs(lz.beta[-1]) * np.abs(s[-1, idx])
            if np.all(est <= want.thresholds(theta[idx])):
                break
    return None


def _ritz_pairs(op: Operator, lz: _Lanczos, s_k: np.ndarray, vals: np.ndarray, est: np.ndarray,
                return_vectors: bool, verify: bool) -> tuple[Tensor | None, np.ndarray]:
    """The unit Ritz vectors (when asked for or verified) and the residuals: true ones when
    ``verify`` (from the kept products, else k extra products), else the estimates ``est``."""
    vecs = None
    if return_vectors or verify:
        coeffs = torch.from_numpy(np.ascontiguousarray(s_k)).to(dtype=op.dtype, device=op.device)
        vecs = lz.V[:lz.m].T @ coeffs
        norms = torch.linalg.vector_norm(vecs, dim=0, keepdim=True)
        vecs = vecs / norms
    if verify and lz.AV is not None:
        assert vecs is not None
        ay = (lz.AV[:lz.m].T @ coeffs) / norms
        theta = torch.as_tensor(vals, dtype=op.dtype, device=op.device)
        return vecs, torch.linalg.vector_norm(ay - vecs * theta, dim=0).double().cpu().numpy()
    if verify:
        assert vecs is not None
        return vecs, np.array([float(torch.linalg.vector_norm(
            op.matvec(vecs[:, i]) - float(vals[i]) * vecs[:, i])) for i in range(len(vals))])
    return vecs, est


def power_iteration(op: Operator, k: int = 1, tol: float = 1e-6, max_iter: int = 1000, *,
                    seed: int = 0) -> EigResult:
    """Baseline: power iteration with projection deflation, v ← P A v / ‖P A v‖ with
    ``P = I − V Vᵀ`` over the pairs already found, λ = vᵀAv (Rayleigh quotient).

    Finds eigenvalues in order of *magnitude* (dominant first). Pair i is ``converged`` when the
    residual of the *deflated* problem ``‖P A v − λ v‖ ≤ max(tol·|λ|, floor)``; the reported
    ``residuals`` are the true ``‖Av − λv‖``, which for i > 1 also contain ``‖Vᵀ A v‖ ≤`` the
    earlier pairs' residuals (the usual accuracy limit of deflation). Converges like
    ``(|λ_{i+1}|/|λ_i|)^t``, so it is only a reference for well-separated top eigenvalues.
    One product per step; residuals come from the same Av (no extra products).
    """
    if not 1 <= k <= op.dim:
        raise ValueError(f"need 1 <= k <= dim={op.dim}, got k={k}")
    start = op.n_matvecs
    gen = torch.Generator().manual_seed(seed)
    floor_c = 100.0 * torch.finfo(op.dtype).eps
    basis = torch.empty(op.dim, 0, dtype=op.dtype, device=op.device)
    vals, res, conv, total = [], [], [], 0

    def deflate(x: Tensor) -> Tensor:
        return x - basis @ (basis.T @ x) if basis.shape[1] else x

    for _ in range(k):
        v = deflate(_random_vector(op, gen))
        v = v / torch.linalg.vector_norm(v)
        lam, r, ok = math.nan, math.inf, False
        for _ in range(max_iter):
            av = op.matvec(v)
            total += 1
            lam = float(v @ av)
            r = float(torch.linalg.vector_norm(av - lam * v))
            w = deflate(deflate(av))
            if (float(torch.linalg.vector_norm(w - lam * v))
                    <= max(tol * abs(lam), floor_c * abs(lam))):
                ok = True
                break
            v = w / torch.linalg.vector_norm(w)
        vals.append(lam)
        res.append(r)
        conv.append(ok)
        basis = torch.cat([basis, v[:, None]], dim=1)
    return EigResult(eigenvalues=torch.tensor(vals, dtype=torch.float64), eigenvectors=basis,
                     residuals=torch.tensor(res, dtype=torch.float64), converged=torch.tensor(conv),
                     n_matvecs=op.n_matvecs - start, iterations=total, which="largest")


def spectral_summary(top: EigResult, bottom: EigResult | None = None) -> dict[str, float]:
    """Scalar curvature summaries from a top-k (and optional bottom-k) result.

    - ``lambda_max`` = λ1, ``lambda_2`` = λ2 (NaN if k = 1), ``spectral_gap`` = λ1 − λ2,
      ``gap_ratio`` = λ2/λ1;
    - with ``bottom``: ``lambda_min`` and ``negative_ratio`` = |λmin/λmax| (the Ghorbani et al. 2019
      measure of negative curvature);
    - ``condition_number`` = max R / min R over R = the *converged* eigenvalues > 0 in top ∪ bottom
      ("resolved positive spectrum"), with ``lambda_min_positive`` = min R. When ``bottom`` reaches
      the smallest positive eigenvalue (positive-definite A) this is the true κ(A); otherwise it is
      λ1/λk, a lower bound on the condition number of the positive part. NaN if R is empty.
    - ``all_converged``: 1.0 if every reported pair converged, else 0.0.
    """
    nan = math.nan
    t = top.eigenvalues.tolist()
    out: dict[str, float] = {
        "lambda_max": t[0],
        "lambda_2": t[1] if len(t) > 1 else nan,
        "spectral_gap": t[0] - t[1] if len(t) > 1 else nan,
        "gap_ratio": t[1] / t[0] if len(t) > 1 and t[0] != 0 else nan,
    }
    resolved = [lam for lam, ok in zip(t, top.converged.tolist()) if ok and lam > 0]
    flags = top.converged.tolist()
    if bottom is not None:
        b = bottom.eigenvalues.tolist()
        out["lambda_min"] = b[0]
        out["negative_ratio"] = abs(b[0] / t[0]) if t[0] != 0 else nan
        resolved += [lam for lam, ok in zip(b, bottom.converged.tolist()) if ok and lam > 0]
        flags += bottom.converged.tolist()
    out["lambda_min_positive"] = min(resolved) if resolved else nan
    out["condition_number"] = max(resolved) / min(resolved) if resolved else nan
    out["all_converged"] = float(all(flags))
    return out
