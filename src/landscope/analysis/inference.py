"""Inference at the level of independent units (GUIDE §7).

Jobs of one configuration share that configuration's effect, and jobs of one seed may share
that seed's effect (data order, initialization), so rows are not independent. The tools here
count the units that are:

- :func:`cluster_ols`: OLS with the CR2 cluster-robust covariance (Bell & McCaffrey 2002) and
  Satterthwaite degrees of freedom per coefficient (Pustejovsky & Tipton 2018, "Small-sample
  methods for cluster-robust variance estimation and hypothesis testing in fixed effects
  models", JBES 36(4)). Unlike CR1 with G − 1 df, it stays near its nominal level with 5–12
  clusters, and fixed effects nested in the clusters cost nothing (no k in a CR1 factor);
- :func:`seed_permutation_test`: a within-configuration association (mean over configurations
  of Kendall τ, Pearson r of config-demeaned values, or a regression t) whose null distribution
  comes from permuting the *seed labels* of one variable, the same permutation in every
  configuration, so whatever a seed shares across configurations moves with it. Exact
  (all permutations) up to ``max_exact`` permutations;
- :func:`config_means_association`: the between-configuration association on configuration
  means, with its own small n and an exact permutation p-value;
- :func:`permutations`, :func:`permutation_p`, :func:`kendall_rows`: the pieces, for a
  statistic of one's own over permutations of unit labels.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats


# --------------------------------------------------------------------------- CR2 regression
@dataclass
class ClusterFit:
    """OLS with CR2 standard errors and Satterthwaite (Bell–McCaffrey) degrees of freedom."""

    names: list[str]
    coef: np.ndarray
    se: np.ndarray
    df: np.ndarray  # Satterthwaite df per coefficient
    p: np.ndarray  # two-sided, t on df
    ci_low: np.ndarray
    ci_high: np.ndarray
    n: int  # rows
    n_clusters: int
    r2: float
    note: str = ""

    def term(self, name: str) -> dict[str, float]:
        i = self.names.index(name)
        return {"coef": float(self.coef[i]), "se": float(self.se[i]), "df": float(self.df[i]),
                "p": float(self.p[i]), "ci_low": float(self.ci_low[i]),
                "ci_high": float(self.ci_high[i])}


def _inv_sqrt_psd(m: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Symmetric (pseudo-)inverse square root of a positive semi-definite matrix."""
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    keep = vals > tol * max(vals.max(initial=0.0), 1.0)
    inv = np.zeros_like(vals)
    inv[keep] = 1.0 / np.sqrt(vals[keep])
    return (vecs * inv) @ vecs.T


def cluster_ols(y: Sequence[float], X: np.ndarray, clusters: Sequence, names: Sequence[str] | None
                = None, level: float = 0.95) -> ClusterFit:
    """OLS ``y ~ X`` (X includes the intercept and any fixed-effect dummies) with the CR2
    cluster-robust covariance and Bell–McCaffrey/Satterthwaite degrees of freedom.

    CR2: V = M Σ_g X_gᵀ A_g e_g e_gᵀ A_g X_g M with M = (XᵀX)⁻¹, A_g = (I − H_gg)^(−1/2) (a
    pseudo-inverse square root where fixed effects nested in cluster g make I − H_gg singular).
    For coefficient j, V_jj = Σ_g (p_gᵀ y)² with p_g = (I − H)_{g·}ᵀ A_g X_g M e_j; under a
    working model of independent homoskedastic errors its Satterthwaite df is
    (tr B)² / ‖B‖²_F with B = PᵀP (P = [p_1 … p_G]). Rank-deficient columns are an error."""
    y = np.asarray(y, float)
    X = np.asarray(X, float)
    if X.ndim == 1:
        X = X[:, None]
    n, k = X.shape
    names = list(names) if names is not None else [f"x{i}" for i in range(k)]
    codes, uniq = pd.factorize(pd.Series(list(clusters)).astype(str))
    G = len(uniq)
    if np.linalg.matrix_rank(X) < k:
        raise ValueError("cluster_ols: the design matrix is rank deficient")
    M = np.linalg.inv(X.T @ X)
    beta = M @ X.T @ y
    resid = y - X @ beta
    H = X @ M @ X.T
    IH = np.eye(n) - H
    idx = [np.flatnonzero(codes == g) for g in range(G)]
    # W_g = A_g X_g M  (n_g × k); the "meat" contribution of cluster g is W_gᵀ e_g.
    W = []
    for rows in idx:
        A = _inv_sqrt_psd(IH[np.ix_(rows, rows)])
        W.append(A @ X[rows] @ M)
    scores = np.stack([Wg.T @ resid[rows] for Wg, rows in zip(W, idx)])  # G × k
    V = scores.T @ scores
    se = np.sqrt(np.clip(np.diag(V), 0, None))
    df = np.empty(k)
    for j in range(k):
        P = np.zeros((n, G))
        for g, (Wg, rows) in enumerate(zip(W, idx)):
            P[:, g] = IH[rows].T @ Wg[:, j]
        B = P.T @ P
        denom = float(np.sum(B * B))
        df[j] = float(np.trace(B)) ** 2 / denom if denom > 0 else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        t = beta / se
    p = np.where(np.isfinite(t) & np.isfinite(df), 2 * stats.t.sf(np.abs(t), np.maximum(df, 1e-9)),
                 np.nan)
    q = stats.t.ppf(0.5 + level / 2, np.maximum(df, 1e-9))
    tss = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(resid @ resid) / tss if tss > 0 else math.nan
    note = f"{G} clusters" + ("; fewer than 4 clusters: little power" if G < 4 else "")
    return ClusterFit(names, beta, se, df, p, beta - q * se, beta + q * se, n, G, r2, note)


def dummies(groups: Sequence, prefix: str = "g",
            drop_first: bool = True) -> tuple[np.ndarray, list[str]]:
    """Indicator columns of ``groups`` (the first level dropped for use beside an intercept).

    >>> mat, names = dummies(["a", "b", "a", "c"])
    >>> mat.tolist(), names
    ([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], ['g[b]', 'g[c]'])
    """
    codes, uniq = pd.factorize(pd.Series(list(groups)).astype(str))
    start = 1 if drop_first else 0
    cols = [(codes == j).astype(float) for j in range(start, len(uniq))]
    mat = np.column_stack(cols) if cols else np.empty((len(codes), 0))
    return mat, [f"{prefix}[{u}]" for u in uniq[start:]]


# --------------------------------------------------------------------------- permutations
def permutations(n: int, n_perm: int, seed: int = 0, max_exact: int = 5040
                 ) -> tuple[np.ndarray, bool]:
    """Permutations of n labels as rows of an array, the identity first: all of them when
    n! ≤ ``max_exact`` (exact test), else the identity and ``n_perm`` random ones drawn with
    ``numpy.random.default_rng(seed)``. Returns (perms, exact)."""
    if math.factorial(n) <= max_exact:
        return np.array(list(itertools.permutations(range(n))), dtype=np.intp).reshape(-1, n), True
    rng = np.random.default_rng(seed)
    rest = np.argsort(rng.random((n_perm, n)), axis=1)
    return np.vstack([np.arange(n)[None, :], rest]).astype(np.intp), False


def permutation_p(values: np.ndarray) -> float:
    """Two-sided p-value from statistics under permutations, the observed value first:
    (#{|T*| ≥ |T|} counting the observed) / (number of finite values). For an exact
    enumeration this is the exact p; for random permutations it is the usual (1 + hits)/(1 + B).

    >>> permutation_p([2.0, -3.0, 1.0, 2.0])  # |T*| ≥ 2 in 3 of the 4 values
    0.75
    """
    values = np.asarray(values, float)
    obs = values[0]
    if not math.isfinite(obs):
        return math.nan
    rest = values[np.isfinite(values)]
    tol = 1e-10 * max(1.0, abs(obs))
    return float(np.sum(np.abs(rest) >= abs(obs) - tol) / len(rest))


def kendall_rows(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall τ-b of each row of ``A`` (shape (..., n)) against ``b`` (n,), vectorized; pairs
    with a NaN on either side are left out; NaN where τ-b is undefined (a constant side)."""
    A = np.asarray(A, float)
    b = np.asarray(b, float)
    i, j = np.triu_indices(A.shape[-1], 1)
    valid = np.isfinite(A[..., i]) & np.isfinite(A[..., j]) & np.isfinite(b[i]) & np.isfinite(b[j])
    with np.errstate(invalid="ignore"):
        sa = np.where(valid, np.sign(A[..., i] - A[..., j]), 0.0)
        sb = np.where(valid, np.sign(b[i] - b[j]), 0.0)
        den = np.sqrt(np.abs(sa).sum(-1) * np.abs(sb).sum(-1))
        return np.where(den > 0, (sa * sb).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


@dataclass
class Association:
    """A within- or between-configuration association with its units."""

    claim: str  # "within-config" or "between-config"
    statistic: str
    estimate: float
    p: float
    n_units: int  # seeds (within) or configurations (between)
    unit: str
    n_perm: int
    exact: bool
    extra: dict = field(default_factory=dict)


def _grid(values: np.ndarray, config_codes: np.ndarray, seed_codes: np.ndarray, C: int, S: int
          ) -> np.ndarray:
    out = np.full((C, S), np.nan)
    out[config_codes, seed_codes] = values
    return out


def _pooled_r(xg: np.ndarray, yg: np.ndarray) -> np.ndarray:
    """Pearson r of config-demeaned values, pooled over configurations; xg (P, C, S), yg (C, S)."""
    ok = np.isfinite(xg) & np.isfinite(yg)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm = np.nansum(np.where(ok, xg, 0), -1, keepdims=True) / ok.sum(-1, keepdims=True)
        ym = np.nansum(np.where(ok, yg, 0), -1, keepdims=True) / ok.sum(-1, keepdims=True)
        xc = np.where(ok, xg - xm, 0.0)
        yc = np.where(ok, yg - ym, 0.0)
        den = np.sqrt((xc * xc).sum((-1, -2)) * (yc * yc).sum((-1, -2)))
        return np.where(den > 0, (xc * yc).sum((-1, -2)) / np.where(den > 0, den, 1), np.nan)


def seed_permutation_test(x: Sequence[float], y: Sequence[float], configs: Sequence,
                          seeds: Sequence, statistic: str = "kendall", n_perm: int = 2000,
                          seed: int = 0, max_exact: int = 5040) -> Association:
    """Within-configuration association of ``x`` and ``y`` with seeds as the units.

    ``statistic``: ``"kendall"`` (mean over configurations of Kendall τ-b within each
    configuration: the granulated τ conditioned on the configuration) or ``"pearson"``
    (Pearson r of the config-demeaned values, pooled). The null distribution permutes the seed
    labels of ``x`` — one permutation applied in every configuration — so what a seed shares
    across configurations moves with it and the test stays exact when seeds share effects
    (independent permutations within each configuration would not: they rejected such null
    sweeps above the level, docs/measurements.md#analysis-inference). Cells missing after a
    permutation are left out."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    cc, cu = pd.factorize(pd.Series(list(configs)).astype(str))
    sc, su = pd.factorize(pd.Series(list(seeds)).astype(str))
    C, S = len(cu), len(su)
    if pd.Series(list(zip(cc, sc))).duplicated().any():
        raise ValueError("seed_permutation_test: more than one row per (configuration, seed)")
    xg, yg = _grid(x, cc, sc, C, S), _grid(y, cc, sc, C, S)
    perms, exact = permutations(S, n_perm, seed, max_exact)
    xp = xg[:, perms].transpose(1, 0, 2)  # (P, C, S)
    if statistic == "kendall":
        taus = np.stack([kendall_rows(xp[:, c, :], yg[c]) for c in range(C)], axis=1)  # (P, C)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a permutation with no defined τ
            values = np.nanmean(taus, axis=1)
    else:
        values = _pooled_r(xp, yg)
    return Association("within-config", f"{statistic} within configurations", float(values[0]),
                       permutation_p(values), S, "seeds", len(perms), exact, {"configs": C})


def config_means_association(x: Sequence[float], y: Sequence[float], configs: Sequence,
                             statistic: str = "kendall", n_perm: int = 5000, seed: int = 0,
                             max_exact: int = 40320) -> Association:
    """Between-configuration association on configuration means (n = number of
    configurations), p from permuting the configurations' x means (exact for ≤ 8
    configurations). ``statistic``: ``"kendall"`` or ``"pearson"``. ``extra["smallest_p"]``:
    the smallest p the exact test can give (2/n! for distinct values; 1/3 with 3 configurations)."""
    frame = pd.DataFrame({"x": np.asarray(x, float), "y": np.asarray(y, float),
                          "c": pd.Series(list(configs)).astype(str).to_numpy()})
    frame = frame[np.isfinite(frame["x"]) & np.isfinite(frame["y"])]
    means = frame.groupby("c", sort=True)[["x", "y"]].mean()
    mx, my = means["x"].to_numpy(), means["y"].to_numpy()
    n = len(means)
    name = f"{statistic} on config means"
    if n < 2 or np.ptp(mx) == 0 or np.ptp(my) == 0:
        return Association("between-config", name, math.nan, math.nan, n, "configurations", 0, True)
    perms, exact = permutations(n, n_perm, seed, max_exact)
    if statistic == "kendall":
        values = kendall_rows(mx[perms], my)
    else:
        xs = mx[perms] - mx.mean()
        ys = my - my.mean()
        values = xs @ ys / math.sqrt(float(xs[0] @ xs[0]) * float(ys @ ys))
    smallest = 2.0 / math.factorial(n) if n <= 8 else 0.0
    return Association("between-config", name, float(values[0]), permutation_p(values), n,
                       "configurations", len(perms), exact, {"smallest_p": min(1.0, smallest)})


def invert_test(p_at: Callable[[float], float], estimate: float, steps: Sequence[float],
                alpha: float = 0.05, iters: int = 30,
                before_side: Callable[[], None] | None = None) -> tuple[float, float]:
    """The ends of the confidence set ``{b : p_at(b) ≥ alpha}`` of a test inverted around
    ``estimate``: on each side, step outward by ``steps`` (distances from the estimate, in
    order) until the test rejects, then ``iters`` bisections between the last accepted and
    the first rejected value. An end the steps cannot bracket is ±inf. ``before_side`` runs
    before each side (e.g. to reset a warm start)."""
    ends = []
    for sign in (-1.0, 1.0):
        if before_side is not None:
            before_side()
        inside, outside = estimate, None
        for step in steps:
            b = estimate + sign * step
            if p_at(b) < alpha:
                outside = b
                break
            inside = b
        if outside is None:
            ends.append(sign * math.inf)
            continue
        for _ in range(iters):
            mid = 0.5 * (inside + outside)
            if p_at(mid) < alpha:
                outside = mid
            else:
                inside = mid
        ends.append(0.5 * (inside + outside))
    return ends[0], ends[1]
