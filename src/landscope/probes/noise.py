"""Gradient-noise statistics from per-sample gradients, and their alignment with curvature.

With per-sample gradients ``g_i = grad_theta CE(f(x_i), y_i)`` (i = 1..n, stacked as the
``n x D`` matrix ``G``) and their mean ``g_bar`` (the probe-loss gradient), the noise
covariance is (GUIDE §3; Zhu et al. 2019, "The anisotropic noise in SGD"; Jastrzebski et
al. 2017, "Three factors influencing minima in SGD")::

    Sigma = (1/n) sum_i g_i g_i^T - g_bar g_bar^T = (1/n) C^T C,   C = G - 1 g_bar^T.

We divide by ``n``, not ``n - 1``: ``Sigma`` is the population covariance of the gradient
of *one sample drawn uniformly from the probe set* (the finite set is the distribution, not
a sample of it), which is what SGD's noise is.  A mini-batch of ``B`` samples drawn with
replacement has gradient covariance ``Sigma / B`` (without replacement:
``Sigma/B * (n-B)/(n-1)``).  Multiply by ``n/(n-1)`` for the unbiased estimator of the
population covariance of the data distribution.

* ``tr Sigma = (1/n) ||C||_F^2 = mean_i ||g_i - g_bar||^2``.
* Top eigenpairs of ``Sigma`` by the Gram trick: ``K = C C^T / n`` (n x n) has the same
  nonzero eigenvalues; ``K u = lam u`` gives ``v = C^T u / ||C^T u||`` (rank <= n - 1).
* Alignment ``tr(H Sigma) = (1/n) tr(C H C^T) = (1/n) sum_i c_i^T H c_i`` (Thomas et al.
  2020, "On the interplay between noise and curvature ..."; Zhu et al. 2019's indicator):
  ``exact`` spends n HVPs; ``hutchinson`` estimates the trace of the n x n matrix
  ``C H C^T / n`` with Rademacher ``z`` in R^n: ``(C^T z)^T H (C^T z) / n``, one HVP per
  probe, unbiased, with a standard error; ``lowrank`` uses the top-r eigenpairs of Sigma,
  ``sum_{j<=r} lam_j v_j^T H v_j`` (r HVPs; exact when r >= rank Sigma, otherwise it drops
  the tail, a lower bound when H is PSD on it).
* Isotropic reference ``(tr Sigma / D) tr H``: ``tr(H Sigma)`` if Sigma had the same trace
  spread evenly over all directions.  ``alignment_ratio = kappa(Sigma, H) =
  tr(H Sigma) / ((tr Sigma / D) tr H)``: 1 for isotropic noise, > 1 when the noise
  concentrates in sharp directions (undefined, NaN, when ``tr H`` or ``tr Sigma`` is 0).
* Energy share of Sigma in the top-k Hessian eigenspace ``V`` (D x k, orthonormal):
  ``||C V||_F^2 / ||C||_F^2 = tr(V^T Sigma V) / tr Sigma``  (k/D for isotropic noise).
* Difficulty index (seed plan): ``lambda_max^2 / tr H * kappa`` with kappa the alignment
  ratio above.

Per-sample gradients come from ``torch.func.vmap(torch.func.grad(loss_i))`` over chunks of
samples with ``functional_call`` (the model is never written).  Unlike the *second-order*
``torch.func.hessian`` case in :mod:`landscope.probes.verify`, vmapping the first-order
gradient over samples is correct for LayerNorm/GroupNorm and eval BatchNorm: the tests check
every model family against an explicit per-sample autograd loop (``vectorize=False``, kept
as a fallback for ops without batching rules) to 1e-10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import Tensor, nn

from landscope.errors import LandscopeError
from landscope.probes.hvp import HessianOperator, Mode
from landscope.probes.lanczos import EigResult, lanczos_eigs
from landscope.probes.operator import Operator
from landscope.probes.per_sample import DEFAULT_CHUNK, GradientRows, per_sample_rows
from landscope.probes.per_sample import per_sample_gradients as per_sample_gradients  # re-export
from landscope.probes.probe_data import ProbeData
from landscope.probes.trace import hutchinson, probe_vector

Alignment = Literal["exact", "hutchinson", "lowrank"]


# ------------------------------------------------------------------ pure math on C (n x D)
def center(grads: Tensor) -> tuple[Tensor, Tensor]:
    """``(g_bar, C)``: the mean row and the centered rows ``C = G - g_bar``
    (:meth:`GradientRows.center_` centres in place)."""
    mean = grads.mean(0)
    return mean, grads - mean


def noise_trace(c: Tensor | GradientRows) -> float:
    """``tr Sigma = ||C||_F^2 / n`` for centered rows ``C`` (n x D)."""
    blocks = c.blocks if isinstance(c, GradientRows) else [c]
    return sum(float((b * b).sum()) for b in blocks) / c.shape[0]


def gram(c: Tensor | GradientRows) -> Tensor:
    """``K = C C^T / n`` (n x n): the nonzero spectrum of ``Sigma``, and ``tr K = tr Sigma``."""
    return c.gram() if isinstance(c, GradientRows) else c @ c.T / c.shape[0]


def noise_eigs(c: Tensor | GradientRows, k: int, k_gram: Optional[Tensor] = None
               ) -> tuple[Tensor, Tensor]:
    """Top-``k`` eigenpairs of ``Sigma = C^T C / n`` by the Gram trick (``k_gram``: ``gram(C)``
    when known).

    Returns ``(eigenvalues (r,) float64 descending, eigenvectors (D, r))`` with ``r <= k``:
    pairs whose eigenvalue is below ``n * eps * lam_max`` (Sigma's null space; centering
    leaves rank <= n - 1) are dropped, since their direction is not defined by ``C``.
    """
    n = c.shape[0]
    lam, u = torch.linalg.eigh(gram(c) if k_gram is None else k_gram)
    lam, u = lam.flip(0)[:max(0, k)], u.flip(1)[:, :max(0, k)]
    cut = n * torch.finfo(c.dtype).eps * float(lam[0]) if lam.numel() else 0.0
    keep = lam > max(cut, 0.0)
    lam, u = lam[keep], u[:, keep]
    v = c.T @ u
    v = v / v.norm(dim=0, keepdim=True)
    return lam.to(torch.float64), v


def alignment_exact(c: Tensor | GradientRows, op: Operator) -> float:
    """``tr(H Sigma) = (1/n) sum_i c_i^T H c_i``: n products."""
    return sum(float(ci @ op.matvec(ci)) for ci in c) / c.shape[0]


def alignment_hutchinson(c: Tensor | GradientRows, op: Operator, n_probes: int, seed: int = 0
                         ) -> tuple[float, float]:
    """Unbiased ``(estimate, stderr)`` of ``tr(C H C^T)/n`` with Rademacher ``z in R^n``:
    samples ``w^T H w / n``, ``w = C^T z`` (one product each)."""
    if n_probes < 1:
        raise LandscopeError(f"alignment Hutchinson needs >= 1 probe (got {n_probes})")
    gen = torch.Generator().manual_seed(int(seed))
    n = c.shape[0]
    samples = []
    for _ in range(n_probes):
        w = c.T @ probe_vector(n, gen, "rademacher", c.dtype, c.device)
        samples.append(float(w @ op.matvec(w)) / n)
    s = torch.tensor(samples, dtype=torch.float64)
    err = float(s.std(correction=1)) / math.sqrt(n_probes) if n_probes > 1 else math.inf
    return float(s.mean()), err


def alignment_lowrank(eigenvalues: Tensor, eigenvectors: Tensor, op: Operator) -> float:
    """``sum_j lam_j v_j^T H v_j`` over the given eigenpairs of Sigma (one product each)."""
    return sum(float(lam) * float(v @ op.matvec(v))
               for lam, v in zip(eigenvalues, eigenvectors.T))


def energy_share(c: Tensor | GradientRows, v: Tensor, total: Optional[float] = None) -> float:
    """``||C V||_F^2 / ||C||_F^2 = tr(V^T Sigma V) / tr Sigma`` for orthonormal ``V`` (D x k);
    ``total``: ``||C||_F^2`` when known (``n * noise_trace(C)``)."""
    total = c.shape[0] * noise_trace(c) if total is None else total
    return float(((c @ v.to(c.dtype)) ** 2).sum()) / total if total > 0 else math.nan


def alignment_ratio(trace_h_sigma: float, trace_sigma: float, dim: int, trace_h: float
                    ) -> float:
    """``kappa = tr(H Sigma) / ((tr Sigma / D) tr H)``; NaN when the reference is 0."""
    ref = trace_sigma / dim * trace_h
    return trace_h_sigma / ref if ref != 0 else math.nan


# ------------------------------------------------------------------ the probe
@dataclass
class GradientNoise:
    """Noise statistics of single-sample gradients over ``n`` samples, ``dim`` parameters.

    ``sigma_*`` describe ``Sigma`` (1/n convention, module docstring; a batch of B has
    Sigma/B).  ``trace_h_sigma`` comes from ``alignment_method`` (stderr 0 unless
    ``hutchinson``); ``trace_h`` is the supplied value or a Hutchinson estimate
    (``trace_h_stderr``).  ``alignment_ratio`` is kappa(Sigma, H) =
    tr(H Sigma) / isotropic_reference; ``difficulty_index = lambda_max^2 / trace_h * kappa``.
    ``top_k_energy_share`` is None without ``top_k_eigs``.  HVP counts: ``alignment_hvps``
    for tr(H Sigma), ``n_hvps`` for everything (alignment, tr H, lambda_max).
    """

    n: int
    dim: int
    mean_gradient: Tensor
    trace_sigma: float
    sigma_eigenvalues: Tensor
    sigma_eigenvectors: Tensor
    trace_h_sigma: float
    trace_h_sigma_stderr: float
    alignment_method: str
    alignment_hvps: int
    trace_h: float
    trace_h_stderr: float
    isotropic_reference: float
    alignment_ratio: float
    lambda_max: float
    difficulty_index: float
    top_k_energy_share: Optional[float]
    top_k: int
    n_hvps: int
    seed: int


#: Sigma's top pairs (the low-rank alignment's products), the alignment's Hutchinson probes,
#: and the trace samples taken when no tr H is given: ``gradient_noise``'s defaults
K_SIGMA = 5
ALIGNMENT_PROBES = 30
TRACE_SAMPLES = 100


def gradient_noise(model: nn.Module, data: ProbeData, *,
                   hessian: Optional[HessianOperator] = None,
                   top_k_eigs: Optional[EigResult] = None, k_sigma: int = K_SIGMA, seed: int = 0,
                   params: Optional[dict[str, Tensor]] = None, mode: Mode = "eval",
                   alignment: Alignment = "exact", n_probes: int = ALIGNMENT_PROBES,
                   trace_h: Optional[float] = None, trace_samples: int = TRACE_SAMPLES,
                   chunk: int = DEFAULT_CHUNK, vectorize: bool = True) -> GradientNoise:
    """Gradient-noise covariance, its top eigenpairs and its alignment with the Hessian.

    ``hessian`` defaults to ``HessianOperator(model, data, params=params, mode=mode)``.
    ``alignment``: ``exact`` (n HVPs), ``hutchinson`` (``n_probes`` HVPs) or ``lowrank``
    (top ``k_sigma`` eigenpairs of Sigma, ``<= k_sigma`` HVPs).  ``trace_h`` defaults to
    Hutchinson with ``trace_samples`` probes.  ``lambda_max`` is ``top_k_eigs``'s largest
    eigenvalue (which must be ``"largest"``), else a k=1 Lanczos run.
    """
    if alignment not in ("exact", "hutchinson", "lowrank"):
        raise LandscopeError(f"alignment must be exact, hutchinson or lowrank (got {alignment!r})")
    if top_k_eigs is not None and top_k_eigs.which != "largest":
        raise LandscopeError("top_k_eigs must hold the largest Hessian eigenpairs")
    op = hessian if hessian is not None else HessianOperator(model, data, params=params,
                                                             mode=mode, seed=seed)
    start = op.n_matvecs
    # C as the parameters' column blocks, never concatenated (per_sample.py), centred in place
    c = per_sample_rows(model, data, params=params, mode=mode, chunk=chunk, vectorize=vectorize)
    if c.shape[1] != op.dim:
        raise LandscopeError(f"per-sample gradients have {c.shape[1]} parameters, the "
                             f"Hessian operator {op.dim}: pass the same params to both")
    c = c.to(op.dtype)
    mean = c.center_()
    k_gram = gram(c)
    # tr Sigma as the Gram matrix's trace: its diagonal's dot products are as exact as the sum
    # of squares (1e-7 relative in float32) and spare another pass over C
    # (docs/measurements.md#probes-noise)
    tr_sigma = float(k_gram.diagonal().double().sum())
    lam, vecs = noise_eigs(c, k_sigma, k_gram)
    before = op.n_matvecs
    ths, stderr = _alignment(alignment, c, op, lam, vecs, n_probes, seed)
    align_hvps = op.n_matvecs - before
    if trace_h is None:
        tr = hutchinson(op, trace_samples, seed=seed)
        tr_h, tr_err = tr.estimate, tr.stderr
    else:
        tr_h, tr_err = float(trace_h), 0.0
    lam_max, share, k = _lambda_max_and_share(op, top_k_eigs, c, seed, tr_sigma * c.shape[0])
    kappa = alignment_ratio(ths, tr_sigma, op.dim, tr_h)
    return GradientNoise(
        n=c.shape[0], dim=op.dim, mean_gradient=mean, trace_sigma=tr_sigma,
        sigma_eigenvalues=lam, sigma_eigenvectors=vecs, trace_h_sigma=ths,
        trace_h_sigma_stderr=stderr, alignment_method=alignment, alignment_hvps=align_hvps,
        trace_h=tr_h, trace_h_stderr=tr_err, isotropic_reference=tr_sigma / op.dim * tr_h,
        alignment_ratio=kappa, lambda_max=lam_max,
        difficulty_index=lam_max ** 2 / tr_h * kappa if tr_h != 0 else math.nan,
        top_k_energy_share=share, top_k=k, n_hvps=op.n_matvecs - start, seed=seed)


def _alignment(alignment: Alignment, c: Tensor | GradientRows, op: Operator, lam: Tensor,
               vecs: Tensor, n_probes: int, seed: int) -> tuple[float, float]:
    """``tr(H Sigma)`` by the chosen method and its standard error (0 unless Hutchinson)."""
    stderr = 0.0
    if alignment == "exact":
        ths = alignment_exact(c, op)
    elif alignment == "hutchinson":
        ths, stderr = alignment_hutchinson(c, op, n_probes, seed)
    else:
        ths = alignment_lowrank(lam, vecs, op)
    return ths, stderr


def _lambda_max_and_share(op: Operator, top_k_eigs: Optional[EigResult],
                          c: Tensor | GradientRows,
                          seed: int, total: float) -> tuple[float, Optional[float], int]:
    """``lambda_max`` (from ``top_k_eigs``, else a k=1 Lanczos run) and the noise's energy
    share in the top-k eigenvectors with k (None, 0 without them)."""
    if top_k_eigs is None:
        lam_max = float(lanczos_eigs(op, k=1, seed=seed, return_vectors=False).eigenvalues[0])
        return lam_max, None, 0
    lam_max = float(top_k_eigs.eigenvalues[0])
    if top_k_eigs.eigenvectors is None:
        return lam_max, None, 0
    return (lam_max, energy_share(c, top_k_eigs.eigenvectors, total),
            top_k_eigs.eigenvectors.shape[1])
