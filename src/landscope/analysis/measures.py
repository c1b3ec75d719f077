"""Curvature and sharpness measures against generalization: the statistics.

Kendall τ-b, Spearman ρ, the granulated Kendall Ψ of Jiang et al. 2020 ("Fantastic
generalization measures and where to find them", ICLR 2020, §4), the partial correlation, the
default choice of measure columns and the multiple-testing corrections. The measures *table*,
which says which claim each test makes and counts independent units, is
:mod:`landscope.analysis.measures_table`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from landscope.analysis.collect import swept_factors, swept_keys

# Default measures: numeric probe.* / landscape.* columns whose name does not match these
# (bookkeeping: timings, sample counts, standard errors, evaluation counts, convergence flags,
# and the loss/accuracy at the trained point itself, which is the target rather than a measure).
_BOOKKEEPING = re.compile(
    r"(seconds|samples|_stderr|hvps|_evals|n_params|data_size|_residual|_converged|_bracketed"
    r"|_centre|^landscape\.landscape_)")
TARGET_ALIASES = {"test_error": "test_error", "gap": "final.generalization_gap",
                  "generalization_gap": "final.generalization_gap",
                  "ood_error": "ood_test_error", "ood_test_error": "ood_test_error"}
# derived error columns and the accuracy they are 1 − of
_ERRORS = {"test_error": "final.test_acc", "ood_test_error": "final.ood_test_acc"}


# --------------------------------------------------------------------------- measure choice
def default_measures(df: pd.DataFrame, min_count: int = 5, min_fraction: float = 0.5) -> list[str]:
    """The numeric ``probe.*`` and ``landscape.*`` columns usable as measures.

    Rule: the column is numeric (booleans excluded), its name is not bookkeeping (timings,
    sample counts, ``*_stderr``, evaluation counts, residuals, convergence flags, the loss or
    accuracy at the centre of a slice), and among the analysed rows it has at least
    ``max(min_count, min_fraction · rows)`` finite values that are not all equal."""
    rows = _analysed(df)
    out = []
    for col in rows.columns:
        if not col.startswith(("probe.", "landscape.")) or _BOOKKEEPING.search(col):
            continue
        if rows[col].dtype == bool or pd.api.types.is_bool_dtype(rows[col]):
            continue
        values = (pd.to_numeric(rows[col], errors="coerce") if rows[col].dtype == object
                  else rows[col])
        if not pd.api.types.is_numeric_dtype(values):
            continue
        if (rows[col].dtype == object
                and rows[col].dropna().map(lambda v: isinstance(v, bool)).any()):
            continue
        finite = values[np.isfinite(values.astype(float))]
        if (len(finite) >= max(min_count, math.ceil(min_fraction * len(rows)))
                and finite.nunique() > 1):
            out.append(col)
    return out


def _analysed(df: pd.DataFrame) -> pd.DataFrame:
    rows = df[df["included"].astype(bool)] if "included" in df else df
    return rows.reset_index(drop=True)


def target_column(df: pd.DataFrame, target: str) -> pd.Series:
    """``test_error`` (1 − final.test_acc when the column is absent), ``ood_test_error`` /
    ``ood_error`` (the shifted split's error, 1 − final.ood_test_acc when absent), ``gap`` /
    ``generalization_gap`` (final.generalization_gap), or any column by name."""
    name = TARGET_ALIASES.get(target, target)
    if name in df:
        return pd.to_numeric(df[name], errors="coerce").astype(float)
    if name in _ERRORS and _ERRORS[name] in df:
        return 1.0 - pd.to_numeric(df[_ERRORS[name]], errors="coerce").astype(float)
    raise KeyError(f"no target column {target!r}")


def _numeric(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)


# --------------------------------------------------------------------------- statistics
def kendall(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Kendall τ-b and its two-sided p-value (NaN when undefined: n < 2 or a constant input).

    >>> tau, p = kendall([1, 2, 3, 4], [1, 3, 2, 4])
    >>> round(tau, 4), round(p, 4)
    (0.6667, 0.3333)
    >>> kendall([1, 1, 1], [1, 2, 3])
    (nan, nan)
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    res = stats.kendalltau(x, y)  # variant="b"
    return float(res.statistic), float(res.pvalue)


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    res = stats.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue)


def partial_correlation(x: Sequence[float], y: Sequence[float], z, rank: bool = False
                        ) -> tuple[float, float]:
    """Correlation of ``x`` and ``y`` controlling for ``z`` (one or more columns).

    Both are residualized on ``[1, z]`` by least squares; the result is the Pearson correlation
    of the residuals, with p from t = r·√((n − 2 − k)/(1 − r²)) on n − 2 − k degrees of freedom
    (k = number of control columns). ``rank=True`` ranks x, y and each z first (the Spearman
    version). For one control this equals (r_xy − r_xz·r_yz)/√((1 − r_xz²)(1 − r_yz²))."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    z = np.asarray(z, float).reshape(len(x), -1)
    if rank:
        x, y = stats.rankdata(x), stats.rankdata(y)
        z = np.column_stack([stats.rankdata(col) for col in z.T])
    n, k = len(x), z.shape[1]
    dof = n - 2 - k
    if dof < 1:
        return math.nan, math.nan
    design = np.column_stack([np.ones(n), z])
    rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    sx, sy = np.sqrt(rx @ rx), np.sqrt(ry @ ry)
    scale = max(np.abs(x).max(), 1e-300) * 1e-12 * math.sqrt(n)
    if sx <= scale or sy <= max(np.abs(y).max(), 1e-300) * 1e-12 * math.sqrt(n):
        return math.nan, math.nan  # x or y is explained entirely by z
    r = float(np.clip(rx @ ry / (sx * sy), -1.0, 1.0))
    if abs(r) == 1.0:
        return r, 0.0
    t = r * math.sqrt(dof / (1.0 - r * r))
    return r, float(2 * stats.t.sf(abs(t), dof))


@dataclass
class Granulated:
    """Granulated Kendall Ψ and its parts."""

    psi: float  # mean of per_hyperparameter over the hyperparameters where it is defined
    per_hyperparameter: dict[str, float] = field(default_factory=dict)  # ψ_i (NaN: no valid group)
    groups_used: dict[str, int] = field(default_factory=dict)  # groups with a defined τ
    # groups with < 2 values or τ undefined
    groups_skipped: dict[str, int] = field(default_factory=dict)


def granulated_kendall(df: pd.DataFrame, measure: str, target: str | pd.Series = "test_error",
                       hyperparameters: Sequence[str] | None = None,
                       fixed: Sequence[str] = ("seed",)) -> Granulated:
    """Granulated Kendall Ψ (Jiang et al. 2020, eq. 4).

    For each hyperparameter θ_i, the rows are grouped by the values of every *other*
    hyperparameter and of ``fixed`` (the seed by default, so a group holds models that differ
    only in θ_i, as in the paper); ψ_i is the mean Kendall τ-b between measure and target over
    the groups, and Ψ = mean over i of ψ_i.

    Handling of edge cases:
    - rows whose measure or target is not finite are dropped first;
    - a group with fewer than 2 distinct values of θ_i is skipped (it says nothing about θ_i);
    - a group whose τ is undefined (measure or target constant within it) is skipped;
    - skipped groups are counted in ``groups_skipped`` and do not enter the mean;
    - ψ_i is NaN when no group of θ_i is valid, and Ψ averages the defined ψ_i (NaN if none).

    ``hyperparameters`` defaults to the independent swept dimensions of the rows (config keys
    that differ, merged when one determines another:
    :func:`~landscope.analysis.collect.swept_factors`). Missing values of a hyperparameter count as
    one value of their own."""
    rows = _analysed(df)
    y = (target_column(rows, target) if isinstance(target, str)
         else pd.Series(np.asarray(target, float)))
    x = pd.Series(_numeric(rows[measure]))
    keep = np.isfinite(x.to_numpy()) & np.isfinite(y.to_numpy())
    rows, x, y = (rows[keep].reset_index(drop=True), x[keep].reset_index(drop=True),
                  y[keep].reset_index(drop=True))
    if rows.empty:
        return Granulated(psi=math.nan)
    if hyperparameters is None:
        config = [c for c in rows.columns if "." in c and not c.startswith(
            ("probe.", "landscape.", "final.", "config."))]
        hyperparameters = swept_factors(rows, swept_keys(rows, config))
    fixed = [f for f in fixed if f in rows and f not in hyperparameters]
    keyed = rows[list(hyperparameters) + fixed].astype(object).where(
        rows[list(hyperparameters) + fixed].notna(), "\0missing").astype(str)
    out = Granulated(psi=math.nan)
    for hp in hyperparameters:
        others = [c for c in hyperparameters if c != hp] + fixed
        key = keyed[others].agg("\x1f".join, axis=1) if others else pd.Series("", index=keyed.index)
        groups = key.groupby(key, sort=False).groups.values()
        taus, skipped = [], 0
        for index in groups:
            index = list(index)
            if keyed.loc[index, hp].nunique() < 2:
                skipped += 1
                continue
            tau, _ = kendall(x[index], y[index])
            if math.isnan(tau):
                skipped += 1
                continue
            taus.append(tau)
        out.per_hyperparameter[hp] = float(np.mean(taus)) if taus else math.nan
        out.groups_used[hp], out.groups_skipped[hp] = len(taus), skipped
    defined = [v for v in out.per_hyperparameter.values() if not math.isnan(v)]
    out.psi = float(np.mean(defined)) if defined else math.nan
    return out


def correct(pvalues: Iterable[float], method: str) -> np.ndarray:
    """Multiple-testing correction over the finite p-values (NaN stays NaN).
    ``method``: ``"holm"`` or ``"fdr_bh"`` (statsmodels.stats.multitest.multipletests).

    >>> correct([0.01, 0.04, 0.03, float("nan")], "holm").tolist()
    [0.03, 0.06, 0.06, nan]
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(list(pvalues), float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


