"""Least squares with seed fixed effects and standard errors clustered by seed.

Used where jobs share a seed across the settings of a sweep (H1: batch sizes compared within
a seed). :func:`fe_ols` fits ``y ~ X + one intercept per seed`` by the within transformation
and reports CR1 cluster-robust standard errors with t on G − 1 degrees of freedom, the numbers
statsmodels gives for OLS with seed dummies (:func:`statsmodels_fit`, which the report prints);
:func:`boot_coef` is the cluster (seed) bootstrap of one slope.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats


def _seed_keys(seeds: Sequence[Any]) -> np.ndarray:
    return np.asarray([str(int(s)) if isinstance(s, (int, float, np.integer, np.floating))
                       and math.isfinite(float(s)) and float(s).is_integer() else str(s)
                       for s in seeds], dtype=object)


def seed_codes(seeds: Sequence[Any]) -> np.ndarray:
    """Integer codes of the seeds (1 and 1.0 and "1" are one seed)."""
    return pd.factorize(_seed_keys(seeds))[0]


def within(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``values`` (n or n×p) minus their mean within each code (the seed fixed effects)."""
    values = np.asarray(values, float)
    flat = values.reshape(len(values), -1)
    g = codes.max() + 1
    sums = np.zeros((g, flat.shape[1]))
    np.add.at(sums, codes, flat)
    means = sums / np.bincount(codes, minlength=g)[:, None]
    return (flat - means[codes]).reshape(values.shape)


@dataclass
class FEFit:
    """OLS of y on slopes and seed fixed effects, standard errors clustered by seed."""

    coef: np.ndarray  # the slopes (fixed effects absorbed)
    se: np.ndarray
    t: np.ndarray
    p: np.ndarray
    df: float
    n: int
    n_clusters: int
    cov: str  # "cluster" (CR1 by seed) or "HC1" (one seed: each job its own cluster)


def fe_ols(y: np.ndarray, X: np.ndarray, seeds: Sequence[Any]) -> FEFit:
    """``y ~ X + seed fixed effects`` with cluster-robust (CR1) standard errors by seed.

    Computed by the within transformation (Frisch–Waugh–Lovell: the slopes and residuals equal
    those of OLS with one dummy per seed). CR1 = (X̃'X̃)⁻¹ Σ_g X̃_g'û_g û_g'X̃_g (X̃'X̃)⁻¹ ·
    G/(G − 1) · (n − 1)/(n − K), K = slopes + seeds, t on G − 1 df: the numbers of statsmodels'
    ``OLS(y, [X, dummies]).fit(cov_type="cluster", use_t=True)``. With one seed the fixed effect
    is the intercept and each job is its own cluster: HC1, t on n − K df (statsmodels'
    ``cov_type="HC1"``)."""
    codes = seed_codes(seeds)
    y, X = np.asarray(y, float), np.asarray(X, float).reshape(len(y), -1)
    n, p = X.shape
    n_fe = codes.max() + 1
    k = p + n_fe
    yt, Xt = within(y, codes), within(X, codes)
    bread = np.linalg.inv(Xt.T @ Xt)
    coef = bread @ Xt.T @ yt
    u = yt - Xt @ coef
    if n_fe >= 2:
        clusters, g, df, cov = codes, n_fe, float(n_fe - 1), "cluster"
    else:
        clusters, g, df, cov = np.arange(n), n, float(n - k), "HC1"
    scores = np.zeros((g, p))
    np.add.at(scores, clusters, Xt * u[:, None])
    vcov = bread @ (scores.T @ scores) @ bread * (g / (g - 1)) * ((n - 1) / (n - k))
    se = np.sqrt(np.diag(vcov))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = coef / se
    pval = 2 * stats.t.sf(np.abs(t), df) if df > 0 else np.full(p, np.nan)
    return FEFit(coef, se, t, pval, df, n, n_fe, cov)


def boot_coef(y: np.ndarray, X: np.ndarray, seeds: Sequence[Any], index: int, n_boot: int,
              seed: int) -> np.ndarray:
    """Slope ``index`` of :func:`fe_ols` refitted on ``n_boot`` cluster-bootstrap resamples.

    Each draw picks G seeds with replacement (jobs with one seed: jobs); a job's weight is how
    often its seed was drawn. Weighted least squares on the within-seed data equals the fixed-
    effects fit on the stacked resample (a seed drawn twice adds identical copies, whose fixed
    effects coincide). Draws with a singular design give NaN."""
    codes = seed_codes(seeds)
    y, X = np.asarray(y, float), np.asarray(X, float).reshape(len(y), -1)
    yt, Xt = within(y, codes), within(X, codes)
    clusters = codes if codes.max() >= 1 else np.arange(len(codes))  # one seed: resample jobs
    rng = np.random.default_rng(seed)
    g = clusters.max() + 1
    draws = rng.integers(0, g, size=(n_boot, g))
    counts = np.zeros((n_boot, g))
    np.add.at(counts, (np.repeat(np.arange(n_boot), g), draws.ravel()), 1.0)
    w = counts[:, clusters]  # (n_boot, n)
    xtwx = np.einsum("bn,ni,nj->bij", w, Xt, Xt)
    xtwy = np.einsum("bn,ni,n->bi", w, Xt, yt)
    out = np.full(n_boot, np.nan)
    with np.errstate(all="ignore"):
        cond = np.linalg.cond(xtwx)
    ok = np.isfinite(cond) & (cond < 1e10)
    if ok.any():
        out[ok] = np.linalg.solve(xtwx[ok], xtwy[ok][..., None])[:, index, 0]
    return out


def statsmodels_fit(y: np.ndarray, X: np.ndarray, names: Sequence[str], seeds: Sequence[Any],
                    yname: str):
    """The statsmodels fit :func:`fe_ols` reproduces (for the summaries in the appendix)."""
    import statsmodels.api as sm

    codes, keys = pd.factorize(_seed_keys(seeds))
    exog = pd.DataFrame(np.asarray(X, float).reshape(len(y), -1), columns=list(names))
    if codes.max() >= 1:
        for c, key in enumerate(keys):
            exog[f"seed[{key}]"] = (codes == c).astype(float)
        return sm.OLS(pd.Series(y, name=yname), exog).fit(
            cov_type="cluster", cov_kwds={"groups": codes}, use_t=True)
    exog.insert(0, "const", 1.0)
    return sm.OLS(pd.Series(y, name=yname), exog).fit(cov_type="HC1", use_t=True)
