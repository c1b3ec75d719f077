"""H4 (Hessian-informed PAC-Bayes complexity is smaller): the crossed configuration × seed test
against closed forms and scipy, planted effects found with their evidence, at-margin and equal
complexities not called support, the fallbacks for jobs without matched complexities, the
non-vacuity statement, and the report section's files."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from landscope.analysis.collect import Collection
from landscope.analysis.doc import Doc
from landscope.analysis.hypotheses.h4 import (
    HESSIAN,
    ISOTROPIC,
    MARGIN,
    MATCHED,
    NAIVE,
    applies,
    chance_error,
    complexities,
    config_labels,
    crossed_mean_test,
    h4_test,
    section,
)
from landscope.errors import LandscopeError


def _jobs(log_ratio: float, n_configs=4, n_seeds=4, sd=0.05, naive_ratio=0.01, seed=0,
          binary=False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_configs):
        for s in range(n_seeds):
            iso = 0.05 * math.exp(rng.normal(0, 0.3))
            hes = iso * math.exp(log_ratio + rng.normal(0, sd))
            rows.append({"job": f"c{c}s{s}", "seed": s, "included": True,
                         "model.width": 16 * (c + 1),
                         "dataset.classes": "[0, 1]" if binary else None,
                         MATCHED["isotropic"]: iso, MATCHED["hessian"]: hes,
                         "probe.pacbayes_complexity_naive": hes / naive_ratio,
                         HESSIAN: 0.45, ISOTROPIC: 0.5, NAIVE: 1.0 - 1e-9,
                         "probe.pacbayes_hessian_is_isotropic": 0.0,
                         "test_error": 0.3, "train_error": 0.2,
                         "probe.pacbayes_isotropic_e_mc": 0.3,
                         "probe.pacbayes_hessian_e_mc": 0.3})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------ the crossed test
def test_crossed_test_with_one_configuration_is_the_one_sample_t_test():
    rng = np.random.default_rng(1)
    v = rng.normal(0.3, 1.0, 6)
    res = crossed_mean_test(v, ["a"] * 6, range(6))
    ref = stats.ttest_1samp(v, 0.0)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-10) and res.t == pytest.approx(ref.statistic)
    assert res.df == 5 and res.n_seeds == 6 and res.n_configs == 1 and res.n_jobs == 6
    assert res.p_fixed == pytest.approx(res.p, rel=1e-10)  # one configuration: the same test
    lo, hi = stats.t.interval(0.95, 5, loc=v.mean(), scale=stats.sem(v))
    assert (res.ci_low, res.ci_high) == pytest.approx((lo, hi), rel=1e-10)
    # one seed, several configurations: over configuration means; repeated jobs averaged
    res = crossed_mean_test([1.0, 3.0, 2.0, 2.5, 0.5], ["a", "a", "b", "c", "d"], [0] * 5)
    ref = stats.ttest_1samp([2.0, 2.0, 2.5, 0.5], 0.0)
    assert res.p == pytest.approx(ref.pvalue, rel=1e-10) and res.n_configs == 4


def test_crossed_test_two_way_closed_form_and_missing_cells():
    x = np.array([[1.0, 2.0, 4.0], [2.0, 2.5, 5.5], [0.0, 1.0, 3.5], [1.5, 2.5, 4.5]])
    C, S = x.shape
    cfg, seed = np.repeat(np.arange(C), S), np.tile(np.arange(S), C)
    res = crossed_mean_test(x.ravel(), cfg, seed)
    g, r, k = x.mean(), x.mean(axis=1), x.mean(axis=0)
    ms_c, ms_s = S * ((r - g) ** 2).sum() / (C - 1), C * ((k - g) ** 2).sum() / (S - 1)
    ms_e = ((x - r[:, None] - k[None, :] + g) ** 2).sum() / ((C - 1) * (S - 1))
    v = ms_c + ms_s - ms_e
    df = v ** 2 / (ms_c ** 2 / (C - 1) + ms_s ** 2 / (S - 1) + ms_e ** 2 / ((C - 1) * (S - 1)))
    assert res.estimate == pytest.approx(g) and res.se == pytest.approx(math.sqrt(v / (C * S)))
    assert res.df == pytest.approx(df) and res.p == pytest.approx(2 * stats.t.sf(abs(res.t), df))
    assert res.p_fixed == pytest.approx(stats.ttest_1samp(k, 0.0).pvalue, rel=1e-10)
    # a missing cell drops the seed (or configuration) with the most missing cells
    vals = x.ravel().copy()
    vals[2] = np.nan
    res = crossed_mean_test(vals, cfg, seed)
    assert ((res.n_configs, res.n_seeds) in ((3, 3), (4, 2))
            and res.n_jobs == res.n_configs * res.n_seeds)
    assert math.isnan(crossed_mean_test([1.0], ["a"], [0]).p)
    assert "too few" in crossed_mean_test([1.0], ["a"], [0]).reason


# ------------------------------------------------------------------------ verdicts
def test_planted_effect_is_supported_with_its_evidence():
    res = h4_test(_jobs(math.log(0.7)))
    assert res.verdict == "supported", res.summary()
    iso = res.table.set_index("other").loc["isotropic"]
    assert iso["ratio"] == pytest.approx(0.7, rel=0.05) and iso["ratio_ci_high"] < 1 - MARGIN
    assert iso["n_seeds"] == 4 and iso["n_configs"] == 4 and iso["n_jobs"] == 16
    assert iso["matched"] and iso["p_holm"] < 0.05
    for word in ("complexity ratio", "95% CI", "4 seeds x 4 configs", "Holm p"):
        assert word in iso["reason"]
    assert iso["calibration"].startswith(("not calibrated", "calibration"))
    assert res.table.set_index("other").loc["naive", "ratio"] == pytest.approx(0.01, rel=1e-6)


def test_at_margin_and_equal_complexities_are_not_support():
    res = h4_test(_jobs(math.log(1 - MARGIN), sd=0.05, seed=3))
    assert res.table.set_index("other").loc["isotropic", "verdict"] != "supported"
    res = h4_test(_jobs(0.0, sd=0.02))  # no tightening: significantly short of the margin
    assert res.verdict == "not supported" and "below the 5% margin" in res.reason


def test_unmatched_jobs_use_their_own_complexities_or_the_pieces():
    df = _jobs(math.log(0.7)).drop(columns=list(MATCHED.values()))
    m, delta, j = 4000.0, 0.025, 100.0
    df["probe.pacbayes_m"], df["probe.pacbayes_delta"] = m, delta
    for name, kl in (("isotropic", 200.0), ("hessian", 100.0)):
        df[f"probe.pacbayes_kl_{name}"], df[f"probe.pacbayes_{name}_prior_j"] = kl, j
    cx, matched = complexities(df)
    assert not matched
    ref = (100.0 + 2 * math.log(j) + math.log(math.pi ** 2 * m / (6 * delta))) / (m - 1)
    assert cx["hessian"].iloc[0] == pytest.approx(ref, rel=1e-12)
    res = h4_test(df)
    assert not res.matched and any("not at matched" in n for n in res.notes)


def test_nonvacuity_and_chance():
    res = h4_test(_jobs(math.log(0.7), binary=True))
    assert res.chance_error == 0.5 and chance_error(_jobs(0.0)) == 0.9
    text = res.nonvacuity()
    assert "hessian: 16 of 16 below 1, 16 below chance 0.5" in text
    assert "naive: 16 of 16 below 1" in text


def test_config_labels_from_swept_columns():
    df = _jobs(0.0, n_configs=2, n_seeds=3)
    labels = config_labels(df)
    assert labels.nunique() == 2 and config_labels(df, ["model.width"]).equals(labels)
    assert (config_labels(df, []) == "all").all()


def test_missing_columns_and_bad_margin_raise():
    with pytest.raises(LandscopeError, match="probe=pacbayes"):
        h4_test(_jobs(0.0).drop(columns=[NAIVE]))
    with pytest.raises(LandscopeError, match="margin"):
        h4_test(_jobs(0.0), margin=1.0)


# ------------------------------------------------------------------------ report section
def _ctx(df: pd.DataFrame, tmp_path) -> SimpleNamespace:
    """What a section reads of landscope.analysis.report.ReportContext (doc, coll, paths, out)."""
    coll = Collection(jobs=df, excluded=pd.DataFrame(), counts={"completed": len(df)},
                      swept=["model.width"])
    return SimpleNamespace(doc=Doc("t"), coll=coll, paths=[tmp_path], out=tmp_path, appendix=[])


def test_section_writes_table_and_figure(tmp_path):
    ctx = _ctx(_jobs(math.log(0.7)), tmp_path)
    assert applies(ctx)
    section(ctx)
    md = ctx.doc.render_md()
    assert "## H4: Hessian-informed PAC-Bayes bounds are tighter" in md
    assert "Non-vacuity" in md and "Verdict: supported" in md and "| hessian vs isotropic |" in md
    assert "figures/h4_complexity.png" in md
    assert (tmp_path / "figures" / "h4_complexity.png").stat().st_size > 1000
    table = pd.read_csv(tmp_path / "h4.csv")
    assert list(table["comparison"]) == ["hessian vs isotropic", "hessian vs naive"]
    assert len(pd.read_csv(tmp_path / "h4_jobs.csv")) == 16


def test_applies_only_with_the_bounds(tmp_path):
    df = _jobs(0.0)
    assert not applies(_ctx(df.drop(columns=[NAIVE]), tmp_path))
    df[HESSIAN] = math.nan
    assert not applies(_ctx(df, tmp_path))


def test_jobs_without_complexities_keep_their_bounds_table_and_figure(tmp_path):
    df = _jobs(0.0).drop(columns=[*MATCHED.values(), "probe.pacbayes_complexity_naive"])
    res = h4_test(df)
    assert res.verdict == "inconclusive" and (res.table["n_jobs"] == 0).all()
    assert res.bounds.set_index("quantity").loc["hessian bound", "n"] == 16
    ctx = _ctx(df, tmp_path)
    section(ctx)
    assert (tmp_path / "figures" / "h4_bounds.png").exists()
    assert not (tmp_path / "figures" / "h4_complexity.png").exists()
