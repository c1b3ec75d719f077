"""Dense float64 Hessians: the exact reference for every curvature probe.

:func:`dense_hessian` forms ``H = d^2 L / d theta^2`` of the same loss the
:class:`~landscope.probes.hvp.HessianOperator` uses (sample-weighted mean cross-entropy
over a :class:`~landscope.probes.probe_data.ProbeData`, same ``mode`` semantics) on float64
copies of the model and the data, as a function of one flat parameter vector: the gradient
graph is built once and each row is one reverse pass through it (reverse-over-reverse,
what ``torch.autograd.functional.hessian(vectorize=False)`` does).  Cost is ``D``
backward passes and ``O(D^2)`` memory, hence the ``max_params`` guard; :func:`spectrum`
gives all eigenvalues.

Why not ``torch.func.hessian``: it vmaps over the ``D`` tangents, and the batching rules
of the LayerNorm/BatchNorm backward are wrong for the input gradient
(pytorch/functorch#534, still reproducible with torch 2.15): on a tiny ViT with LayerNorm
``torch.func.hessian`` (and ``jacrev(jacrev(.))``) return a non-symmetric matrix that is
off by 30% in the norm-weight x input block, while finite differences of the gradient and
every un-vmapped product agree with the result here to 1e-9.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscope.errors import LandscopeError
from landscope.losses import task_loss
from landscope.probes.hvp import Mode, fixed_tensors, forward_mode, resolve_params
from landscope.probes.probe_data import ProbeData

MAX_PARAMS = 5000


def dense_hessian(model: nn.Module, data: ProbeData, params: Optional[dict[str, Tensor]] = None,
                  mode: Mode = "eval", max_params: int = MAX_PARAMS) -> Tensor:
    """The ``D x D`` float64 Hessian of the probe loss w.r.t. the probed parameters.

    Rows/columns follow the flat order of :class:`~landscope.probes.hvp.HessianOperator`
    (``model.named_parameters()`` order, restricted to ``params`` when given, else to the
    parameters with ``requires_grad``).  ``mode`` as for the operator: ``eval`` uses
    BatchNorm running statistics, ``train`` batch statistics of each micro-batch without
    touching the running ones.  ``model`` is not modified (the work runs on a deep copy).
    Not symmetrized (``H - H.T`` is round-off only, a check in itself).  Raises
    :class:`~landscope.errors.LandscopeError` when ``D > max_params``.
    """
    names, values = resolve_params(model, params)
    dim = sum(v.numel() for v in values)
    if dim > max_params:
        raise LandscopeError(f"dense Hessian of {dim} parameters refused (max_params="
                             f"{max_params}): a float64 D x D matrix costs "
                             f"{8 * dim * dim / 1e9:.2g} GB and D backward passes; use the "
                             f"matrix-free probes instead")
    device = values[0].device
    model64 = copy.deepcopy(model).to(torch.float64)
    fixed = fixed_tensors(model64, names, torch.float64, device)
    flat = torch.cat([v.reshape(-1) for v in values]).to(torch.float64)
    shapes = [v.shape for v in values]
    numels = [v.numel() for v in values]
    data64 = data.to(torch.float64, device)

    def batch_loss(theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        parts = torch.split(theta, numels)
        params_ = {n: p.view(s) for n, p, s in zip(names, parts, shapes)}
        return task_loss(model64, functional_call(model64, {**fixed, **params_}, (x,)), y)

    hessian = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    leaf = flat.detach().clone().requires_grad_(True)
    with torch.enable_grad(), forward_mode(model64, mode):
        for (x, y), w in zip(data64.batches, data64.weights):
            (grad,) = torch.autograd.grad(w * batch_loss(leaf, x, y), leaf, create_graph=True)
            if not grad.requires_grad:  # loss linear in theta here: zero curvature
                continue
            for i in range(dim):
                (row,) = torch.autograd.grad(grad[i], leaf, retain_graph=i < dim - 1,
                                             allow_unused=True)
                if row is not None:
                    hessian[i] += row
    return hessian


def spectrum(hessian: Tensor) -> Tensor:
    """All eigenvalues of a symmetric matrix, ascending (``eigvalsh`` of its symmetric part)."""
    if hessian.ndim != 2 or hessian.shape[0] != hessian.shape[1]:
        raise LandscopeError(f"expected a square matrix, got shape {tuple(hessian.shape)}")
    return torch.linalg.eigvalsh((hessian + hessian.T) / 2)
