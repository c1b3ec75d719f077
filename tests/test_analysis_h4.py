"""H4 (Hessian-informed PAC-Bayes bounds are tighter): planted effects are found, ties and
negligible tightenings (what the by-construction ordering gives) are not called support, the
false-positive rate of the margin test is near alpha, the statistics equal scipy's, and the
report section writes its table and figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from landscope.analysis.collect import Collection
from landscope.analysis.doc import Doc
from landscope.analysis.hypotheses.paired import holm
from landscope.analysis.hypotheses.h4 import (HESSIAN, ISOTROPIC, MARGIN, NAIVE, applies,
                                              comparison_row, h4_test, section)
from landscope.analysis.report import ReportContext
from landscope.errors import LandscopeError


def _jobs(hessian, isotropic, naive=None, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(hessian)
    naive = np.full(n, 1.0 - 1e-16) if naive is None else naive
    return pd.DataFrame({
        "job": [f"job{i}" for i in range(n)], "seed": np.arange(n), "included": True,
        HESSIAN: hessian, ISOTROPIC: isotropic, NAIVE: naive,
        "probe.pacbayes_hessian_is_isotropic": (np.asarray(hessian) == np.asarray(isotropic))
        .astype(float),
        "test_error": rng.uniform(0.2, 0.4, n), "train_error": rng.uniform(0.1, 0.3, n),
        "probe.pacbayes_isotropic_e_mc": rng.uniform(0.3, 0.5, n),
        "probe.pacbayes_hessian_e_mc": rng.uniform(0.3, 0.5, n)})


def _planted(n=12, improvement=0.2, seed=0):
    rng = np.random.default_rng(seed)
    iso = rng.uniform(0.6, 0.95, n)
    hes = iso * (1 - improvement + rng.normal(0, 0.02, n))
    return _jobs(hes, iso, seed=seed)


def test_planted_effect_is_supported():
    res = h4_test(_planted())
    assert res.verdict == "supported", res.summary()
    assert list(res.table["comparison"]) == ["hessian vs isotropic", "hessian vs naive"]
    assert (res.table["p_holm"] < 0.01).all() and (res.table["verdict"] == "supported").all()
    iso = res.table.iloc[0]
    assert iso["median_rel_improvement"] == pytest.approx(0.2, abs=0.03)
    assert iso["rel_ci_low"] > MARGIN and iso["ci_high"] < 0 and iso["n_above_margin"] == 12
    assert iso["rank_biserial"] == -1.0 and iso["cohens_d"] < 0
    assert res.frac_non_isotropic == 1.0 and res.n_jobs == 12
    b = res.bounds.set_index("quantity")
    assert b.loc["hessian bound", "frac_below_1"] == 1.0 and b.loc["naive bound", "n"] == 12
    assert b.loc["naive bound", "frac_below_chance"] == 0.0  # 1 - 1e-16: below 1, not useful
    assert b.loc["hessian bound", "frac_below_chance"] == 1.0
    assert "test error of w" in b.index and "SUPPORTED" in res.summary()


def test_ties_and_negligible_tightening_are_not_support():
    """The by-construction ordering (hessian <= isotropic, equal when the isotropic member
    wins) gives a one-signed raw difference; without the margin it would look significant."""
    rng = np.random.default_rng(1)
    iso = rng.uniform(0.8, 0.99, 12)
    hes = iso * (1 - rng.uniform(0, 0.005, 12))  # at most 0.5% tighter
    hes[:3] = iso[:3]  # three jobs where the isotropic member won
    res = h4_test(_jobs(hes, iso))
    row = res.table.iloc[0]
    assert stats.wilcoxon(hes - iso).pvalue < 0.01  # the naive test would "find" an effect
    assert row["verdict"] == "not supported" and row["p_holm"] < 0.01
    assert res.verdict == "not supported" and "below the 5% margin" in res.reason
    assert res.frac_non_isotropic == pytest.approx(0.75)


def test_false_positive_rate_near_alpha_without_effect():
    """Relative improvements symmetric about the margin (the test's null): the two-sided
    Wilcoxon rejects about alpha of the draws; 'supported' (one direction) about alpha / 2.
    (One row, so Holm changes nothing and the verdict rule is p < alpha and a negative
    median shifted difference.)"""
    rejected = supported = 0
    draws = 300
    for i in range(draws):
        rng = np.random.default_rng(100 + i)
        iso = rng.uniform(0.5, 0.95, 15)
        hes = iso * (1 - MARGIN) + rng.normal(0, 0.02, 15)
        row = comparison_row(hes, iso, "hessian vs isotropic", "isotropic", n_boot=2)
        rejected += row["p"] < 0.05  # one row: Holm changes nothing
        supported += row["p"] < 0.05 and row["median_shifted"] < 0
    assert 0.02 <= rejected / draws <= 0.09
    assert supported / draws <= 0.06


def test_statistics_equal_scipy():
    df = _planted(n=9, improvement=0.07, seed=3)
    df.loc[4, HESSIAN] = np.nan  # left out of both rows
    res = h4_test(df, n_boot=500, seed=7)
    ok = np.isfinite(df[HESSIAN].to_numpy())
    h = df[HESSIAN].to_numpy()[ok]
    for row, col in zip(res.table.itertuples(), (ISOTROPIC, NAIVE)):
        o = df[col].to_numpy()[ok]
        d = h - (1 - MARGIN) * o
        w = stats.wilcoxon(d)
        t = stats.ttest_rel(h, (1 - MARGIN) * o)
        assert row.n == 8 and row.statistic == w.statistic
        assert row.p == pytest.approx(w.pvalue, rel=1e-12)
        assert row.t == pytest.approx(t.statistic, rel=1e-12)
        assert row.t_p == pytest.approx(t.pvalue, rel=1e-12)
        assert row.median_shifted == pytest.approx(np.median(d), rel=1e-12)
        assert row.median_diff == pytest.approx(np.median(h - o), rel=1e-12)
        assert row.median_rel_improvement == pytest.approx(np.median((o - h) / o), rel=1e-12)
        assert row.cohens_d == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-12)
        assert row.ci_low <= row.median_diff <= row.ci_high
        assert row.rel_ci_low <= row.median_rel_improvement <= row.rel_ci_high
    assert np.allclose(res.table["p_holm"], holm(res.table["p"]))
    assert res.table["p_holm"].min() == pytest.approx(min(1.0, 2 * res.table["p"].min()))
    assert any("left out" in n for n in res.notes)
    again = h4_test(df, n_boot=500, seed=7)
    pd.testing.assert_frame_equal(res.table, again.table)  # reproducible bootstrap


def test_too_few_jobs_and_missing_columns():
    res = h4_test(_planted(n=5))
    assert res.verdict == "inconclusive" and "too few" in res.reason
    with pytest.raises(LandscopeError, match="probe=pacbayes"):
        h4_test(pd.DataFrame({"job": ["a"], ISOTROPIC: [0.5]}))
    with pytest.raises(LandscopeError, match="margin"):
        h4_test(_planted(), margin=1.0)
    excluded = _planted(n=8)
    excluded.loc[:3, "included"] = False
    assert h4_test(excluded).n_jobs == 4


def _ctx(df: pd.DataFrame, tmp_path) -> ReportContext:
    coll = Collection(jobs=df, excluded=pd.DataFrame(), counts={"completed": len(df)}, swept=[])
    return ReportContext(Doc("t"), coll, [tmp_path], tmp_path)


def test_section_writes_table_and_figure(tmp_path):
    ctx = _ctx(_planted(), tmp_path)
    assert applies(ctx)
    section(ctx)
    md = ctx.doc.render_md()
    assert "## H4: Hessian-informed PAC-Bayes bounds are tighter" in md
    assert "Verdict: supported" in md and "| hessian vs isotropic |" in md
    assert "![PAC-Bayes bound, isotropic vs Hessian" in md and "figures/h4_bounds.png" in md
    assert (tmp_path / "figures" / "h4_bounds.png").stat().st_size > 1000
    table = pd.read_csv(tmp_path / "h4.csv")
    assert list(table["comparison"]) == ["hessian vs isotropic", "hessian vs naive"]
    assert len(pd.read_csv(tmp_path / "h4_jobs.csv")) == 12
    assert "data:image/png;base64," in ctx.doc.render_html("t")


def test_applies_only_with_the_bounds(tmp_path):
    df = _planted()
    assert not applies(_ctx(df.drop(columns=[NAIVE]), tmp_path))
    df[HESSIAN] = math.nan
    assert not applies(_ctx(df, tmp_path))
