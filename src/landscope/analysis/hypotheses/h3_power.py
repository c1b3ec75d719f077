"""H3's power (:mod:`landscope.analysis.hypotheses.h3`): :func:`h3_power` simulates the
primary test at a planted alignment coefficient from the fitted design."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from landscope.analysis.hypotheses import survival as sv
from landscope.analysis.hypotheses.h3_fit import _design, _null_design
from landscope.analysis.hypotheses.h3_result import POWER_EFFECT, H3Result


def h3_power(res: H3Result, effect: float = POWER_EFFECT, R: int = 200, n_perm: int = 199,
             seed: int = 0) -> dict[str, Any]:
    """Power of the primary test at a planted alignment coefficient ``effect`` (log
    escape-time factor per within-stratum sd), simulated from the fitted design of ``res``:
    the same minima, alignments, η/B, parameter counts and censoring points; each minimum's
    intercept from an AFT with one intercept per minimum (minima that never escaped left
    out), split into a log-D trend and a between-minima sd τ; σ, the η/B slope from that fit.
    Each of ``R`` datasets is tested as :func:`h3_test` does (no interval).  Returns power
    (the fraction "supported"), its Clopper–Pearson interval, R, effect, τ, σ; empty when
    the primary fit had no verdict."""
    from landscope.analysis.calibration.core import binomial_interval

    d = res.data
    prim = res.row("primary", "alignment")
    if not len(d) or not math.isfinite(prim["p"]):
        return {}
    des, _ = _design(d, int(res.design.get("min_jobs", 6)))
    if des is None:
        return {}
    ev = d["escaped"].to_numpy(bool)
    cap = d["log_cap"].to_numpy(float)
    if not np.all(np.isfinite(cap)):
        return {}
    x0, _ = _null_design(d, des)
    g = len(des.a_job)
    seen = np.bincount(des.codes, weights=ev.astype(float), minlength=g) > 0
    keep = seen[des.codes]
    fe_codes = pd.factorize(des.codes[keep])[0]
    dummies = np.eye(int(fe_codes.max()) + 1)[fe_codes]
    x_fe = np.column_stack([dummies, x0[keep][:, 1:2]]) if des.use_rate else dummies
    fe = sv.fit_aft(d["log_time"].to_numpy(float)[keep], x_fe, ev[keep])
    alpha_j = fe.params[:dummies.shape[1]]
    slope = float(fe.params[-1]) if des.use_rate else 0.0
    first = d.groupby(des.codes, sort=True).first()
    zx = np.column_stack([np.ones(g)] + ([first["log_n_params"].to_numpy(float)]
                                          if des.use_size else []))[seen]
    coef_j = np.linalg.lstsq(zx, alpha_j, rcond=None)[0]
    dof = max(len(alpha_j) - zx.shape[1], 1)
    tau = float(np.sqrt(np.sum((alpha_j - zx @ coef_j) ** 2) / dof))
    mean_j = np.column_stack([np.ones(g)] + ([first["log_n_params"].to_numpy(float)]
                                             if des.use_size else [])) @ coef_j
    rate_term = slope * d["log_eta_over_b"].to_numpy(float) if des.use_rate else 0.0
    z_job = des.z_row  # per row
    perms, exact = sv.strata_permutations(des.strata, n_perm, seed)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(R):
        u = mean_j + tau * rng.standard_normal(g)
        y = u[des.codes] + rate_term + effect * z_job + fe.sigma * rng.standard_normal(len(d))
        esc = y <= cap
        if not esc.any():
            continue
        yy = np.where(esc, y, cap)
        full_coef = sv.fit_aft(yy, np.column_stack([x0[:, :1], z_job, x0[:, 1:]]), esc).params[1]
        test = sv.permutation_score_test(yy, x0, esc, des.codes, des.a_tilde, perms, exact)
        hits += bool(test.p < res.alpha and full_coef < 0)
    low, high = binomial_interval(hits, R)
    return {"power": hits / R, "low": low, "high": high, "R": R, "effect": effect,
            "tau": tau, "sigma": fe.sigma, "alpha": res.alpha}
