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
when the ascent converges geometrically at least twice as fast as ``tol`` shrinks (the
networks measured: ratios 0.25-0.35 per step).  Restarts, from seeded random boundary points,
only while they find something: a restart is abandoned once its iterate's cosine with the
incumbent maximizer exceeds ``1 - 1e-2`` (it has joined it); one that does not end at a
higher maximum (by more than ``tol``) at another point (cosine ``<= 1 - 1e-2``) ends the
restarts of this radius and of every later one.

The value is the largest loss seen, with ``delta = 0`` (always feasible) included, so it is
a certified lower bound of the maximum and ``>= 0``.  A non-finite loss
met anywhere (an overflowed forward pass: ``inf`` or ``NaN``) counts as ``+inf``
(:func:`loss_value`): the measure is then ``inf`` and ``diverged`` says so, never a smaller
finite value.  For a convex loss (a quadratic with PSD ``A``) the iteration converges to the
maximizer of the trust-region / box problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor

from landscope.errors import LandscopeError
from landscope.probes.objective import (ModelObjective, Objective, QuadraticObjective,
                                        loss_value)

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


# ----------------------------------------------------------------------------- PAC-Bayes
@dataclass
class PacBayesFlatness:
    """Largest ``sigma`` with mean deviation ``<= target``; ``measure = 1 / sigma^2``."""

    sigma: float
    measure: float
    criterion: str                 # "accuracy" or "loss"
    target: float
    magnitude_aware: bool
    eps: float
    n_draws: int
    antithetic: bool
    sigma_range: tuple[float, float]
    bracketed: bool                # False: the answer is an end of sigma_range
    # (sigma, deviation) per point tried; from the draws made (all, unless decided early)
    deviations: list[tuple[float, float]] = field(default_factory=list)
    n_evals: int = 0               # loss or accuracy evaluations of this call
    seed: int = 0


def sigma_guess(average_increase: float, rho: float, loss_increase: float = 0.3) -> Optional[float]:
    """A rough ``sigma'`` for :func:`pac_bayes_flatness`'s ``guess`` from an average sharpness
    ``average_increase`` = E L(theta + rho c xi) - L(theta) measured at radius ``rho``: near a
    quadratic the increase grows as sigma^2, so ``sigma = rho sqrt(loss_increase /
    average_increase)`` is where the loss rises by ``loss_increase``, about where the accuracy of
    a trained network has dropped by the default target of 0.1 (0.25-0.8 measured on the MNIST-1D
    MLP and ViT).  The random average (``c = 1``) guesses the plain ``sigma'``, the adaptive one
    (``c = |theta| + eta``) the magnitude-aware one.  None when the increase is not a finite
    positive number (no guess: the search starts from ``sigma_range``)."""
    if not (math.isfinite(average_increase) and average_increase > 0 and rho > 0):
        return None
    return rho * math.sqrt(loss_increase / average_increase)


def _bracket_from(above: Callable[[float], bool], seen: list[tuple[float, float]], guess: float,
                  factor: float, lo: float, hi: float
                  ) -> tuple[float, Optional[float], float, Optional[float]]:
    """Walk from ``guess`` by ``factor`` until the target is crossed, within ``(lo, hi)``:
    ``(lo, d_lo, hi, d_hi)`` with the deviations at the points tried (None: an end of the range
    that was not tried)."""
    d_lo: Optional[float] = None
    d_hi: Optional[float] = None
    sigma = guess
    if above(sigma):
        while True:
            hi, d_hi = sigma, seen[-1][1]
            sigma = sigma / factor
            if sigma <= lo:
                return lo, None, hi, d_hi
            if not above(sigma):
                return sigma, seen[-1][1], hi, d_hi
    while True:
        lo, d_lo = sigma, seen[-1][1]
        sigma = sigma * factor
        if sigma >= hi:
            return lo, d_lo, hi, None
        if above(sigma):
            return lo, d_lo, sigma, seen[-1][1]


def pac_bayes_flatness(obj: Objective, *, target: float = 0.1,
                       criterion: Optional[str] = None, magnitude_aware: bool = False,
                       eps: float = 1e-3, n_draws: int = 10,
                       sigma_range: tuple[float, float] = (1e-6, 10.0), rtol: float = 1e-3,
                       antithetic: bool = True, seed: int = 0, guess: Optional[float] = None,
                       guess_factor: float = 4.0) -> PacBayesFlatness:
    """Jiang et al., "Fantastic generalization measures and where to find them", ICLR 2020
    (PAC-Bayes flatness, their eqs. 48-51): the largest ``sigma'`` with
    ``|E_u acc(theta + u) - acc(theta)| <= target``, ``u ~ N(0, sigma'^2 I)`` or, magnitude
    aware, ``u_i ~ N(0, sigma'^2 theta_i^2 + eps^2)``; the reported measure is ``1/sigma'^2``.

    The expectation is the mean over ``n_draws`` seeded draws ``u = s(sigma) * xi_m``, the
    same ``xi_m`` for every ``sigma`` (common random numbers, so the deviation is a smooth
    function of ``sigma``); ``antithetic=True`` pairs each ``xi`` with ``-xi``, which cancels
    the odd (first-order) terms that dominate the Monte Carlo noise away from a minimum.

    Search: ``sigma'`` is bracketed in ``sigma_range`` until ``hi / lo <= 1 + rtol`` (the
    stated relative precision of ``sigma'``).  The next point is the Illinois (modified
    regula falsi) root of ``log deviation - log target`` against ``log sigma`` once both ends
    have a positive finite deviation, else the bisection point on ``log sigma``, and the
    bisection point whenever two steps in a row failed to halve the bracket.  ``sigma_range[1]``
    is tried first; ``sigma_range[0]`` only if the bracket closes on it.  ``guess`` (a rough
    ``sigma'`` from measures already made, e.g. :func:`sigma_guess`) replaces that start: the
    guess is tried, then points a factor ``guess_factor`` further down (or up) until one falls
    on the other side of the target, which brackets ``sigma'`` in one or two points instead of
    a search over the seven decades of ``sigma_range``; the ends of ``sigma_range`` stay the
    limits.  Under the single-crossing assumption the answer is the same within ``rtol``
    whatever the guess; a poor guess only costs more points.  Draws per point: the
    accuracy lies in [0, 1], so the draws are made pair by pair and stop as soon as the
    remaining ones cannot move the ``n_draws`` mean across the target either way (decided
    exactly as with all draws); the loss criterion uses all ``n_draws``.  Means are
    ``math.fsum`` sums (independent of the order of the draws).
    ``criterion="loss"`` (the default when the objective has no accuracy) uses
    ``|E_u L(theta + u) - L(theta)|`` instead.  The search assumes, like a bisection, that the
    deviation crosses the target once in ``sigma_range``.
    """
    theta = obj.theta0
    counted = obj.n_acc, obj.n_loss
    base_acc = None if criterion == "loss" else obj.origin_accuracy()
    crit = criterion or ("loss" if base_acc is None else "accuracy")
    if crit not in ("accuracy", "loss") or (crit == "accuracy" and base_acc is None):
        raise LandscopeError(f"criterion must be 'loss' or 'accuracy' (the latter only for "
                             f"objectives with an accuracy; got {criterion!r})")
    lo, hi = float(sigma_range[0]), float(sigma_range[1])
    if not (0 < lo < hi) or target <= 0 or n_draws < 1 or not rtol > 0:
        raise LandscopeError(f"need 0 < sigma_range[0] < sigma_range[1], target > 0, rtol > 0 "
                             f"and n_draws >= 1 (got {sigma_range}, {target}, {rtol}, {n_draws})")
    gen = torch.Generator().manual_seed(int(seed))
    half = (n_draws + 1) // 2 if antithetic else n_draws
    xi = torch.randn(half, theta.numel(), generator=gen, dtype=torch.float64).to(theta)
    # pair by pair (xi_1, -xi_1, xi_2, ...): the same n_draws draws as xi then -xi
    xi = torch.stack([xi, -xi], 1).reshape(-1, theta.numel())[:n_draws] if antithetic else xi
    fn = obj.loss if crit == "loss" else obj.accuracy
    base = obj.origin_loss() if crit == "loss" else float(base_acc)  # type: ignore[arg-type]
    seen: list[tuple[float, float]] = []

    def decided(vals: list[float]) -> Optional[bool]:
        """Above/below the target whatever the remaining accuracies in [0, 1] are, or None."""
        s, rest = math.fsum(vals), n_draws - len(vals)
        m_lo, m_hi = s / n_draws, (s + rest) / n_draws    # range of the n_draws mean
        far = max(abs(m_lo - base), abs(m_hi - base))
        near = 0.0 if m_lo <= base <= m_hi else min(abs(m_lo - base), abs(m_hi - base))
        margin = 1e-12 * target                           # rounding: never decide a tie early
        return True if near > target + margin else False if far < target - margin else None

    def above(sigma: float) -> bool:
        """Whether the ``n_draws`` deviation at ``sigma`` exceeds the target."""
        std = (sigma ** 2 * theta ** 2 + eps ** 2).sqrt() if magnitude_aware else sigma
        vals: list[float] = []
        verdict: Optional[bool] = None
        for x in xi:
            vals.append(float(fn(theta + std * x)))  # type: ignore[arg-type]
            if not math.isfinite(vals[-1]):
                verdict = True  # a NaN or infinite mean: the deviation exceeds any target
            elif crit == "accuracy" and len(vals) % 2 == 0 and len(vals) < n_draws:
                verdict = decided(vals)
            if verdict is not None:
                break
        dev = abs(math.fsum(vals) / len(vals) - base)
        dev = dev if math.isfinite(dev) else math.inf
        seen.append((sigma, dev))
        return dev > target if verdict is None else verdict

    bracketed = True
    d_lo: Optional[float] = None       # unknown until a point below the target is found
    d_hi: Optional[float] = None
    if guess is not None and lo < guess < hi and guess_factor > 1:
        lo, d_lo, hi, d_hi = _bracket_from(above, seen, float(guess), float(guess_factor), lo, hi)
    if d_hi is None:
        d_hi = seen[-1][1] if above(hi) else None
        if d_hi is None:
            lo, bracketed = hi, False
    w_lo = w_hi = 1.0                  # Illinois weights of the retained ends
    last, widths = 0, [math.log(hi / lo)] if bracketed else []
    while bracketed and hi / lo > 1 + rtol:
        a, b = math.log(lo), math.log(hi)
        mid = 0.5 * (a + b)
        u = mid
        # interpolate only off a plateau at the target (accuracies are discrete)
        if d_lo and d_lo < target * (1 - 1e-9) and d_hi < math.inf and not (len(widths) > 2
                                                      and widths[-1] > 0.5 * widths[-3]):
            ra, rb = w_lo * math.log(d_lo / target), w_hi * math.log(d_hi / target)
            if rb > ra:
                # never closer to an end than half the target width: a root next to an
                # end (or a plateau at the target) then closes the bracket in one step
                step = min(0.5 * math.log1p(rtol), 0.25 * (b - a))
                u = min(max(a + (b - a) * ra / (ra - rb), a + step), b - step)
        sigma = math.exp(u)
        if above(sigma):
            hi, d_hi = sigma, seen[-1][1]
            w_lo, w_hi = (0.5 * w_lo if last == 1 else 1.0), 1.0
            last = 1
        else:
            lo, d_lo = sigma, seen[-1][1]
            w_hi, w_lo = (0.5 * w_hi if last == -1 else 1.0), 1.0
            last = -1
        widths.append(math.log(hi / lo))
    if bracketed and lo == float(sigma_range[0]) and above(lo):
        bracketed = False
    n = obj.n_acc - counted[0] if crit == "accuracy" else obj.n_loss - counted[1]
    return PacBayesFlatness(lo, 1.0 / lo ** 2, crit, float(target), magnitude_aware, eps,
                            n_draws, antithetic, (float(sigma_range[0]), float(sigma_range[1])),
                            bracketed, seen, n, int(seed))
