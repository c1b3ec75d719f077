"""Paired and two-group comparisons shared by the hypothesis tests: the Wilcoxon signed-rank
test with the paired t-test, Cohen's d_z, the rank-biserial correlation and a bootstrap CI of
the median difference (:func:`paired_stats`); Mann-Whitney U with Welch's t for independent
groups (:func:`unpaired_stats`); Holm's correction (:func:`holm`); the verdict words.

A row is a dict with the columns of :data:`TABLE_COLUMNS` (the Holm columns and the verdict
are filled in by the caller) plus ``_min_p``, the smallest p-value the test can reach with
these sample sizes, and for the paired test ``_n_nonzero``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import numpy as np
from scipy import stats

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
TABLE_COLUMNS = ["measure", "test", "n", "n_on", "n_off", "median_diff", "mean_diff", "ci_low",
                 "ci_high", "statistic", "p", "p_holm", "t_test", "t", "t_p", "t_p_holm",
                 "cohens_d", "rank_biserial", "verdict", "reason"]


def empty_row(measure: str, test: str, t_test: str) -> dict[str, Any]:
    row = {c: math.nan for c in TABLE_COLUMNS}
    row.update(measure=measure, test=test, t_test=t_test, n=0, n_on=0, n_off=0, verdict=INCONCLUSIVE,
               reason="")
    return row


def paired_stats(on: np.ndarray, off: np.ndarray, measure: str, n_boot: int = 2000,
                 seed: int = 0) -> dict[str, Any]:
    """The paired statistics of one measure (a table row without the Holm columns and verdict)."""
    on, off = np.asarray(on, dtype=float), np.asarray(off, dtype=float)
    row = empty_row(measure, "wilcoxon", "paired t")
    d = on - off
    n = len(d)
    row.update(n=n, n_on=n, n_off=n)
    if n == 0:
        row["reason"] = "no pairs with finite values"
        return row
    row.update(median_diff=float(np.median(d)), mean_diff=float(np.mean(d)))
    nonzero = d[d != 0]
    if len(nonzero):
        ranks = stats.rankdata(np.abs(nonzero))
        row["rank_biserial"] = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum())
                                     / ranks.sum())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                w = stats.wilcoxon(d, alternative="two-sided")
                row.update(statistic=float(w.statistic), p=float(w.pvalue))
            except ValueError:
                pass
    else:
        row.update(statistic=0.0, p=1.0, rank_biserial=0.0)  # every difference is zero
    if n >= 2:
        sd = float(np.std(d, ddof=1))
        if sd > 0:
            row["cohens_d"] = float(np.mean(d)) / sd
            t = stats.ttest_rel(on, off)
            row.update(t=float(t.statistic), t_p=float(t.pvalue))
        rng = np.random.default_rng(seed)
        boot = np.median(d[rng.integers(0, n, size=(n_boot, n))], axis=1)
        row.update(ci_low=float(np.percentile(boot, 2.5)), ci_high=float(np.percentile(boot, 97.5)))
    row["_min_p"] = min(1.0, 2.0 / 2.0 ** len(nonzero)) if len(nonzero) else 1.0
    row["_n_nonzero"] = len(nonzero)
    return row


def unpaired_stats(on: np.ndarray, off: np.ndarray, measure: str, n_boot: int = 2000,
                   seed: int = 0) -> dict[str, Any]:
    """Mann–Whitney U, Welch t and effect sizes of two independent groups (on, off)."""
    on, off = np.asarray(on, dtype=float), np.asarray(off, dtype=float)
    row = empty_row(measure, "mannwhitneyu", "welch t")
    n1, n2 = len(on), len(off)
    row.update(n=n1 + n2, n_on=n1, n_off=n2)
    if n1 == 0 or n2 == 0:
        row["reason"] = f"no barriers with the factor {'on' if n1 == 0 else 'off'}"
        return row
    row.update(median_diff=float(np.median(on) - np.median(off)),
               mean_diff=float(np.mean(on) - np.mean(off)))
    u = stats.mannwhitneyu(on, off, alternative="two-sided")
    row.update(statistic=float(u.statistic), p=float(u.pvalue),
               rank_biserial=float(2.0 * u.statistic / (n1 * n2) - 1.0))
    if n1 >= 2 and n2 >= 2:
        pooled = math.sqrt(((n1 - 1) * np.var(on, ddof=1) + (n2 - 1) * np.var(off, ddof=1))
                           / (n1 + n2 - 2))
        if pooled > 0:
            row["cohens_d"] = row["mean_diff"] / pooled
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = stats.ttest_ind(on, off, equal_var=False)
            row.update(t=float(t.statistic), t_p=float(t.pvalue))
    rng = np.random.default_rng(seed)
    boot = (np.median(on[rng.integers(0, n1, size=(n_boot, n1))], axis=1)
            - np.median(off[rng.integers(0, n2, size=(n_boot, n2))], axis=1))
    row.update(ci_low=float(np.percentile(boot, 2.5)), ci_high=float(np.percentile(boot, 97.5)))
    row["_min_p"] = 2.0 / math.comb(n1 + n2, n1)
    return row


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN): the values of statsmodels'
    ``multipletests(p, method="holm")[1]`` (checked in the tests), computed here because
    statsmodels runs a garbage collection per call (~50 ms)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind="stable")]
        m = len(ok)
        adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
        out[order] = np.minimum(adjusted, 1.0)
    return out
