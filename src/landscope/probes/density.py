"""Spectral density by stochastic Lanczos quadrature (SLQ).

For a unit probe v, m Lanczos steps give ``T_m = S diag(θ) Sᵀ`` and the Gauss quadrature rule
``vᵀ f(A) v ≈ Σ_j w_j f(θ_j)``, nodes θ_j (Ritz values), weights ``w_j = S_{1j}²`` (Σ w_j = 1),
exact for polynomials of degree ≤ 2m − 1 (Golub & Meurant, *Matrices, Moments and Quadrature*,
2010). For a random unit probe ``E[vᵀ f(A) v] = tr f(A)/D``, so averaging over probes estimates
the spectral measure ``(1/D) Σ_i δ(t − λ_i)`` (Ubaru, Chen & Saad 2017, "Fast estimation of
tr(f(A)) via stochastic Lanczos quadrature"; Ghorbani, Krishnan & Xiao 2019, "An investigation
into neural net optimization via Hessian eigenvalue density").

Probes: Gaussian normalized to unit norm (uniform on the sphere, GUIDE §3), or normalized
Rademacher; both give unbiased ``tr f(A)/D``. Lanczos runs with full reorthogonalization
(:class:`landscope.probes.lanczos._Lanczos`), so no ghost nodes appear. The per-probe runs
(deflation, adaptive stopping) live in :mod:`landscope.probes.slq_runs`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from landscope.probes.lanczos import EigResult, _Lanczos
from landscope.probes.operator import Operator
from landscope.probes.slq_runs import _padded, _Runs
from landscope.probes.trace import Dist, TraceResult


def _lanczos_quadrature(op: Operator, v: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Gauss quadrature ``(nodes, weights)`` (float64) of ``v̂ᵀ f(A) v̂`` for ``v̂ = v/‖v‖`` from
    ``m`` Lanczos steps (m products). If the Krylov space is invariant after j < m steps the rule
    has j nodes and is then exact for every f."""
    lz = _Lanczos(op, v, restart=False, capacity=m)
    while lz.m < min(m, op.dim) and not lz.exhausted:
        lz.step()
    theta, s = lz.ritz()
    return torch.from_numpy(theta.copy()), torch.from_numpy(s[0] ** 2)


@dataclass
class Outliers:
    """Eigenvalues split off above the bulk (see :meth:`SLQResult.outliers`): ``locations``
    (descending), ``masses`` (fraction of spectral weight), ``multiplicities`` (= D × mass, the
    estimated number of eigenvalues at each location), ``bulk_edge``, ``threshold`` and
    ``tail_mass`` (weight above the threshold that is not in an outlier: a continuous upper
    tail)."""

    count: int
    locations: Tensor
    masses: Tensor
    multiplicities: Tensor
    bulk_edge: float
    threshold: float
    tail_mass: float = 0.0


@dataclass
class SLQResult:
    """Quadrature rules of ``n_probes`` probes: ``nodes`` and ``weights`` (n_probes × m, float64),
    each row's weights summing to 1. A probe whose Krylov space became invariant after j < m steps
    is padded with copies of its first node at weight 0 (which changes no sum below)."""

    nodes: Tensor
    weights: Tensor
    dim: int
    n_matvecs: int
    # zᵀPAPz per probe (Hutchinson samples of the (deflated) trace, see slq), Lanczos steps per
    # probe, eigenvalues deflated into every row, and the cap that cut the runs short
    trace_samples: Tensor | None = None
    steps: list[int] | None = None
    deflated: int = 0
    stopped_by: str | None = None
    deflation: EigResult | None = None  # every pair deflated (top-k + the first run's outliers)
    # whether the first row came from the top-k's Krylov space (slq's ``first``)
    first_from_top: bool = False

    @property
    def n_probes(self) -> int:
        return self.nodes.shape[0]

    def density(self, grid: Tensor, sigma: float) -> Tensor:
        """Gaussian-broadened density ``φ(t) = (1/n) Σ_probes Σ_j w_j N(t; θ_j, σ²)`` on ``grid``
        (float64); integrates to 1 over a grid that covers the nodes ± a few σ."""
        t = grid.to(torch.float64).reshape(-1, 1)
        x, w = self.nodes.reshape(1, -1), self.weights.reshape(1, -1)
        phi = ((w * torch.exp(-0.5 * ((t - x) / sigma) ** 2)).sum(1)
               / (sigma * math.sqrt(2 * math.pi)))
        return (phi / self.n_probes).reshape(grid.shape)

    def _per_probe(self, values: Tensor) -> Tensor:
        return (self.weights * values).sum(1)

    def moment(self, p: int) -> float:
        """``mean over probes of Σ_j w_j θ_j^p``: estimates ``tr(A^p)/D``; for one probe it equals
        ``v̂ᵀ A^p v̂`` exactly for ``p ≤ 2m − 1``."""
        return float(self._per_probe(self.nodes ** p).mean())

    def trace_f(self, values: Tensor) -> TraceResult:
        """``tr f(A) ≈ D · mean_probes Σ_j w_j f(θ_j)`` for ``values = f(nodes)``, with the standard
        error ``D · std_probes / √n``."""
        per = self.dim * self._per_probe(values)
        n = self.n_probes
        stderr = float(per.std(correction=1)) / math.sqrt(n) if n > 1 else math.inf
        return TraceResult(estimate=float(per.mean()), stderr=stderr, n_samples=n,
                           n_matvecs=self.n_matvecs, samples=per)

    def trace_estimate(self) -> TraceResult:
        """``tr A ≈ D · mean Σ w θ`` (a Hutchinson estimate with unit-sphere probes scaled by D)."""
        return self.trace_f(self.nodes)

    def logdet(self, eps: float = 0.0) -> TraceResult:
        """``log det(A + εI) = tr log(A + εI) ≈ D · mean Σ w log(θ + ε)`` (Ubaru et al. 2017).
        Raises ValueError unless every node with positive weight has ``θ + ε > 0``."""
        shifted = self.nodes + eps
        if bool(((shifted <= 0) & (self.weights > 0)).any()):
            raise ValueError(f"logdet needs node + eps > 0; smallest node + eps is "
                             f"{float(shifted.min()):.3g}")
        return self.trace_f(torch.log(shifted.clamp_min(torch.finfo(torch.float64).tiny)))

    def negative_mass(self, below: float = 0.0, sigma: float = 0.0) -> float:
        """Fraction of spectral weight below ``below`` (estimates #{λ_i < below}/D): at nodes
        ``< below`` (``sigma=0``), or under the density broadened by ``N(0, σ²)``, where a node
        within σ of ``below`` counts in part (half of it at ``below`` itself) instead of wholly on
        the side its rounding puts it. The quadrature CDF is within about one node's weight of
        the true one (:meth:`negative_mass_bracket`), so either is accurate only when the rule
        resolves the spectrum near ``below``."""
        if sigma > 0:
            share = 0.5 * torch.erfc((self.nodes - below) / (sigma * math.sqrt(2.0)))
            return float(self._per_probe(share).mean())
        return float(self._per_probe((self.nodes < below).to(torch.float64)).mean())

    def negative_mass_bracket(self, below: float = 0.0) -> tuple[float, float]:
        """Bounds on the mass below ``below`` that each probe's rule guarantees (the
        Chebyshev–Markov–Stieltjes inequalities: the measure's CDF at a point between the nodes
        θ_i < t < θ_{i+1} lies within ``[Σ_{j<i} w_j, Σ_{j≤i+1} w_j]``), averaged over probes.
        A wide bracket says the rule does not resolve the spectrum there."""
        lows, highs = [], []
        for x, w in zip(self.nodes, self.weights):
            keep = w > 0
            x, w = x[keep], w[keep]
            order = torch.argsort(x)
            x, w = x[order], w[order]
            cdf = torch.cumsum(w, 0)
            i = int((x < below).sum())  # nodes strictly below
            lo = float(cdf[i - 2]) if i >= 2 else 0.0  # drop the node just below
            hi = float(cdf[min(i, len(x) - 1)]) if len(x) else 1.0  # add the node just above
            lows.append(lo)
            highs.append(min(1.0, hi))
        return float(np.mean(lows)), float(np.mean(highs))

    def outliers(self, *, alpha: float = 0.01, gap: float = 0.5, min_probe_frac: float = 0.5,
                 cluster_rtol: float = 1e-3, max_multiplicity: float = 3.0) -> Outliers:
        """Bulk/outlier split of the upper spectrum.

        Rule: pool every probe's nodes with weights w/n_probes (the SLQ spectral measure μ).
        The bulk spans the quantiles ``lo = Q_μ(α)``, ``hi = Q_μ(1 − α)``; ``bulk_edge = hi`` and
        the outlier threshold is ``hi + gap · (hi − lo)``. Nodes above it are merged into clusters
        (sorted nodes closer than ``cluster_rtol · max|θ|``) and a cluster is an outlier only if at
        least ``min_probe_frac`` of the probes have a node in it: an isolated eigenvalue is a
        converged Ritz value of every probe, while a gap between bulk and outliers holds at most one
        wandering node per probe. Assumes the outliers carry less than α of the weight (a few
        eigenvalues out of D ≫ 1/α). Location = weighted mean of the cluster's nodes; mass = its
        weight/n_probes; multiplicity = D · mass (≈1 per eigenvalue; for one eigenvalue its spread
        over n probes is about sqrt(2/n)).

        Heavy upper tails: when the spectrum decays smoothly above the bulk (no gap), the nodes
        below the top few stand for groups of eigenvalues, not single ones, and their estimated
        multiplicities grow. Walking down from the largest, the outliers stop at the first cluster
        whose multiplicity exceeds ``max_multiplicity``; the weight above the threshold from there
        down is ``tail_mass``. (A group of more than ``max_multiplicity`` equal outliers is then
        reported as tail; raise it when such groups are expected.) What the split finds on a
        trained network: docs/measurements.md#probes-density.
        """
        x, w = self.nodes.reshape(-1), self.weights.reshape(-1) / self.n_probes
        probe = torch.arange(self.n_probes).repeat_interleave(self.nodes.shape[1])
        order = torch.argsort(x)
        cdf = torch.cumsum(w[order], 0)
        lo = float(x[order][min(int(torch.searchsorted(cdf, torch.tensor(alpha, dtype=cdf.dtype))),
                                len(x) - 1)])
        hi = float(x[order][min(int(torch.searchsorted(cdf,
                                                       torch.tensor(1 - alpha, dtype=cdf.dtype))),
                                len(x) - 1)])
        threshold = hi + gap * (hi - lo)
        keep = torch.nonzero((x > threshold) & (w > 0)).flatten()
        keep = keep[torch.argsort(x[keep], descending=True)]
        scale = cluster_rtol * float(x.abs().max())
        clusters: list[list[int]] = []
        for i in keep.tolist():
            if clusters and float(x[clusters[-1][-1]] - x[i]) <= scale:
                clusters[-1].append(i)
            else:
                clusters.append([i])
        locs, masses = [], []
        for c in clusters:
            idx = torch.tensor(c)
            if len(set(probe[idx].tolist())) >= min_probe_frac * self.n_probes:
                mass = float(w[idx].sum())
                if self.dim * mass > max_multiplicity:
                    break  # a node carrying many eigenvalues: the continuous tail starts here
                locs.append(float((x[idx] * w[idx]).sum() / w[idx].sum()))
                masses.append(mass)
        m = torch.tensor(masses, dtype=torch.float64)
        above = float(w[keep].sum()) if len(keep) else 0.0
        return Outliers(count=len(locs), locations=torch.tensor(locs, dtype=torch.float64),
                        masses=m, multiplicities=self.dim * m, bulk_edge=hi, threshold=threshold,
                        tail_mass=max(0.0, above - float(m.sum())))


#: the fewest Lanczos steps of each adaptive run after the first (``slq``'s ``min_steps``)
MIN_STEPS = 6


def slq(op: Operator, n_probes: int = 10, m_steps: int = 30, seed: int = 0,
        dist: Dist = "gaussian", *, deflate: EigResult | None = None,
        resolution: float | None = None, resolution_tol: float = 0.05, min_steps: int = MIN_STEPS,
        stop: Callable[[], str | None] | None = None,
        first: _Lanczos | None = None, block: int = 1) -> SLQResult:
    """Stochastic Lanczos quadrature: ``n_probes`` unit probes (Gaussian or Rademacher, normalized),
    up to ``m_steps`` Lanczos steps each with full reorthogonalization (``n_probes · m_steps``
    products at most).

    ``deflate`` (top-k eigenpairs computed anyway): the k eigenvalues enter every probe's rule as
    exact nodes of weight 1/D, and the Lanczos runs see only ``P A P`` on the complement
    (``P = I − VVᵀ``; Gaussian probes projected, so ``Pz/‖Pz‖`` is uniform on the complement's
    sphere and its rule carries weight ``(D − k)/D``). The outliers then cost no Lanczos steps.

    ``resolution`` (a fraction of the spectral range, the density's broadening; needs ``deflate``)
    makes the runs adaptive. The first run takes all ``m_steps``; its converged Ritz pairs above
    its outlier threshold (:func:`~landscope.probes.slq_runs._settled_outliers`) join the
    deflated pairs, so the outliers the top-k did not reach are resolved once, not once per
    probe. Every later run, on the complement
    of all of them, stops once two consecutive steps change its rule, broadened by
    σ = resolution × (the range seen so far), by at most ``resolution_tol`` in L1 (at least
    ``min_steps`` steps): it takes no more steps than the density's resolution asks for.
    ``deflation`` then holds every deflated pair, and each later run's first step is a
    Hutchinson sample ``zᵀPAPz = ‖Pz‖²·α₁`` of the trace deflated by them (``trace_samples``),
    which :func:`~landscope.probes.trace.deflated_trace` counts as its own.

    ``first`` (``deflate.krylov``, with ``deflate`` the top-k of
    :func:`~landscope.probes.lanczos.lanczos_eigs` from ``seed``, every pair converged): the
    first probe is the top-k run's own start vector, whose Krylov space already holds most of the
    first run. It is grown to k + ``m_steps`` vectors (the products this costs are the density's);
    its Ritz pairs other than the k deflated ones are then the rule of that start projected on the
    complement (``m_steps`` nodes, to the top-k's residuals), and their settled outliers join the
    deflation (``first_from_top``): the first run costs the top-k's steps beyond k fewer products
    (at most ``m_steps``) than on its own. The first probe's draw is made either way, so the later
    probes are the same.

    ``stop``: a cap asked before each product; a run cut by it keeps the steps it has, and no
    further probes start (``stopped_by``).

    ``block`` > 1: the probes after the first, ``block`` at a time, in lockstep, each step's
    products one batched call (for GPUs; :meth:`~landscope.probes.slq_runs._Runs.run_group`)."""
    if n_probes < 1 or m_steps < 1 or block < 1:
        raise ValueError(f"need n_probes, m_steps and block >= 1, got {n_probes}, {m_steps}, "
                         f"{block}")
    if (resolution is not None or first is not None) and deflate is None:
        raise ValueError("slq(resolution=... or first=...) needs deflate= (the top-k eigenpairs)")
    start = op.n_matvecs
    gen = torch.Generator().manual_seed(seed)
    runs = _Runs(op, deflate, gen, dist, m_steps, resolution, resolution_tol, min_steps, stop,
                 first)
    stopped_by = runs.run_all(n_probes, block)
    nodes, weights = _padded(runs.rows)
    return SLQResult(nodes=nodes, weights=weights, dim=op.dim, n_matvecs=op.n_matvecs - start,
                     trace_samples=torch.tensor(runs.trace_samples, dtype=torch.float64),
                     steps=runs.steps, deflated=len(runs.values), stopped_by=stopped_by,
                     deflation=runs.deflation(), first_from_top=runs.first_from_top)
