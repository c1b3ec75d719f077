"""H4's test of a mean over a configuration × seed table with random configuration and seed
effects (:func:`crossed_mean_test`; :mod:`landscope.analysis.hypotheses.h4` says why)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats


@dataclass
class CrossedTest:
    """The outcome of :func:`crossed_mean_test`."""

    estimate: float  # the grand mean of the complete configuration x seed table
    se: float
    df: float
    t: float
    p: float
    ci_low: float
    ci_high: float
    n_jobs: int  # jobs used (in the complete table)
    n_seeds: int
    n_configs: int
    reason: str = ""
    # the configurations taken as fixed (the claim for the swept configurations only): the
    # one-sample t-test over the seed means of the complete table (units: seeds)
    t_fixed: float = math.nan
    df_fixed: float = math.nan
    p_fixed: float = math.nan


def _complete_table(table: pd.DataFrame) -> pd.DataFrame:
    """Drop the configuration or seed with the most missing cells until none is missing."""
    while table.size and table.isna().any().any():
        row_na, col_na = table.isna().sum(axis=1), table.isna().sum(axis=0)
        if row_na.max() / table.shape[1] >= col_na.max() / table.shape[0]:
            table = table.drop(index=row_na.idxmax())
        else:
            table = table.drop(columns=col_na.idxmax())
    return table


def crossed_mean_test(values: Sequence[float], configs: Sequence[Any], seeds: Sequence[Any],
                      level: float = 0.95) -> CrossedTest:
    """Test ``mean = 0`` for values with random configuration and seed effects (module
    docstring): cell means of the configuration x seed table (largest complete sub-table),
    ``Var = max(MS_c + MS_s - MS_e, MS_c, MS_s) / (C S)`` and Satterthwaite degrees of
    freedom; a two-sided t-test and a ``level`` t interval of the mean."""
    frame = pd.DataFrame({"v": np.asarray(values, float), "c": [str(c) for c in configs],
                          "s": [str(s) for s in seeds]})
    frame = frame[np.isfinite(frame["v"])]
    nan = CrossedTest(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan,
                      0, 0, 0)
    if frame.empty:
        nan.reason = "no jobs with finite values"
        return nan
    table = _complete_table(frame.pivot_table(index="c", columns="s", values="v", aggfunc="mean"))
    C, S = table.shape
    used = frame[frame["c"].isin(table.index) & frame["s"].isin(table.columns)]
    grand = float(table.to_numpy().mean()) if table.size else math.nan
    if C * S < 2:
        nan.estimate, nan.n_jobs, nan.n_seeds, nan.n_configs = grand, len(used), S, C
        nan.reason = f"too few units: {C} configuration(s) x {S} seed(s)"
        return nan
    x = table.to_numpy(float)
    rows, cols = x.mean(axis=1), x.mean(axis=0)
    fixed = _fixed_configs(cols, grand)
    combo, terms = _variance(x, rows, cols, grand)
    if not combo > 0:
        out = CrossedTest(grand, 0.0, math.nan, math.nan, math.nan, grand, grand, len(used), S,
                          C, "zero variance between units", **fixed)
        if grand != 0:
            out.p, out.t = 0.0, math.copysign(math.inf, grand)
        else:
            out.p, out.t = 1.0, 0.0
        return out
    df = combo ** 2 / sum((a * ms) ** 2 / d for a, ms, d in terms)
    se = math.sqrt(combo / (C * S))
    t = grand / se
    p = float(2 * stats.t.sf(abs(t), df))
    q = float(stats.t.ppf(0.5 + level / 2, df))
    return CrossedTest(grand, se, float(df), float(t), p, grand - q * se, grand + q * se,
                       len(used), S, C, **fixed)


def _fixed_configs(cols: np.ndarray, grand: float) -> dict[str, float]:
    """The configurations taken as fixed: a one-sample t-test over the seed means ``cols``
    (NaN with one seed or seed means that do not vary)."""
    S = len(cols)
    fixed = dict(t_fixed=math.nan, df_fixed=math.nan, p_fixed=math.nan)
    if S > 1 and np.std(cols) > 1e-12 * max(1.0, abs(grand)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = stats.ttest_1samp(cols, 0.0)
        fixed = dict(t_fixed=float(ref.statistic), df_fixed=S - 1.0, p_fixed=float(ref.pvalue))
    return fixed


def _variance(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, grand: float
              ) -> tuple[float, list[tuple[float, float, float]]]:
    """``MS_c + MS_s - MS_e`` of the complete table ``x`` (row means ``rows``, column means
    ``cols``), truncated at the larger main-effect mean square, and its terms (coefficient,
    mean square, df) for Satterthwaite's degrees of freedom."""
    C, S = x.shape
    terms: list[tuple[float, float, float]] = []  # (coefficient, mean square, df)
    ms_c = S * float(((rows - grand) ** 2).sum()) / (C - 1) if C > 1 else 0.0
    ms_s = C * float(((cols - grand) ** 2).sum()) / (S - 1) if S > 1 else 0.0
    if C > 1:
        terms.append((1.0, ms_c, C - 1.0))
    if S > 1:
        terms.append((1.0, ms_s, S - 1.0))
    if C > 1 and S > 1:
        resid = x - rows[:, None] - cols[None, :] + grand
        ms_e = float((resid ** 2).sum()) / ((C - 1) * (S - 1))
        terms.append((-1.0, ms_e, (C - 1.0) * (S - 1.0)))
    combo = sum(a * ms for a, ms, _ in terms)
    floor = max(ms_c, ms_s)
    if combo < floor:  # truncate the unbiased combination at the larger main-effect term
        combo = floor
        terms = [max(terms[:2], key=lambda t: t[1])] if len(terms) > 1 else terms
    return combo, terms
