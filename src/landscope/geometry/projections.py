"""Seeded random projections ``P`` (D x d) for subspace training,
``theta = theta0 + P theta_d`` (:mod:`landscope.geometry.intrinsic_dim`).

Projections (each seeded, applied matrix-free, columns of unit norm exactly or in
expectation):

* ``dense``: i.i.d. N(0, 1) entries, each column then divided by its norm (exactly unit).
  Stores D x d values: refused beyond :data:`DENSE_MAX_ENTRIES`.
* ``sparse``: very sparse random projection (Li, Hastie & Church 2006): each entry is
  nonzero with probability ``rho = 1/sqrt(D)``, then ``+-1/sqrt(rho D)`` with equal odds,
  so ``E ||P e_j||^2 = 1``. Stored as torch CSR matrices ``P`` and ``P^T`` (about
  ``d sqrt(D)`` nonzeros each): ``P theta_d`` forward, ``P^T g`` backward, O(nnz).
* ``fastfood`` (Le, Sarlos & Smola 2013): ``n = 2^ceil(log2 d)``; ``theta_d`` is zero-padded
  to ``n`` and ``ceil(D/n)`` independent blocks ``V_b = S_b H G_b Pi_b H B_b`` are stacked
  and cut to ``D`` rows, times ``1/sqrt(n D)``. ``H``: the n x n Walsh-Hadamard matrix
  (entries +-1, fast transform, O(n log n)); ``B_b``: random signs; ``Pi_b``: a random
  permutation; ``G_b``: N(0,1) diagonal; ``S_b = diag(r_i) / ||G_b||_F`` with
  ``r_i ~ chi(n)``, so each row of a block has the norm of a Gaussian row and
  ``E ||P e_j||^2 = 1``. Cost ~ D log n per product, memory ~ 4 D.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from landscope.errors import LandscopeError

PROJECTIONS = ("dense", "sparse", "fastfood")
DENSE_MAX_ENTRIES = 250_000_000  # D * d; a dense float32 P that large needs 1 GB


class RandomProjection:
    """A fixed D x d matrix applied to vectors: ``apply(theta_d) -> (D,)`` (differentiable)."""

    name = ""

    def __init__(self, D: int, d: int, dtype: torch.dtype, device: torch.device) -> None:
        self.D, self.d, self.dtype, self.device = int(D), int(d), dtype, torch.device(device)

    def apply(self, theta_d: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, theta_d: Tensor) -> Tensor:
        return self.apply(theta_d)

    def matrix(self) -> Tensor:
        """The explicit D x d matrix (applies the operator to the unit vectors; for tests)."""
        eye = torch.eye(self.d, dtype=self.dtype, device=self.device)
        return torch.stack([self.apply(eye[j]) for j in range(self.d)], dim=1)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(int(seed))


class DenseProjection(RandomProjection):
    name = "dense"

    def __init__(self, D: int, d: int, seed: int, dtype=torch.float32, device="cpu") -> None:
        super().__init__(D, d, dtype, device)
        if D * d > DENSE_MAX_ENTRIES:
            raise LandscopeError(f"a dense {D} x {d} projection is too large ({D * d:.3g} "
                                 f"entries > {DENSE_MAX_ENTRIES:.3g}); use sparse or fastfood")
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        P = torch.from_numpy(_rng(seed).standard_normal((D, d), dtype=np_dtype))
        P /= torch.linalg.vector_norm(P, dim=0, keepdim=True)
        self.P = P.to(self.device, dtype)

    def apply(self, theta_d: Tensor) -> Tensor:
        return self.P @ theta_d


class _SparseMV(torch.autograd.Function):
    """``P x`` for a CSR matrix, with ``P^T g`` (a second CSR matrix) as the backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, P: Tensor, PT: Tensor) -> Tensor:
        ctx.PT = PT
        return torch.mv(P, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], None, None]:
        return torch.mv(ctx.PT, grad), None, None


class SparseProjection(RandomProjection):
    name = "sparse"

    def __init__(self, D: int, d: int, seed: int, dtype=torch.float32, device="cpu",
                 density: Optional[float] = None) -> None:
        super().__init__(D, d, dtype, device)
        rho = 1.0 / math.sqrt(D) if density is None else float(density)
        if not 0 < rho <= 1:
            raise LandscopeError(f"sparse projection density must be in (0, 1] (got {rho})")
        rng = _rng(seed)
        total = D * d
        nnz = int(rng.binomial(total, rho))  # Bernoulli(rho) entries: a uniform nnz-subset
        flat = np.sort(rng.choice(total, size=nnz, replace=False))
        signs = rng.integers(0, 2, size=nnz).astype(np.float64) * 2 - 1
        self.density = rho
        self.rows = torch.from_numpy(flat // d).to(self.device)
        self.cols = torch.from_numpy(flat % d).to(self.device)
        self.values = torch.from_numpy(signs / math.sqrt(rho * D)).to(self.device, dtype)
        coo = torch.sparse_coo_tensor(torch.stack([self.rows, self.cols]), self.values,
                                      (D, d), check_invariants=True).coalesce()
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            self._csr = coo.to_sparse_csr()
            self._csr_t = coo.t().coalesce().to_sparse_csr()

    @property
    def nnz(self) -> int:
        return len(self.values)

    def apply(self, theta_d: Tensor) -> Tensor:
        return _SparseMV.apply(theta_d, self._csr, self._csr_t)

    def matrix(self) -> Tensor:
        out = torch.zeros(self.D, self.d, dtype=self.dtype, device=self.device)
        out[self.rows, self.cols] = self.values
        return out


def fwht(x: Tensor) -> Tensor:
    """Unnormalized fast Walsh-Hadamard transform along the last dim (a power of 2):
    ``x @ H`` with ``H`` the Sylvester-Hadamard matrix (symmetric, ``H H = n I``).

    >>> fwht(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist()
    [10.0, -2.0, -4.0, 0.0]
    >>> fwht(fwht(torch.tensor([1.0, 2.0, 3.0, 4.0]))).tolist()  # H H = n I
    [4.0, 8.0, 12.0, 16.0]
    """
    n = x.shape[-1]
    if n & (n - 1):
        raise LandscopeError(f"Walsh-Hadamard size must be a power of 2 (got {n})")
    lead = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*lead, n)
        h *= 2
    return x


class _FWHT(torch.autograd.Function):
    """FWHT with its own backward (H is symmetric: the adjoint is the transform itself),
    so autograd stores no per-stage intermediates."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return fwht(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return fwht(grad)


class FastfoodProjection(RandomProjection):
    name = "fastfood"

    def __init__(self, D: int, d: int, seed: int, dtype=torch.float32, device="cpu") -> None:
        super().__init__(D, d, dtype, device)
        n = 1 << max(0, math.ceil(math.log2(d)))
        blocks = -(-D // n)
        rng = _rng(seed)
        B = rng.integers(0, 2, size=(blocks, n)).astype(np.float64) * 2 - 1
        perm = np.argsort(rng.random((blocks, n)), axis=1)
        G = rng.standard_normal((blocks, n))
        r = np.sqrt(rng.chisquare(n, size=(blocks, n)))
        S = r / np.linalg.norm(G, axis=1, keepdims=True)
        self.n, self.blocks = n, blocks
        t = lambda a: torch.from_numpy(a).to(self.device, dtype)  # noqa: E731
        self.B, self.G, self.S = t(B), t(G), t(S)
        self.perm = torch.from_numpy(perm).to(self.device)
        self.scale = 1.0 / math.sqrt(n * D)

    def apply(self, theta_d: Tensor) -> Tensor:
        x = F.pad(theta_d, (0, self.n - self.d))
        v = _FWHT.apply(self.B * x)  # (blocks, n): H B x per block
        v = torch.gather(v, 1, self.perm)  # Pi
        v = _FWHT.apply(self.G * v)
        return (self.S * v).reshape(-1)[:self.D] * self.scale


def check_dim(d: Any, D: int) -> None:
    """Raise a one-line :class:`LandscopeError` unless ``d`` is an integer in ``1 .. D``.

    >>> check_dim(2, 3)
    >>> check_dim(5, 3)
    Traceback (most recent call last):
        ...
    landscope.errors.LandscopeError: subspace dimension d=5 exceeds the 3 parameters
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d <= 0:
        raise LandscopeError(f"subspace dimension d must be a positive integer (got {d!r})")
    if d > D:
        raise LandscopeError(f"subspace dimension d={d} exceeds the {D} parameters")


def make_projection(name: Any, D: int, d: int, seed: int, dtype: torch.dtype = torch.float32,
                    device: Any = "cpu") -> RandomProjection:
    """The seeded projection ``name`` (dense, sparse, fastfood) of shape D x d."""
    name = str(name)
    if name not in PROJECTIONS:
        raise LandscopeError(f"unknown projection {name!r}; choose one of "
                             f"{', '.join(PROJECTIONS)}")
    check_dim(d, D)
    cls = {"dense": DenseProjection, "sparse": SparseProjection,
           "fastfood": FastfoodProjection}[name]
    return cls(D, int(d), seed, dtype=dtype, device=device)
