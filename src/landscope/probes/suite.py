"""Run the configured set of curvature probes on one model: no files, no Hydra.

:func:`run_probes` takes a model, the training split and a probe config
(``landscope.config.ProbeConfig``) and returns a :class:`ProbeReport`: flat
scalars (their names are the results contract, documented in the README) and
arrays (eigenvalues, eigenvectors, density grid) for the job layer to save.
:func:`curvature_during_training` is the cheap subset logged every N epochs.

Scalar names: ``lambda_max``, ``lambda_2``, ``spectral_gap``, ``negative_ratio``,
``condition_number``, ``lambda_min`` (bottom-k), ``eig_max_residual``,
``eig_all_converged``, ``hvps_top`` / ``hvps_bottom`` (products used by each Lanczos run; their
true residuals per pair are the arrays ``residuals_top`` / ``residuals_bottom``), ``trace``, ``trace_stderr``, ``density_negative_mass``,
``density_n_outliers``, ``density_outlier_mass``, ``density_bulk_edge``, ``density_tail_mass``, ``logdet``, ``logdet_stderr`` (or ``logdet_skipped``, the reason, when H + eps I is not
positive definite),
``sharpness_l2_rho<r>`` and ``sharpness_l2_onestep_rho<r>`` (SAM), with the family
``sharpness_adaptive_l2_rho<r>``, ``sharpness_keskar_eps<e>``,
``sharpness_average_{random,adaptive}_rho<r>`` (+ ``_stderr``),
``pac_bayes[_magnitude]_sigma`` / ``_measure`` (1/sigma'^2),
``noise_trace_sigma``, ``noise_sigma_max``, ``noise_trace_h_sigma``,
``noise_alignment_ratio`` (kappa = tr(H Sigma) / ((tr Sigma / D) tr H)),
``noise_top_k_energy_share``, ``difficulty_index`` (lambda_max^2 / tr H * kappa),
``per_block`` and ``blocks`` ({name: {n_params, lambda_max, lambda_max_share, trace,
trace_stderr, converged, hvps}}, see :mod:`~landscope.probes.blocks`), ``block_hvps``,
``hvps`` (products used by the full-Hessian probes), ``probe_seconds``, ``probe_data_size``,
``probe_mode``, ``n_params``; with verify mode ``verify_*`` errors against the
dense float64 Hessian. With ``pacbayes`` (:func:`_pacbayes`), the PAC-Bayes bounds of
:func:`~landscope.probes.pacbayes.pac_bayes_bounds` with a ``pacbayes_`` prefix:
``pacbayes_naive``, ``pacbayes_isotropic``, ``pacbayes_hessian``, ``pacbayes_kl_{isotropic,hessian}``,
``pacbayes_{isotropic,hessian}_e_mc`` / ``_e_upper`` / ``_prior_var`` / ``_prior_j``,
``pacbayes_train_error``, ``pacbayes_m``, ``pacbayes_D``, ``pacbayes_k``,
``pacbayes_dist2_to_prior_mean``, ``pacbayes_hessian_is_isotropic``, ...,
``pacbayes_prior_mean`` (``"init"`` or ``"zero"``) and ``pacbayes_seconds``; with
``pacbayes_posterior=optimized`` (the default; :mod:`~landscope.probes.pacbayes_optimize`)
also ``pacbayes_complexity_{naive,isotropic,hessian}``, ``pacbayes_matched_error`` and
``pacbayes_matched_complexity_{isotropic,hessian}`` (complexity terms at matched posterior error).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from landscope.probes.blocks import block_spectra, parameter_groups
from landscope.probes.cost import ProbeLedger
from landscope.probes.density import slq
from landscope.probes.distributed import hessian_operator, rank_and_world
from landscope.probes.hvp import HessianOperator
from landscope.probes.lanczos import lanczos_eigs, spectral_summary
from landscope.probes.noise import gradient_noise
from landscope.probes.probe_data import ProbeData
from landscope.probes.sharpness import (ModelObjective, average_sharpness, keskar_sharpness,
                                        pac_bayes_flatness, sigma_guess,
                                        worst_case_sharpness)
from landscope.probes.trace import deflated_trace, hutchinson
from landscope.probes.verify import dense_hessian, spectrum


# Fewest samples before the trace's auto-stop may fire: stopping on an estimated stderr biases
# the estimate low when it may fire early (large samples raise both the mean and the stderr).
# Measured on a 20-dim quadratic (top-5 deflated, rse 0.01, 400 seeds): with 10, mean error
# -0.038 +- 0.011 and error/stderr has sd 1.35; with 30, +0.008 +- 0.008 and sd 1.08.
TRACE_MIN_SAMPLES = 30
# Relative precision of the PAC-Bayes sigma' search. Its 10 Monte Carlo draws move sigma' by
# 5-15% from one probe.seed to another (measured on the mlp, cnn and vit of bench_probe_cost),
# so 1e-3 was spurious precision; 1e-2 changed sigma' by < 1% and saved 10-70 of its
# 73-151 accuracy evaluations per measure.
PAC_BAYES_SIGMA_RTOL = 1e-2
# Hutchinson products per batched call on a GPU (probes.batched.matmat); 1 on CPU, where
# batching measured 1.04-1.36x slower than single products (scripts/bench_memory.py)
TRACE_GPU_BLOCK = 8


@dataclass
class ProbeReport:
    scalars: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))


def probe_data(train_split, cfg: Any) -> ProbeData:
    return ProbeData.from_split(train_split, size=cfg.data_size, seed=cfg.seed,
                                micro_batch=cfg.micro_batch)


def _planned(cfg: Any, dim: int) -> dict[str, int]:
    """The most products each switched-on full-Hessian estimator may spend (its own caps)."""
    plan: dict[str, int] = {}
    if cfg.top_k > 0:
        plan["top"] = min(dim, 50 + 20 * min(cfg.top_k, dim))
    if cfg.bottom_k > 0:
        plan["bottom"] = min(dim, 50 + 20 * min(cfg.bottom_k, dim))
    if cfg.density:
        plan["density"] = cfg.slq_probes * min(cfg.slq_steps, dim)
    if cfg.trace:
        plan["trace"] = cfg.trace_max_samples
    return plan


def run_probes(model: nn.Module, train_split, cfg: Any,
               w0: Optional[nn.Module | torch.Tensor] = None,
               log: Optional[Callable[[str], None]] = None) -> ProbeReport:
    """All probes ``cfg`` switches on, on a fixed seeded subset of ``train_split``.

    ``w0``: the prior mean of the PAC-Bayes bounds (``cfg.pacbayes``), which must not depend
    on the training data: the model at initialization (a model of the same architecture or
    a flat vector in parameter order; :func:`landscope.jobs.initial_model` rebuilds a job's).
    ``None`` centres the prior at 0 (valid too, usually looser). ``log``: where the plan line
    and the caps' messages go.

    Cost (:mod:`~landscope.probes.cost`): ``probe_cost`` holds each estimator's seconds,
    products and evaluations; ``probe.max_products`` / ``probe.budget_s`` cap the run, and an
    estimator a cap cut short says so in ``<estimator>_stopped_by`` (top, bottom, density,
    trace, noise, sharpness, blocks, pacbayes). Products are shared: the density's Lanczos runs
    work on the complement of the top-k eigenvectors (which enter as exact nodes) and each run's
    first step is a sample of the deflated trace; the trace stops on its standard error relative
    to the larger of |tr H| and an estimate of Σ|λ| (well posed for traces near zero)."""
    tic = time.perf_counter()
    data = probe_data(train_split, cfg)
    # data-parallel over torch.distributed ranks when a process group is up (torchrun)
    op = hessian_operator(model, data, mode=_value(cfg.mode), seed=cfg.seed,
                          checkpointing=bool(getattr(cfg, "checkpointing", False)))
    rep = ProbeReport()
    s, a = rep.scalars, rep.arrays
    s.update(probe_mode=op.mode, probe_data_size=data.n, n_params=op.dim, hvp_method=op.method,
             probe_ranks=rank_and_world()[1],
             probe_dtype=str(op.dtype).replace("torch.", ""))
    show = cfg.progress if getattr(cfg, "progress", None) is not None else sys.stderr.isatty()
    ledger = ProbeLedger(counter=lambda: op.n_matvecs, max_products=getattr(cfg, "max_products", None),
                         budget_s=getattr(cfg, "budget_s", None), progress=bool(show), log=log,
                         started=tic)
    plan = _planned(cfg, op.dim)
    if plan:
        t0 = time.perf_counter()
        op.matvec(torch.randn(op.dim, generator=torch.Generator().manual_seed(cfg.seed),
                              dtype=op.dtype).to(op.device))
        per_product = time.perf_counter() - t0
        s["probe_product_seconds"] = per_product  # timings end in "seconds" (not results)
        s["probe_plan"] = dict(plan)
        ledger.plan(plan, per_product)

    top = bottom = None
    if cfg.top_k > 0:
        with ledger.stage("top", plan.get("top")):
            top = lanczos_eigs(op, k=min(cfg.top_k, op.dim), which="largest", tol=cfg.lanczos_tol,
                               seed=cfg.seed, stop=ledger.stop)
        a["eigenvalues_top"] = top.eigenvalues.numpy()
        a["eigenvectors_top"] = top.eigenvectors.detach().cpu().numpy()
        a["residuals_top"] = top.residuals.numpy()
        s["hvps_top"] = top.n_matvecs
        s["top_converged"] = bool(top.converged.all())
        _stopped(s, ledger, "top", top.stopped_by)
    if cfg.bottom_k > 0:
        with ledger.stage("bottom", plan.get("bottom")):
            bottom = lanczos_eigs(op, k=min(cfg.bottom_k, op.dim), which="smallest",
                                  tol=cfg.lanczos_tol, atol=1e-6, seed=cfg.seed + 1,
                                  stop=ledger.stop)
        a["eigenvalues_bottom"] = bottom.eigenvalues.numpy()
        a["eigenvectors_bottom"] = bottom.eigenvectors.detach().cpu().numpy()
        a["residuals_bottom"] = bottom.residuals.numpy()
        s["hvps_bottom"] = bottom.n_matvecs
        s["lambda_min"] = float(bottom.eigenvalues[0])
        s["bottom_converged"] = bool(bottom.converged.all())
        _stopped(s, ledger, "bottom", bottom.stopped_by)
    if top is not None:
        s.update({k: v for k, v in spectral_summary(top, bottom).items()
                  if k in ("lambda_max", "lambda_2", "spectral_gap", "negative_ratio",
                           "condition_number")})
        res = [top.residuals] + ([bottom.residuals] if bottom is not None else [])
        s["eig_max_residual"] = float(torch.cat(res).max())
        conv = [top.converged] + ([bottom.converged] if bottom is not None else [])
        s["eig_all_converged"] = bool(torch.cat(conv).all())

    q = None
    if cfg.density and (why := ledger.stop()) is not None:
        _stopped(s, ledger, "density", why)  # the cap was spent before it started
    elif cfg.density:
        with ledger.stage("density", plan.get("density")):
            # adaptive steps need the top-k pairs (the outliers are resolved through them)
            q = slq(op, n_probes=cfg.slq_probes, m_steps=min(cfg.slq_steps, op.dim), seed=cfg.seed,
                    deflate=top, resolution=cfg.density_sigma if top is not None else None,
                    stop=ledger.stop)
        s.update(_density(q, cfg, bottom, a))
        _stopped(s, ledger, "density", q.stopped_by)

    if cfg.trace:
        # the top-k pairs computed anyway deflate the estimator's variance (GUIDE §6), the
        # density's runs are its first samples, and its stop is relative to Σ|λ| where known
        cap = cfg.trace_max_samples
        block = TRACE_GPU_BLOCK if op.device.type == "cuda" else 1  # batching did not pay on CPU
        with ledger.stage("trace", plan.get("trace")):
            if top is not None:
                prior = q.trace_samples.tolist() if q is not None and q.trace_samples is not None else ()
                scale = q.trace_f(q.nodes.abs()).estimate if q is not None else 0.0
                basis = q.deflation if q is not None and q.deflation is not None else top
                tr = deflated_trace(op, basis, seed=cfg.seed + 1, target_rse=cfg.trace_rse,
                                    max_samples=cap, prior=prior, scale=scale, stop=ledger.stop,
                                    min_samples=TRACE_MIN_SAMPLES, block=block)
            else:
                scale = q.trace_f(q.nodes.abs()).estimate if q is not None else 0.0
                tr = hutchinson(op, seed=cfg.seed + 1, target_rse=cfg.trace_rse, max_samples=cap,
                                scale=scale, stop=ledger.stop, min_samples=TRACE_MIN_SAMPLES,
                                block=block)
        s.update(trace=tr.estimate, trace_stderr=tr.stderr, trace_samples=tr.n_samples,
                 trace_reference=tr.reference,
                 trace_converged=bool(tr.stderr <= cfg.trace_rse * tr.reference))
        _stopped(s, ledger, "trace", tr.stopped_by)

    if _value(cfg.per_block) != "none":
        with ledger.stage("blocks") as cost:
            _per_block(model, data, op.mode, cfg, s, a)
        cost.products += s.get("block_hvps", 0)
    if cfg.sharpness or cfg.sharpness_family:
        # the loss and gradient at the trained point come from the operator (computed once)
        obj = ModelObjective(model, data, mode=op.mode, at_origin=(op.loss(), op.gradient()))
        ledger.evals = lambda: (obj.n_loss + obj.n_acc, obj.n_grad)
        with ledger.stage("sharpness"):
            s.update(_sharpness(obj, cfg, ledger))
    if cfg.noise:
        with ledger.stage("noise"):
            if (why := ledger.stop()) is None:
                s.update(_noise(model, train_split, cfg, op, top, s, a))
            else:
                _stopped(s, ledger, "noise", why)
    if getattr(cfg, "pacbayes", False):
        with ledger.stage("pacbayes"):
            if (why := ledger.stop(products=False)) is None:
                s.update(_pacbayes(model, train_split, cfg, top, w0))
            else:
                _stopped(s, ledger, "pacbayes", why)
    s["hvps"] = op.n_matvecs
    cost = ledger.summary()
    s["probe_cost"] = {k: {f: v for f, v in c.items() if f != "seconds"} for k, c in cost.items()}
    s["probe_cost_seconds"] = {f"{k}_seconds": c["seconds"] for k, c in cost.items()}
    if ledger.stopped and log is not None:
        log("probe caps cut short: " + ", ".join(f"{k} ({v})" for k, v in ledger.stopped.items()))
    if cfg.verify:
        s.update(_verify(model, data, op.mode, cfg, s, a))
    s["probe_seconds"] = time.perf_counter() - tic
    for key, value in s.items():  # undefined quantities (lambda_2 with top_k=1, ...) -> None
        if isinstance(value, float) and not math.isfinite(value):
            s[key] = None
    return rep


def _stopped(s: dict, ledger: ProbeLedger, name: str, reason: Optional[str]) -> None:
    if reason is not None:
        s[f"{name}_stopped_by"] = reason
        ledger.record_stop(name, reason)


def _density(q: Any, cfg: Any, bottom: Any, a: dict) -> dict[str, Any]:
    """The density on a grid and its scalar summaries (outliers, negative mass, log det)."""
    lo, hi = float(q.nodes.min()), float(q.nodes.max())
    pad = 0.05 * (hi - lo) + 1e-12
    grid = torch.linspace(lo - pad, hi + pad, cfg.density_grid, dtype=torch.float64)
    sigma = cfg.density_sigma * (hi - lo + 1e-12)
    a.update(density_grid=grid.numpy(), density=q.density(grid, sigma).numpy(),
             slq_nodes=q.nodes.numpy(), slq_weights=q.weights.numpy())
    out = q.outliers()
    low, high = q.negative_mass_bracket()
    s: dict[str, Any] = dict(
        # nodes below 0; the bracket is what the rules guarantee (wide: not resolved)
        density_negative_mass=q.negative_mass(),
        density_negative_mass_lower=low, density_negative_mass_upper=high,
        density_n_outliers=out.count,
        density_outlier_mass=float(out.masses.sum()) if out.count else 0.0,
        density_bulk_edge=out.bulk_edge, density_tail_mass=out.tail_mass,
        density_probes=q.n_probes, density_steps_mean=float(np.mean(q.steps)) if q.steps else 0.0,
        density_deflated=q.deflated)
    if cfg.logdet_eps > 0:
        s.update(_logdet(q, cfg.logdet_eps, bottom))
    return s


def _logdet(q: Any, eps: float, bottom: Any) -> dict[str, Any]:
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


def _per_block(model: nn.Module, data: ProbeData, mode: str, cfg: Any, s: dict, a: dict) -> None:
    """Top-k eigenvalues and trace of each diagonal block (``probe.per_block``): a nested
    ``blocks`` scalar {name: {n_params, lambda_max, lambda_max_share, trace, ...}} and
    ``block_*`` arrays (eigenvalues padded with NaN to ``block_top_k``)."""
    groups = parameter_groups(model, _value(cfg.per_block))
    spectra = block_spectra(model, data, groups, k=cfg.block_top_k, mode=mode,
                            tol=cfg.lanczos_tol, trace_rse=cfg.trace_rse, trace=cfg.trace,
                            seed=cfg.seed)
    s["per_block"] = _value(cfg.per_block)
    s["blocks"] = {b.name: b.summary(s.get("lambda_max")) for b in spectra}
    s["block_hvps"] = sum(b.n_matvecs for b in spectra)
    eigs = np.full((len(spectra), cfg.block_top_k), np.nan)
    for i, b in enumerate(spectra):
        eigs[i, : len(b.eigenvalues)] = b.eigenvalues.numpy()
    a.update(block_names=np.array([b.name for b in spectra]), block_eigenvalues=eigs,
             block_n_params=np.array([b.n_params for b in spectra]),
             block_trace=np.array([b.trace for b in spectra]),
             block_trace_stderr=np.array([b.trace_stderr for b in spectra]))


def _sharpness(obj: ModelObjective, cfg: Any, ledger: ProbeLedger) -> dict[str, Any]:
    """Sharpness scalars; each name carries its radius, e.g. ``sharpness_l2_rho0.05``. The
    measures share one objective (its loss and gradient at the trained point are computed once);
    ``budget_s`` is checked between measures and a measure it skips is named in
    ``sharpness_stopped_by`` / ``sharpness_skipped``."""
    rhos = [float(r) for r in cfg.sharpness_rhos]
    out: dict[str, Any] = {}
    skipped: list[str] = []

    def go(name: str) -> bool:
        why = ledger.stop(products=False)
        if why is not None:
            skipped.append(name)
            out["sharpness_stopped_by"] = why
            ledger.record_stop("sharpness", why)
        return why is None

    if go("worst_case"):
        wc = worst_case_sharpness(obj, rhos, seed=cfg.seed)
        for r, v, v1 in zip(rhos, wc.values, wc.one_step):
            out[f"sharpness_l2_rho{r:g}"] = v
            out[f"sharpness_l2_onestep_rho{r:g}"] = v1
    if cfg.sharpness_family:
        if go("adaptive"):
            asam = worst_case_sharpness(obj, rhos, adaptive=True, seed=cfg.seed)
            for r, v in zip(rhos, asam.values):
                out[f"sharpness_adaptive_l2_rho{r:g}"] = v
        if go("keskar"):
            eps = [float(e) for e in cfg.keskar_epsilons]
            for e, v in zip(eps, keskar_sharpness(obj, eps, seed=cfg.seed).values):
                out[f"sharpness_keskar_eps{e:g}"] = v
        guesses: dict[bool, float | None] = {}  # sigma' from the averages (the largest radius)
        for adaptive, name in ((False, "random"), (True, "adaptive")):
            if go(f"average_{name}"):
                avg = average_sharpness(obj, rhos, adaptive=adaptive,
                                        n_samples=cfg.sharpness_samples,
                                        antithetic=cfg.sharpness_antithetic, seed=cfg.seed)
                for r, m, se in zip(rhos, avg.means, avg.stderrs):
                    out[f"sharpness_average_{name}_rho{r:g}"] = m
                    out[f"sharpness_average_{name}_rho{r:g}_stderr"] = se
                r_max, m_max = max(zip(avg.rhos, avg.means))
                guesses[adaptive] = sigma_guess(m_max, r_max)
        for aware, name in ((False, "pac_bayes"), (True, "pac_bayes_magnitude")):
            if go(name):
                pb = pac_bayes_flatness(obj, magnitude_aware=aware, seed=cfg.seed,
                                        rtol=PAC_BAYES_SIGMA_RTOL, guess=guesses.get(aware))
                out.update({f"{name}_sigma": pb.sigma, f"{name}_measure": pb.measure,
                            f"{name}_bracketed": pb.bracketed})
    if skipped:
        out["sharpness_skipped"] = skipped
    out["sharpness_loss_evals"], out["sharpness_grad_evals"] = obj.n_loss, obj.n_grad
    out["sharpness_acc_evals"] = obj.n_acc  # PAC-Bayes sigma' (accuracy of perturbed weights)
    # A measure whose ascent or average met a non-finite loss is inf (or NaN when the loss at
    # the trained point is not finite); result.json stores those as null, so a flag says why.
    for k, v in list(out.items()):
        if isinstance(v, float) and not math.isfinite(v) and not k.endswith("_stderr"):
            out[f"{k}_diverged"] = True
    return out


def _noise(model: nn.Module, train_split, cfg: Any, op: HessianOperator, top: Any, s: dict,
           a: dict) -> dict[str, Any]:
    """Gradient-noise statistics on ``noise_samples`` per-sample gradients (the first
    samples of the probe subset), aligned with the Hessian ``op`` of the whole subset."""
    data = ProbeData.from_split(train_split, size=min(cfg.noise_samples, op.data.n_total),
                                seed=cfg.seed, micro_batch=cfg.micro_batch)
    g = gradient_noise(model, data, hessian=op, top_k_eigs=top, seed=cfg.seed, mode=op.mode,
                       alignment=_value(cfg.noise_alignment), trace_h=s.get("trace"))
    a["noise_sigma_eigenvalues"] = g.sigma_eigenvalues.numpy()
    return {"noise_samples": g.n, "noise_trace_sigma": g.trace_sigma,
            "noise_sigma_max": float(g.sigma_eigenvalues[0]) if len(g.sigma_eigenvalues) else 0.0,
            "noise_trace_h_sigma": g.trace_h_sigma,
            "noise_isotropic_reference": g.isotropic_reference,
            "noise_alignment_ratio": g.alignment_ratio, "noise_alignment": g.alignment_method,
            "noise_top_k_energy_share": g.top_k_energy_share,
            "difficulty_index": g.difficulty_index}


def _pacbayes(model: nn.Module, train_split, cfg: Any, top: Any,
              w0: Optional[nn.Module | torch.Tensor]) -> dict[str, Any]:
    """PAC-Bayes bounds on ``pacbayes_data_size`` training samples (null: the whole split:
    the bound is over the m samples its empirical error is measured on), with the Hessian
    posterior in the basis of the top-k eigenvectors computed above (on the probe subset:
    a posterior may depend on the data). Scalars prefixed ``pacbayes_``."""
    from landscope.probes.pacbayes import pac_bayes_bounds
    from landscope.probes.pacbayes_optimize import optimized_pac_bayes_bounds
    from landscope.errors import ConfigError

    if top is None:
        raise ConfigError("probe.pacbayes=true needs probe.top_k >= 1 (the Hessian-informed "
                          "posterior uses the top-k eigenvectors)")
    tic = time.perf_counter()
    data = ProbeData.from_split(train_split, size=cfg.pacbayes_data_size, seed=cfg.seed,
                                micro_batch=cfg.micro_batch)
    if str(getattr(cfg, "pacbayes_posterior", "optimized")) == "grid":
        out = pac_bayes_bounds(model, data, top.eigenvalues, top.eigenvectors, w0=w0,
                               delta=cfg.pacbayes_delta, delta_mc=cfg.pacbayes_delta_mc,
                               n_mc=cfg.pacbayes_n_mc, n_select=cfg.pacbayes_n_select,
                               beta_grid=list(cfg.pacbayes_beta_grid), seed=cfg.seed)
    else:
        out = optimized_pac_bayes_bounds(
            model, data, top.eigenvalues, top.eigenvectors, w0=w0, delta=cfg.pacbayes_delta,
            delta_mc=cfg.pacbayes_delta_mc, n_mc=cfg.pacbayes_n_mc,
            n_select=cfg.pacbayes_n_select, n_match=cfg.pacbayes_n_match,
            steps=cfg.pacbayes_steps, lr_mean=cfg.pacbayes_lr_mean, lr_var=cfg.pacbayes_lr_var,
            batch_size=cfg.pacbayes_batch_size, seed=cfg.seed)
    scalars: dict[str, Any] = {k if k.startswith("pacbayes_") else f"pacbayes_{k}": v
                               for k, v in out.items()}
    scalars["pacbayes_prior_mean"] = "zero" if w0 is None else "init"
    scalars["pacbayes_seconds"] = time.perf_counter() - tic
    return scalars


def _verify(model: nn.Module, data: ProbeData, mode: str, cfg: Any, s: dict,
            a: dict) -> dict[str, Any]:
    """Errors of each estimate against the dense float64 Hessian (small models only)."""
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_params > cfg.verify_max_params:
        return {"verify_skipped": f"{n_params} parameters > probe.verify_max_params="
                                  f"{cfg.verify_max_params}"}
    hessian = dense_hessian(model, data, mode=mode, max_params=cfg.verify_max_params)
    eig = spectrum(hessian)
    out: dict[str, Any] = {"verify_trace_exact": float(eig.sum())}
    if "eigenvalues_top" in a:
        k = len(a["eigenvalues_top"])
        exact = eig.flip(0)[:k].numpy()
        out["verify_top_max_rel_error"] = float(np.max(np.abs(a["eigenvalues_top"] - exact)
                                                       / np.maximum(np.abs(exact), 1e-12)))
    if "eigenvalues_bottom" in a:
        k = len(a["eigenvalues_bottom"])
        exact = eig[:k].numpy()
        out["verify_bottom_max_abs_error"] = float(np.max(np.abs(a["eigenvalues_bottom"] - exact)))
    if "block_eigenvalues" in a:
        out.update(_verify_blocks(model, hessian, _value(cfg.per_block), a))
    if "trace" in s:
        err = s["trace"] - out["verify_trace_exact"]
        exact = out["verify_trace_exact"]
        out["verify_trace_rel_error"] = float(abs(err) / max(abs(exact), 1e-300))
        # a trace deflated over the whole space has stderr ~0: floor it at rounding level
        floor = max(1e-6 * abs(exact), 1e-300)
        out["verify_trace_error_in_stderr"] = float(err / max(s["trace_stderr"], floor))
    if "density_negative_mass" in s:  # fraction of eigenvalues below 0
        exact = float((eig < 0).to(torch.float64).mean())
        out["verify_negative_mass_exact"] = exact
        out["verify_negative_mass_error"] = float(s["density_negative_mass"] - exact)
    if s.get("logdet") is not None:
        eps = float(cfg.logdet_eps)
        exact = float(torch.log(eig + eps).sum()) if float(eig.min()) + eps > 0 else math.nan
        out["verify_logdet_exact"] = exact
        out["verify_logdet_error_in_stderr"] = float((s["logdet"] - exact)
                                                     / max(s["logdet_stderr"], 1e-300))
    return out


def _verify_blocks(model: nn.Module, hessian: torch.Tensor, level: str, a: dict
                   ) -> dict[str, float]:
    """Block eigenvalues and traces against the dense diagonal blocks ``H[b, b]``."""
    offsets, at = {}, 0
    for n, p in model.named_parameters():
        if p.requires_grad:
            offsets[n], at = (at, at + p.numel()), at + p.numel()
    eig_err, tr_err = 0.0, 0.0
    for i, members in enumerate(parameter_groups(model, level).values()):
        idx = torch.cat([torch.arange(*offsets[p]) for p in members])
        exact = spectrum(hessian[idx][:, idx]).flip(0)
        est = a["block_eigenvalues"][i]
        k = int(np.sum(np.isfinite(est)))
        ref = exact[:k].numpy()
        eig_err = max(eig_err, float(np.max(np.abs(est[:k] - ref) / np.maximum(np.abs(ref), 1e-12))))
        if np.isfinite(a["block_trace"][i]):
            exact_tr = float(exact.sum())
            tr_err = max(tr_err, abs(float(a["block_trace"][i]) - exact_tr) / max(abs(exact_tr), 1e-12))
    return {"verify_block_top_max_rel_error": eig_err, "verify_block_trace_max_rel_error": tr_err}


def curvature_during_training(model: nn.Module, data: ProbeData, cfg: Any) -> dict[str, float]:
    """λmax (Lanczos, tol 1e-3) and a 10-sample Hutchinson trace: the cheap subset
    logged into ``metrics.jsonl`` every ``probe.every_n_epochs`` epochs."""
    op = HessianOperator(model, data, mode=_value(cfg.mode), seed=cfg.seed,
                         check_determinism=False)
    top = lanczos_eigs(op, k=1, which="largest", tol=1e-3, seed=cfg.seed)
    tr = hutchinson(op, n_samples=10, seed=cfg.seed)
    return {"curv_lambda_max": float(top.eigenvalues[0]), "curv_trace": tr.estimate,
            "curv_trace_stderr": tr.stderr, "curv_hvps": op.n_matvecs}
