"""The gradient noise of an escape run (:mod:`landscope.escape.dynamics`, which re-exports
these names).

**Noise modes** (``noise``; H3's design at one minimum).  ``"sgd"`` (default) is the
mini-batch SGD of :mod:`landscope.escape.dynamics`.  ``"isotropic"`` and ``"topk"`` replace the
mini-batch gradient by the full-batch gradient (the whole split, train mode) plus injected Gaussian
noise ``ξ``::

    θ_{t+1} = θ_t − η (∇L(θ_t) + ξ_t),   E ξ = 0,   tr Cov ξ = T

with ``T`` the trace of SGD's mini-batch gradient-noise covariance at the minimum for this
batch size, ``T = tr Σ / B · (n − B)/(n − 1)`` (``Σ`` the per-sample gradient covariance at
θ0, ``sigma_trace = tr Σ``, :func:`sgd_noise_trace`; the factor is the without-replacement
correction of one batch of ``B`` from ``n``, 1 at ``B = 1``, 0 at full batch).  Isotropic:
``ξ ~ N(0, (T/D) I)``.  Top-k: ``ξ = V z``, ``z ~ N(0, (T/k) I_k)``, ``V`` an orthonormal basis
(QR of the given ``noise_basis``, D × k: the top-k Hessian eigenvectors) — the trace spread
**equally** over the k directions, so ``ξ`` lies in span(V).  ``T`` is fixed at its θ0 value
(SGD's own noise changes as θ moves).  ``ξ`` is drawn in float64 from its own generator seeded
with ``seed`` (through :class:`numpy.random.SeedSequence`, a different stream from the batch
order) and cast to the parameters' dtype: the same seed gives the same run.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from landscope.errors import ConfigError
from landscope.probes.probe_data import ProbeData

NOISES = ("sgd", "isotropic", "topk")


def _noise_generator(seed: int) -> torch.Generator:
    s = int(np.random.SeedSequence([int(seed), 0x15A7]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(s)


def minibatch_noise_trace(sigma_trace: float, batch_size: int, n: int) -> float:
    """``tr Σ / B · (n − B)/(n − 1)``: the trace of the covariance of the mean gradient of
    ``B`` samples drawn without replacement from ``n`` (0 at ``B >= n``).

    >>> minibatch_noise_trace(10.0, 4, 9)  # 10/4 · 5/8
    1.5625
    >>> minibatch_noise_trace(10.0, 9, 9)
    0.0
    """
    b = min(int(batch_size), int(n))
    if n <= 1 or b >= n:
        return 0.0
    return float(sigma_trace) / b * (n - b) / (n - 1)


class InjectedNoise:
    """Gaussian gradient noise of covariance trace ``trace`` in ``dim`` dimensions:
    ``"isotropic"`` (``N(0, trace/dim · I)``) or ``"topk"`` (``trace/k`` on each of the k
    orthonormalized columns of ``basis``, D × k, nothing elsewhere).  :meth:`sample` draws one
    flat float64 vector from ``generator``."""

    def __init__(self, kind: str, trace: float, dim: int, basis=None,
                 generator: Optional[torch.Generator] = None) -> None:
        if kind not in ("isotropic", "topk"):
            raise ConfigError(f"injected noise must be isotropic or topk (got {kind!r})")
        if not (math.isfinite(trace) and trace >= 0):
            raise ConfigError(f"noise trace must be finite and >= 0 (got {trace!r})")
        self.kind, self.trace, self.dim = kind, float(trace), int(dim)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.basis: Optional[Tensor] = None
        if kind == "topk":
            if basis is None:
                raise ConfigError("topk noise needs the top-k Hessian eigenvectors (basis)")
            v = basis.detach().to("cpu", torch.float64) if isinstance(basis, Tensor) \
                else torch.as_tensor(np.asarray(basis, dtype=np.float64))
            v = v[:, None] if v.ndim == 1 else v
            if v.ndim != 2 or v.shape[0] != self.dim or v.shape[1] < 1:
                raise ConfigError(f"topk basis must be D x k with D = {self.dim} "
                                  f"(got {tuple(v.shape)})")
            if not torch.isfinite(v).all():
                raise ConfigError("topk basis has non-finite entries")
            q, r = torch.linalg.qr(v)
            if torch.abs(torch.diagonal(r)).min() <= 1e-8 * torch.abs(torch.diagonal(r)).max():
                raise ConfigError("topk basis is rank-deficient")
            self.basis = q
        self.k = None if self.basis is None else int(self.basis.shape[1])

    def sample(self) -> Tensor:
        if self.kind == "isotropic":
            z = torch.randn(self.dim, generator=self.generator, dtype=torch.float64)
            return z * math.sqrt(self.trace / self.dim)
        z = torch.randn(self.k, generator=self.generator, dtype=torch.float64)
        return self.basis @ (z * math.sqrt(self.trace / self.k))


def sgd_noise_trace(model: nn.Module, train_split, size: Optional[int] = None, seed: int = 0,
                    chunk: int = 64) -> float:
    """``tr Σ``: the trace of the per-sample gradient covariance at the model's parameters,
    ``mean_i ‖g_i − ḡ‖²`` over ``size`` samples of the split (``None``: all; a seeded subset
    as :meth:`ProbeData.from_split`), per-sample gradients in eval mode as the probes
    (:func:`landscope.probes.noise.per_sample_gradients`), accumulated ``chunk`` samples at a
    time (no n × D matrix is kept)."""
    from landscope.probes.noise import per_sample_gradients

    data = ProbeData.from_split(train_split, size, seed, chunk)
    total_sq, total, n = 0.0, None, 0
    for x, y in data.batches:
        g = per_sample_gradients(model, ProbeData.from_tensors(x, y, chunk), chunk=chunk)
        g = g.to(torch.float64)
        total_sq += float((g * g).sum())
        total = g.sum(0) if total is None else total + g.sum(0)
        n += g.shape[0]
    mean = total / n
    return max(total_sq / n - float(mean @ mean), 0.0)
