"""PAC-Bayes flatness (Jiang et al., "Fantastic generalization measures and where to find
them", ICLR 2020, their eqs. 48-51): the search for the largest ``sigma'`` whose random
perturbations keep the mean deviation within a target (re-exported by
:mod:`landscope.probes.sharpness`).

Draws: the expectation is the mean over ``n_draws`` seeded draws ``u = s(sigma) * xi_m``, the
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
guess is tried, then points further down (or up) until one falls on the other side of the
target, which brackets ``sigma'`` in one or two points instead of a search over the seven
decades of ``sigma_range``; the ends of ``sigma_range`` stay the limits. The first step goes
``WALK_OVERSHOOT`` past the point where a deviation growing as ``sigma^2`` (its growth near a
minimum) would reach the target, the next ones ``WALK_OVERSHOOT`` past where the deviation,
growing as the power of ``sigma`` its last two points show, would reach it (a factor
``guess_factor`` when those points show no growth); every step is at most a factor
``guess_factor``: after a good guess the bracket is a few per cent wide instead of a factor
``guess_factor``, and the narrowing takes fewer points.
Under the single-crossing assumption the answer is the same within ``rtol``
whatever the guess; a poor guess only costs more points.

Draws per point: the accuracy lies in [0, 1], so the draws are made pair by pair and stop as
soon as the remaining ones cannot move the ``n_draws`` mean across the target either way
(decided exactly as with all draws); the loss criterion uses all ``n_draws``.  Means are
``math.fsum`` sums (independent of the order of the draws).  The search assumes, like a
bisection, that the deviation crosses the target once in ``sigma_range``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from landscope.errors import LandscopeError
from landscope.probes.objective import Objective

__all__ = ["PacBayesFlatness", "pac_bayes_flatness", "sigma_guess"]

# The walk's first step from a guess aims this factor past the point where a deviation growing
# as sigma^2 would reach the target (its cost against the factor-4 walk:
# docs/measurements.md#probes-flatness)
WALK_OVERSHOOT = 1.15


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
    a trained network has dropped by the default target of 0.1 (the increases measured on
    trained networks: docs/measurements.md#probes-flatness).  The random average (``c = 1``) guesses
    the plain ``sigma'``, the adaptive one (``c = |theta| + eta``) the magnitude-aware one.  None
    when the increase is not a finite positive number (no guess: the search starts from
    ``sigma_range``).

    >>> sigma_guess(1.2, 0.1)  # sigma' = 0.1 · sqrt(0.3 / 1.2)
    0.05
    >>> sigma_guess(0.0, 0.1) is None
    True
    """
    if not (math.isfinite(average_increase) and average_increase > 0 and rho > 0):
        return None
    return rho * math.sqrt(loss_increase / average_increase)


def _power_step(deviation: float, target: float, factor: float, power: float) -> float:
    """The factor to the next point of the walk: where a deviation growing as ``sigma^power``
    reaches the target, moved ``WALK_OVERSHOOT`` past it so that the point likely falls on the
    other side, within ``[WALK_OVERSHOOT, factor]`` (a zero or non-finite deviation, or no
    growth: ``factor``)."""
    if not (math.isfinite(deviation) and deviation > 0 and power > 0):
        return factor
    to_target = min(abs(math.log(target / deviation)) / power, math.log(factor))
    return min(max(math.exp(to_target) * WALK_OVERSHOOT, WALK_OVERSHOOT), factor)


def _quadratic_step(deviation: float, target: float, factor: float) -> float:
    """:func:`_power_step` for a deviation growing as ``sigma^2`` (its growth near a minimum)."""
    return _power_step(deviation, target, factor, 2.0)


def _secant_step(seen: list[tuple[float, float]], target: float, factor: float) -> float:
    """:func:`_power_step` after two points on one side of the target, with the power their
    slope of ``log deviation`` against ``log sigma`` shows (``factor`` when they show no growth
    or a deviation is zero or not finite). ``p = 2`` is :func:`_quadratic_step`."""
    (s1, d1), (s2, d2) = seen[-2], seen[-1]
    if not all(math.isfinite(d) and d > 0 for d in (d1, d2)) or s1 == s2:
        return factor
    return _power_step(d2, target, factor, math.log(d2 / d1) / math.log(s2 / s1))


def _bracket_from(above: Callable[[float], bool], seen: list[tuple[float, float]], guess: float,
                  factor: float, lo: float, hi: float, target: float
                  ) -> tuple[float, Optional[float], float, Optional[float]]:
    """Walk from ``guess`` until the target is crossed, within ``(lo, hi)``: the first step by
    :func:`_quadratic_step`, the next ones by :func:`_secant_step` (the growth the walk has seen,
    so that a deviation growing slower than ``sigma^2`` is not followed in small quadratic
    steps, nor overshot by a blind factor ``factor``). ``(lo, d_lo, hi, d_hi)``
    with the deviations at the points tried (None: an end of the range that was not tried)."""
    d_lo: Optional[float] = None
    d_hi: Optional[float] = None
    sigma = guess

    def step(deviation: float) -> float:
        if len(seen) == 1:
            return _quadratic_step(deviation, target, factor)
        return _secant_step(seen, target, factor)

    if above(sigma):
        while True:
            hi, d_hi = sigma, seen[-1][1]
            sigma = sigma / step(d_hi)
            if sigma <= lo:
                return lo, None, hi, d_hi
            if not above(sigma):
                return sigma, seen[-1][1], hi, d_hi
    while True:
        lo, d_lo = sigma, seen[-1][1]
        sigma = sigma * step(d_lo)
        if sigma >= hi:
            return lo, d_lo, hi, None
        if above(sigma):
            return lo, d_lo, sigma, seen[-1][1]


def _criterion(obj: Objective, criterion: Optional[str]) -> tuple[str, Optional[float]]:
    """The criterion in use and the accuracy at ``theta`` (None for the loss criterion)."""
    base_acc = None if criterion == "loss" else obj.origin_accuracy()
    crit = criterion or ("loss" if base_acc is None else "accuracy")
    if crit not in ("accuracy", "loss") or (crit == "accuracy" and base_acc is None):
        raise LandscopeError(f"criterion must be 'loss' or 'accuracy' (the latter only for "
                             f"objectives with an accuracy; got {criterion!r})")
    return crit, base_acc


def _draws(theta: Tensor, n_draws: int, antithetic: bool, seed: int) -> Tensor:
    """The ``n_draws`` seeded standard normal directions, pair by pair when antithetic."""
    gen = torch.Generator().manual_seed(int(seed))
    half = (n_draws + 1) // 2 if antithetic else n_draws
    xi = torch.randn(half, theta.numel(), generator=gen, dtype=torch.float64).to(theta)
    # pair by pair (xi_1, -xi_1, xi_2, ...): the same n_draws draws as xi then -xi
    return torch.stack([xi, -xi], 1).reshape(-1, theta.numel())[:n_draws] if antithetic else xi


class _Deviation:
    """The mean deviation at ``sigma`` against the target; ``seen`` records every point."""

    def __init__(self, obj: Objective, crit: str, base: float, xi: Tensor, target: float,
                 magnitude_aware: bool, eps: float) -> None:
        self.theta, self.crit, self.base, self.xi, self.target = obj.theta0, crit, base, xi, target
        self.fn = obj.loss if crit == "loss" else obj.accuracy
        self.magnitude_aware, self.eps, self.n_draws = magnitude_aware, eps, len(xi)
        self.seen: list[tuple[float, float]] = []

    def decided(self, vals: list[float]) -> Optional[bool]:
        """Above/below the target whatever the remaining accuracies in [0, 1] are, or None."""
        base, target = self.base, self.target
        s, rest = math.fsum(vals), self.n_draws - len(vals)
        m_lo, m_hi = s / self.n_draws, (s + rest) / self.n_draws    # range of the n_draws mean
        far = max(abs(m_lo - base), abs(m_hi - base))
        near = 0.0 if m_lo <= base <= m_hi else min(abs(m_lo - base), abs(m_hi - base))
        margin = 1e-12 * target                           # rounding: never decide a tie early
        return True if near > target + margin else False if far < target - margin else None

    def above(self, sigma: float) -> bool:
        """Whether the ``n_draws`` deviation at ``sigma`` exceeds the target."""
        theta, eps = self.theta, self.eps
        std = (sigma ** 2 * theta ** 2 + eps ** 2).sqrt() if self.magnitude_aware else sigma
        vals: list[float] = []
        verdict: Optional[bool] = None
        for x in self.xi:
            vals.append(float(self.fn(theta + std * x)))  # type: ignore[arg-type]
            if not math.isfinite(vals[-1]):
                verdict = True  # a NaN or infinite mean: the deviation exceeds any target
            elif self.crit == "accuracy" and len(vals) % 2 == 0 and len(vals) < self.n_draws:
                verdict = self.decided(vals)
            if verdict is not None:
                break
        dev = abs(math.fsum(vals) / len(vals) - self.base)
        dev = dev if math.isfinite(dev) else math.inf
        self.seen.append((sigma, dev))
        return dev > self.target if verdict is None else verdict


def _first_bracket(dev: _Deviation, lo: float, hi: float, guess: Optional[float],
                   guess_factor: float
                   ) -> tuple[float, Optional[float], float, Optional[float], bool]:
    """``(lo, d_lo, hi, d_hi, bracketed)`` from the guess or ``sigma_range[1]``."""
    d_lo: Optional[float] = None       # unknown until a point below the target is found
    d_hi: Optional[float] = None
    if guess is not None and lo < guess < hi and guess_factor > 1:
        lo, d_lo, hi, d_hi = _bracket_from(dev.above, dev.seen, float(guess),
                                           float(guess_factor), lo, hi, dev.target)
    if d_hi is None:
        d_hi = dev.seen[-1][1] if dev.above(hi) else None
        if d_hi is None:
            return hi, d_lo, hi, d_hi, False
    return lo, d_lo, hi, d_hi, True


def _next_point(lo: float, d_lo: Optional[float], hi: float, d_hi: float, w_lo: float,
                w_hi: float, widths: list[float], target: float, rtol: float) -> float:
    """The next ``log sigma``: Illinois interpolation, else the bisection point."""
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
    return u


def _narrow(dev: _Deviation, lo: float, d_lo: Optional[float], hi: float, d_hi: float,
            rtol: float) -> float:
    """Close the bracket ``(lo, hi)`` until ``hi / lo <= 1 + rtol``; the final ``lo``."""
    w_lo = w_hi = 1.0                  # Illinois weights of the retained ends
    last, widths = 0, [math.log(hi / lo)]
    while hi / lo > 1 + rtol:
        sigma = math.exp(_next_point(lo, d_lo, hi, d_hi, w_lo, w_hi, widths, dev.target, rtol))
        if dev.above(sigma):
            hi, d_hi = sigma, dev.seen[-1][1]
            w_lo, w_hi = (0.5 * w_lo if last == 1 else 1.0), 1.0
            last = 1
        else:
            lo, d_lo = sigma, dev.seen[-1][1]
            w_hi, w_lo = (0.5 * w_hi if last == -1 else 1.0), 1.0
            last = -1
        widths.append(math.log(hi / lo))
    return lo


def pac_bayes_flatness(obj: Objective, *, target: float = 0.1,
                       criterion: Optional[str] = None, magnitude_aware: bool = False,
                       eps: float = 1e-3, n_draws: int = 10,
                       sigma_range: tuple[float, float] = (1e-6, 10.0), rtol: float = 1e-3,
                       antithetic: bool = True, seed: int = 0, guess: Optional[float] = None,
                       guess_factor: float = 4.0) -> PacBayesFlatness:
    """Jiang et al. (2020)'s PAC-Bayes flatness: the largest ``sigma'`` with
    ``|E_u acc(theta + u) - acc(theta)| <= target``, ``u ~ N(0, sigma'^2 I)`` or, magnitude
    aware, ``u_i ~ N(0, sigma'^2 theta_i^2 + eps^2)``; the reported measure is ``1/sigma'^2``.

    The expectation is the mean over ``n_draws`` seeded draws (``antithetic``: in pairs
    ``xi, -xi``); ``sigma'`` is searched in ``sigma_range`` to the relative precision ``rtol``,
    starting from ``guess`` when given (steps of ``guess_factor``): see the module docstring.
    ``criterion="loss"`` (the default when the objective has no accuracy) uses
    ``|E_u L(theta + u) - L(theta)|`` instead.
    """
    theta = obj.theta0
    counted = obj.n_acc, obj.n_loss
    crit, base_acc = _criterion(obj, criterion)
    lo, hi = float(sigma_range[0]), float(sigma_range[1])
    if not (0 < lo < hi) or target <= 0 or n_draws < 1 or not rtol > 0:
        raise LandscopeError(f"need 0 < sigma_range[0] < sigma_range[1], target > 0, rtol > 0 "
                             f"and n_draws >= 1 (got {sigma_range}, {target}, {rtol}, {n_draws})")
    xi = _draws(theta, n_draws, antithetic, seed)
    base = obj.origin_loss() if crit == "loss" else float(base_acc)  # type: ignore[arg-type]
    dev = _Deviation(obj, crit, base, xi, target, magnitude_aware, eps)
    lo, d_lo, hi, d_hi, bracketed = _first_bracket(dev, lo, hi, guess, guess_factor)
    if bracketed:
        lo = _narrow(dev, lo, d_lo, hi, d_hi, rtol)  # type: ignore[arg-type]
    if bracketed and lo == float(sigma_range[0]) and dev.above(lo):
        bracketed = False
    n = obj.n_acc - counted[0] if crit == "accuracy" else obj.n_loss - counted[1]
    return PacBayesFlatness(lo, 1.0 / lo ** 2, crit, float(target), magnitude_aware, eps,
                            n_draws, antithetic, (float(sigma_range[0]), float(sigma_range[1])),
                            bracketed, dev.seen, n, int(seed))
