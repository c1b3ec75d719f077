"""The Lanczos runs behind :func:`landscope.probes.density.slq`: one run per probe, on ``A`` or
on the deflated ``P A P`` (:class:`~landscope.probes.operator.Deflated`), adaptive runs that
stop once the broadened rule settles (:func:`_lockstep`), the first run's settled outliers joining
the deflation (:func:`_settled_outliers`), the first row taken from the top-k's own Krylov
space when the top-k comes from the same start (:meth:`_Runs._first_from`), later runs stepped
in lockstep with their products batched (for GPUs), and the padding of
the rows into the ``(n, m)`` node/weight tensors of
:class:`~landscope.probes.density.SLQResult` (:func:`_padded`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from landscope.probes.lanczos import EigResult, _Lanczos
from landscope.probes.operator import Deflated, Operator
from landscope.probes.trace import Dist, probe_vector


def _smoothed_change(prev: tuple[np.ndarray, np.ndarray], cur: tuple[np.ndarray, np.ndarray],
                     sigma: float) -> float:
    """L1 distance ``∫|φ_cur − φ_prev|`` of two quadrature rules broadened by ``N(0, σ²)``
    (in [0, 2]; evaluated on a grid of spacing σ/4 that covers both ± 5σ)."""
    lo = min(prev[0].min(), cur[0].min()) - 5 * sigma
    hi = max(prev[0].max(), cur[0].max()) + 5 * sigma
    t = np.linspace(lo, hi, max(8, int(math.ceil((hi - lo) / (sigma / 4))) + 1))[:, None]

    def phi(rule: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        x, w = rule
        return (w[None, :] * np.exp(-0.5 * ((t - x[None, :]) / sigma) ** 2)).sum(1) / (
            sigma * math.sqrt(2 * math.pi))

    return float(np.trapezoid(np.abs(phi(cur) - phi(prev)), t[:, 0]))


class _Settle:
    """The adaptive runs' stopping rule: how many consecutive steps changed the run's rule,
    broadened at ``resolution`` × the range seen, by at most ``resolution_tol`` in L1."""

    def __init__(self, resolution: float, resolution_tol: float, seen: list[float]) -> None:
        self.resolution, self.resolution_tol, self.seen = resolution, resolution_tol, seen
        self.prev: tuple[np.ndarray, np.ndarray] | None = None
        self.calm = 0

    def add(self, lz: _Lanczos) -> None:
        """The rule after ``lz``'s latest step (at least its second)."""
        theta, s_ = lz.ritz()
        cur = (theta, s_[0] ** 2)
        lo, hi = min(self.seen[0], float(theta.min())), max(self.seen[1], float(theta.max()))
        sigma = self.resolution * (hi - lo) if hi > lo else 1.0
        calm = (self.prev is not None
                and _smoothed_change(self.prev, cur, sigma) <= self.resolution_tol)
        self.calm, self.prev = (self.calm + 1 if calm else 0), cur


def _lockstep(target: Operator, zs: list[Tensor], m: int, *,
              rule: tuple[float, float, list[float]] | None, min_steps: int,
              stop: Callable[[], str | None] | None) -> tuple[list[_Lanczos], str | None]:
    """Lanczos runs of up to ``m`` steps from each of ``zs``, stepped together: each step's
    products of the runs still going are one :func:`~landscope.probes.batched.matmat` call
    (one batched backward where the operator allows it, for GPUs; a single product for one
    run). ``rule`` (``(resolution, resolution_tol, seen)``, else every run takes ``m`` steps):
    a run stops once two consecutive steps change its rule, broadened at ``resolution`` × the
    range seen (``seen`` as when the runs started), by ≤ ``resolution_tol`` in L1, after at
    least ``min_steps`` steps. ``stop`` is asked before every step but the first."""
    from landscope.probes.batched import matmat

    lzs = [_Lanczos(target, z, restart=False, capacity=m) for z in zs]
    rules = [None if rule is None else _Settle(*rule) for _ in zs]
    why = None
    while True:
        going = [i for i, lz in enumerate(lzs) if lz.m < m and not lz.exhausted
                 and not (rules[i] is not None and rules[i].calm >= 2 and lz.m >= min_steps)]
        if not going:
            break
        if lzs[going[0]].m >= 1 and stop is not None and (why := stop()) is not None:
            break
        # the runs' own product operator: A itself on a deflated target, whose runs project
        # each new vector instead (:class:`~landscope.probes.lanczos._Lanczos`)
        prod = lzs[going[0]].product_op
        if len(going) == 1:
            products = [prod.matvec(lzs[going[0]]._next)]
        else:
            AV = matmat(prod, torch.stack([lzs[i]._next for i in going], dim=1))
            products = [AV[:, c] for c in range(len(going))]
        for i, av in zip(going, products):
            lzs[i].step(av=av)
            if rules[i] is not None and lzs[i].m >= 2:
                rules[i].add(lzs[i])
    return lzs, why


def _outlier_indices(theta: np.ndarray, weights: np.ndarray, res: np.ndarray, spread: float,
                     alpha: float = 0.01, gap: float = 0.5, rtol: float = 1e-3) -> np.ndarray:
    """The converged nodes of a rule (ascending ``theta``, ``weights`` summing to 1, Ritz
    residuals ``res``) above its outlier threshold: its weighted 1 − alpha quantile plus ``gap``
    times the inter-quantile range, as in
    :meth:`~landscope.probes.density.SLQResult.outliers`; converged meaning ``res ≤ rtol ·
    spread``."""
    cdf = np.cumsum(weights)
    lo = theta[min(int(np.searchsorted(cdf, alpha)), len(theta) - 1)]
    hi = theta[min(int(np.searchsorted(cdf, 1 - alpha)), len(theta) - 1)]
    return np.nonzero((theta > hi + gap * (hi - lo)) & (res <= rtol * max(spread, 1e-300)))[0]


def _settled_outliers(lz: _Lanczos, spread: float, cols: np.ndarray | None = None
                      ) -> tuple[np.ndarray, Tensor]:
    """A run's converged Ritz pairs above its rule's outlier threshold
    (:func:`_outlier_indices`): values and unit vectors. ``cols``: only these Ritz pairs, their
    weights renormalized (the rule of the start vector's projection on their span)."""
    theta, s = lz.ritz()
    cols = np.arange(len(theta)) if cols is None else np.sort(cols)
    w = s[0, cols] ** 2
    res = abs(lz.beta[-1]) * np.abs(s[-1, cols])
    idx = cols[_outlier_indices(theta[cols], w / w.sum(), res, spread)]
    return theta[idx], lz.ritz_vectors(s[:, idx])


class _Runs:
    """The Lanczos runs of :func:`~landscope.probes.density.slq`, one per probe: the deflated
    pairs (``values``, ``basis``), the range of Ritz values seen and, per run, its quadrature
    row, steps and trace sample. ``first``: the top-k's own Lanczos run (``deflate`` came from
    it), whose Krylov space, grown, gives the first row (:meth:`_first_from`)."""

    def __init__(self, op: Operator, deflate: EigResult | None, gen: torch.Generator, dist: Dist,
                 m_steps: int, resolution: float | None, resolution_tol: float, min_steps: int,
                 stop: Callable[[], str | None] | None, first: _Lanczos | None = None) -> None:
        self.op, self.gen, self.dist, self.m_steps, self.stop = op, gen, dist, m_steps, stop
        self.resolution, self.resolution_tol, self.min_steps = resolution, resolution_tol, min_steps
        values = np.zeros(0) if deflate is None else deflate.eigenvalues.numpy().astype(np.float64)
        self.values, self.basis, self.first = values, None, first
        if deflate is not None:
            if deflate.eigenvectors is None:
                raise ValueError("slq(deflate=...) needs eigenvectors")
            self.basis = deflate.eigenvectors.to(dtype=op.dtype, device=op.device)
        self.rows: list[tuple[np.ndarray, np.ndarray]] = []
        self.trace_samples: list[float] = []
        self.steps: list[int] = []
        # whether the first row came from ``first`` (the top-k's Krylov space, grown)
        self.first_from_top = False
        self.seen = ([math.inf, -math.inf] if deflate is None
                     else [float(values.min()), float(values.max())])

    def _add_row(self, theta: np.ndarray, w: np.ndarray, steps: int) -> None:
        """A probe's rule on the complement (``theta`` ascending, ``w`` summing to 1) with the k
        deflated values as exact nodes of weight 1/D each."""
        d, k = self.op.dim, len(self.values)
        self.seen = [min(self.seen[0], float(theta.min())), max(self.seen[1], float(theta.max()))]
        self.rows.append((np.concatenate([self.values, theta]),
                          np.concatenate([np.full(k, 1.0 / d), w * (d - k) / d])))
        self.steps.append(steps)

    def _deflate_more(self, values: np.ndarray, vectors: Tensor) -> None:
        if len(values):
            self.values = np.concatenate([self.values, values])
            self.basis, _ = torch.linalg.qr(torch.cat([self.basis, vectors], dim=1))

    def _first_from(self, lz: _Lanczos) -> tuple[bool, str | None]:
        """The first row from the top-k's Krylov space ``K_m(A, z)``, grown to k + ``m_steps``
        vectors, the steps a first run takes (ungrown, it settled fewer outliers:
        docs/measurements.md#probes-density-first). Its Ritz pairs other than the k deflated
        ones (the top-k converged in it) are the Gauss rule of ``Pz/‖Pz‖`` on ``P A P`` with
        m − k nodes, to the top-k's residuals, which is the rule a first run from ``Pz`` would
        build; its settled outliers join the deflation. ``(False, None)`` when the space holds
        no weight beyond the top-k, or when not exactly k of its Ritz vectors lie in the deflated
        span (then the first run is made); else True and the cap that cut the growth."""
        k, why = len(self.values), None
        while lz.m < min(k + self.m_steps, self.op.dim) and not lz.exhausted:
            if self.stop is not None and (why := self.stop()) is not None:
                break
            lz.step()
        theta, s = lz.ritz()
        # the deflated pairs are the Ritz vectors (nearly) inside their span: matched by
        # overlap, not by value, which a copy of the k-th eigenvalue grown in the space can tie
        assert self.basis is not None
        # Bᵀ (V_mᵀ S) as (Bᵀ V_mᵀ) S: a k × m product instead of m vectors of the full dimension
        coeffs = torch.from_numpy(s).to(dtype=lz.V.dtype, device=lz.V.device)
        overlap = ((self.basis.T @ lz.V[:lz.m].T) @ coeffs).pow(2).sum(0).double().cpu().numpy()
        rest = np.nonzero(overlap <= 0.5)[0]
        w = s[0, rest] ** 2
        if len(rest) != len(theta) - k or len(rest) == 0 or float(w.sum()) <= 1e-24:
            return False, None
        self._add_row(theta[rest], w / w.sum(), len(rest))
        if why is None:
            self._deflate_more(*_settled_outliers(lz, self.seen[1] - self.seen[0], rest))
        self.first_from_top = True
        return True, why

    def run_first(self) -> str | None:
        """The first run (all ``m_steps`` steps; its settled outliers join the deflation), from
        the top-k's Krylov space when ``first`` allows it; the cap that cut it."""
        op, d, k = self.op, self.op.dim, len(self.values)
        # drawn even when the top-k's run gives the first row, so that the later probes are
        # the same draws either way (and never the top-k's start, drawn from the same seed)
        z = probe_vector(d, self.gen, self.dist, op.dtype, op.device)
        first, self.first = self.first, None  # read once: its basis is freed after the row
        if first is not None:
            used, why = self._first_from(first)
            if used:
                return why
        target: Operator = op if self.basis is None else Deflated(op, self.basis)
        if isinstance(target, Deflated):
            z = target.project(z)
        (lz,), stopped_by = _lockstep(target, [z], max(1, min(self.m_steps, d - k)), rule=None,
                                      min_steps=self.min_steps, stop=self.stop)
        theta, s_ = lz.ritz()
        self._add_row(theta, s_[0] ** 2, lz.m)
        if self.resolution is None:
            self.trace_samples.append(float(z @ z) * lz.alpha[0])
        elif stopped_by is None:
            self._deflate_more(*_settled_outliers(lz, self.seen[1] - self.seen[0]))
        return stopped_by

    def run_all(self, n_probes: int, block: int) -> str | None:
        """Every run, the later ones ``block`` at a time (:meth:`run_group`); the cap that
        stopped them. At least one run (of at least one step), whatever the cap."""
        stopped_by, i = None, 0
        while i < n_probes:
            if i > 0 and self.stop is not None and (stopped_by := self.stop()) is not None:
                break
            count = min(block, n_probes - i) if i > 0 else 1
            stopped_by = self.run_group(count) if i > 0 else self.run_first()
            i += count
            if stopped_by is not None:
                break
        return stopped_by

    def run_group(self, count: int) -> str | None:
        """The next ``count`` later runs (adaptive with ``resolution``), stepped together with
        their products batched (:func:`_lockstep`): the same draws, rules and trace samples as
        one run after another, except that each reads the range seen before the group; the cap
        that cut them."""
        op, d, k = self.op, self.op.dim, len(self.values)
        zs = [probe_vector(d, self.gen, self.dist, op.dtype, op.device) for _ in range(count)]
        target: Operator = op if self.basis is None else Deflated(op, self.basis)
        if isinstance(target, Deflated):
            zs = [target.project(z) for z in zs]
        rule = (None if self.resolution is None
                else (self.resolution, self.resolution_tol, self.seen))
        lzs, stopped_by = _lockstep(target, zs, max(1, min(self.m_steps, d - k)), rule=rule,
                                    min_steps=self.min_steps, stop=self.stop)
        for z, lz in zip(zs, lzs):  # every run took at least one step
            theta, s_ = lz.ritz()
            self._add_row(theta, s_[0] ** 2, lz.m)
            self.trace_samples.append(float(z @ z) * lz.alpha[0])
        return stopped_by

    def deflation(self) -> EigResult | None:
        """Every deflated pair (None without ``deflate``)."""
        if self.basis is None:
            return None
        values = self.values
        return EigResult(eigenvalues=torch.from_numpy(values.copy()), eigenvectors=self.basis,
                         residuals=torch.zeros(len(values), dtype=torch.float64),
                         converged=torch.ones(len(values), dtype=torch.bool), n_matvecs=0,
                         iterations=0)


def _padded(rows: list[tuple[np.ndarray, np.ndarray]]) -> tuple[Tensor, Tensor]:
    """The rows' nodes and weights as ``(n, width)`` float64 tensors; a short row is padded
    with its first node at weight 0."""
    width = max(len(t) for t, _ in rows)
    nodes = torch.empty(len(rows), width, dtype=torch.float64)
    weights = torch.zeros(len(rows), width, dtype=torch.float64)
    for i, (row_nodes, row_w) in enumerate(rows):
        nodes[i] = float(row_nodes[0])
        nodes[i, : len(row_nodes)] = torch.from_numpy(np.asarray(row_nodes, dtype=np.float64))
        weights[i, : len(row_w)] = torch.from_numpy(np.asarray(row_w, dtype=np.float64))
    return nodes, weights
