"""One run of the probe suite as typed data, and the one definition of its result names.

A :class:`ProbeRun` holds the inputs of a run (model, probe data, Hessian operator, config,
ledger, plan) and one typed result per estimator (``top``, ``bottom``, ``density``,
``trace``, ``blocks``, ``sharpness``, ``noise``, ``pacbayes``, ``verification``), each None
until its step (:mod:`landscope.probes.steps`) has filled it. :meth:`ProbeRun.scalars` and
:meth:`ProbeRun.arrays` turn the results into the flat names of the results contract
(documented in the README); an estimator that did not run leaves no names.

Scalar names: ``lambda_max``, ``lambda_2``, ``spectral_gap``, ``negative_ratio``,
``condition_number``, ``lambda_min`` (bottom-k), ``eig_max_residual``, ``eig_all_converged``,
``hvps_top`` / ``hvps_bottom`` (products used by each Lanczos run; their true residuals per pair
are the arrays ``residuals_top`` / ``residuals_bottom``), ``top_checked`` / ``bottom_checked``
and ``top_missed_copies`` / ``bottom_missed_copies`` (the check for missed copies of repeated
eigenvalues, :mod:`~landscope.probes.complement`: whether it reached its conclusion, and how many
pairs it put in the list; k >= 2 only), ``trace``, ``trace_stderr``, ``trace_unit_vectors``
(present when the trace is the exact sum over unit vectors: a small model, stderr 0),
``density_negative_mass``, ``density_n_outliers``, ``density_outlier_mass``,
``density_bulk_edge``, ``density_tail_mass``, ``logdet``, ``logdet_stderr`` (or
``logdet_skipped``, the reason, when H + eps I is not positive definite),
``sharpness_l2_rho<r>`` and ``sharpness_l2_onestep_rho<r>`` (SAM), with the family
``sharpness_adaptive_l2_rho<r>``, ``sharpness_keskar_eps<e>``,
``sharpness_average_{random,adaptive}_rho<r>`` (+ ``_stderr``),
``pac_bayes[_magnitude]_sigma`` / ``_measure`` (1/sigma'^2),
``noise_trace_sigma``, ``noise_sigma_max``, ``noise_trace_h_sigma``,
``noise_alignment_ratio`` (kappa = tr(H Sigma) / ((tr Sigma / D) tr H)),
``noise_top_k_energy_share``, ``difficulty_index`` (lambda_max^2 / tr H * kappa),
``per_block`` and ``blocks`` ({name: {n_params, lambda_max, lambda_max_share, trace, trace_stderr,
converged, hvps, checked, missed_copies[, stopped_by]}}, :mod:`~landscope.probes.blocks`),
``block_hvps``, ``hvps`` (products used by the full-Hessian probes), ``probe_cost`` (products
and evaluations per estimator) and ``probe_cost_seconds``, ``<estimator>_stopped_by`` (the cap
that cut it short), ``probe_seconds``, ``probe_data_size``, ``probe_mode``, ``n_params``; with
verify mode ``verify_*`` errors against the dense float64 Hessian
(:class:`~landscope.probes.verify.Verification`). With ``pacbayes.enabled``, the PAC-Bayes bounds of
:func:`~landscope.probes.pacbayes.pac_bayes_bounds` with a ``pacbayes_`` prefix:
``pacbayes_naive``, ``pacbayes_isotropic``, ``pacbayes_hessian``,
``pacbayes_kl_{isotropic,hessian}``, ``pacbayes_{isotropic,hessian}_e_mc`` / ``_e_upper`` /
``_prior_var`` / ``_prior_j``, ``pacbayes_train_error``, ``pacbayes_m``, ``pacbayes_D``,
``pacbayes_k``, ``pacbayes_dist2_to_prior_mean``, ``pacbayes_hessian_is_isotropic``, ...,
``pacbayes_prior_mean`` (``"init"`` or ``"zero"``) and ``pacbayes_seconds``; with
``pacbayes.posterior=optimized`` (the default; :mod:`~landscope.probes.pacbayes_optimize`)
also ``pacbayes_complexity_{naive,isotropic,hessian}``, ``pacbayes_matched_error`` and
``pacbayes_matched_complexity_{isotropic,hessian}`` (complexity terms at matched posterior
error). With ``probe.curvature``, the Gauss-Newton, Fisher and NTK names of
:mod:`~landscope.probes.curvature_probes` (``ggn_lambda_max``, ``ggn_trace``,
``residual_top_eigenvalues``, ``hessian_ggn_overlap``, ...).
With ``classes``, the class structure of the outliers
(:class:`~landscope.probes.class_structure.ClassStructure`): ``classes_n_classes`` (C),
``classes_n_outliers`` (gap rule), ``classes_n_outliers_edge`` (with a density),
``classes_capture_top_{c_minus_1,c}``, ``classes_energy_top_*``, ``classes_overlap_top_*``,
``classes_relation``, ``classes_span_rank``, ... (arrays ``classes_*``). Non-finite floats
(``lambda_2`` with ``top_k=1``, ...) come out as None.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from landscope.probes.blocks import BlockSpectrum, eigenvalue_table
from landscope.probes.class_structure import ClassStructure
from landscope.probes.cost import ProbeLedger
from landscope.probes.curvature_probes import (
    CurvatureResults,
    curvature_arrays,
    curvature_scalars,
)
from landscope.probes.density import SLQResult
from landscope.probes.hvp import HessianOperator
from landscope.probes.lanczos import EigResult, spectral_summary
from landscope.probes.noise import GradientNoise
from landscope.probes.objective import ModelObjective
from landscope.probes.probe_data import ProbeData
from landscope.probes.sharpness import (
    AverageSharpness,
    KeskarSharpness,
    PacBayesFlatness,
    WorstCaseSharpness,
)
from landscope.probes.trace import TraceResult
from landscope.probes.verify import Verification

SPECTRAL_NAMES = ("lambda_max", "lambda_2", "spectral_gap", "negative_ratio", "condition_number")



@dataclass
class SharpnessResults:
    """The sharpness measures of one run (None / absent: switched off, or skipped or cut by the
    time cap); ``average`` by kind (``random``, ``adaptive``), ``pac_bayes`` by name
    (``pac_bayes``, ``pac_bayes_magnitude``); the shared objective's evaluation counts."""

    rhos: list[float]
    epsilons: list[float]
    worst_case: Optional[WorstCaseSharpness] = None
    adaptive: Optional[WorstCaseSharpness] = None
    keskar: Optional[KeskarSharpness] = None
    average: dict[str, AverageSharpness] = field(default_factory=dict)
    pac_bayes: dict[str, PacBayesFlatness] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    stopped_by: Optional[str] = None
    loss_evals: int = 0
    grad_evals: int = 0
    acc_evals: int = 0


@dataclass
class PacBayesBounds:
    """What :func:`~landscope.probes.pacbayes.pac_bayes_bounds` (or the optimised version)
    returned, where the prior was centred (``"init"`` or ``"zero"``) and the seconds it took."""

    values: dict[str, float]
    prior_mean: str
    seconds: float


@dataclass
class ProbeRun:
    """The inputs of one probe run and each estimator's typed result (module docstring)."""

    model: nn.Module
    train_split: Any
    cfg: Any
    data: ProbeData
    op: HessianOperator
    ledger: ProbeLedger
    plan: dict[str, int] = field(default_factory=dict)
    w0: Optional[nn.Module | torch.Tensor] = None  # the PAC-Bayes prior mean
    ranks: int = 1
    product_seconds: Optional[float] = None  # one product, timed for the plan
    objective: Optional[ModelObjective] = None  # the sharpness measures', timed for the plan
    top: Optional[EigResult] = None
    bottom: Optional[EigResult] = None
    density: Optional[SLQResult] = None
    trace: Optional[TraceResult] = None
    blocks: Optional[list[BlockSpectrum]] = None
    sharpness: Optional[SharpnessResults] = None
    noise: Optional[GradientNoise] = None
    pacbayes: Optional[PacBayesBounds] = None
    classes: Optional[ClassStructure] = None
    verification: Optional[Verification] = None
    not_started: dict[str, str] = field(default_factory=dict)  # estimator -> cap spent before it
    curvature: Optional[CurvatureResults] = None  # probe.curvature (GGN, Fisher, NTK)
    hvps: Optional[int] = None  # products of the whole run, once the estimators are done
    cost: Optional[dict[str, dict[str, float]]] = None  # the ledger's summary, then too
    seconds: Optional[float] = None  # the whole run, verification included

    # ------------------------------------------------------------------ the names
    def scalars(self) -> dict[str, Any]:
        """The flat scalars of the results contract (module docstring)."""
        s = self._header()
        for part in (self._eigen, self._density, self._trace, self._blocks, self._sharpness,
                     self._noise, self._pacbayes, self._classes, self._cost):
            s.update(part())
        if self.verification is not None:
            s.update({f"verify_{k}": v for k, v in asdict(self.verification).items()
                      if v is not None})
        if self.curvature is not None:
            s.update(curvature_scalars(self.curvature))
        s.update(self._stopped("curvature", self.curvature.stopped_by if self.curvature
                               else self.not_started.get("curvature")))
        if self.seconds is not None:
            s["probe_seconds"] = self.seconds
        for key, value in s.items():  # undefined quantities (lambda_2 with top_k=1, ...) -> None
            if isinstance(value, float) and not math.isfinite(value):
                s[key] = None
        return s

    def arrays(self) -> dict[str, np.ndarray]:
        """Eigenpairs and residuals, the density on its grid and quadrature, the blocks'
        spectra and the noise covariance's eigenvalues, of the estimators that ran."""
        a: dict[str, np.ndarray] = {}
        for name, eig in (("top", self.top), ("bottom", self.bottom)):
            if eig is not None:
                a[f"eigenvalues_{name}"] = eig.eigenvalues.numpy()
                a[f"eigenvectors_{name}"] = eig.eigenvectors.detach().cpu().numpy()
                a[f"residuals_{name}"] = eig.residuals.numpy()
        if self.density is not None:
            q = self.density
            grid, sigma = density_grid(q, self.cfg.density.grid, self.cfg.density.sigma)
            a.update(density_grid=grid.numpy(), density=q.density(grid, sigma).numpy(),
                     slq_nodes=q.nodes.numpy(), slq_weights=q.weights.numpy())
        if self.blocks is not None:
            b = self.blocks
            a.update(block_names=np.array([x.name for x in b]),
                     block_eigenvalues=eigenvalue_table(b, self.cfg.block_top_k),
                     block_n_params=np.array([x.n_params for x in b]),
                     block_trace=np.array([x.trace for x in b]),
                     block_trace_stderr=np.array([x.trace_stderr for x in b]))
        if self.noise is not None:
            a["noise_sigma_eigenvalues"] = self.noise.sigma_eigenvalues.numpy()
        if self.curvature is not None:
            a.update(curvature_arrays(self.curvature))
        if self.classes is not None:
            a.update(self.classes.arrays())
        return a

    # ------------------------------------------------------------------ sections
    def _stopped(self, name: str, reason: Optional[str]) -> dict[str, str]:
        return {} if reason is None else {f"{name}_stopped_by": reason}

    def _header(self) -> dict[str, Any]:
        op = self.op
        s: dict[str, Any] = dict(
            probe_mode=op.mode, probe_data_size=self.data.n, n_params=op.dim,
            hvp_method=op.method, probe_ranks=self.ranks,
            probe_dtype=str(op.dtype).replace("torch.", ""))
        if self.product_seconds is not None:
            s["probe_product_seconds"] = self.product_seconds  # timings end in "seconds"
            s["probe_plan"] = dict(self.plan)
        return s

    def _eigen(self) -> dict[str, Any]:
        top, bottom = self.top, self.bottom
        s: dict[str, Any] = {}
        if top is not None:
            s.update(hvps_top=top.n_matvecs, top_converged=bool(top.converged.all()),
                     **self._stopped("top", top.stopped_by), **_check_names("top", top))
        if bottom is not None:
            s.update(hvps_bottom=bottom.n_matvecs, lambda_min=float(bottom.eigenvalues[0]),
                     bottom_converged=bool(bottom.converged.all()),
                     **self._stopped("bottom", bottom.stopped_by), **_check_names("bottom", bottom))
        if top is not None:
            s.update({k: v for k, v in spectral_summary(top, bottom).items()
                      if k in SPECTRAL_NAMES})
            runs = [top] + ([bottom] if bottom is not None else [])
            s["eig_max_residual"] = float(torch.cat([r.residuals for r in runs]).max())
            s["eig_all_converged"] = bool(torch.cat([r.converged for r in runs]).all())
        return s

    def _density(self) -> dict[str, Any]:
        q = self.density
        if q is None:
            return self._stopped("density", self.not_started.get("density"))
        out = q.outliers()
        low, high = q.negative_mass_bracket()
        s: dict[str, Any] = dict(
            # nodes below 0; the bracket is what the rules guarantee (wide: not resolved)
            density_negative_mass=q.negative_mass(),
            density_negative_mass_lower=low, density_negative_mass_upper=high,
            density_n_outliers=out.count,
            density_outlier_mass=float(out.masses.sum()) if out.count else 0.0,
            density_bulk_edge=out.bulk_edge, density_tail_mass=out.tail_mass,
            density_probes=q.n_probes,
            density_steps_mean=float(np.mean(q.steps)) if q.steps else 0.0,
            density_deflated=q.deflated)
        if self.cfg.density.logdet_eps > 0:
            s.update(logdet_scalars(q, self.cfg.density.logdet_eps, self.bottom))
        return {**s, **self._stopped("density", q.stopped_by)}

    def _trace(self) -> dict[str, Any]:
        tr = self.trace
        if tr is None:
            return self._stopped("trace", self.not_started.get("trace"))
        return dict(trace=tr.estimate, trace_stderr=tr.stderr, trace_samples=tr.n_samples,
                    trace_reference=tr.reference,
                    trace_converged=bool(tr.stderr <= self.cfg.trace.rse * tr.reference),
                    **({"trace_unit_vectors": True} if tr.unit_vectors else {}),
                    **self._stopped("trace", tr.stopped_by))

    def _blocks(self) -> dict[str, Any]:
        if self.blocks is None:
            return {}
        lambda_max = float(self.top.eigenvalues[0]) if self.top is not None else None
        return {"per_block": str(self.cfg.per_block),
                "blocks": {b.name: b.summary(lambda_max) for b in self.blocks},
                "block_hvps": sum(b.n_matvecs for b in self.blocks),
                **self._stopped("blocks", getattr(self.blocks, "stopped_by", None))}

    def _sharpness(self) -> dict[str, Any]:
        return {} if self.sharpness is None else sharpness_scalars(self.sharpness)

    def _noise(self) -> dict[str, Any]:
        g = self.noise
        if g is None:
            return self._stopped("noise", self.not_started.get("noise"))
        return {"noise_samples": g.n, "noise_trace_sigma": g.trace_sigma,
                "noise_sigma_max": float(g.sigma_eigenvalues[0]) if len(g.sigma_eigenvalues)
                else 0.0,
                "noise_trace_h_sigma": g.trace_h_sigma,
                "noise_isotropic_reference": g.isotropic_reference,
                "noise_alignment_ratio": g.alignment_ratio,
                "noise_alignment": g.alignment_method,
                "noise_top_k_energy_share": g.top_k_energy_share,
                "difficulty_index": g.difficulty_index}

    def _pacbayes(self) -> dict[str, Any]:
        pb = self.pacbayes
        if pb is None:
            return self._stopped("pacbayes", self.not_started.get("pacbayes"))
        s: dict[str, Any] = {k if k.startswith("pacbayes_") else f"pacbayes_{k}": v
                             for k, v in pb.values.items()}
        s["pacbayes_prior_mean"] = pb.prior_mean
        s["pacbayes_seconds"] = pb.seconds
        return s

    def _classes(self) -> dict[str, Any]:
        c = self.classes
        if c is None:
            return self._stopped("classes", self.not_started.get("classes"))
        return {**c.scalars(), **self._stopped("classes", self.ledger.stopped.get("classes"))}

    def _cost(self) -> dict[str, Any]:
        if self.cost is None:
            return {}
        return {"hvps": self.hvps,
                "probe_cost": {k: {f: v for f, v in c.items() if f != "seconds"}
                               for k, c in self.cost.items()},
                "probe_cost_seconds": {f"{k}_seconds": c["seconds"] for k, c in self.cost.items()}}


def density_grid(q: SLQResult, points: int, sigma: float) -> tuple[torch.Tensor, float]:
    """The grid the density is saved on (the nodes' range, padded by 5%) and the Gaussian
    broadening, ``sigma`` times the range."""
    lo, hi = float(q.nodes.min()), float(q.nodes.max())
    pad = 0.05 * (hi - lo) + 1e-12
    grid = torch.linspace(lo - pad, hi + pad, points, dtype=torch.float64)
    return grid, sigma * (hi - lo + 1e-12)


def logdet_scalars(q: SLQResult, eps: float, bottom: Optional[EigResult]) -> dict[str, Any]:
    """``log det(H + eps I)`` from the quadrature, only where it is defined: every eigenvalue
    above ``-eps``. The smallest eigenvalue is the bottom-k Lanczos one when it was computed
    (the quadrature's nodes never reach it exactly), else the smallest node; otherwise the
    reason goes into ``logdet_skipped``."""
    lowest, source = float(q.nodes.min()), "smallest SLQ node"
    if bottom is not None and float(bottom.eigenvalues[0]) < lowest:
        lowest, source = float(bottom.eigenvalues[0]), "lambda_min (Lanczos)"
    if lowest + eps <= 0:
        return {"logdet_skipped": f"H + {eps:g} I is not positive definite: {source} "
                                  f"{lowest:.4g} <= -{eps:g}"}
    ld = q.logdet(eps)
    return {"logdet": ld.estimate, "logdet_stderr": ld.stderr}


def sharpness_scalars(sh: SharpnessResults) -> dict[str, Any]:
    """Sharpness scalars; each name carries its radius, e.g. ``sharpness_l2_rho0.05``. A
    measure the time cap skipped or cut midway is named in ``sharpness_skipped``
    (``sharpness_stopped_by`` says which cap); a measure whose ascent or average met a
    non-finite loss is inf (or NaN when the loss at the trained point is not finite), which
    result.json stores as null, so ``<name>_diverged`` says why."""
    out: dict[str, Any] = {}
    if sh.worst_case is not None:
        for r, v, v1 in zip(sh.rhos, sh.worst_case.values, sh.worst_case.one_step):
            out[f"sharpness_l2_rho{r:g}"] = v
            out[f"sharpness_l2_onestep_rho{r:g}"] = v1
    if sh.adaptive is not None:
        for r, v in zip(sh.rhos, sh.adaptive.values):
            out[f"sharpness_adaptive_l2_rho{r:g}"] = v
    if sh.keskar is not None:
        for e, v in zip(sh.epsilons, sh.keskar.values):
            out[f"sharpness_keskar_eps{e:g}"] = v
    for name, avg in sh.average.items():
        for r, m, se in zip(sh.rhos, avg.means, avg.stderrs):
            out[f"sharpness_average_{name}_rho{r:g}"] = m
            out[f"sharpness_average_{name}_rho{r:g}_stderr"] = se
    for name, pb in sh.pac_bayes.items():
        out.update({f"{name}_sigma": pb.sigma, f"{name}_measure": pb.measure,
                    f"{name}_bracketed": pb.bracketed})
    if sh.stopped_by is not None:  # the time cap only grows: nothing ran after the first skip
        out["sharpness_stopped_by"] = sh.stopped_by
    if sh.skipped:
        out["sharpness_skipped"] = list(sh.skipped)
    out["sharpness_loss_evals"], out["sharpness_grad_evals"] = sh.loss_evals, sh.grad_evals
    out["sharpness_acc_evals"] = sh.acc_evals  # PAC-Bayes sigma' (accuracy of perturbed weights)
    for k, v in list(out.items()):
        if isinstance(v, float) and not math.isfinite(v) and not k.endswith("_stderr"):
            out[f"{k}_diverged"] = True
    return out


def _check_names(name: str, eig: EigResult) -> dict[str, Any]:
    """``<name>_checked`` / ``<name>_missed_copies`` for a list of k >= 2 pairs (a single
    eigenvalue has no copies to miss)."""
    if len(eig.eigenvalues) < 2:
        return {}
    return {f"{name}_checked": bool(eig.checked), f"{name}_missed_copies": int(eig.added_by_check)}
