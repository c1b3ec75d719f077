"""Sharpness and flatness measures (issue #3 item 7) on a generic :class:`Objective`.

Every measure works on flat parameter vectors through an objective
(:mod:`landscope.probes.objective`: ``loss``, ``loss_and_grad``, ``accuracy``, ``theta0``),
so the same code serves networks (:class:`ModelObjective`) and closed-form quadratics
(:class:`QuadraticObjective`, the tests' oracle).  Each returns a small dataclass with the
grid/hyperparameters, the values, the evaluations it made and the seed.  The loss and
gradient at ``theta`` come from :meth:`Objective.origin`, computed once per objective and
shared by every measure called on it (or passed in: ``ModelObjective(..., at_origin=)``).

Worst-case measures are maximized by projected normalized-gradient ascent in the scaled
variable ``z = delta / c`` (``c`` = 1, ``|theta| + eta`` or ``|theta| + 1``):
``z <- P(z + step * rho * d)`` with ``d = argmax_{||d||_p <= 1} (c*g) . d`` (the normalized
gradient for p=2, its sign for p=inf) and ``P`` the projection on ``||z||_p <= rho``.  Per
radius the first ascent starts at SAM's one-step point ``P(step * rho * d(theta))`` (its value
is ``one_step``), or, when the gradient at ``theta`` vanishes, at a seeded random boundary
point.

Precision (``tol``): an ascent stops after two iterations in a row that each raise the
largest loss seen by less than ``tol * (largest - L(theta))`` (or by less than the loss's rounding,
``16 eps |L|`` in its dtype), or after ``steps`` evaluations; ``converged`` says which.  The
value is then within about ``tol`` (relative) of where the full ``steps`` would have led
when the ascent converges geometrically at least twice as fast as ``tol`` shrinks (as on
the networks measured: docs/measurements.md#probes-sharpness).  Restarts, from seeded random
boundary points, only while they find something: a restart is abandoned once its iterate's cosine
with the incumbent maximizer exceeds ``1 - 1e-2`` (it has joined it); one that does not end at a
higher maximum (by more than ``tol``) at another point (cosine ``<= 1 - 1e-2``) ends the
restarts of this radius and of every later one.

The value is the largest loss seen, with ``delta = 0`` (always feasible) included, so it is
a certified lower bound of the maximum and ``>= 0``.  A non-finite loss
met anywhere (an overflowed forward pass: ``inf`` or ``NaN``) counts as ``+inf``
(:func:`loss_value`): the measure is then ``inf`` and ``diverged`` says so, never a smaller
finite value.  For a convex loss (a quadratic with PSD ``A``) the iteration converges to the
maximizer of the trust-region / box problem.

PAC-Bayes flatness (the ``sigma'`` search) lives in :mod:`landscope.probes.flatness` and is
re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor

from landscope.errors import LandscopeError
from landscope.probes.flatness import PacBayesFlatness, pac_bayes_flatness, sigma_guess
from landscope.probes.objective import ModelObjective, Objective, QuadraticObjective, loss_value

__all__ = ["Objective", "QuadraticObjective", "ModelObjective", "loss_value",
           "WorstCaseSharpness", "KeskarSharpness", "AverageSharpness", "PacBayesFlatness",
           "worst_case_sharpness", "keskar_sharpness", "average_sharpness",
           "pac_bayes_flatness", "sigma_guess", "TOL"]

Norm = Literal["2", "inf"]
TOL = 1e-3       # default relative precision of the worst-case ascents
_JOIN = 1e-2     # a restart with cosine > 1 - _JOIN to the incumbent maximizer has joined it


# ----------------------------------------------------------------------------- worst case
@dataclass
class WorstCaseSharpness:
    """``max_{||delta / c||_p <= rho} L(theta + delta) - L(theta)`` per radius."""

    rhos: list[float]
    values: list[float]            # ascent (max over starts, restarts and iterates)
    one_step: list[float]          # SAM/ASAM one-step approximation
    p: str
    scale: str                     # "none", "adaptive" (|theta| + eta) or "keskar" (|theta| + 1)
    eta: float
    base_loss: float
    steps: int                     # at most this many evaluations per ascent
    restarts: int                  # at most this many ascents per radius
    step_size: float
    n_loss_evals: int              # evaluations this call made (the shared origin excluded
    n_grad_evals: int              # when it was known before the call)
    seed: int
    diverged: list[bool] = field(default_factory=list)   # the ascent met a non-finite loss
    tol: float = TOL
    converged: list[bool] = field(default_factory=list)  # the first ascent met ``tol``
    evals: list[int] = field(default_factory=list)       # loss evaluations per radius


@dataclass
class KeskarSharpness:
    """Keskar et al. (2017) epsilon-sharpness per epsilon (percent units)."""

    epsilons: list[float]
    values: list[float]
    max_increase: list[float]      # max_{y in C_eps} L(theta + y) - L(theta)
    base_loss: float
    steps: int
    restarts: int
    n_loss_evals: int
    n_grad_evals: int
    seed: int
    diverged: list[bool] = field(default_factory=list)   # the ascent met a non-finite loss
    tol: float = TOL
    converged: list[bool] = field(default_factory=list)


def _norm(v: Tensor) -> Tensor:
    """``||v||_2``, in float64 when the working precision overflows (float32 entries of
    1e20 and more square to inf, and dividing by that norm would zero the step)."""
    norm = v.norm()
    return norm if bool(torch.isfinite(norm)) else v.double().norm()


def _direction(g: Tensor, p: str) -> Tensor:
    if p == "inf":
        return torch.sign(g)
    norm = _norm(g)
    return g / norm if norm > 0 else torch.zeros_like(g)


def _project(z: Tensor, rho: float, p: str) -> Tensor:
    norm = float(_norm(z)) if p != "inf" else 0.0
    return z.clamp(-rho, rho) if p == "inf" else z * (rho / norm) if norm > rho else z


def _boundary(d: int, rho: float, p: str, gen: torch.Generator, like: Tensor) -> Tensor:
    xi = torch.randn(d, generator=gen, dtype=torch.float64).to(like)
    return rho * (torch.sign(xi) if p == "inf" else xi / xi.norm())


def _cos(a: Tensor, b: Tensor) -> float:
    na, nb = float(_norm(a)), float(_norm(b))
    return float((a.double() @ b.double()) / (na * nb)) if na > 0 and nb > 0 else 0.0


class _Ascent:
    """The ascent of one measure: the objective, scaling, norm and stopping rule."""

    def __init__(self, obj: Objective, c: Tensor, p: str, steps: int, step_size: float,
                 tol: float) -> None:
        self.obj, self.c, self.p, self.steps, self.step, self.tol = obj, c, p, steps, step_size, tol
        self.theta = obj.theta0
        self.l0 = loss_value(obj.origin()[0])
        self.eps = 16 * torch.finfo(self.theta.dtype).eps if self.theta.is_floating_point() else 0

    def eval(self, z: Tensor) -> tuple[float, Tensor]:
        f, g = self.obj.loss_and_grad(self.theta + self.c * z)
        return loss_value(f), g

    def small(self, gain: float, best: float) -> bool:
        """The gain is below the stated precision (or the loss's rounding)."""
        return gain <= max(self.tol * (best - self.l0), self.eps * abs(best))

    def climb(self, rho: float, z: Tensor, f: float, g: Tensor,
              ref: Optional[Tensor] = None) -> tuple[float, Tensor, int, bool]:
        """From the evaluated start ``(z, f, g)``: (best loss, its z, evaluations, converged).
        With ``ref`` (the incumbent maximizer) it also stops once it has joined ``ref``."""
        best, zbest, n, quiet = f, z, 1, 0
        while n < self.steps and best < math.inf:
            z = _project(z + self.step * rho * _direction(self.c * g, self.p), rho, self.p)
            f, g = self.eval(z)
            n += 1
            gain = f - best
            if f > best:
                best, zbest = f, z
            if best == math.inf:
                break
            quiet = quiet + 1 if self.small(gain, best) else 0
            if quiet == 2:  # two iterations in a row below the tolerance
                return best, zbest, n, True
            if ref is not None and _cos(z, ref) > 1 - _JOIN:
                return best, zbest, n, True
        return best, zbest, n, best == math.inf


def _check(grid: Sequence[float], what: str, steps: int = 1, restarts: int = 1,
           tol: float = 0.0) -> list[float]:
    vals = [float(v) for v in grid]
    if not vals or min(vals) <= 0 or not all(map(math.isfinite, vals)):
        raise LandscopeError(f"{what} grid must be non-empty, finite and > 0 (got {vals})")
    if steps < 1 or restarts < 1:
        raise LandscopeError(f"steps and restarts must be >= 1 (got {steps}, {restarts})")
    if not (tol >= 0 and math.isfinite(tol)):
        raise LandscopeError(f"tol must be a finite number >= 0 (got {tol})")
    return vals


def worst_case_sharpness(obj: Objective, rhos: Sequence[float] = (0.01, 0.05), *,
                         p: Norm = "2", adaptive: bool = False, eta: float = 0.01,
                         steps: int = 20, restarts: int = 2, step_size: float = 1.0,
                         tol: float = TOL, seed: int = 0) -> WorstCaseSharpness:
    """Worst-case sharpness ``max_{||delta / c||_p <= rho} L(theta+delta) - L(theta)``.

    ``adaptive=False``, ``p="2"``: SAM's (Foret et al., "Sharpness-aware minimization for
    efficiently improving generalization", ICLR 2021) with ``c = 1``; ``one_step`` is SAM's
    first-order maximizer ``delta = rho g / ||g||``.  ``adaptive=True``: ASAM's (Kwon et al.,
    ICML 2021; Andriushchenko et al., "A modern look at the relationship between sharpness and
    generalization", ICML 2023) with ``c = |theta| + eta`` and ``p`` in {"2", "inf"}.
    Maximized by projected normalized-gradient ascent (module docstring), step
    ``step_size * rho`` in ``z``, at most ``steps`` evaluations per ascent and ``restarts``
    ascents per radius; an ascent stops once two iterations in a row raise the maximum by
    less than ``tol`` relative to the sharpness (``tol=0``: always ``steps`` evaluations).
    """
    rho_list = _check(rhos, "rho", steps, restarts, tol)
    if p not in ("2", "inf"):
        raise LandscopeError(f"p must be '2' or 'inf' (got {p!r})")
    theta = obj.theta0
    c = theta.abs() + eta if adaptive else torch.ones_like(theta)
    return _worst(obj, rho_list, c, p, "adaptive" if adaptive else "none", eta, steps,
                  restarts, step_size, tol, seed)


def _worst(obj: Objective, rhos: list[float], c: Tensor, p: str, scale: str, eta: float,
           steps: int, restarts: int, step_size: float, tol: float, seed: int
           ) -> WorstCaseSharpness:
    n_l, n_g = obj.n_loss, obj.n_grad
    gen = torch.Generator().manual_seed(int(seed))
    asc = _Ascent(obj, c, p, steps, step_size, tol)
    l0, g0 = obj.origin()
    d0 = _direction(c * g0, p)
    sam = bool((d0 != 0).any())  # else SAM's step is delta = 0 and its value L(theta)
    values, ones, diverged, converged, evals = [], [], [], [], []
    explore = True                                 # restarts still find something
    for rho in rhos:
        n0 = obj.n_loss
        starts: list[tuple[float, Tensor, Tensor]] = []
        one = asc.l0
        if sam:  # SAM's one-step point: a start and the one_step value
            z = _project(step_size * rho * d0, rho, p)
            f, g = asc.eval(z)
            one = f
            starts.append((f, z, g))
        best, zbest, conv, left = asc.l0, torch.zeros_like(c), True, restarts
        if starts:
            f, z, g = max(starts, key=lambda s: s[0])
            best, zbest, _, conv = asc.climb(rho, z, f, g)
            left -= 1
        random_first = not starts  # no start: the first ascent is from a random point
        while left > 0 and best < math.inf and (explore or random_first):
            z = _boundary(c.numel(), rho, p, gen, c)
            f, g = asc.eval(z)
            b, zb, _, cv = asc.climb(rho, z, f, g, None if random_first else zbest)
            left -= 1
            # found something: a higher maximum (beyond the tolerance) at another point
            found = (b > best and not asc.small(b - best, b)
                     and _cos(zb, zbest) <= 1 - _JOIN)
            if b > best:
                best, zbest = b, zb
            if random_first:
                conv, random_first = cv, False
            elif not found:  # it joined the incumbent or stayed below: stop restarting
                explore = False
        values.append(best - l0)   # NaN when the base loss itself is not finite
        ones.append(one - l0)
        diverged.append(best == math.inf)
        converged.append(conv)
        evals.append(obj.n_loss - n0)
    return WorstCaseSharpness(rhos, values, ones, p, scale, eta, l0, steps, restarts,
                              step_size, obj.n_loss - n_l, obj.n_grad - n_g, int(seed),
                              diverged, tol, converged, evals)


def keskar_sharpness(obj: Objective, epsilons: Sequence[float] = (1e-3, 5e-3), *,
                     steps: int = 20, restarts: int = 2, tol: float = TOL,
                     seed: int = 0) -> KeskarSharpness:
    """Keskar et al., "On large-batch training for deep learning: generalization gap and sharp
    minima", ICLR 2017: ``100 [max_{y in C_eps} L(theta+y) - L(theta)] / (1 + L(theta))`` with
    ``C_eps = {|y_i| <= eps (|theta_i| + 1)}`` (full space, no random subspace).

    Keskar used L-BFGS-B; here the box problem is solved by projected sign-gradient ascent
    (``p = inf``, ``c = |theta| + 1``, step ``eps``), which for a convex loss moves between
    corners of the box and stops at a corner maximizer.  ``steps``, ``restarts`` and ``tol``
    as in :func:`worst_case_sharpness` (the stopping rule is the module docstring's).
    """
    eps = _check(epsilons, "epsilon", steps, restarts, tol)
    c = obj.theta0.abs() + 1.0
    w = _worst(obj, eps, c, "inf", "keskar", 1.0, steps, restarts, 1.0, tol, seed)
    vals = [100.0 * v / (1.0 + w.base_loss) for v in w.values]
    return KeskarSharpness(eps, vals, w.values, w.base_loss, steps, restarts,
                           w.n_loss_evals, w.n_grad_evals, int(seed), w.diverged, tol,
                           w.converged)


# ----------------------------------------------------------------------------- average
@dataclass
class AverageSharpness:
    """``E_{delta ~ N(0, rho^2 diag(c^2))}[L(theta + delta) - L(theta)]`` per radius."""

    rhos: list[float]
    means: list[float]
    stderrs: list[float]
    adaptive: bool
    eta: float
    base_loss: float
    n_samples: int
    n_loss_evals: int              # this call's (the shared origin excluded when known)
    seed: int
    antithetic: bool = False       # pairs (delta, -delta); stderr of the pair means


def average_sharpness(obj: Objective, rhos: Sequence[float] = (0.01, 0.05), *,
                      adaptive: bool = False, eta: float = 0.01, n_samples: int = 16,
                      antithetic: bool = True, seed: int = 0) -> AverageSharpness:
    """Monte Carlo average sharpness from ``n_samples`` loss evaluations per radius (mean, stderr).

    ``adaptive=False``: random average sharpness, ``c = 1`` (``delta ~ N(0, rho^2 I)``);
    ``adaptive=True``: ``c = |theta| + eta`` (Andriushchenko et al., ICML 2023, average
    adaptive sharpness; Kwon et al., ICML 2021 for the scaling).  The same seeded standard
    normal draws are reused for every ``rho`` (common random numbers: the differences
    between radii carry less noise than independent draws would), so the cost is
    ``n_samples`` loss evaluations per radius plus ``L(theta)`` (shared, see
    :meth:`Objective.origin_loss`).

    ``antithetic=True`` (``n_samples`` even, >= 4) evaluates ``n_samples / 2`` pairs
    ``(delta, -delta)`` and averages ``(L(theta + delta) + L(theta - delta)) / 2 - L(theta)``
    over the pairs: the odd terms of the Taylor expansion (the gradient term ``g . delta``,
    whose spread dominates away from a minimum) cancel within each pair, the expectation is
    unchanged, and the standard error is that of the pair means.  ``antithetic=False``: plain
    independent draws.  A non-finite loss counts as ``+inf`` (:func:`loss_value`), so the mean
    is ``inf`` rather than ``NaN``.
    """
    rho_list = _check(rhos, "rho")
    if antithetic and (n_samples < 4 or n_samples % 2):
        raise LandscopeError(f"antithetic average sharpness needs an even n_samples >= 4 "
                             f"(two pairs for a standard error; got {n_samples})")
    if n_samples < 2:
        raise LandscopeError(f"n_samples must be >= 2 for a standard error (got {n_samples})")
    n0, theta = obj.n_loss, obj.theta0
    c = theta.abs() + eta if adaptive else torch.ones_like(theta)
    gen = torch.Generator().manual_seed(int(seed))
    n_draws = n_samples // 2 if antithetic else n_samples
    xi = torch.randn(n_draws, theta.numel(), generator=gen, dtype=torch.float64).to(theta)
    l0 = obj.origin_loss()
    means, errs = [], []
    for rho in rho_list:
        if antithetic:
            vals = [0.5 * (loss_value(obj.loss(theta + rho * c * x))
                           + loss_value(obj.loss(theta - rho * c * x))) - l0 for x in xi]
        else:
            vals = [loss_value(obj.loss(theta + rho * c * x)) - l0 for x in xi]
        diffs = torch.tensor(vals, dtype=torch.float64)
        means.append(float(diffs.mean()))
        errs.append(float(diffs.std() / math.sqrt(n_draws)))
    return AverageSharpness(rho_list, means, errs, adaptive, eta, l0, n_samples,
                            obj.n_loss - n0, int(seed), antithetic)
