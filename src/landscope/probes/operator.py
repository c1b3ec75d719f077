"""The symmetric linear-operator interface every curvature estimator takes.

An operator maps a flat vector ``v`` of shape ``(dim,)`` to ``A v`` and counts how
many products it has computed (``n_matvecs``), so every estimator can report its
cost in products, the unit that matters for Hessians.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Operator(Protocol):
    dim: int
    dtype: torch.dtype
    device: torch.device
    n_matvecs: int

    def matvec(self, v: Tensor) -> Tensor:
        """``A @ v`` for ``v`` of shape ``(dim,)``; increments ``n_matvecs``."""
        ...


class DenseOperator:
    """A symmetric matrix held in memory (exact references, tests, small problems)."""

    def __init__(self, matrix: Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"expected a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.dim = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.n_matvecs = 0

    def matvec(self, v: Tensor) -> Tensor:
        self.n_matvecs += 1
        return self.matrix @ v


class Deflated:
    """``P A P`` with ``P = I − VVᵀ`` for orthonormal columns V: the operator on the complement of
    some eigenvectors (one product of A per product; ``n_matvecs`` is A's counter)."""

    def __init__(self, op: Operator, basis: Tensor) -> None:
        self.op, self.basis = op, basis
        self.dim, self.dtype, self.device = op.dim, op.dtype, op.device

    @property
    def n_matvecs(self) -> int:
        return self.op.n_matvecs

    def project(self, v: Tensor, passes: int = 2) -> Tensor:
        """``P v`` (twice by default: one projection of a vector with large components along V
        loses orthogonality to rounding)."""
        for _ in range(passes):
            v = v - self.basis @ (self.basis.T @ v)
        return v

    def matvec(self, v: Tensor) -> Tensor:
        """``P A P v`` with one projection each side: ``v`` (a Lanczos vector) is already in the
        complement to rounding, and ``A v`` has components along V only of the size of V's
        residuals, so a second pass would remove nothing but rounding (it cost the default
        MLP's density 7 % of its time)."""
        return self.project(self.op.matvec(self.project(v, 1)), 1)


def quadratic_with_spectrum(eigenvalues: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(A, Q)`` with ``A = Q diag(eigenvalues) Q^T`` for a seeded random orthogonal ``Q``:
    an analytic oracle for every spectral estimator."""
    g = torch.Generator().manual_seed(seed)
    n = eigenvalues.numel()
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=eigenvalues.dtype))
    q = q * torch.sign(torch.diagonal(r))
    return (q * eigenvalues) @ q.T, q
