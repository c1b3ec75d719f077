"""Paired and two-group comparisons shared by the hypothesis tests: the Wilcoxon signed-rank
test with the paired t-test, Cohen's d_z, the rank-biserial correlation and a bootstrap CI of
the median difference (:func:`paired_stats`); Mann-Whitney U with Welch's t for independent
groups (:func:`unpaired_stats`); Holm's correction (:func:`holm`); the verdict words.

Rank-based estimation for paired differences (issue #16 item 6): the Hodges–Lehmann estimate
(:func:`hodges_lehmann`, the median of the Walsh averages) with the confidence interval that
inverts the Wilcoxon signed-rank test (:func:`wilcoxon_ci`, exact for n ≤ 50), both in
:func:`paired_rank_stats` (the row H2 uses instead of the percentile bootstrap of a median,
which undercovers with a handful of pairs); :func:`signed_rank_counts` is the exact null
distribution behind them, and :func:`sign_flip_p` an exact sign-flip permutation p-value.

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
    row.update(measure=measure, test=test, t_test=t_test, n=0, n_on=0, n_off=0,
               verdict=INCONCLUSIVE, reason="")
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
        if n_boot > 0:  # n_boot = 0: no bootstrap (paired_rank_stats)
            rng = np.random.default_rng(seed)
            boot = np.median(d[rng.integers(0, n, size=(n_boot, n))], axis=1)
            row.update(ci_low=float(np.percentile(boot, 2.5)),
                       ci_high=float(np.percentile(boot, 97.5)))
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
    statsmodels runs a garbage collection per call (docs/measurements.md#analysis-paired).

    >>> holm([0.01, 0.04, 0.03, float("nan")]).tolist()
    [0.03, 0.06, 0.06, nan]
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind="stable")]
        m = len(ok)
        adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
        out[order] = np.minimum(adjusted, 1.0)
    return out


# --------------------------------------------------------------------------- rank estimation
def signed_rank_counts(n: int) -> np.ndarray:
    """The exact null distribution of the Wilcoxon signed-rank statistic T+ for ``n`` non-tied
    differences, as counts: ``counts[t]`` = the number of the 2^n sign patterns with T+ = t,
    t = 0 .. n(n+1)/2 (the coefficients of prod_k (1 + x^k)).

    >>> signed_rank_counts(3).tolist()  # T+ = 0 .. 6 over the 8 sign patterns
    [1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0]
    """
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=float)
    counts[0] = 1.0
    for k in range(1, n + 1):
        counts[k:] = counts[k:] + counts[:-k].copy()
    return counts


def walsh_averages(d: np.ndarray) -> np.ndarray:
    """The n(n+1)/2 Walsh averages (d_i + d_j)/2, i ≤ j, sorted.

    >>> walsh_averages([1.0, 2.0, 4.0]).tolist()
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0]
    """
    d = np.asarray(d, dtype=float)
    i, j = np.triu_indices(len(d))
    return np.sort((d[i] + d[j]) / 2.0)


def hodges_lehmann(d: np.ndarray) -> float:
    """The Hodges–Lehmann estimate of the centre of the paired differences ``d``: the median of
    the Walsh averages (Hodges & Lehmann 1963; Hollander & Wolfe, Nonparametric Statistical
    Methods, 3rd ed., §3.2). NaN when ``d`` is empty.

    >>> hodges_lehmann([1.0, 2.0, 4.0])
    2.25
    """
    d = np.asarray(d, dtype=float)
    return float(np.median(walsh_averages(d))) if len(d) else math.nan


def wilcoxon_ci(d: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """The confidence interval of the centre of ``d`` that inverts the two-sided Wilcoxon
    signed-rank test: ``(low, high, achieved)``.

    With N = n(n+1)/2 sorted Walsh averages W_(1) ≤ … ≤ W_(N) and t_up the smallest value with
    P(T+ ≥ t_up) ≤ (1 − level)/2 under the exact null (:func:`signed_rank_counts`; the normal
    approximation with a continuity correction for n > 50), the interval is
    [W_(C), W_(N+1−C)] with C = N + 1 − t_up (Hollander & Wolfe §3.3), and ``achieved`` =
    1 − 2·P(T+ ≥ t_up) ≥ ``level`` is its exact coverage (the discrete distribution makes it
    larger than asked). When no such t_up exists (n ≤ 5 at level 0.95: the smallest two-sided
    p is 2/2^n = 0.0625 for n = 5), the widest interval the data give is returned instead,
    [min d, max d], with its coverage 1 − 2/2^n < ``level``: callers must show ``achieved``.
    ``(nan, nan, nan)`` for n = 0. Ties are ignored in the null distribution (exact without
    ties)."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, math.nan, math.nan
    w = walsh_averages(d)
    big = n * (n + 1) // 2
    tail = (1.0 - level) / 2.0
    if n <= 50:
        counts = signed_rank_counts(n)
        upper = np.cumsum(counts[::-1])[::-1] / 2.0 ** n  # upper[t] = P(T+ >= t)
        ok = np.flatnonzero(upper <= tail + 1e-12)
        if len(ok) == 0:
            return float(w[0]), float(w[-1]), float(1.0 - 2.0 * upper[big])
        t_up = int(ok[0])
        achieved = float(1.0 - 2.0 * upper[t_up])
    else:
        from scipy import stats as _st

        mean, sd = big / 2.0, math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
        z = float(_st.norm.ppf(1.0 - tail))
        t_up = int(math.ceil(mean + z * sd + 0.5))
        achieved = float(1.0 - 2.0 * _st.norm.sf((t_up - 0.5 - mean) / sd))
    c = big + 1 - t_up  # 1-indexed
    return float(w[c - 1]), float(w[big - c]), achieved


def sign_flip_p(x: np.ndarray, n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of H0 "``x`` is symmetric about 0": the share of
    sign patterns ε with |Σ ε_i x_i| ≥ |Σ x_i|. Exact (every one of the 2^n patterns) for
    n ≤ 16, else ``n_perm`` random patterns plus the observed one. NaN for n = 0.

    >>> sign_flip_p([1.0, 2.0, 3.0])  # only (+, +, +) and (−, −, −) reach |Σ| = 6
    0.25
    >>> sign_flip_p([1.0, -1.0])
    1.0
    """
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n == 0:
        return math.nan
    observed = abs(float(x.sum()))
    tol = 1e-12 * max(1.0, float(np.abs(x).sum()))
    if n <= 16:
        signs = 1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs(signs @ x) >= observed - tol))
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_perm, n))
    return float((1 + np.sum(np.abs(signs @ x) >= observed - tol)) / (n_perm + 1))


def paired_rank_stats(on: np.ndarray, off: np.ndarray, measure: str, level: float = 0.95
                      ) -> dict[str, Any]:
    """:func:`paired_stats` with rank-based estimation instead of the bootstrap: the same
    Wilcoxon signed-rank test (``statistic``, ``p``), paired t (``t``, ``t_p``), Cohen's d_z
    and rank-biserial correlation, plus ``estimate`` = the Hodges–Lehmann estimate of
    on − off (:func:`hodges_lehmann`) and ``ci_low``/``ci_high`` = the Wilcoxon-inverted
    interval (:func:`wilcoxon_ci`) with ``ci_level`` its exact coverage (below ``level`` when
    the test cannot reach 1 − ``level``: then the row's ``ci_note`` says so). The interval uses
    every difference (zeros included), the test drops zero differences (scipy's default)."""
    row = paired_stats(on, off, measure, n_boot=0)
    row.update(ci_low=math.nan, ci_high=math.nan, estimate=math.nan, ci_level=math.nan,
               ci_note="")
    d = np.asarray(on, dtype=float) - np.asarray(off, dtype=float)
    if len(d):
        row["estimate"] = hodges_lehmann(d)
        low, high, achieved = wilcoxon_ci(d, level)
        row.update(ci_low=low, ci_high=high, ci_level=achieved)
        if achieved < level - 1e-12:
            row["ci_note"] = (f"{len(d)} pairs cannot give a {100 * level:g}% Wilcoxon interval; "
                              f"[min, max] of the differences covers {100 * achieved:.2f}%")
    return row
