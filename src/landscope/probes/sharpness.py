"""Sharpness and flatness measures (issue #3 item 7) on a generic :class:`Objective`.

Every measure works on flat parameter vectors through an objective with ``loss``, ``grad``
(and ``loss_and_grad``), ``accuracy`` and ``theta0``, so the same code serves networks
(:class:`ModelObjective`, functional evaluation that never writes the model) and closed-form
quadratics (:class:`QuadraticObjective`, the tests' oracle).  Each returns a small dataclass
with the grid/hyperparameters, the values, the number of evaluations and the seed.

Worst-case measures are maximized by projected normalized-gradient ascent in the scaled
variable ``z = delta / c`` (``c`` = 1, ``|theta| + eta`` or ``|theta| + 1``):
``z <- P(z + step * rho * d)`` with ``d = argmax_{||d||_p <= 1} (c*g) . d`` (the normalized
gradient for p=2, its sign for p=inf) and ``P`` the projection on ``||z||_p <= rho``.  From
``z = 0`` the first step is SAM's one-step approximation (for ``step >= 1``).  Restart 0
starts there (or, when the gradient at ``theta`` vanishes, at a random boundary point), the
other restarts at seeded random boundary points.  The value is the largest loss seen, with
``delta = 0`` (always feasible) included, so it is a certified lower bound of the maximum and
``>= 0``.  A non-finite loss met anywhere (an overflowed forward pass: ``inf`` or ``NaN``)
counts as ``+inf`` (:func:`loss_value`): the measure is then ``inf`` and ``diverged`` says so,
never a smaller finite value (``max(x, nan)`` is ``x``, which once read a diverged ascent as
flat).  For a convex loss (a quadratic with PSD ``A``) the iteration converges to the
maximizer of the trust-region / box problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscope.errors import LandscopeError
from landscope.losses import n_correct, task_loss
from landscope.probes.hvp import Mode, fixed_tensors, forward_mode, resolve_params
from landscope.probes.probe_data import ProbeData

Norm = Literal["2", "inf"]


class Objective:
    """A scalar objective of a flat parameter vector; ``theta0`` is the point probed.

    Subclasses implement :meth:`loss_and_grad`, :meth:`loss` and optionally
    :meth:`accuracy`; the counters ``n_loss``/``n_grad`` record evaluations.
    """

    theta0: Tensor

    def __init__(self) -> None:
        self.n_loss = 0
        self.n_grad = 0

    def loss(self, theta: Tensor) -> float:
        raise NotImplementedError

    def loss_and_grad(self, theta: Tensor) -> tuple[float, Tensor]:
        raise NotImplementedError

    def grad(self, theta: Tensor) -> Tensor:
        return self.loss_and_grad(theta)[1]

    def accuracy(self, theta: Tensor) -> Optional[float]:
        return None


class QuadraticObjective(Objective):
    """``L(theta) = 1/2 theta^T A theta + b^T theta + c`` (closed-form references)."""

    def __init__(self, A: Tensor, b: Optional[Tensor] = None, c: float = 0.0,
                 theta0: Optional[Tensor] = None) -> None:
        super().__init__()
        self.A, self.c = A, float(c)
        self.b = torch.zeros(A.shape[0], dtype=A.dtype) if b is None else b
        self.theta0 = torch.zeros_like(self.b) if theta0 is None else theta0.detach().clone()

    def loss(self, theta: Tensor) -> float:
        self.n_loss += 1
        return float(0.5 * theta @ (self.A @ theta) + self.b @ theta) + self.c

    def loss_and_grad(self, theta: Tensor) -> tuple[float, Tensor]:
        self.n_loss += 1
        self.n_grad += 1
        at = self.A @ theta
        return float(0.5 * theta @ at + self.b @ theta) + self.c, at + self.b


class ModelObjective(Objective):
    """Mean cross-entropy (exact micro-batch weights) and accuracy of ``model`` on ``data``
    at any flat vector of the probed parameters, via ``torch.func.functional_call``.

    The model is never written (its train/eval flags are restored; in ``mode="train"``
    BatchNorm uses batch statistics without updating running ones).  ``params`` selects a
    subset as in :func:`landscope.probes.hvp.resolve_params`.
    """

    def __init__(self, model: nn.Module, data: ProbeData, params: Optional[dict[str, Tensor]]
                 = None, mode: Mode = "eval") -> None:
        super().__init__()
        self.model, self.mode = model, mode
        self.names, values = resolve_params(model, params)
        self.dtype, self.device = values[0].dtype, values[0].device
        self._shapes = [v.shape for v in values]
        self._numels = [v.numel() for v in values]
        self.theta0 = torch.cat([v.reshape(-1) for v in values]).clone()
        self._fixed = fixed_tensors(model, self.names, self.dtype, self.device)
        if data.dtype != self.dtype or data.device != self.device:
            data = data.to(self.dtype, self.device)
        self.data = data

    def _params(self, theta: Tensor) -> dict[str, Tensor]:
        if theta.shape != self.theta0.shape:
            raise LandscopeError(f"expected a flat vector of shape {tuple(self.theta0.shape)}, "
                                 f"got {tuple(theta.shape)}")
        parts = torch.split(theta, self._numels)
        return {**self._fixed, **{n: p.view(s) for n, p, s in
                                  zip(self.names, parts, self._shapes)}}

    def loss(self, theta: Tensor) -> float:
        self.n_loss += 1
        total = 0.0
        with torch.no_grad(), forward_mode(self.model, self.mode):
            params = self._params(theta.detach())
            for (x, y), w in zip(self.data.batches, self.data.weights):
                total += w * float(task_loss(self.model, functional_call(self.model, params, (x,)), y))
        return total

    def loss_and_grad(self, theta: Tensor) -> tuple[float, Tensor]:
        self.n_loss += 1
        self.n_grad += 1
        leaf = theta.detach().clone().requires_grad_(True)
        total, grad = 0.0, torch.zeros_like(leaf)
        with torch.enable_grad(), forward_mode(self.model, self.mode):
            params = self._params(leaf)
            for (x, y), w in zip(self.data.batches, self.data.weights):
                lb = w * task_loss(self.model, functional_call(self.model, params, (x,)), y)
                grad += torch.autograd.grad(lb, leaf)[0]
                total += float(lb.detach())
        return total, grad

    def accuracy(self, theta: Tensor) -> float:
        """Exact fraction of correctly classified probe samples."""
        correct = 0
        with torch.no_grad(), forward_mode(self.model, self.mode):
            params = self._params(theta.detach())
            for x, y in self.data.batches:
                correct += n_correct(self.model, functional_call(self.model, params, (x,)), y)
        return correct / self.data.n


# ----------------------------------------------------------------------------- worst case
@dataclass
class WorstCaseSharpness:
    """``max_{||delta / c||_p <= rho} L(theta + delta) - L(theta)`` per radius."""

    rhos: list[float]
    values: list[float]            # multi-step ascent (max over restarts and iterates)
    one_step: list[float]          # SAM/ASAM one-step approximation
    p: str
    scale: str                     # "none", "adaptive" (|theta| + eta) or "keskar" (|theta| + 1)
    eta: float
    base_loss: float
    steps: int
    restarts: int
    step_size: float
    n_loss_evals: int
    n_grad_evals: int
    seed: int
    diverged: list[bool] = field(default_factory=list)   # the ascent met a non-finite loss


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


def loss_value(f: float) -> float:
    """The loss as a search compares it: a non-finite value (``inf``, ``-inf`` or ``NaN``,
    from a forward pass that overflowed) is ``+inf``, so a maximum never drops it."""
    f = float(f)
    return f if math.isfinite(f) else math.inf


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


def _ascent(obj: Objective, c: Tensor, rho: float, p: str, base: tuple[float, Tensor],
            steps: int, restarts: int, step_size: float, gen: torch.Generator
            ) -> tuple[float, float]:
    """(best loss, one-step loss) over ``||z||_p <= rho``, ``delta = c * z``; a non-finite
    loss counts as ``+inf`` (:func:`loss_value`) and ends the search (nothing exceeds it)."""
    theta, (l0, g0) = obj.theta0, base
    d0 = _direction(c * g0, p)
    sam = bool((d0 != 0).any())  # else SAM's step is delta = 0 and its value L(theta)
    best, one = loss_value(l0), loss_value(l0)
    for r in range(restarts):
        z = (_project(step_size * rho * d0, rho, p) if r == 0 and sam
             else _boundary(theta.numel(), rho, p, gen, theta))
        for k in range(steps):
            f, g = obj.loss_and_grad(theta + c * z)
            f = loss_value(f)
            if r == 0 and k == 0 and sam:
                one = f
            best = max(best, f)
            if best == math.inf:
                return best, one
            z = _project(z + step_size * rho * _direction(c * g, p), rho, p)
        best = max(best, loss_value(obj.loss(theta + c * z)))
        if best == math.inf:
            return best, one
    return best, one


def _check(grid: Sequence[float], what: str, steps: int = 1, restarts: int = 1) -> list[float]:
    vals = [float(v) for v in grid]
    if not vals or min(vals) <= 0 or not all(map(math.isfinite, vals)):
        raise LandscopeError(f"{what} grid must be non-empty, finite and > 0 (got {vals})")
    if steps < 1 or restarts < 1:
        raise LandscopeError(f"steps and restarts must be >= 1 (got {steps}, {restarts})")
    return vals


def worst_case_sharpness(obj: Objective, rhos: Sequence[float] = (0.01, 0.05), *,
                         p: Norm = "2", adaptive: bool = False, eta: float = 0.01,
                         steps: int = 20, restarts: int = 2, step_size: float = 1.0,
                         seed: int = 0) -> WorstCaseSharpness:
    """Worst-case sharpness ``max_{||delta / c||_p <= rho} L(theta+delta) - L(theta)``.

    ``adaptive=False``, ``p="2"``: SAM's (Foret et al., "Sharpness-aware minimization for
    efficiently improving generalization", ICLR 2021) with ``c = 1``; ``one_step`` is SAM's
    first-order maximizer ``delta = rho g / ||g||``.  ``adaptive=True``: ASAM's (Kwon et al.,
    ICML 2021; Andriushchenko et al., "A modern look at the relationship between sharpness and
    generalization", ICML 2023) with ``c = |theta| + eta`` and ``p`` in {"2", "inf"}.
    Maximized by projected normalized-gradient ascent (module docstring), ``steps`` gradient
    evaluations per restart, step ``step_size * rho`` in ``z``.
    """
    rho_list = _check(rhos, "rho", steps, restarts)
    if p not in ("2", "inf"):
        raise LandscopeError(f"p must be '2' or 'inf' (got {p!r})")
    theta = obj.theta0
    c = theta.abs() + eta if adaptive else torch.ones_like(theta)
    return _worst(obj, rho_list, c, p, "adaptive" if adaptive else "none", eta, steps,
                  restarts, step_size, seed)


def _worst(obj: Objective, rhos: list[float], c: Tensor, p: str, scale: str, eta: float,
           steps: int, restarts: int, step_size: float, seed: int) -> WorstCaseSharpness:
    n_l, n_g = obj.n_loss, obj.n_grad
    gen = torch.Generator().manual_seed(int(seed))
    base = obj.loss_and_grad(obj.theta0)
    values, ones, diverged = [], [], []
    for rho in rhos:
        best, one = _ascent(obj, c, rho, p, base, steps, restarts, step_size, gen)
        values.append(best - base[0])   # NaN when the base loss itself is not finite
        ones.append(one - base[0])
        diverged.append(best == math.inf)
    return WorstCaseSharpness(rhos, values, ones, p, scale, eta, base[0], steps, restarts,
                              step_size, obj.n_loss - n_l, obj.n_grad - n_g, int(seed), diverged)


def keskar_sharpness(obj: Objective, epsilons: Sequence[float] = (1e-3, 5e-3), *,
                     steps: int = 20, restarts: int = 2, seed: int = 0) -> KeskarSharpness:
    """Keskar et al., "On large-batch training for deep learning: generalization gap and sharp
    minima", ICLR 2017: ``100 [max_{y in C_eps} L(theta+y) - L(theta)] / (1 + L(theta))`` with
    ``C_eps = {|y_i| <= eps (|theta_i| + 1)}`` (full space, no random subspace).

    Keskar used L-BFGS-B; here the box problem is solved by projected sign-gradient ascent
    (``p = inf``, ``c = |theta| + 1``, step ``eps``), which for a convex loss moves between
    corners of the box and stops at a corner maximizer.
    """
    eps = _check(epsilons, "epsilon", steps, restarts)
    c = obj.theta0.abs() + 1.0
    w = _worst(obj, eps, c, "inf", "keskar", 1.0, steps, restarts, 1.0, seed)
    vals = [100.0 * v / (1.0 + w.base_loss) for v in w.values]
    return KeskarSharpness(eps, vals, w.values, w.base_loss, steps, restarts,
                           w.n_loss_evals, w.n_grad_evals, int(seed), w.diverged)


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
    n_loss_evals: int
    seed: int


def average_sharpness(obj: Objective, rhos: Sequence[float] = (0.01, 0.05), *,
                      adaptive: bool = False, eta: float = 0.01, n_samples: int = 32,
                      seed: int = 0) -> AverageSharpness:
    """Monte Carlo average sharpness with ``n_samples`` Gaussian draws (mean, stderr).

    ``adaptive=False``: random average sharpness, ``c = 1`` (``delta ~ N(0, rho^2 I)``);
    ``adaptive=True``: ``c = |theta| + eta`` (Andriushchenko et al., ICML 2023, average
    adaptive sharpness; Kwon et al., ICML 2021 for the scaling).  The same seeded standard
    normal draws are reused for every ``rho`` (common random numbers).  A non-finite loss
    counts as ``+inf`` (:func:`loss_value`), so the mean is ``inf`` rather than ``NaN``.
    """
    rho_list = _check(rhos, "rho")
    if n_samples < 2:
        raise LandscopeError(f"n_samples must be >= 2 for a standard error (got {n_samples})")
    n0, theta = obj.n_loss, obj.theta0
    c = theta.abs() + eta if adaptive else torch.ones_like(theta)
    gen = torch.Generator().manual_seed(int(seed))
    xi = torch.randn(n_samples, theta.numel(), generator=gen, dtype=torch.float64).to(theta)
    l0 = obj.loss(theta)
    means, errs = [], []
    for rho in rho_list:
        diffs = torch.tensor([loss_value(obj.loss(theta + rho * c * x)) - l0 for x in xi],
                             dtype=torch.float64)
        means.append(float(diffs.mean()))
        errs.append(float(diffs.std() / math.sqrt(n_samples)))
    return AverageSharpness(rho_list, means, errs, adaptive, eta, l0, n_samples,
                            obj.n_loss - n0, int(seed))


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
    deviations: list[tuple[float, float]] = field(default_factory=list)  # (sigma, deviation)
    n_evals: int = 0               # loss or accuracy evaluations
    seed: int = 0


def pac_bayes_flatness(obj: Objective, *, target: float = 0.1,
                       criterion: Optional[str] = None, magnitude_aware: bool = False,
                       eps: float = 1e-3, n_draws: int = 10,
                       sigma_range: tuple[float, float] = (1e-6, 10.0), rtol: float = 1e-3,
                       antithetic: bool = True, seed: int = 0) -> PacBayesFlatness:
    """Jiang et al., "Fantastic generalization measures and where to find them", ICLR 2020
    (PAC-Bayes flatness, their eqs. 48-51): the largest ``sigma'`` with
    ``|E_u acc(theta + u) - acc(theta)| <= target``, ``u ~ N(0, sigma'^2 I)`` or, magnitude
    aware, ``u_i ~ N(0, sigma'^2 theta_i^2 + eps^2)``; the reported measure is ``1/sigma'^2``.

    The expectation is the mean over ``n_draws`` seeded draws ``u = s(sigma) * xi_m``, the
    same ``xi_m`` for every ``sigma`` (common random numbers, so the deviation is a smooth
    function of ``sigma``); ``antithetic=True`` pairs each ``xi`` with ``-xi``, which cancels
    the odd (first-order) terms that dominate the Monte Carlo noise away from a minimum.  ``sigma'`` is found by bisection on ``log sigma`` inside
    ``sigma_range`` until ``hi / lo <= 1 + rtol``.  ``criterion="loss"`` (the default when
    the objective has no accuracy) uses ``|E_u L(theta + u) - L(theta)|`` instead.
    """
    theta = obj.theta0
    base_acc = None if criterion == "loss" else obj.accuracy(theta)
    crit = criterion or ("loss" if base_acc is None else "accuracy")
    if crit not in ("accuracy", "loss") or (crit == "accuracy" and base_acc is None):
        raise LandscopeError(f"criterion must be 'loss' or 'accuracy' (the latter only for "
                             f"objectives with an accuracy; got {criterion!r})")
    lo, hi = float(sigma_range[0]), float(sigma_range[1])
    if not (0 < lo < hi) or target <= 0 or n_draws < 1:
        raise LandscopeError(f"need 0 < sigma_range[0] < sigma_range[1], target > 0 and "
                             f"n_draws >= 1 (got {sigma_range}, {target}, {n_draws})")
    n_acc = 1  # the base value
    gen = torch.Generator().manual_seed(int(seed))
    half = (n_draws + 1) // 2 if antithetic else n_draws
    xi = torch.randn(half, theta.numel(), generator=gen, dtype=torch.float64).to(theta)
    xi = torch.cat([xi, -xi])[:n_draws] if antithetic else xi
    fn = obj.loss if crit == "loss" else obj.accuracy
    base = float(fn(theta))  # type: ignore[arg-type]
    seen: list[tuple[float, float]] = []

    def deviation(sigma: float) -> float:
        nonlocal n_acc
        std = (sigma ** 2 * theta ** 2 + eps ** 2).sqrt() if magnitude_aware else sigma
        vals = [float(fn(theta + std * x)) for x in xi]  # type: ignore[arg-type]
        n_acc += len(vals)
        dev = abs(sum(vals) / len(vals) - base)
        dev = dev if math.isfinite(dev) else math.inf   # a NaN deviation exceeds any target
        seen.append((sigma, dev))
        return dev

    bracketed = True
    if deviation(hi) <= target:
        lo, bracketed = hi, False
    elif deviation(lo) > target:
        hi, bracketed = lo, False
    while bracketed and hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        if deviation(mid) <= target:
            lo = mid
        else:
            hi = mid
    return PacBayesFlatness(lo, 1.0 / lo ** 2, crit, float(target), magnitude_aware, eps,
                            n_draws, antithetic, (float(sigma_range[0]), float(sigma_range[1])),
                            bracketed, seen, n_acc, int(seed))
