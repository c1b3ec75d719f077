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

:func:`verify_estimates` is the probe suite's verify mode: the errors of each estimate of a
run against the dense Hessian (:class:`Verification`, the ``verify_*`` scalars).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscope.errors import LandscopeError
from landscope.losses import task_loss
from landscope.probes.blocks import parameter_groups
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


@dataclass
class Verification:
    """Errors of a probe run's estimates against the dense float64 Hessian; None where the
    estimate was not made, everything None but ``skipped`` (the reason) for a model over
    ``max_params``. Relative errors are floored at 1e-12 in the denominator."""

    skipped: Optional[str] = None
    trace_exact: Optional[float] = None
    top_max_rel_error: Optional[float] = None
    bottom_max_abs_error: Optional[float] = None
    block_top_max_rel_error: Optional[float] = None
    block_trace_max_rel_error: Optional[float] = None
    trace_rel_error: Optional[float] = None
    trace_error_in_stderr: Optional[float] = None
    negative_mass_exact: Optional[float] = None
    negative_mass_error: Optional[float] = None
    logdet_exact: Optional[float] = None
    logdet_error_in_stderr: Optional[float] = None


def verify_estimates(model: nn.Module, data: ProbeData, mode: Mode, *, max_params: int,
                     top: Optional[np.ndarray] = None, bottom: Optional[np.ndarray] = None,
                     blocks: Optional[tuple[str, np.ndarray, np.ndarray]] = None,
                     trace: Optional[tuple[float, float]] = None,
                     negative_mass: Optional[float] = None,
                     logdet: Optional[tuple[float, float, float]] = None) -> Verification:
    """Each estimate given against the dense Hessian (small models only): ``top`` / ``bottom``
    eigenvalues (descending / ascending), ``blocks`` = (level of
    :func:`~landscope.probes.blocks.parameter_groups`, eigenvalue table padded with NaN, traces),
    ``trace`` = (estimate, stderr), ``negative_mass`` (fraction of eigenvalues below 0),
    ``logdet`` = (eps, estimate, stderr)."""
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_params > max_params:
        return Verification(skipped=f"{n_params} parameters > probe.verify_max_params="
                                    f"{max_params}")
    hessian = dense_hessian(model, data, mode=mode, max_params=max_params)
    eig = spectrum(hessian)
    out = Verification(trace_exact=float(eig.sum()))
    if top is not None:
        exact = eig.flip(0)[:len(top)].numpy()
        out.top_max_rel_error = float(np.max(np.abs(top - exact)
                                             / np.maximum(np.abs(exact), 1e-12)))
    if bottom is not None:
        exact = eig[:len(bottom)].numpy()
        out.bottom_max_abs_error = float(np.max(np.abs(bottom - exact)))
    if blocks is not None:
        out.block_top_max_rel_error, out.block_trace_max_rel_error = _block_errors(
            model, hessian, *blocks)
    if trace is not None:
        exact, (estimate, stderr) = out.trace_exact, trace
        out.trace_rel_error = float(abs(estimate - exact) / max(abs(exact), 1e-300))
        # a trace deflated over the whole space has stderr ~0: floor it at rounding level
        floor = max(1e-6 * abs(exact), 1e-300)
        out.trace_error_in_stderr = float((estimate - exact) / max(stderr, floor))
    if negative_mass is not None:
        out.negative_mass_exact = float((eig < 0).to(torch.float64).mean())
        out.negative_mass_error = float(negative_mass - out.negative_mass_exact)
    if logdet is not None:
        eps, estimate, stderr = float(logdet[0]), logdet[1], logdet[2]
        exact = float(torch.log(eig + eps).sum()) if float(eig.min()) + eps > 0 else math.nan
        out.logdet_exact = exact
        out.logdet_error_in_stderr = float((estimate - exact) / max(stderr, 1e-300))
    return out


def _block_errors(model: nn.Module, hessian: Tensor, level: str, eigenvalues: np.ndarray,
                  traces: np.ndarray) -> tuple[float, float]:
    """Block eigenvalues and traces against the dense diagonal blocks ``H[b, b]``: the largest
    relative errors over blocks."""
    offsets, at = {}, 0
    for n, p in model.named_parameters():
        if p.requires_grad:
            offsets[n], at = (at, at + p.numel()), at + p.numel()
    eig_err, tr_err = 0.0, 0.0
    for i, members in enumerate(parameter_groups(model, level).values()):
        idx = torch.cat([torch.arange(*offsets[p]) for p in members])
        exact = spectrum(hessian[idx][:, idx]).flip(0)
        est = eigenvalues[i]
        k = int(np.sum(np.isfinite(est)))
        ref = exact[:k].numpy()
        eig_err = max(eig_err,
                      float(np.max(np.abs(est[:k] - ref) / np.maximum(np.abs(ref), 1e-12))))
        if np.isfinite(traces[i]):
            exact_tr = float(exact.sum())
            tr_err = max(tr_err, abs(float(traces[i]) - exact_tr) / max(abs(exact_tr), 1e-12))
    return eig_err, tr_err
