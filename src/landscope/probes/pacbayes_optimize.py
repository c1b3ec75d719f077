"""Optimised PAC-Bayes posteriors and complexity at matched posterior error (H4).

Reference: G. K. Dziugaite and D. M. Roy, "Computing nonvacuous generalization bounds for deep
(stochastic) neural networks with many more parameters than training data", UAI 2017, Sec. 4–5.

**Posterior families.** ``Q = N(mu, Sigma)`` with a trainable mean ``mu`` (started at the trained
weights) and

- ``isotropic``: ``Sigma = s I`` (one log-variance);
- ``hessian``: ``Sigma = V diag(s_v) V^T + s_perp (I - V V^T)``, ``V`` the top-k Hessian
  eigenvectors (k + 1 log-variances). It contains the isotropic family (``s_v = s_perp``).

**Optimisation** (:func:`optimize_posterior`), as Dziugaite & Roy do: minimise the differentiable
surrogate ``L_S(Q) + sqrt(B(Q) / 2)`` over ``mu`` and the log-variances with Adam, where ``L_S`` is
the job's loss scaled into an upper bound of the 0-1 error (cross-entropy / ln 2: a wrong argmax
has ``p_y <= 1/2``; 4 x the squared loss for ``loss=mse``;
:func:`landscope.losses.error_surrogate`) of one reparameterised draw on a minibatch, and ``B`` the
bound's complexity term (:func:`~landscope.probes.pacbayes_bound.complexity_term`) with the prior
variance at its continuous optimum ``lambda* = (tr Sigma + ||mu - w0||^2) / D`` (the final bound
pays for the grid). Both families start from the same point (``mu = w``, ``s`` the best of a coarse
isotropic grid, scored with a few draws) and run the same number of steps with the same minibatch
and noise stream, so a difference is the families', not the budget's.

**Final bound** (:func:`evaluate_posterior`): fresh draws (``n_mc``, independent of the
optimisation), the Monte Carlo error's kl upper value (Langford & Caruana) and the
Dziugaite–Roy bound with the prior variance on the union-bound grid
(:func:`~landscope.probes.pacbayes_bound.choose_prior`). The statement is uniform over ``Q``, so
optimising ``Q`` on the data costs nothing; the prior mean ``w0`` (the initialization) is
data-independent.

**Matched error** (:func:`complexity_at_error`). A lower bound can come from a lower complexity
or from a smaller posterior error. H4 asks about complexity, so each optimised posterior's
covariance is scaled, ``Sigma_t = t Sigma``, on a grid of ``t`` (common random numbers across
``t``), its error curve made monotone and interpolated in ``log t`` to the common target error
(the isotropic posterior's final Monte Carlo error), and the complexity term evaluated there.
These matched values are comparison statistics, not bounds: no confidence is claimed for them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscope.errors import LandscopeError
from landscope.losses import error_surrogate
from landscope.probes.pacbayes import ZeroOneError, eigenbasis, flat_prior_mean, standard_normal
from landscope.probes.pacbayes_bound import (
    F64,
    check_delta,
    check_m,
    choose_prior,
    complexity_term,
    dziugaite_roy_bound,
    mc_error_upper,
    occam_bound,
)
from landscope.probes.probe_data import ProbeData

FAMILIES = ("isotropic", "hessian")
MATCH_SCALES = tuple(2.0 ** e for e in range(-4, 5))  # t = 1/16 ... 16, octaves


@dataclass
class Posterior:
    """``N(mean, V diag(s_v) V^T + s_perp (I - V V^T))`` (``basis`` V, D x k; ``None`` and
    ``s_v`` empty for the isotropic family). ``mean`` in float64."""

    family: str
    mean: Tensor
    s_perp: float
    s_v: Tensor
    basis: Optional[Tensor] = None

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def trace(self, t: float = 1.0) -> float:
        k = self.s_v.numel()
        return t * (float(self.s_v.sum()) + (self.dim - k) * self.s_perp)

    def logdet(self, t: float = 1.0) -> float:
        k = self.s_v.numel()
        return (float(torch.log(self.s_v).sum()) + (self.dim - k) * math.log(self.s_perp)
                + self.dim * math.log(t))

    def kl_prior(self, w0: Tensor, t: float = 1.0, b: float = 100.0,
                 c: float = 0.1) -> tuple[int, float, float]:
        """``(j, lambda_j, KL)`` against the best grid prior ``N(w0, lambda_j I)``."""
        dist2 = float(((self.mean - w0) ** 2).sum())
        return choose_prior(self.trace(t), dist2, self.logdet(t), self.dim, b, c)

    def noise(self, z: Tensor, t: float = 1.0) -> Tensor:
        """``Sigma_t^{1/2} z`` for a standard normal ``z`` (float64)."""
        u = math.sqrt(t * self.s_perp) * z
        if self.basis is not None and self.s_v.numel():
            scale = (t * self.s_v).sqrt() - math.sqrt(t * self.s_perp)
            u = u + self.basis @ (scale * (self.basis.T @ z))
        return u


class _Surrogate:
    """The differentiable objective ``CE / ln 2 + sqrt(B / 2)`` on a functional copy of the
    model (eval mode: BatchNorm running statistics kept, as in the final evaluation)."""

    def __init__(self, model: nn.Module, data: ProbeData, w0: Tensor, delta: float,
                 b: float, c: float) -> None:
        self.work = copy.deepcopy(model).eval()
        self.work.requires_grad_(False)
        named = list(self.work.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.dtype, self.device = named[0][1].dtype, named[0][1].device
        self.x = torch.cat([x for x, _ in data.batches]).to(self.device, self.dtype)
        self.y = torch.cat([y for _, y in data.batches]).to(self.device)
        self.m, self.dim = len(self.y), sum(self.numels)
        self.w0 = w0
        self.log_const = math.log(math.pi ** 2 * self.m / (6.0 * delta))
        self.b, self.c = b, c

    def complexity(self, mean: Tensor, s_perp_log: Tensor, s_v_log: Tensor) -> Tensor:
        k = s_v_log.numel()
        trace = s_v_log.exp().sum() + (self.dim - k) * s_perp_log.exp()
        logdet = s_v_log.sum() + (self.dim - k) * s_perp_log
        dist2 = ((mean.to(F64) - self.w0) ** 2).sum()
        lam = torch.clamp((trace + dist2) / self.dim, max=self.c * math.exp(-1.0 / self.b))
        kl = 0.5 * ((trace + dist2) / lam - self.dim + self.dim * torch.log(lam) - logdet)
        j = self.b * torch.log(self.c / lam)
        return (kl + 2.0 * torch.log(j) + self.log_const) / (self.m - 1)

    def loss(self, theta: Tensor, idx: Tensor) -> Tensor:
        params = {n: p.view(s) for n, p, s in zip(self.names, torch.split(theta, self.numels),
                                                   self.shapes)}
        logits = functional_call(self.work, params, (self.x[idx],))
        return error_surrogate(self.work, logits, self.y[idx])


def optimize_posterior(model: nn.Module, data: ProbeData, family: str, *,
                       w0: Tensor | nn.Module | None = None, basis: Optional[Tensor] = None,
                       init_var: float, steps: int = 300, lr_mean: float = 1e-3,
                       lr_var: float = 3e-2, batch_size: int = 256, delta: float = 0.025,
                       b: float = 100.0, c: float = 0.1, seed: int = 0) -> Posterior:
    """Minimise ``CE/ln 2 + sqrt(B/2)`` over the mean and log-variances of ``family``
    (module docstring) for ``steps`` Adam steps (``lr_mean`` for the mean, ``lr_var`` for
    the log-variances), one reparameterised draw per step on a minibatch of ``batch_size``
    samples. Starts at the model's weights with every variance ``init_var``. ``steps=0``
    returns the starting posterior. The model is not modified."""
    if family not in FAMILIES:
        raise LandscopeError(f"unknown posterior family {family!r}; choose one of {FAMILIES}")
    if family == "hessian" and basis is None:
        raise LandscopeError("the hessian family needs the eigenvector basis")
    if not (math.isfinite(init_var) and init_var > 0) or steps < 0 or batch_size < 1:
        raise LandscopeError(f"need init_var > 0, steps >= 0, batch_size >= 1 (got {init_var}, "
                             f"{steps}, {batch_size})")
    check_delta(delta, "delta")
    check_m(data.n)
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    sur = _Surrogate(model, data, flat_prior_mean(w0, w.numel(), w.device), delta, b, c)
    k = basis.shape[1] if family == "hessian" and basis is not None else 0
    V = basis.to(sur.device, sur.dtype) if k else None
    mean = w.clone().to(sur.dtype).requires_grad_(True)
    s_perp_log = torch.tensor(math.log(init_var), dtype=F64, device=sur.device,
                              requires_grad=True)
    s_v_log = torch.full((k,), math.log(init_var), dtype=F64, device=sur.device,
                         requires_grad=True)
    opt = torch.optim.Adam([{"params": [mean], "lr": lr_mean},
                            {"params": [s_perp_log, s_v_log], "lr": lr_var}])
    gen = torch.Generator().manual_seed(int(seed))
    bs = min(int(batch_size), sur.m)
    for _ in range(int(steps)):
        opt.zero_grad()
        z = standard_normal(sur.dim, gen, sur.device, sur.dtype)
        idx = torch.randint(0, sur.m, (bs,), generator=gen).to(sur.device)
        sd_perp = (0.5 * s_perp_log).exp().to(sur.dtype)
        u = sd_perp * z
        if V is not None:
            u = u + V @ (((0.5 * s_v_log).exp().to(sur.dtype) - sd_perp) * (V.T @ z))
        objective = sur.loss(mean + u, idx) + torch.sqrt(
            sur.complexity(mean, s_perp_log, s_v_log) / 2.0).to(sur.dtype)
        objective.backward()
        opt.step()
        with torch.no_grad():  # keep variances in a sane range (no overflow in exp)
            s_perp_log.clamp_(-60.0, 10.0)
            s_v_log.clamp_(-60.0, 10.0)
    return Posterior(family, mean.detach().to(F64), float(s_perp_log.detach().exp()),
                     s_v_log.detach().exp(), basis.to(sur.device, F64) if k else None)


def _errors(error: ZeroOneError, posts: Sequence[Posterior], scales: Sequence[float], n: int,
            gen: torch.Generator) -> np.ndarray:
    """Mean 0-1 error of ``n`` draws of each posterior at each covariance scale, with common
    random numbers (one ``z`` per draw shared by all); shape ``(len(posts), len(scales))``."""
    total = np.zeros((len(posts), len(scales)))
    for _ in range(int(n)):
        z = standard_normal(error.dim, gen, error.device)
        for i, post in enumerate(posts):
            for j, t in enumerate(scales):
                total[i, j] += error((post.mean + post.noise(z, t)).to(error.dtype))
    return total / int(n)


def evaluate_posterior(error: ZeroOneError, post: Posterior, w0: Tensor, *,
                       n_mc: int, delta: float, delta_mc: float, gen: torch.Generator,
                       b: float = 100.0, c: float = 0.1) -> dict[str, float]:
    """The final bound of ``post`` from ``n_mc`` fresh draws: ``e_mc``, ``e_upper`` (kl upper
    value at ``delta_mc``), ``kl``, ``prior_j``, ``prior_var``, ``complexity`` and ``bound``."""
    e_mc = float(_errors(error, [post], [1.0], n_mc, gen)[0, 0])
    up = mc_error_upper(e_mc, int(n_mc), delta_mc)
    j, lam, kl = post.kl_prior(w0, 1.0, b, c)
    return {"e_mc": e_mc, "e_upper": up, "kl": kl, "prior_j": float(j), "prior_var": lam,
            "complexity": complexity_term(kl, error.n, delta, j),
            "bound": dziugaite_roy_bound(up, kl, error.n, delta, j)}


def interpolate_scale(errors: np.ndarray, scales: Sequence[float], target: float
                      ) -> tuple[float, bool]:
    """``t*`` where the (made non-decreasing) error curve crosses ``target``, linear in
    ``log t``; clipped to the grid's ends (``clipped`` True) when the target lies outside."""
    e = np.maximum.accumulate(np.asarray(errors, float))
    logt = np.log(np.asarray(scales, float))
    if target <= e[0]:
        return float(scales[0]), bool(target < e[0])
    if target >= e[-1]:
        return float(scales[-1]), bool(target > e[-1])
    hi = int(np.argmax(e >= target))  # first index at or above the target (hi >= 1)
    lo = hi - 1
    span = e[hi] - e[lo]
    frac = 0.0 if span <= 0 else (target - e[lo]) / span
    return float(math.exp(logt[lo] + frac * (logt[hi] - logt[lo]))), False


def complexity_at_error(error: ZeroOneError, posts: Sequence[Posterior], target: float,
                        w0: Tensor, *, delta: float, n_draws: int,
                        gen: torch.Generator, scales: Sequence[float] = MATCH_SCALES,
                        b: float = 100.0, c: float = 0.1) -> list[dict[str, float]]:
    """For each posterior: the covariance scale ``t*`` at which its Monte Carlo error equals
    ``target`` (common random numbers across posteriors and scales), the complexity term of
    ``N(mean, t* Sigma)`` there and whether ``t*`` was clipped to the grid."""
    errs = _errors(error, posts, scales, n_draws, gen)
    out = []
    for post, e in zip(posts, errs):
        t, clipped = interpolate_scale(e, scales, target)
        j, _, kl = post.kl_prior(w0, t, b, c)
        out.append({"scale": t, "clipped": float(clipped), "kl": kl,
                    "complexity": complexity_term(kl, error.n, delta, j)})
    return out


def _initial_variance(error: ZeroOneError, w0: Tensor, *, delta: float, n_draws: int,
                      gen: torch.Generator, b: float, c: float) -> float:
    """The best isotropic variance of a coarse grid (``mean(w^2) * 10^{-6..0}``) by the plain
    Monte Carlo bound of ``n_draws`` draws (a starting point only)."""
    w = error.theta0.to(F64)
    scale = max(float((w ** 2).mean()), 1e-12)
    grid = [scale * 10.0 ** e for e in range(-6, 1)]
    post = Posterior("isotropic", w, 1.0, torch.zeros(0, dtype=F64, device=w.device))
    errs = _errors(error, [post], grid, n_draws, gen)[0]
    scores = []
    for s, e in zip(grid, errs):
        j, _, kl = post.kl_prior(w0, s, b, c)
        scores.append(dziugaite_roy_bound(float(e), kl, error.n, delta, j))
    return grid[int(np.argmin(scores))]


def optimized_pac_bayes_bounds(model: nn.Module, train: ProbeData, eigvals: Tensor,
                               eigvecs: Tensor, *, w0: Tensor | nn.Module | None = None,
                               delta: float = 0.025, delta_mc: float = 0.01, n_mc: int = 300,
                               n_select: int = 24, n_match: int = 32, steps: int = 300,
                               lr_mean: float = 1e-3, lr_var: float = 3e-2,
                               batch_size: int = 256, b: float = 100.0, c: float = 0.1,
                               seed: int = 0) -> dict[str, float]:
    """Naive, optimised-isotropic and optimised-Hessian bounds, their complexity terms and
    the complexities at matched posterior error (module docstring). Keys as
    :func:`~landscope.probes.pacbayes.pac_bayes_bounds` where they mean the same
    (``pacbayes_naive``/``_isotropic``/``_hessian``, ``kl_*``, ``*_e_mc``, ``*_e_upper``,
    ``*_prior_var``, ``*_prior_j``, ``train_error``, ``m``, ``D``, ``k``, ...) plus
    ``complexity_{naive,isotropic,hessian}``, ``matched_error``,
    ``matched_complexity_{isotropic,hessian}``, ``matched_scale_*``, ``matched_clipped_*``,
    ``posterior`` = 1.0 (optimised). ``n_select`` draws per coarse-grid variance choose the
    starting variance; ``n_match`` draws per scale build the matched-error curves. Each final
    Monte Carlo statement holds at ``delta_mc / 2`` (two posteriors), so both bounds hold
    simultaneously with probability ``>= 1 - delta - delta_mc``. The model is not modified."""
    check_delta(delta, "delta")
    check_delta(delta_mc, "delta_mc")
    m = train.n
    check_m(m)
    if min(int(n_mc), int(n_select), int(n_match)) < 1:
        raise LandscopeError(f"n_mc, n_select and n_match must be >= 1 (got {n_mc}, "
                             f"{n_select}, {n_match})")
    error = ZeroOneError(model, train)
    lam, basis = eigenbasis(eigvals, eigvecs, error.dim, error.device)
    prior_mean = flat_prior_mean(w0, error.dim, error.device)
    gen = torch.Generator().manual_seed(int(seed))
    init = _initial_variance(error, prior_mean, delta=delta, n_draws=int(n_select), gen=gen,
                             b=b, c=c)
    common = dict(w0=prior_mean, init_var=init, steps=steps, lr_mean=lr_mean, lr_var=lr_var,
                  batch_size=batch_size, delta=delta, b=b, c=c, seed=seed)
    posts = [optimize_posterior(model, train, "isotropic", **common),
             optimize_posterior(model, train, "hessian", basis=basis, **common)]
    finals = [evaluate_posterior(error, p, prior_mean, n_mc=int(n_mc), delta=delta,
                                 delta_mc=delta_mc / 2, gen=gen, b=b, c=c) for p in posts]
    target = finals[0]["e_mc"]
    matched = complexity_at_error(error, posts, target, prior_mean, delta=delta,
                                  n_draws=int(n_match), gen=gen, b=b, c=c)
    bits = 8 * torch.empty((), dtype=error.dtype).element_size()
    dim, train_error = error.dim, error(error.theta0)
    out: dict[str, float] = {
        "pacbayes_naive": occam_bound(train_error, dim, m, delta, bits),
        "complexity_naive": (bits * dim * math.log(2.0) + math.log(1.0 / delta)) / m,
        "train_error": train_error, "naive_log_hypotheses": bits * dim * math.log(2.0),
        "m": float(m), "D": float(dim), "k": float(lam.numel()), "n_mc": float(n_mc),
        "n_select": float(n_select), "n_match": float(n_match), "steps": float(steps),
        "delta": float(delta), "delta_mc": float(delta_mc), "posterior": 1.0,
        "init_var": init, "matched_error": target,
        "dist2_to_prior_mean": float(((error.theta0.to(F64) - prior_mean) ** 2).sum()),
    }
    out.update(_families(posts, finals, matched, prior_mean))
    return out


def _families(posts: list[Posterior], finals: list[dict[str, float]],
              matched: list[dict[str, float]], prior_mean: Tensor) -> dict[str, float]:
    """Each optimised family's bound, complexity, errors and matched complexity, and the
    variances of the posteriors (the keys of :func:`optimized_pac_bayes_bounds`)."""
    out: dict[str, float] = {}
    for name, post, fin, mat in zip(FAMILIES, posts, finals, matched):
        out[f"pacbayes_{name}"] = fin["bound"]
        out.update({f"kl_{name}": fin["kl"], f"complexity_{name}": fin["complexity"],
                    f"{name}_e_mc": fin["e_mc"], f"{name}_e_upper": fin["e_upper"],
                    f"{name}_prior_var": fin["prior_var"], f"{name}_prior_j": fin["prior_j"],
                    f"{name}_dist2_to_prior_mean": float(((post.mean - prior_mean) ** 2).sum()),
                    f"matched_complexity_{name}": mat["complexity"],
                    f"matched_scale_{name}": mat["scale"],
                    f"matched_clipped_{name}": mat["clipped"]})
    out["isotropic_s"] = posts[0].s_perp
    h = posts[1]
    out.update({"hessian_s_perp": h.s_perp, "hessian_s_min": float(h.s_v.min()),
                "hessian_s_max": float(h.s_v.max()),
                "hessian_n_shrunk": float((h.s_v < h.s_perp).sum()),
                "hessian_is_isotropic": float(bool(torch.allclose(h.s_v, torch.full_like(
                    h.s_v, h.s_perp), rtol=1e-6)))})
    return out
