"""landscope.analysis.inference: CR2 against closed forms, exact permutation tests, their
false-positive rates under shared seed and configuration effects."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats

from landscope.analysis.inference import (
    cluster_ols,
    config_means_association,
    dummies,
    kendall_rows,
    permutation_p,
    permutations,
    seed_permutation_test,
)


def test_cr2_with_singleton_clusters_is_hc2():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = 1 + 0.5 * x + rng.normal(size=30) * (1 + abs(x))
    X = sm.add_constant(x)
    fit = cluster_ols(y, X, np.arange(30), ["const", "x"])
    ref = sm.OLS(y, X).fit(cov_type="HC2")
    assert fit.coef == pytest.approx(ref.params, rel=1e-12)
    assert fit.se == pytest.approx(ref.bse, rel=1e-10)
    assert fit.r2 == pytest.approx(ref.rsquared, rel=1e-12)


def test_cr2_of_a_cluster_level_contrast_is_welch_on_cluster_means():
    # Equal cluster sizes, a treatment constant within clusters: the CR2 SE of the difference
    # is Welch's SE on the cluster means, and the Bell-McCaffrey df is the Welch-Satterthwaite
    # df under equal variances: (1/G1 + 1/G2)^2 / ((1/G1)^2/(G1-1) + (1/G2)^2/(G2-1)).
    rng = np.random.default_rng(1)
    G, m = 8, 3
    cl = np.repeat(np.arange(G), m)
    y = rng.normal(size=G * m)
    for G1 in (4, 3):
        treat = (cl < G1).astype(float)
        fit = cluster_ols(y, np.column_stack([np.ones(G * m), treat]), cl, ["const", "treat"])
        means = y.reshape(G, m).mean(1)
        a, b = means[:G1], means[G1:]
        G2 = G - G1
        assert fit.coef[1] == pytest.approx(a.mean() - b.mean(), rel=1e-12)
        assert fit.se[1] == pytest.approx(math.sqrt(a.var(ddof=1) / G1 + b.var(ddof=1) / G2),
                                          rel=1e-10)
        welch_df = (1 / G1 + 1 / G2) ** 2 / ((1 / G1) ** 2 / (G1 - 1) + (1 / G2) ** 2 / (G2 - 1))
        assert fit.df[1] == pytest.approx(welch_df, rel=1e-10)
    # intercept only, balanced: the t-test on G cluster means with G - 1 df
    fit = cluster_ols(y, np.ones((G * m, 1)), cl)
    assert fit.df[0] == pytest.approx(G - 1) and fit.se[0] == pytest.approx(
        y.reshape(G, m).mean(1).std(ddof=1) / math.sqrt(G), rel=1e-10)


def test_cr2_refuses_a_rank_deficient_design():
    X = np.column_stack([np.ones(6), np.arange(6), 2 * np.arange(6)])
    with pytest.raises(ValueError, match="rank deficient"):
        cluster_ols(np.arange(6.0), X, [0, 0, 1, 1, 2, 2])


def test_cr2_with_few_seed_clusters_holds_its_level():
    # 3 configurations x 5 seeds, configuration fixed effects, seed effects shared by x and y
    # (unrelated): CR2 + Satterthwaite rejects at most ~5 % (CR1 with G - 1 = 4 df over-rejects).
    rng = np.random.default_rng(2)
    C, S, R = 3, 5, 400
    configs, seeds = np.repeat(np.arange(C), S), np.tile(np.arange(S), C)
    D, _ = dummies(configs)
    rejections = 0
    for _ in range(R):
        x = rng.normal(size=S)[seeds] + rng.normal(size=C)[configs] + rng.normal(size=C * S)
        y = rng.normal(size=S)[seeds] + rng.normal(size=C)[configs] + rng.normal(size=C * S)
        fit = cluster_ols(y, np.column_stack([np.ones(C * S), x, D]), seeds)
        rejections += fit.p[1] < 0.05
    assert rejections / R <= 0.075  # binomial upper bound around 5 % at R = 400


def test_kendall_rows_equals_scipy_with_ties_and_gaps():
    rng = np.random.default_rng(3)
    A = rng.integers(0, 4, (20, 7)).astype(float)
    b = rng.integers(0, 3, 7).astype(float)
    ref = [stats.kendalltau(a, b).statistic for a in A]
    got = kendall_rows(A, b)
    assert np.allclose(np.nan_to_num(got, nan=9), np.nan_to_num(ref, nan=9))
    A[0, 2] = np.nan  # a missing value drops its pairs
    keep = np.isfinite(A[0])
    assert kendall_rows(A[:1], b)[0] == pytest.approx(
        stats.kendalltau(A[0, keep], b[keep]).statistic)


def test_permutations_and_exact_p():
    perms, exact = permutations(4, 100)
    assert exact and len(perms) == 24 and (perms[0] == np.arange(4)).all()
    assert len({tuple(p) for p in perms}) == 24
    perms, exact = permutations(9, 50, seed=1, max_exact=5040)
    assert not exact and len(perms) == 51 and all(sorted(p) == list(range(9)) for p in perms)
    # the observed value counts itself: the smallest exact p is 1/N (one-sided extremes) or 2/N
    assert permutation_p(np.array([3.0, 1.0, -1.0, 2.0])) == pytest.approx(1 / 4)
    assert permutation_p(np.array([3.0, -3.0, 1.0, 2.0])) == pytest.approx(2 / 4)


def test_seed_permutation_test_hand_case_and_exactness():
    # One configuration of 4 seeds, x = y: τ = 1; the exact two-sided p counts the identity
    # and its reverse among 24 permutations: 2/24.
    a = seed_permutation_test([1, 2, 3, 4], [1, 2, 3, 4], ["c"] * 4, [0, 1, 2, 3])
    assert a.estimate == pytest.approx(1.0) and a.p == pytest.approx(2 / 24)
    assert a.exact and a.n_units == 4 and a.unit == "seeds" and a.claim == "within-config"
    with pytest.raises(ValueError, match="more than one row"):
        seed_permutation_test([1, 2], [1, 2], ["c", "c"], [0, 0])


@pytest.mark.parametrize("statistic", ["kendall", "pearson"])
def test_seed_permutation_test_holds_its_level_with_shared_seed_effects(statistic):
    # The measured defect: per-seed effects shared across configurations made within-config
    # tests reject 9-11 %. Permuting seed labels jointly keeps the test exact.
    rng = np.random.default_rng(4)
    C, S, R = 3, 5, 300
    configs, seeds = np.repeat(np.arange(C), S), np.tile(np.arange(S), C)
    rejections = 0
    for _ in range(R):
        x = 2 * rng.normal(size=S)[seeds] + rng.normal(size=C * S)
        y = 2 * rng.normal(size=S)[seeds] + rng.normal(size=C * S)
        rejections += seed_permutation_test(x, y, configs, seeds, statistic).p < 0.05
    assert rejections / R <= 0.08


def test_config_means_association_counts_configurations():
    rng = np.random.default_rng(5)
    configs = np.repeat(np.arange(3), 5)
    x = np.repeat([1.0, 2.0, 3.0], 5) + 0.01 * rng.normal(size=15)
    a = config_means_association(x, x, configs)
    # 3 configurations: a perfect ranking still has p = 2/3! = 1/3
    assert a.estimate == pytest.approx(1.0) and a.p == pytest.approx(1 / 3)
    assert a.n_units == 3 and a.extra["smallest_p"] == pytest.approx(1 / 3)
    six = np.repeat(np.arange(6), 2)
    b = config_means_association(six + 0.0, six + 0.0, six)
    assert b.p == pytest.approx(2 / 720) and b.exact
    pearson = config_means_association(six + 0.0, (six + 0.0) ** 2, six, statistic="pearson")
    assert pearson.estimate == pytest.approx(np.corrcoef(np.arange(6), np.arange(6) ** 2)[0, 1])
