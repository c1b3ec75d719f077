"""Hessian-matrix products ``H @ V`` for a block of vectors in one call (for GPUs).

With the ``cached`` method of :class:`~landscope.probes.hvp.HessianOperator` a product is one
backward pass through the kept gradient graph, so ``k`` products can be one *batched*
backward: ``torch.autograd.grad(g, theta, grad_outputs=V.T, is_grads_batched=True)`` runs
the backward under ``vmap`` over the ``k`` vectors.  Each op then works on ``k`` times more
data per call, which pays where an op's call overhead or a device's width is not yet used
(GPUs, small models); on a compute-bound CPU it does not (``scripts/bench_memory.py``).

Where the batched backward is not available -- another method, an operator that is not a
``HessianOperator``, a graph with an op that has no batching rule (a ``RuntimeError`` from
``vmap``) -- :func:`matmat` falls back to ``k`` single products.  Either way it counts ``k``
products in ``op.n_matvecs`` (the cost unit of every estimator).

Which estimators could use it: the probes of Hutchinson / Hutch++ (independent Rademacher
vectors, and the sketch ``H @ S`` of Hutch++) and the independent probes of SLQ (one Lanczos
run per probe: the runs' ``j``-th products can be batched across probes) are independent
and batch naturally; a single Lanczos run is sequential (each vector depends on the previous
product) and gains nothing, except a block-Lanczos variant.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from landscope.errors import LandscopeError

__all__ = ["matmat", "batched_available"]


def batched_available(op: Any) -> bool:
    """Whether :func:`matmat` can try one batched backward for ``op`` (a cached operator)."""
    return (getattr(op, "method", None) == "cached" and getattr(op, "_theta", None) is not None
            and hasattr(op, "_cache")
            and getattr(op, "group", None) is None)  # data-parallel products all-reduce


def _check(op: Any, V: Tensor) -> Tensor:
    if V.ndim != 2 or V.shape[0] != op.dim:
        raise LandscopeError(f"expected a matrix of shape ({op.dim}, k), got {tuple(V.shape)}")
    return V.detach().to(device=op.device, dtype=op.dtype)


def _columns(op: Any, V: Tensor) -> Tensor:
    """``k`` single products (each counted by ``op.matvec``)."""
    return torch.stack([op.matvec(V[:, j].contiguous()) for j in range(V.shape[1])], dim=1)


def _batched_cached(op: Any, V: Tensor) -> Tensor:
    """One batched backward through the cached gradient graph: ``(dim, k)``."""
    if op._cache is None:  # the gradient does not depend on the parameters: H = 0
        return torch.zeros_like(V)
    with torch.enable_grad(), warnings.catch_warnings():
        # vmap's "no batching rule, falling back to a loop" warning: correct, just slower.
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        (hv,) = torch.autograd.grad(op._cache, op._theta, grad_outputs=V.T.contiguous(),
                                    retain_graph=True, allow_unused=True,
                                    is_grads_batched=True)
    return torch.zeros_like(V) if hv is None else hv.T


def matmat(op: Any, V: Tensor, *, batched: bool = True) -> Tensor:
    """``H @ V`` for ``V`` of shape ``(dim, k)``; adds ``k`` to ``op.n_matvecs``.

    ``batched=True`` tries one batched backward when ``op`` is a cached
    ``HessianOperator`` and falls back to ``k`` products when that raises; ``batched=False``
    always runs ``k`` products (the reference).  ``k = 0`` returns an empty ``(dim, 0)``.
    """
    V = _check(op, V)
    k = V.shape[1]
    if k == 0:
        return V.clone()
    if batched and k > 1 and batched_available(op):
        try:
            out = _batched_cached(op, V)
        except RuntimeError:
            pass  # an op without a batching rule that the fallback loop cannot run either
        else:
            op.n_matvecs += k
            return out
    return _columns(op, V)
