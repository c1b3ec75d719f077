"""The ``probe.curvature`` estimators: top-k eigenvalues and trace of the Gauss-Newton, Fisher
and NTK operators (:mod:`~landscope.probes.curvature_ops`), the residual ``H - G``, the overlap
of their top eigenspaces with the Hessian's, their names in the results contract and their
dense float64 references (verify mode).

Per kind ``p`` in ``probe.curvature`` (``ggn``, ``fisher``, ``fisher_empirical``, ``ntk``):
``p_lambda_max``, ``p_top_eigenvalues`` (the top ``probe.top_k``, Lanczos at ``probe.lanczos_tol``,
checked for missed copies of repeated eigenvalues with ``probe.multiplicity_check``: the GGN and the
NTK of a network at a symmetric point, such as a zero-initialized head, repeat eigenvalues),
``p_converged``, ``p_checked`` / ``p_missed_copies`` (whether the check ran to its conclusion, and
the copies it added), ``p_trace`` / ``p_trace_stderr`` (Hutchinson deflated by those pairs, to
``probe.trace.rse``), ``p_products`` (the operator's products, its own unit: one costs a
Jacobian-vector and a vector-Jacobian product), and for the parameter-space kinds
``hessian_p_overlap = ||V_H^T V_p||_F^2 / k`` (``V``: the top-k unit eigenvectors; 1 when the
eigenspaces coincide, about ``k / D`` for random ones). With ``ggn``: ``residual_lambda_max``,
``residual_top_eigenvalues``, ``residual_converged``, ``residual_checked``,
``residual_missed_copies``, ``residual_products`` of ``H - G`` (Papyan 2020's split of the Hessian;
each of its products costs one Hessian and one GGN product, the Hessian's counted in ``hvps``).
``ntk_samples``: the Gram's samples. A cap (``probe.max_products``, which counts these
operators' products, or ``probe.budget_s``) that cut a kind short: ``p_stopped_by`` (no trace
when it cut the pairs), ``residual_stopped_by``, ``curvature_stopped_by`` (the kinds after it do
not start); ``p_trace_unit_vectors`` when the trace is the exact sum over unit vectors.
Arrays: ``eigenvalues_p``, ``residuals_p``, ``eigenvalues_residual``. Verify mode adds
``verify_p_top_max_rel_error``, ``verify_p_trace_exact``, ``verify_p_trace_error_in_stderr``,
``verify_residual_top_max_rel_error`` and ``verify_hessian_p_overlap_error`` (absolute).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from landscope.losses import task_loss
from landscope.probes.complement import checked_list
from landscope.probes.curvature_ops import (
    DifferenceOperator,
    curvature_operator,
    head,
    output_loss,
)
from landscope.probes.hvp import fixed_tensors, forward_mode, resolve_params
from landscope.probes.lanczos import EigResult, lanczos_eigs
from landscope.probes.probe_data import ProbeData
from landscope.probes.trace import TraceResult, deflated_trace
from landscope.probes.verify import dense_hessian

# the float64 Jacobian the dense references hold per micro-batch, at most (bytes)
MAX_DENSE_JACOBIAN_BYTES = 200_000_000


@dataclass
class CurvatureSpectrum:
    """One operator's top-k pairs, trace, products and overlap with the Hessian's top-k."""

    top: EigResult
    trace: Optional[TraceResult]  # None when a cap cut the pairs short
    products: int
    overlap: Optional[float] = None
    stopped_by: Optional[str] = None  # the cap that cut its pairs or its trace short


@dataclass
class CurvatureResults:
    """Every kind's :class:`CurvatureSpectrum`, the residual ``H - G`` and what the dense
    references need (the true Fisher's drawn labels, the NTK's samples)."""

    spectra: dict[str, CurvatureSpectrum] = field(default_factory=dict)
    residual: Optional[EigResult] = None
    residual_products: int = 0
    fisher_sampled: Optional[list[Tensor]] = None
    ntk_samples: Optional[int] = None
    verification: dict[str, Any] = field(default_factory=dict)
    stopped_by: Optional[str] = None  # the cap that cut a kind short or kept the next from starting


def overlap(a: Tensor, b: Tensor) -> float:
    """``||A^T B||_F^2 / k`` for unit columns, ``k`` the smaller number of columns."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float((a.T @ b).square().sum()) / min(a.shape[1], b.shape[1])


def curvature_spectra(model: nn.Module, data: ProbeData, hessian: Any, top_h: EigResult,
                      cfg: Any, stop: Callable[[], Optional[str]], min_samples: int,
                      operators: Optional[list] = None) -> CurvatureResults:
    """Every kind in ``cfg.curvature`` (module docstring); ``hessian``: the run's operator.
    ``stop`` (a cap) is asked before each kind and each product; a kind whose pairs it cut
    short gets no trace, and the kinds after it do not start (``stopped_by``). ``operators``:
    each kind's operator is appended as it starts, so that a caller can count its products."""
    res = CurvatureResults()
    k, check = int(cfg.top_k), bool(cfg.multiplicity_check)
    for kind in (str(c) for c in cfg.curvature):
        if (why := stop()) is not None:
            res.stopped_by = why
            break
        op = curvature_operator(kind, model, data, mode=hessian.mode, seed=cfg.seed,
                                ntk_samples=cfg.curvature_ntk_samples,
                                mc_samples=cfg.curvature_mc_samples)
        if operators is not None:
            operators.append(op)
        top = lanczos_eigs(op, k=min(k, op.dim), which="largest", tol=cfg.lanczos_tol,
                           seed=cfg.seed, stop=stop)
        top = checked_list(op, top, enabled=check, tol=cfg.lanczos_tol, seed=cfg.seed + 2,
                           stop=stop)
        tr = None
        if top.stopped_by is None:
            tr = deflated_trace(op, top, seed=cfg.seed + 1, target_rse=cfg.trace.rse,
                                max_samples=cfg.trace.max_samples, min_samples=min_samples,
                                stop=stop)
        spec = CurvatureSpectrum(top, tr, op.n_matvecs,
                                 stopped_by=top.stopped_by or (tr and tr.stopped_by))
        if kind == "ntk":
            res.ntk_samples = op.data.n
        else:
            spec.overlap = overlap(top_h.eigenvectors, top.eigenvectors)
        if kind == "fisher":
            res.fisher_sampled = op.sampled
        if kind == "ggn" and spec.stopped_by is None:
            diff = DifferenceOperator(hessian, op)
            res.residual = checked_list(
                diff, lanczos_eigs(diff, k=min(k, op.dim), which="largest",
                                   tol=cfg.lanczos_tol, seed=cfg.seed, stop=stop),
                enabled=check, tol=cfg.lanczos_tol, seed=cfg.seed + 2, stop=stop)
            res.residual_products = diff.n_matvecs
        res.spectra[kind] = spec
        res.stopped_by = spec.stopped_by or (res.residual.stopped_by
                                             if kind == "ggn" and res.residual else None)
        if res.stopped_by is not None:
            break
    return res


def outputs_per_sample(model: nn.Module, data: ProbeData) -> int:
    """The model's outputs for one sample (one eval-mode forward pass of the first sample)."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad(), forward_mode(model, "eval"):
        return int(model(data.batches[0][0][:1].to(dtype)).numel())


def curvature_scalars(res: CurvatureResults) -> dict[str, Any]:
    """The flat names of the results contract (module docstring)."""
    s: dict[str, Any] = {}
    for kind, spec in res.spectra.items():
        ev = spec.top.eigenvalues
        s.update({f"{kind}_lambda_max": float(ev[0]), f"{kind}_top_eigenvalues": ev.tolist(),
                  f"{kind}_converged": bool(spec.top.converged.all()),
                  f"{kind}_checked": spec.top.checked,
                  f"{kind}_missed_copies": spec.top.added_by_check,
                  f"{kind}_trace": spec.trace.estimate if spec.trace else math.nan,
                  f"{kind}_trace_stderr": spec.trace.stderr if spec.trace else math.nan,
                  f"{kind}_products": spec.products})
        if spec.trace is not None and spec.trace.unit_vectors:
            s[f"{kind}_trace_unit_vectors"] = True
        if spec.stopped_by is not None:
            s[f"{kind}_stopped_by"] = spec.stopped_by
        if spec.overlap is not None:
            s[f"hessian_{kind}_overlap"] = spec.overlap
    if res.residual is not None:
        ev = res.residual.eigenvalues
        s.update(residual_lambda_max=float(ev[0]), residual_top_eigenvalues=ev.tolist(),
                 residual_converged=bool(res.residual.converged.all()),
                 residual_checked=res.residual.checked,
                 residual_missed_copies=res.residual.added_by_check,
                 residual_products=res.residual_products)
        if res.residual.stopped_by is not None:
            s["residual_stopped_by"] = res.residual.stopped_by
    if res.ntk_samples is not None:
        s["ntk_samples"] = res.ntk_samples
    s.update({f"verify_{k}": v for k, v in res.verification.items()})
    return s


def curvature_arrays(res: CurvatureResults) -> dict[str, np.ndarray]:
    a = {}
    for kind, spec in res.spectra.items():
        a[f"eigenvalues_{kind}"] = spec.top.eigenvalues.numpy()
        a[f"residuals_{kind}"] = spec.top.residuals.numpy()
    if res.residual is not None:
        a["eigenvalues_residual"] = res.residual.eigenvalues.numpy()
    return a


# ---------------------------------------------------------------------- dense references
def _jacobians(model: nn.Module, data: ProbeData, mode: str) -> list[tuple[Tensor, Tensor]]:
    """``(f_b, J_b)`` per micro-batch in float64, ``J_b`` of shape ``(B, C, D)``: rows by
    reverse passes or columns by the double-backward trick, whichever are fewer."""
    names, values = resolve_params(model, None)
    m64 = copy.deepcopy(model).to(torch.float64)
    fixed = fixed_tensors(m64, names, torch.float64, values[0].device)
    shapes, numels = [v.shape for v in values], [v.numel() for v in values]
    theta = torch.cat([v.reshape(-1) for v in values]).to(torch.float64).requires_grad_(True)
    out = []
    with torch.enable_grad(), forward_mode(m64, mode):
        for x, _ in data.to(torch.float64).batches:
            views = {n: c.view(s) for n, c, s in zip(names, theta.split(numels), shapes)}
            f = functional_call(m64, {**fixed, **views}, (x,))
            flat = f.reshape(-1)
            if flat.numel() <= theta.numel():
                rows = [torch.autograd.grad(flat[i], theta, retain_graph=True)[0]
                        for i in range(flat.numel())]
                jac = torch.stack(rows)
            else:
                u0 = torch.zeros_like(flat, requires_grad=True)
                (jt,) = torch.autograd.grad(flat, theta, u0, create_graph=True)
                jac = torch.stack([torch.autograd.grad(jt[j], u0, retain_graph=True)[0]
                                   for j in range(theta.numel())], 1)
            out.append((f.detach(), jac.reshape(*f.shape, -1)))
    return out


def _output_matrix(kind: str, model: nn.Module, f: Tensor, y: Tensor,
                   sampled: Optional[Tensor]) -> Tensor:
    """The ``(B, C, C)`` output-space blocks ``Q_i`` of ``kind``, written out."""
    loss = output_loss(model)
    c = f.shape[-1]
    p = torch.softmax(f, -1)
    if kind == "ggn":
        if loss == "cross_entropy":
            return torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
        if loss == "mse":
            return torch.eye(c, dtype=f.dtype).expand(len(y), c, c)
        return torch.stack([torch.autograd.functional.hessian(
            lambda fi, i=i: task_loss(model, fi.unsqueeze(0), y[i:i + 1], "sum"), f[i])
            for i in range(len(y))])
    if kind == "fisher_empirical":
        leaf = f.clone().requires_grad_(True)
        with torch.enable_grad():
            (r,) = torch.autograd.grad(task_loss(model, leaf, y, "sum"), leaf)
        return r.unsqueeze(-1) * r.unsqueeze(-2)
    if loss == "cross_entropy":  # the true Fisher at the drawn labels
        r = p.unsqueeze(1) - torch.nn.functional.one_hot(sampled, c).to(f.dtype)
    else:
        r = -sampled.to(f.dtype)
    return torch.einsum("bmc,bmd->bcd", r, r) / r.shape[1]


def dense_curvature(kind: str, model: nn.Module, data: ProbeData, mode: str = "eval",
                    sampled: Optional[list[Tensor]] = None,
                    ntk_samples: Optional[int] = None) -> Tensor:
    """The float64 matrix of ``kind`` from full Jacobians: ``sum_b (w_b/|b|) J_b^T Q_b J_b``, or
    the NTK Gram ``J J^T`` on the first ``ntk_samples`` samples; ``sampled``: the true Fisher's
    labels (noise for mse), per micro-batch, as the operator drew them."""
    if kind == "ntk":
        jac = _jacobians(model, head(data, ntk_samples or data.n), mode)
        stacked = torch.cat([j.reshape(-1, j.shape[-1]) for _, j in jac])
        return stacked @ stacked.T
    total = None
    for b, ((f, jac), (_, y), w) in enumerate(zip(_jacobians(model, data, mode), data.batches,
                                                  data.weights)):
        q = _output_matrix(kind, model, f, y, sampled[b] if sampled is not None else None)
        qj = torch.einsum("bce,bef->bcf", q, jac).reshape(-1, jac.shape[-1])
        part = jac.reshape(-1, jac.shape[-1]).T @ qj * (w / len(y))
        total = part if total is None else total + part
    return total


def verify_curvature(model: nn.Module, data: ProbeData, mode: str, res: CurvatureResults,
                     top_h: EigResult, max_params: int) -> dict[str, Any]:
    """Each estimate of ``res`` against its dense float64 matrix (small models only)."""
    names, values = resolve_params(model, None)
    dim = sum(v.numel() for v in values)
    c = outputs_per_sample(model, data)
    biggest = max(len(y) for _, y in data.batches) * c * dim * 8
    if dim > max_params or biggest > MAX_DENSE_JACOBIAN_BYTES:
        return {"curvature_skipped": f"{dim} parameters > probe.verify_max_params={max_params} "
                f"or a dense Jacobian of {biggest / 1e6:.0f} MB"}
    hess = dense_hessian(model, data, mode=mode, max_params=max_params)
    out: dict[str, Any] = {}
    for kind, spec in res.spectra.items():
        m = dense_curvature(kind, model, data, mode, res.fisher_sampled, res.ntk_samples)
        eig, vec = torch.linalg.eigh((m + m.T) / 2)
        k = len(spec.top.eigenvalues)
        exact = eig.flip(0)[:k]
        out[f"{kind}_top_max_rel_error"] = float(((spec.top.eigenvalues - exact).abs()
                                                  / exact.abs().clamp_min(1e-12)).max())
        out[f"{kind}_trace_exact"] = float(eig.sum())
        if spec.trace is not None:
            floor = max(1e-6 * abs(float(eig.sum())), 1e-300)
            out[f"{kind}_trace_error_in_stderr"] = float(
                (spec.trace.estimate - float(eig.sum())) / max(spec.trace.stderr, floor))
        if spec.overlap is not None:
            vh = torch.linalg.eigh((hess + hess.T) / 2)[1].flip(1)[:, :k]
            out[f"hessian_{kind}_overlap_error"] = abs(spec.overlap
                                                       - overlap(vh, vec.flip(1)[:, :k]))
        if kind == "ggn" and res.residual is not None:
            r = torch.linalg.eigvalsh((hess - m + (hess - m).T) / 2).flip(0)[:k]
            out["residual_top_max_rel_error"] = float(
                ((res.residual.eigenvalues - r).abs() / r.abs().clamp_min(1e-12)).max())
    return out
