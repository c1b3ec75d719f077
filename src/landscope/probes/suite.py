"""Run the configured set of curvature probes on one model: no files, no Hydra.

:func:`run_probes` takes a model, the training split and a probe config
(``landscope.config.ProbeConfig``) and returns a :class:`ProbeReport`: flat
scalars (their names are the results contract, documented in the README) and
arrays (eigenvalues, eigenvectors, density grid) for the job layer to save.
:func:`curvature_during_training` is the cheap subset logged every N epochs.

Scalar names: ``lambda_max``, ``lambda_2``, ``spectral_gap``, ``negative_ratio``,
``condition_number``, ``lambda_min`` (bottom-k), ``eig_max_residual``,
``eig_all_converged``, ``trace``, ``trace_stderr``, ``density_negative_mass``,
``density_n_outliers``, ``density_outlier_mass``, ``logdet``, ``logdet_stderr``,
``noise_trace_sigma``, ``noise_sigma_max``, ``noise_trace_h_sigma``,
``noise_alignment_ratio`` (kappa = tr(H Sigma) / ((tr Sigma / D) tr H)),
``noise_top_k_energy_share``, ``difficulty_index`` (lambda_max^2 / tr H * kappa),
``hvps`` (products used by all probes), ``probe_seconds``, ``probe_data_size``,
``probe_mode``, ``n_params``; with verify mode ``verify_*`` errors against the
dense float64 Hessian.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from landscope.probes.density import slq
from landscope.probes.hvp import HessianOperator
from landscope.probes.lanczos import lanczos_eigs, spectral_summary
from landscope.probes.noise import gradient_noise
from landscope.probes.probe_data import ProbeData
from landscope.probes.trace import deflated_trace, hutchinson
from landscope.probes.verify import dense_hessian, spectrum


@dataclass
class ProbeReport:
    scalars: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _value(x: Any) -> str:
    return str(getattr(x, "value", x))


def probe_data(train_split, cfg: Any) -> ProbeData:
    return ProbeData.from_split(train_split, size=cfg.data_size, seed=cfg.seed,
                                micro_batch=cfg.micro_batch)


def run_probes(model: nn.Module, train_split, cfg: Any) -> ProbeReport:
    """All probes ``cfg`` switches on, on a fixed seeded subset of ``train_split``."""
    tic = time.perf_counter()
    data = probe_data(train_split, cfg)
    op = HessianOperator(model, data, mode=_value(cfg.mode), seed=cfg.seed)
    rep = ProbeReport()
    s, a = rep.scalars, rep.arrays
    s.update(probe_mode=op.mode, probe_data_size=data.n, n_params=op.dim, hvp_method=op.method)

    top = bottom = None
    if cfg.top_k > 0:
        top = lanczos_eigs(op, k=min(cfg.top_k, op.dim), which="largest", tol=cfg.lanczos_tol,
                           seed=cfg.seed)
        a["eigenvalues_top"] = top.eigenvalues.numpy()
        a["eigenvectors_top"] = top.eigenvectors.detach().cpu().numpy()
    if cfg.bottom_k > 0:
        bottom = lanczos_eigs(op, k=min(cfg.bottom_k, op.dim), which="smallest",
                              tol=cfg.lanczos_tol, atol=1e-6, seed=cfg.seed + 1)
        a["eigenvalues_bottom"] = bottom.eigenvalues.numpy()
        a["eigenvectors_bottom"] = bottom.eigenvectors.detach().cpu().numpy()
        s["lambda_min"] = float(bottom.eigenvalues[0])
    if top is not None:
        s.update({k: v for k, v in spectral_summary(top, bottom).items()
                  if k in ("lambda_max", "lambda_2", "spectral_gap", "negative_ratio",
                           "condition_number")})
        res = [top.residuals] + ([bottom.residuals] if bottom is not None else [])
        s["eig_max_residual"] = float(torch.cat(res).max())
        conv = [top.converged] + ([bottom.converged] if bottom is not None else [])
        s["eig_all_converged"] = bool(torch.cat(conv).all())

    if cfg.trace:
        # the top-k pairs computed anyway deflate the estimator's variance (GUIDE §6)
        tr = (deflated_trace(op, top, seed=cfg.seed, target_rse=cfg.trace_rse)
              if top is not None else hutchinson(op, seed=cfg.seed, target_rse=cfg.trace_rse))
        s.update(trace=tr.estimate, trace_stderr=tr.stderr, trace_samples=tr.n_samples)

    if cfg.density:
        q = slq(op, n_probes=cfg.slq_probes, m_steps=min(cfg.slq_steps, op.dim), seed=cfg.seed)
        lo, hi = float(q.nodes.min()), float(q.nodes.max())
        pad = 0.05 * (hi - lo) + 1e-12
        grid = torch.linspace(lo - pad, hi + pad, cfg.density_grid, dtype=torch.float64)
        sigma = cfg.density_sigma * (hi - lo + 1e-12)
        a.update(density_grid=grid.numpy(), density=q.density(grid, sigma).numpy(),
                 slq_nodes=q.nodes.numpy(), slq_weights=q.weights.numpy())
        out = q.outliers()
        s.update(density_negative_mass=q.negative_mass(), density_n_outliers=out.count,
                 density_outlier_mass=float(out.masses.sum()) if out.count else 0.0,
                 density_bulk_edge=out.bulk_edge)
        if cfg.logdet_eps > 0 and float(q.nodes.min()) + cfg.logdet_eps > 0:
            ld = q.logdet(cfg.logdet_eps)
            s.update(logdet=ld.estimate, logdet_stderr=ld.stderr)

    if cfg.noise:
        s.update(_noise(model, train_split, cfg, op, top, s, a))
    s["hvps"] = op.n_matvecs
    if cfg.verify:
        s.update(_verify(model, data, op.mode, cfg, s, a))
    s["probe_seconds"] = time.perf_counter() - tic
    for key, value in s.items():  # undefined quantities (lambda_2 with top_k=1, ...) -> None
        if isinstance(value, float) and not math.isfinite(value):
            s[key] = None
    return rep


def _noise(model: nn.Module, train_split, cfg: Any, op: HessianOperator, top: Any, s: dict,
           a: dict) -> dict[str, Any]:
    """Gradient-noise statistics on ``noise_samples`` per-sample gradients (the first
    samples of the probe subset), aligned with the Hessian ``op`` of the whole subset."""
    data = ProbeData.from_split(train_split, size=min(cfg.noise_samples, op.data.n),
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


def _verify(model: nn.Module, data: ProbeData, mode: str, cfg: Any, s: dict,
            a: dict) -> dict[str, Any]:
    """Errors of each estimate against the dense float64 Hessian (small models only)."""
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_params > cfg.verify_max_params:
        return {"verify_skipped": f"{n_params} parameters > probe.verify_max_params="
                                  f"{cfg.verify_max_params}"}
    eig = spectrum(dense_hessian(model, data, mode=mode, max_params=cfg.verify_max_params))
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
    if "trace" in s:
        err = s["trace"] - out["verify_trace_exact"]
        out["verify_trace_error_in_stderr"] = float(err / max(s["trace_stderr"], 1e-300))
    return out


def curvature_during_training(model: nn.Module, data: ProbeData, cfg: Any) -> dict[str, float]:
    """λmax (Lanczos, tol 1e-3) and a 10-sample Hutchinson trace: the cheap subset
    logged into ``metrics.jsonl`` every ``probe.every_n_epochs`` epochs."""
    op = HessianOperator(model, data, mode=_value(cfg.mode), seed=cfg.seed,
                         check_determinism=False)
    top = lanczos_eigs(op, k=1, which="largest", tol=1e-3, seed=cfg.seed)
    tr = hutchinson(op, n_samples=10, seed=cfg.seed)
    return {"curv_lambda_max": float(top.eigenvalues[0]), "curv_trace": tr.estimate,
            "curv_trace_stderr": tr.stderr, "curv_hvps": op.n_matvecs}
