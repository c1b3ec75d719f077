"""Repeated eigenvalues: the check that a top-k (or bottom-k) list from one Lanczos run misses
no copy of an eigenvalue (:func:`complement_check`).

One start vector's Krylov space holds one direction of each eigenspace, so a single Lanczos run
may list an exactly repeated eigenvalue once and go on with the next distinct one (the
docstring of :func:`~landscope.probes.lanczos.lanczos_eigs`): on the spectrum 10, 10, 10, 7, 7,
5, ... its top-5 is [10, 10, 7, 7, 5] (tests/test_complement.py). Power iteration with deflation
(PyHessian) does not have this failure, because every pair starts from a fresh vector.

The check starts Lanczos from a fresh random vector on the complement of the k vectors found
(``P A P``, ``P = I − VVᵀ``). That vector has a component along every copy the list missed, so
a missed copy is the complement's extreme eigenvalue, beyond the k-th value of the list. When
the run's extreme Ritz pair has converged (the same residual test as the list) beyond the k-th
value by more than the k-th value's tolerance, it enters the list, the k-th leaves, and the
check starts again on the new complement. It ends at the first round whose extreme value is
not beyond the k-th (a copy *equal* to the k-th value changes no value of the list), or whose
extreme pair, converged to a relative residual of ``LOOSE``, lies short of the k-th value by
more than that residual: a missed copy beyond the k-th value would have been that extreme pair
(Lanczos finds a separated extreme eigenvalue first unless the start vector is nearly
orthogonal to it, which a Gaussian start is with probability near zero).

Cost: one Lanczos run to the convergence of its extreme pair per round, plus one product per
pair that enters (its true residual): 30-70 % of a top-5's own products on the networks
measured (docs/measurements.md#probes-complement). The start must be fresh: a run from the
list's own start vector (or its projection on the complement) has no component along a missed
copy and could find one only through rounding, so the probe suite checks from its own seed
(``probe.seed + 2`` for the top-k) also when the spectral density runs; the density instead
reads its first rule from the top-k's own Krylov space (:func:`~landscope.probes.density.slq`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from landscope.probes.checked import predates_multiplicity_check
from landscope.probes.lanczos import (
    EigResult,
    _eigs_iterations,
    _Lanczos,
    _random_vector,
    _Wanted,
)
from landscope.probes.operator import Deflated, Operator

__all__ = ["beyond_list", "check_applies", "complement_check", "checked_list",
           "predates_multiplicity_check"]

# A round ends early when its extreme Ritz pair, converged to this relative residual after at
# least SHORT_MIN_STEPS steps, lies short of the k-th value by more than that residual (a missed
# copy, separated from the rest of the complement, would have been that extreme pair). The
# residual is relative to the pair's own value: one relative to the k-th value lets a random
# start's Rayleigh quotient (tiny, with a residual small against a large k-th value) end the
# round after one product, before the Krylov space has grown towards any missed copy.
LOOSE = 1e-2
SHORT_MIN_STEPS = 4


def check_applies(found: EigResult) -> bool:
    """Whether a list can be checked: k >= 2 pairs, with eigenvectors, from a run no cap cut."""
    return (len(found.eigenvalues) >= 2 and found.stopped_by is None
            and found.eigenvectors is not None)


def beyond_list(found: EigResult, value: float, tol: float, atol: float = 0.0) -> bool:
    """Whether ``value`` (an extreme eigenvalue of the complement) lies beyond the list's k-th
    value by more than that value's tolerance ``max(tol·|λ_k|, atol, its residual)``: then it
    belongs in the list."""
    last = float(found.eigenvalues[-1])
    margin = max(tol * abs(last), atol, float(found.residuals[-1]))
    sign = 1.0 if found.which == "largest" else -1.0
    return sign * (value - last) > margin


def _extreme_pair(op: Operator, basis: Tensor, z: Tensor, found: EigResult, tol: float,
                  atol: float, max_iter: int | None, stop: Callable[[], str | None] | None
                  ) -> tuple[float, Tensor, str, str | None]:
    """Lanczos from ``z`` on the complement of ``basis`` until its extreme Ritz pair converges
    (``max(tol·|θ|, atol)``) or, converged to ``LOOSE·|θ|`` after ``SHORT_MIN_STEPS`` steps,
    lies short of the list's k-th value by more than its residual: the value, the
    unit vector (in the complement), which of ``"converged"``, ``"short"`` or ``"unresolved"``
    ended the run, and the cap that cut it (NaN and ``z`` when the cap came before the first
    product)."""
    which = found.which
    defl = Deflated(op, basis)
    lz = _Lanczos(defl, defl.project(z), restart=False, capacity=40)
    want = _Wanted(lz, 1, which, tol, atol)
    sign, last = (1.0 if which == "largest" else -1.0), float(found.eigenvalues[-1])
    state, stopped_by = "unresolved", None
    max_iter = _eigs_iterations(op, 1, which, max_iter)
    while lz.m < max_iter and not lz.exhausted:
        if stop is not None and (stopped_by := stop()) is not None:
            break
        lz.step()
        theta, s = lz.ritz()
        i = int(want.indices(theta)[0])
        t, est = float(theta[i]), abs(lz.beta[-1]) * abs(float(s[-1, i]))
        if est <= want.thresholds(np.array([t]))[0]:
            state = "converged"
        elif lz.m >= SHORT_MIN_STEPS and est <= LOOSE * abs(t) and sign * (last - t) > est:
            state = "short"
        if state != "unresolved":
            break
    if lz.m == 0:  # a cap before the first product
        return math.nan, z, state, stopped_by
    theta, s = lz.ritz()
    i = int(want.indices(theta)[0])
    y = defl.project(lz.ritz_vectors(s[:, i:i + 1])[:, 0])  # in the complement to rounding
    return float(theta[i]), y / torch.linalg.vector_norm(y), state, stopped_by


def complement_check(op: Operator, found: EigResult, *, tol: float = 1e-6, atol: float = 0.0,
                     seed: int = 0, max_iter: int | None = None,
                     stop: Callable[[], str | None] | None = None,
                     start: Tensor | None = None) -> EigResult:
    """``found`` (k pairs with eigenvectors, from :func:`~landscope.probes.lanczos.lanczos_eigs`)
    with every missed copy of a repeated eigenvalue put in its place (module docstring).

    Each round is a Lanczos run on the complement of the current k vectors from a seeded random
    vector (``start`` for the first round: e.g. a Ritz vector that already points at a missed
    copy), to the residual test ``max(tol·|θ|, atol)`` of its extreme pair. The result's
    ``n_matvecs`` adds the check's products, ``added_by_check`` counts the pairs that entered
    and ``checked`` says whether the check reached its conclusion (at once for a list of the
    whole space's ``dim`` pairs; False when ``stop`` or ``max_iter`` ended a round first;
    ``stopped_by`` then names the cap)."""
    if found.eigenvectors is None:
        raise ValueError("complement_check needs the eigenvectors of the list")
    k, n0 = len(found.eigenvalues), op.n_matvecs
    gen = torch.Generator().manual_seed(int(seed))
    vals = found.eigenvalues.numpy().astype(np.float64).copy()
    vecs = found.eigenvectors
    res, conv = found.residuals.numpy().copy(), found.converged.numpy().copy()
    sign = 1.0 if found.which == "largest" else -1.0
    # a list of the whole space's pairs can miss nothing
    current, added, checked, stopped_by = found, 0, vecs.shape[1] >= op.dim, None
    while vecs.shape[1] < op.dim:
        z = start if (added == 0 and start is not None) else _random_vector(op, gen)
        value, y, state, stopped_by = _extreme_pair(op, vecs, z.to(op.dtype), current, tol,
                                                    atol, max_iter, stop)
        if stopped_by is not None or state == "unresolved":
            break
        if state == "short" or not beyond_list(current, value, tol, atol):
            checked = True
            break
        r = float(torch.linalg.vector_norm(op.matvec(y) - value * y))  # its true residual
        vals, res = np.append(vals, value), np.append(res, r)
        conv = np.append(conv, r <= max(tol * abs(value), atol))
        vecs = torch.cat([vecs, y[:, None]], dim=1)
        order = np.argsort(-sign * vals, kind="stable")[:k]
        vals, res, conv = vals[order], res[order], conv[order]
        vecs = vecs[:, torch.from_numpy(order.copy()).to(vecs.device)]
        added += 1
        current = replace(found, eigenvalues=torch.from_numpy(vals.copy()),
                          residuals=torch.from_numpy(res.copy()))
    return replace(found, eigenvalues=torch.from_numpy(vals.copy()), eigenvectors=vecs,
                   residuals=torch.from_numpy(np.asarray(res, dtype=np.float64)),
                   converged=torch.from_numpy(np.asarray(conv, dtype=bool)),
                   n_matvecs=found.n_matvecs + op.n_matvecs - n0,
                   stopped_by=found.stopped_by or stopped_by,
                   added_by_check=found.added_by_check + added, checked=checked)


def checked_list(op: Operator, found: EigResult, *, enabled: bool = True, tol: float = 1e-6,
                 atol: float = 0.0, seed: int = 0,
                 stop: Callable[[], str | None] | None = None) -> EigResult:
    """``found`` through :func:`complement_check` when ``enabled`` and the check applies
    (:func:`check_applies`), else unchanged (``checked`` stays False): the guard every list of
    the probes shares (the Hessian's top-k and bottom-k, the per-block spectra, the GGN,
    Fisher and NTK spectra)."""
    if not (enabled and check_applies(found)):
        return found
    return complement_check(op, found, tol=tol, atol=atol, seed=seed, stop=stop)
