"""Stochastic trace estimators for a symmetric operator, each with a standard error.

- Hutchinson (Hutchinson 1990; Avron & Toledo 2011): ``tr A = E[zᵀ A z]`` for probes with
  ``E[z zᵀ] = I``. Rademacher z (default) has the smallest variance among i.i.d. probes,
  ``Var = 2(‖A‖_F² − Σ_i A_ii²)``; Gaussian z has ``Var = 2‖A‖_F²``.
- Hutch++ (Meyer, Musco, Musco & Woodruff 2021, "Hutch++: optimal stochastic trace estimation"):
  with budget m, sketch ``S`` (dim × m/3 Rademacher), ``Q = orth(A S)``, then
  ``tr A = tr(Qᵀ A Q) + tr((I − QQᵀ) A (I − QQᵀ))``, the second term by Hutchinson with the
  remaining m/3 products. Error O(1/m) instead of O(1/√m) for spectra with a few large eigenvalues.
- Deflated trace (GUIDE §6): the top-k eigenpairs ``(Λ, V)`` computed anyway give
  ``tr A = Σ λ_i + tr((I − VVᵀ) A (I − VVᵀ))``, the remainder by Hutchinson.

The auto-stopped ones (Hutchinson, deflated) switch to the exact ``Σ e_iᵀ A e_i`` (``dim``
products, ``unit_vectors``) once the samples their target still asks for, projected from the
stderr so far, outnumber the dimension (small operators: the NTK Gram, a parameter block).

Every estimator reports ``n_matvecs`` (products used, from the operator's counter) and a standard
error ``stderr = std(samples, ddof=1)/√n`` of its stochastic part (deterministic parts add none).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from landscope.probes.lanczos import EigResult
from landscope.probes.operator import Operator

Dist = Literal["rademacher", "gaussian"]


@dataclass
class TraceResult:
    """``estimate`` of tr A with its ``stderr``; ``samples`` (n,) float64 are the stochastic terms
    ``zᵀ A z`` (of the deflated/projected operator for Hutch++ and deflated traces), ``exact_part``
    the deterministic term added to their mean (0 for plain Hutchinson). A cap that stopped
    sampling before the first sample leaves ``estimate`` NaN and ``stderr`` inf: the exact part
    alone is no estimate of the trace."""

    estimate: float
    stderr: float
    n_samples: int
    n_matvecs: int
    samples: Tensor
    exact_part: float = 0.0
    stopped_by: str | None = None  # the cap that ended sampling early, else None
    reference: float = 0.0  # what the auto-stop compares the stderr with: max(|estimate|, scale)
    # tr A = Σ e_iᵀ A e_i from the dim unit vectors (exact to rounding, stderr 0): the auto-stop
    # takes it when the samples its target still asks for outnumber them (``samples`` then
    # holds the ones drawn before)
    unit_vectors: bool = False

    @property
    def rse(self) -> float:
        """Relative standard error ``stderr / |estimate|`` (inf when the estimate is 0 or
        there are no samples)."""
        if self.n_samples == 0 or self.estimate == 0:
            return math.inf
        return self.stderr / abs(self.estimate)


def probe_vector(dim: int, gen: torch.Generator, dist: Dist, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> Tensor:
    """One probe with ``E[z zᵀ] = I``: Rademacher (±1) or standard Gaussian, drawn on the CPU from
    ``gen`` (so results depend only on the seed) and moved to ``device``."""
    if dist == "rademacher":
        z = torch.randint(0, 2, (dim,), generator=gen).to(dtype) * 2 - 1
    elif dist == "gaussian":
        z = torch.randn(dim, generator=gen, dtype=dtype)
    else:
        raise ValueError(f"dist must be 'rademacher' or 'gaussian', got {dist!r}")
    return z.to(device)


def _stderr(samples: list[float]) -> float:
    n = len(samples)
    if n < 2:
        return math.inf
    return float(torch.tensor(samples, dtype=torch.float64).std(correction=1)) / math.sqrt(n)


def _hutchinson(op: Operator, *, n_samples: int | None, gen: torch.Generator, dist: Dist,
                target_rse: float | None, min_samples: int, max_samples: int,
                project: Callable[[Tensor], Tensor] | None, exact_part: float,
                start: int, scale: float = 0.0, prior: Sequence[float] = (),
                stop: Callable[[], str | None] | None = None, block: int = 1,
                unit_vectors: bool = False) -> TraceResult:
    """Core loop: samples ``(Pz)ᵀ A (Pz)`` until ``n_samples`` (fixed mode) or until
    ``stderr ≤ target_rse · max(|estimate|, scale)`` with at least ``min_samples`` (auto-stop
    mode). ``prior``: samples of the same quantity drawn elsewhere (SLQ's first Lanczos steps),
    counted first. ``stop``: a cap asked before each product (``stopped_by``). ``block`` > 1
    computes that many samples' products in one batched call (:func:`~landscope.probes.batched.
    matmat`, for GPUs) and uses them one by one in the same order, so the stop is the same as
    with ``block=1`` up to rounding; at most ``block − 1`` products of the last call go unused,
    and a cap is checked once per call."""
    samples: list[float] = [float(x) for x in prior]
    limit = max_samples if target_rse is not None else int(n_samples or 0)
    stopped_by = None

    def done() -> bool:
        if target_rse is None or len(samples) < min_samples:
            return False
        est = exact_part + sum(samples) / len(samples)
        reference = max(abs(est), scale)
        return reference > 0 and _stderr(samples) <= target_rse * reference

    def exact_is_cheaper() -> bool:  # the samples still needed (projected) exceed dim
        n = len(samples)
        if not unit_vectors or target_rse is None or n + op.dim > limit:
            return False
        if op.dim <= min_samples - n:  # fewer products than the samples it must still draw
            return True
        if n < min_samples:
            return False
        reference = max(abs(exact_part + sum(samples) / n), scale)
        return reference > 0 and n * (_stderr(samples) / (target_rse * reference)) ** 2 \
            > n + op.dim

    pending: list[float] = []
    while len(samples) < limit and not done():
        if not pending and exact_is_cheaper():
            total, stopped_by = unit_vector_trace(op, stop)
            if stopped_by is not None:
                break
            return TraceResult(estimate=total, stderr=0.0, n_samples=len(samples),
                               n_matvecs=op.n_matvecs - start,
                               samples=torch.tensor(samples, dtype=torch.float64),
                               exact_part=exact_part, reference=max(abs(total), scale),
                               unit_vectors=True)
        if not pending:
            if stop is not None and (stopped_by := stop()) is not None:
                break
            nb = max(1, min(block, limit - len(samples)))
            zs = []
            for _ in range(nb):
                z = probe_vector(op.dim, gen, dist, op.dtype, op.device)
                zs.append(project(z) if project is not None else z)
            if nb == 1:
                pending = [float(zs[0] @ op.matvec(zs[0]))]
            else:  # one batched call (GPUs); the samples are used in the same order
                from landscope.probes.batched import matmat

                zm = torch.stack(zs, dim=1)
                pending = (zm * matmat(op, zm)).sum(0).tolist()
        samples.append(pending.pop(0))
    n = len(samples)
    mean = sum(samples) / n if n else 0.0
    return TraceResult(estimate=exact_part + mean if n else math.nan,
                       stderr=_stderr(samples) if n else math.inf,
                       n_samples=n, n_matvecs=op.n_matvecs - start,
                       samples=torch.tensor(samples, dtype=torch.float64), exact_part=exact_part,
                       stopped_by=stopped_by, reference=max(abs(exact_part + mean), scale))


def unit_vector_trace(op: Operator, stop: Callable[[], str | None] | None
                      ) -> tuple[float, str | None]:
    """``Σ_i e_iᵀ A e_i`` (float64 sum; ``dim`` products), or NaN and the cap that stopped it."""
    total = 0.0
    for i in range(op.dim):
        if stop is not None and (why := stop()) is not None:
            return math.nan, why
        e = torch.zeros(op.dim, dtype=op.dtype, device=op.device)
        e[i] = 1.0
        total += float(op.matvec(e)[i])
    return total, None


def hutchinson(op: Operator, n_samples: int | None = None, seed: int = 0,
               dist: Dist = "rademacher", *, target_rse: float | None = None, min_samples: int = 10,
               max_samples: int = 10_000, scale: float = 0.0,
               stop: Callable[[], str | None] | None = None, block: int = 1,
               unit_vectors: bool = True) -> TraceResult:
    """Hutchinson's estimator ``tr A ≈ (1/n) Σ z_iᵀ A z_i`` (one product per sample).

    Fixed mode: ``n_samples`` samples (default 100). Auto-stop mode (``target_rse`` given, then
    ``n_samples`` must be None): draw until the relative standard error ``stderr/|estimate|`` is at
    most ``target_rse`` with at least ``min_samples`` samples (the stderr of a handful of samples is
    itself too noisy to stop on), or ``max_samples`` is reached (check ``result.rse``).
    ``scale`` makes the stop well posed for traces near zero: it stops once
    ``stderr ≤ target_rse · max(|estimate|, scale)``; pass an estimate of ``Σ|λ_i|`` (the
    nuclear norm, which is ``|tr A|`` for a definite A), never more. ``stop``: a cap asked
    before each product; ``stopped_by`` names it when it ended the run. ``unit_vectors``
    (auto-stop mode): take the exact sum over unit vectors once the target asks for more
    samples than A has dimensions (module docstring); False keeps sampling.
    """
    if target_rse is not None and n_samples is not None:
        raise ValueError("give either n_samples (fixed) or target_rse (auto-stop), not both")
    if target_rse is None and n_samples is None:
        n_samples = 100
    if n_samples is not None and n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    return _hutchinson(op, n_samples=n_samples, gen=torch.Generator().manual_seed(seed), dist=dist,
                       target_rse=target_rse, min_samples=max(2, min_samples),
                       max_samples=max_samples, project=None, exact_part=0.0, start=op.n_matvecs,
                       scale=scale, stop=stop, block=block, unit_vectors=unit_vectors)


def _projector(basis: Tensor) -> Callable[[Tensor], Tensor]:
    """``z ↦ (I − B Bᵀ) z`` for orthonormal columns B, in one pass: a probe vector has
    components along B of only about ``√(k/D)`` of its norm, so a second pass would remove
    rounding only (a second pass matters for vectors mostly inside span B)."""
    def project(z: Tensor) -> Tensor:
        return z - basis @ (basis.T @ z)
    return project


def hutchpp(op: Operator, n_matvecs_budget: int, seed: int = 0,
            dist: Dist = "rademacher") -> TraceResult:
    """Hutch++ (Meyer et al. 2021, Algorithm 1) with ``n_matvecs_budget = m`` products:
    ``s = ⌊m/3⌋`` for the sketch ``A S``, ``s`` for ``tr(Qᵀ A Q)`` and ``m − 2s`` Hutchinson samples
    of the projected remainder ``(I − QQᵀ) A (I − QQᵀ)``. ``exact_part = tr(Qᵀ A Q)``; the stderr is
    that of the Hutchinson part (the sketch part is exact given Q, and the estimator is unbiased for
    any Q).
    """
    if n_matvecs_budget < 4:
        raise ValueError(f"Hutch++ needs a budget of at least 4 products, got {n_matvecs_budget}")
    start = op.n_matvecs
    gen = torch.Generator().manual_seed(seed)
    s = min(n_matvecs_budget // 3, op.dim)
    sketch = torch.stack([op.matvec(probe_vector(op.dim, gen, dist, op.dtype, op.device))
                          for _ in range(s)], 1)
    q, _ = torch.linalg.qr(sketch)
    exact = float(sum(float(q[:, i] @ op.matvec(q[:, i])) for i in range(q.shape[1])))
    return _hutchinson(op, n_samples=n_matvecs_budget - 2 * s, gen=gen, dist=dist, target_rse=None,
                       min_samples=2, max_samples=0, project=_projector(q), exact_part=exact,
                       start=start)


def deflated_trace(op: Operator, eig: EigResult, n_samples: int | None = 30, seed: int = 0,
                   dist: Dist = "rademacher", *, target_rse: float | None = None,
                   min_samples: int = 10, max_samples: int = 10_000, scale: float = 0.0,
                   prior: Sequence[float] = (),
                   stop: Callable[[], str | None] | None = None, block: int = 1,
                   unit_vectors: bool = True) -> TraceResult:
    """``tr A ≈ Σ_i λ_i + Hutchinson[(I − VVᵀ) A (I − VVᵀ)]`` from eigenpairs already computed
    (no products spent on them). Unbiased for any orthonormal V whose λ_i are the Rayleigh quotients
    ``v_iᵀ A v_i`` (Ritz pairs are), since ``tr A = tr(VᵀAV) + tr(PAP)`` for ``P = I − VVᵀ``; the
    variance drops to that of the deflated remainder (zero when V spans A's range).
    With ``target_rse`` (then ``n_samples`` is ignored) it samples until the relative standard
    error of the whole estimate is at most ``target_rse``, as :func:`hutchinson` does, relative to
    ``max(|estimate|, scale, Σ|λ_i|)``: by pinching, ``Σ|λ_i| ≤ ‖VᵀAV‖_* ≤ ‖A‖_* = Σ|eig(A)|``, so
    the reference never exceeds the nuclear norm, and the stop is well posed for an indefinite A
    whose trace is near zero (a purely relative stop would never fire there). Without a
    ``scale`` of the caller's, the Lanczos run that found the pairs gives one (``eig.abs_trace``:
    its random start's quadrature rule on ``|A|``, one SLQ sample of ``Σ|eig(A)|``); the top-k
    alone can be a small part of it, and the stop then waited for the cap
    (docs/measurements.md#probes-trace-scale).
    ``prior``: samples ``zᵀPAPz`` drawn elsewhere (the deflated SLQ runs of
    :func:`~landscope.probes.density.slq`, one per probe), counted first. ``stop``: a cap.
    ``unit_vectors``: as for :func:`hutchinson`.
    """
    if eig.eigenvectors is None:
        raise ValueError("deflated_trace needs eigenvectors "
                         "(call lanczos_eigs with return_vectors=True)")
    v = eig.eigenvectors.to(dtype=op.dtype, device=op.device)
    auto = target_rse is not None
    if scale <= 0.0 and eig.abs_trace is not None:
        scale = eig.abs_trace
    return _hutchinson(op, n_samples=None if auto else n_samples,
                       gen=torch.Generator().manual_seed(seed), dist=dist, target_rse=target_rse,
                       min_samples=max(2, min_samples) if auto else 2,
                       max_samples=max_samples if auto else 0, project=_projector(v),
                       exact_part=float(eig.eigenvalues.sum()), start=op.n_matvecs,
                       scale=max(scale, float(eig.eigenvalues.abs().sum())), prior=prior,
                       stop=stop, block=block, unit_vectors=unit_vectors)
