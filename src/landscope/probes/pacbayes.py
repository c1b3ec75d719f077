"""PAC-Bayes generalization bounds with isotropic and Hessian-informed Gaussian posteriors (H4).

Reference: G. K. Dziugaite and D. M. Roy, "Computing nonvacuous generalization bounds for deep
(stochastic) neural networks with many more parameters than training data", UAI 2017.

**The bound.** Prior ``P_j = N(w0, lambda_j I)`` with ``lambda_j = c * exp(-j / b)``, ``j = 1, 2,
...``, and ``w0`` a data-independent point (the initialization). With probability ``>= 1 - delta``
over the ``m`` training samples, simultaneously for every posterior ``Q`` and every ``j`` (union
bound with weights ``6 / (pi^2 j^2)``)::

    kl(e_S(Q) || e(Q))
        <= [KL(Q || P_j) + 2 ln(b ln(c / lambda_j)) + ln(pi^2 m / (6 delta))] / (m - 1)

so ``e(Q) <= kl_inverse_upper(e_S(Q), that / (m - 1))``, with ``kl`` the Bernoulli KL and ``e`` the
0-1 error (``2 ln(b ln(c/lambda_j)) = 2 ln j``). Because the statement is uniform over ``Q``,
choosing ``Q`` after seeing the data (searching variances) costs nothing in this term; only the
prior must be fixed in advance, which the grid over ``j`` pays for.

**The empirical error** ``e_S(Q)`` (mean training error of a network drawn from ``Q``) is estimated
by ``n_mc`` i.i.d. draws, each evaluated exactly on all ``m`` samples with
:class:`ZeroOneError`; Langford and Caruana's sample-convergence bound
makes it rigorous: with probability ``>= 1 - delta'`` over the draws,
``e_S(Q) <= kl_inverse_upper(e_mc, ln(2 / delta') / n_mc)`` (each draw's error lies in [0, 1],
so the Chernoff kl bound applies). As ``kl_inverse_upper`` is increasing in ``q``, substituting
this upper value gives a bound that holds with probability ``>= 1 - delta - delta'``.

The formula's pieces (kl and its inverses, Gaussian KLs, the prior grid, the complexity term, the
Monte Carlo upper value, the Occam bound) are in :mod:`landscope.probes.pacbayes_bound`.

**Posteriors and the search** (:func:`pac_bayes_bounds`). Isotropic: ``Q = N(w, s I)``.
Hessian-informed: covariance diagonal in the basis of the top-k Hessian eigenvectors ``V``,
``s_i = min(s_perp, beta / max(lambda_i, eps))`` along ``v_i`` and ``s_perp`` on the orthogonal
complement (``beta`` is the tolerated loss rise per direction: ``1/2 lambda_i s_i <= beta/2``);
``beta = inf`` is the isotropic posterior, so the isotropic family is a subfamily. The search runs
in two stages with independent draws:

1. *selection*: every candidate ``(s_perp, beta)`` of the grids is scored with ``n_select`` draws
   (common random numbers across candidates) by the bound computed from the plain MC mean; the
   isotropic winner (``beta = inf`` only) and the Hessian-family winner are kept. No confidence is
   claimed for these estimates.
2. *final*: fresh draws (independent of the selection), ``n_mc`` per winner, each winner's MC upper
   value at confidence ``delta' / 2`` (a union bound over the two winners, so every reported MC
   statement holds simultaneously with probability ``>= 1 - delta'``). The Hessian bound is the
   smaller of the bounds of the two winners (both are members of the Hessian family), so
   ``pacbayes_hessian <= pacbayes_isotropic`` by construction.

The selection is independent of the final draws given the data, so the final statements are valid
for the selected posteriors; the two PAC-Bayes bounds hold simultaneously with probability
``>= 1 - delta - delta'``. Noise is drawn in float64 and added in the model's dtype (the rounding
to the float grid is ignored, as in Dziugaite & Roy).

**Prior variance.** For a posterior with covariance trace ``T`` the KL is minimized over
continuous ``lambda`` at ``lambda* = (T + ||w - w0||^2) / D``; we take the grid index
``j* = b ln(c / lambda*)`` and use whichever of its two integer neighbours (at least 1) gives the
smaller ``KL + 2 ln j`` (valid: the union bound covers every ``j``). ``lambda* >= c`` gives
``j = 1``.

**Naive bound.** Occam's razor for a finite class with a uniform prior (Langford 2005, "Tutorial on
practical prediction theory for classification", Thm. 4.6 in kl form): the network's weights are
one of ``|H| = 2^(bits D)`` bit patterns (``bits`` = 32 for float32), so with probability
``>= 1 - delta`` ``e(w) <= kl_inverse_upper(e_S(w), (bits D ln 2 + ln(1/delta)) / m)``, with the
exact training error of the trained network. It grows with ``D`` and is vacuous for real networks,
which is its purpose as a baseline.

**Devices.** The draws come from a seeded CPU generator and are moved to the model's device, so a
seed gives the same draws wherever the model lives; the prior mean and the eigenvectors are moved
there too.
"""

from __future__ import annotations

import copy
import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from landscope.errors import LandscopeError
from landscope.losses import n_correct
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


# ------------------------------------------------------------------------ shared inputs
class ZeroOneError:
    """The 0-1 error of ``model`` on ``data`` at any flat vector of its parameters.

    One private working copy (eval mode: BatchNorm running statistics kept) whose parameters
    are views into a flat buffer, so moving to a point is one vector copy. The flat order is
    ``model.named_parameters()`` order (:attr:`theta0` is the model's own point); the model
    passed in is never modified. The data are moved to the model's device and dtype once.
    Correctness is :func:`landscope.losses.n_correct` (the model's own task where it has one)."""

    def __init__(self, model: nn.Module, data: ProbeData) -> None:
        named = list(model.named_parameters())
        if not named:
            raise LandscopeError("the model has no parameters")
        numels = [p.numel() for _, p in named]
        self.dim, self.n = sum(numels), data.n
        self.dtype, self.device = named[0][1].dtype, named[0][1].device
        self.theta0 = torch.cat([p.detach().reshape(-1) for _, p in named]).clone()
        work = copy.deepcopy(model)
        work.requires_grad_(False)
        self._flat = self.theta0.clone()
        for (name, p), view in zip(named, torch.split(self._flat, numels)):
            path, _, leaf = name.rpartition(".")
            owner = work.get_submodule(path) if path else work
            owner._parameters[leaf] = nn.Parameter(view.view(p.shape), requires_grad=False)
        self._work = work.eval()
        self._batches = [(x.to(self.device, self.dtype), y.to(self.device))
                         for x, y in data.batches]

    def __call__(self, theta: Tensor) -> float:
        """Fraction of the samples the network at ``theta`` gets wrong."""
        if theta.shape != (self.dim,):
            raise LandscopeError(f"expected a flat vector of shape ({self.dim},), "
                                 f"got {tuple(theta.shape)}")
        with torch.no_grad():
            self._flat.copy_(theta)
        correct = 0
        with torch.inference_mode():
            for x, y in self._batches:
                correct += n_correct(self._work, self._work(x), y)
        return 1.0 - correct / self.n


def flat_prior_mean(w0: Tensor | nn.Module | None, dim: int,
                    device: torch.device | str = "cpu") -> Tensor:
    """The prior mean as a float64 vector on ``device``: ``w0`` flattened (a model of the same
    architecture or a flat vector in parameter order), or zeros for ``None``."""
    if w0 is None:
        return torch.zeros(dim, dtype=F64, device=device)
    if isinstance(w0, nn.Module):
        w0 = torch.cat([p.detach().reshape(-1) for p in w0.parameters()])
    flat = w0.detach().to(F64).reshape(-1)
    if flat.numel() != dim:
        raise LandscopeError(f"prior mean w0 has {flat.numel()} entries, the model {dim}")
    return flat.to(device)


def eigenbasis(eigvals: Tensor, eigvecs: Tensor, dim: int,
               device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """``(lambda, V)`` in float64 on ``device``: the eigenvalues and an exactly orthonormal
    basis of (almost) the same directions as ``eigvecs`` (D, k), checked for shape, finiteness
    and orthonormality (``max |V^T V - I| <= 1e-3``)."""
    lam = torch.as_tensor(eigvals).detach().to(F64).reshape(-1).to(device)
    vecs = torch.as_tensor(eigvecs).detach().to(F64).to(device)
    k = lam.numel()
    if vecs.dim() != 2 or vecs.shape != (dim, k) or not 1 <= k <= dim:
        raise LandscopeError(f"eigvecs must have shape (D={dim}, k={k}) with 1 <= k <= D "
                             f"(got {tuple(vecs.shape)})")
    if not (torch.isfinite(lam).all() and torch.isfinite(vecs).all()):
        raise LandscopeError("eigvals/eigvecs have non-finite entries")
    gram_err = float((vecs.T @ vecs - torch.eye(k, dtype=F64, device=vecs.device)).abs().max())
    if gram_err > 1e-3:
        raise LandscopeError(f"eigvecs are not orthonormal (max |V^T V - I| = {gram_err:.2e})")
    q, r = torch.linalg.qr(vecs)
    return lam, q * torch.sign(torch.diagonal(r))


def standard_normal(dim: int, gen: torch.Generator, device: torch.device,
                    dtype: torch.dtype = F64) -> Tensor:
    """``dim`` standard normal draws from the CPU generator ``gen``, on ``device``."""
    return torch.randn(dim, generator=gen, dtype=dtype).to(device)


# ------------------------------------------------------------------------ the grid search
class Candidate:
    """One Gaussian posterior of the grid family: variances along V and on the complement."""

    def __init__(self, s_perp: float, beta: float, lam: Tensor, eps: float, dim: int,
                 dist2: float, b: float, c: float) -> None:
        self.s_perp, self.beta = s_perp, beta
        self.s_v = (torch.full_like(lam, s_perp) if math.isinf(beta)
                    else torch.clamp(beta / torch.clamp(lam, min=eps), max=s_perp))
        k = lam.numel()
        trace = float(self.s_v.sum()) + (dim - k) * s_perp
        logdet = float(torch.log(self.s_v).sum()) + (dim - k) * math.log(s_perp)
        self.j, self.lam, self.kl = choose_prior(trace, dist2, logdet, dim, b, c)
        self.scale_v = self.s_v.sqrt() - math.sqrt(s_perp)

    def draw(self, w: Tensor, z: Tensor, vtz: Tensor, basis: Tensor) -> Tensor:
        """``w + sqrt(s_perp) z + V ((sqrt(s_v) - sqrt(s_perp)) * V^T z)`` ~ this posterior."""
        u = math.sqrt(self.s_perp) * z + basis @ (self.scale_v * vtz)
        return (w.to(F64) + u).to(w.dtype)


def pac_bayes_bounds(model: nn.Module, train: ProbeData, eigvals: Tensor, eigvecs: Tensor, *,
                     w0: Tensor | nn.Module | None = None, delta: float = 0.025,
                     delta_mc: float = 0.01, n_mc: int = 300, n_select: int = 24,
                     s_grid: Optional[Sequence[float]] = None,
                     beta_grid: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0), eps: float = 1e-12,
                     b: float = 100.0, c: float = 0.1, seed: int = 0) -> dict[str, float]:
    """Naive, isotropic and Hessian-informed PAC-Bayes bounds on the 0-1 error (module docstring).

    ``eigvals``/``eigvecs``: top-k Hessian eigenpairs, ``eigvecs`` (D, k) in
    ``model.named_parameters()`` order (that of :class:`~landscope.probes.hvp.HessianOperator`
    when every parameter is trainable). ``w0``: the data-independent prior mean (the
    initialization: a flat vector or a model of the same architecture); ``None`` centres the prior
    at 0. ``s_grid``: posterior variances searched (default ``||w||^2 / D * 10^{-6, -5.5, ...,
    0}``); ``beta_grid``: the Hessian rule's constants (``inf``, the isotropic member, is always
    added). Errors are those of the network in eval mode (BatchNorm running statistics kept). The
    model is not modified; results depend only on the inputs and ``seed``. Cost: ``n_select *
    len(s_grid) * (len(beta_grid) + 1) + 2 * n_mc`` evaluations on the ``m`` samples.
    """
    check_delta(delta, "delta")
    check_delta(delta_mc, "delta_mc")
    m = train.n
    check_m(m)
    if int(n_mc) < 1 or int(n_select) < 1:
        raise LandscopeError(f"n_mc and n_select must be >= 1 (got {n_mc}, {n_select})")
    error = ZeroOneError(model, train)
    dim = error.dim
    lam, basis = eigenbasis(eigvals, eigvecs, dim, error.device)
    w = error.theta0
    w64 = w.to(F64)
    dist2 = float(((w64 - flat_prior_mean(w0, dim, error.device)) ** 2).sum())
    if s_grid is None:
        scale = max(float((w64 ** 2).mean()), 1e-12)
        s_grid = [scale * 10.0 ** (e / 2) for e in range(-12, 1)]
    if not s_grid or any(not (math.isfinite(s) and s > 0) for s in s_grid):
        raise LandscopeError("s_grid needs at least one finite positive variance")
    if any(not beta > 0 for beta in beta_grid):
        raise LandscopeError("beta_grid entries must be > 0")
    train_error = error(w)
    bits = 8 * torch.empty((), dtype=error.dtype).element_size()

    betas = [math.inf, *sorted(float(x) for x in beta_grid)]
    cands = [Candidate(float(s), beta, lam, eps, dim, dist2, b, c)
             for s in s_grid for beta in betas]
    gen = torch.Generator().manual_seed(int(seed))
    # Stage 1: selection (common random numbers, plain MC means, no confidence claimed).
    sel = _mean_errors(error, basis, cands, int(n_select), gen)
    score = [dziugaite_roy_bound(e, cd.kl, m, delta, cd.j) for e, cd in zip(sel, cands)]
    iso_i = min((i for i, cd in enumerate(cands) if math.isinf(cd.beta)), key=lambda i: score[i])
    hes_i = min(range(len(cands)), key=lambda i: score[i])
    # Stage 2: fresh draws, each winner's MC upper value at delta_mc / 2 (union over the two).
    finals = [cands[iso_i], cands[hes_i]]
    e_fin = _mean_errors(error, basis, finals, int(n_mc), gen)
    return _grid_bounds(finals, e_fin, train_error=train_error, dim=dim, m=m, bits=bits,
                        k=lam.numel(), n_mc=int(n_mc), n_select=int(n_select),
                        n_candidates=len(cands), delta=delta, delta_mc=delta_mc, dist2=dist2)


def _mean_errors(error: ZeroOneError, basis: Tensor, chosen: list[Candidate], n: int,
                 gen: torch.Generator) -> list[float]:
    """Mean error of ``n`` draws of each candidate around ``error.theta0`` (common random
    numbers: one ``z`` per draw shared by all)."""
    w = error.theta0
    total = [0.0] * len(chosen)
    for _ in range(n):
        z = standard_normal(error.dim, gen, error.device)
        vtz = basis.T @ z
        for i, cand in enumerate(chosen):
            total[i] += error(cand.draw(w, z, vtz, basis))
    return [t / n for t in total]


def _grid_bounds(finals: list[Candidate], e_fin: list[float], *, train_error: float, dim: int,
                 m: int, bits: int, k: int, n_mc: int, n_select: int, n_candidates: int,
                 delta: float, delta_mc: float, dist2: float) -> dict[str, float]:
    """The bounds of the two winners (isotropic, Hessian family) from their final draws'
    mean errors ``e_fin``, each at ``delta_mc / 2``, and what :func:`pac_bayes_bounds` reports."""
    upper = [mc_error_upper(e, n_mc, delta_mc / 2) for e in e_fin]
    bounds = [dziugaite_roy_bound(u, cd.kl, m, delta, cd.j) for u, cd in zip(upper, finals)]
    h = 1 if bounds[1] <= bounds[0] else 0  # the Hessian bound: the better member of its family
    out: dict[str, float] = {
        "pacbayes_naive": occam_bound(train_error, dim, m, delta, bits),
        "complexity_naive": (bits * dim * math.log(2.0) + math.log(1.0 / delta)) / m,
        "pacbayes_isotropic": bounds[0],
        "pacbayes_hessian": bounds[h],
        "train_error": train_error, "naive_log_hypotheses": bits * dim * math.log(2.0),
        "m": float(m), "D": float(dim), "k": float(k), "n_mc": float(n_mc),
        "n_select": float(n_select), "n_candidates": float(n_candidates),
        "delta": float(delta), "delta_mc": float(delta_mc), "dist2_to_prior_mean": dist2,
    }
    for name, cd, e_mc, up in (("isotropic", finals[0], e_fin[0], upper[0]),
                               ("hessian", finals[h], e_fin[h], upper[h])):
        out.update({f"kl_{name}": cd.kl,
                    f"complexity_{name}": complexity_term(cd.kl, m, delta, cd.j),
                    f"{name}_prior_var": cd.lam, f"{name}_prior_j": float(cd.j),
                    f"{name}_e_mc": e_mc, f"{name}_e_upper": up})
    out["isotropic_s"] = finals[0].s_perp
    out.update({"hessian_s_perp": finals[h].s_perp, "hessian_beta": finals[h].beta,
                "hessian_s_min": float(finals[h].s_v.min()),
                "hessian_n_shrunk": float((finals[h].s_v < finals[h].s_perp).sum()),
                "hessian_is_isotropic": float(math.isinf(finals[h].beta))})
    return out
