"""H1 (smaller batch -> lower λmax -> lower test error at equal train loss): verdicts on
synthetic jobs tables with planted, absent and reversed effects, the statistics against
statsmodels/scipy, jobs off the target train loss, the report section, and the h1_batch preset
(composed, not trained)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from landscope.analysis.fixed_effects import boot_coef, fe_ols
from landscope.analysis.hypotheses.h1 import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, applies,
                                              h1_test, section)
from landscope.errors import LandscopeError

SIZES = (16, 32, 64, 128, 256)


def frame(n_seeds=8, slope=2.0, effect=0.01, rng=None, sizes=SIZES):
    """Jobs batch size × seed. λmax = 5 + slope·log2(b/16) + seed effect N(0,1) + noise N(0,1);
    train loss ~ U(0.09, 0.1) (every job at the target 0.1);
    test error = 0.3 + effect·(λmax − 9)
    + seed effect N(0, 0.01) + noise N(0, 0.01) + 0.5·(train loss − 0.095)."""
    rng = rng or np.random.default_rng(0)
    rows = []
    for seed in range(n_seeds):
        u, v = rng.normal(0, 1), rng.normal(0, 0.01)
        for b in sizes:
            lam = 5 + slope * np.log2(b / 16) + u + rng.normal(0, 1)
            tl = rng.uniform(0.09, 0.1)
            err = 0.3 + effect * (lam - 9) + v + rng.normal(0, 0.01) + 0.5 * (tl - 0.095)
            rows.append({"job": f"seed={seed},train.batch_size={b}", "included": True,
                         "status": "completed", "seed": seed, "train.batch_size": b,
                         "train.target_train_loss": 0.1, "stop_reason": "target_train_loss",
                         "epochs_completed": 30, "probe.lambda_max": lam,
                         "final.train_loss": tl, "test_error": err})
    return pd.DataFrame(rows)


def test_planted_effect_is_supported():
    res = h1_test(frame(), n_boot=500)
    a, b = (res.table.iloc[i] for i in (0, 1))
    assert res.verdict == SUPPORTED and a["verdict"] == SUPPORTED and b["verdict"] == SUPPORTED
    assert a["p_holm"] < 0.01 and b["p_holm"] < 0.01
    assert a["n"] == b["n"] == 40 and a["n_clusters"] == 8 and a["df"] == 7
    assert 1.5 < a["effect"] < 2.5 and 0 < a["ci_low"] < a["effect"] < a["ci_high"]
    assert b["effect"] > 0 and b["ci_low"] > 0 and b["corr"] > 0.5 and a["corr"] > 0.5
    assert math.isfinite(a["mixed_effect"]) and math.isfinite(b["mixed_p"])
    assert res.n_reached == 40 and res.n_off_target == 0 and res.target_loss == 0.1
    text = res.summary()
    assert "SUPPORTED" in text and "per doubling" in text


def test_no_effect_false_positive_rate_near_alpha():
    # 200 seeded null draws (no batch trend in λmax, no λmax effect on test error, seed effects
    # in both: the hard case for cluster-robust errors with 6 clusters). Each step alone must
    # reject (either sign, Holm-corrected) in at most alpha + 3 binomial sd of the draws:
    # 0.05 + 3·sqrt(0.05·0.95/200) ≈ 0.096. Supported needs both steps: far rarer.
    rng = np.random.default_rng(1)
    rej_a = rej_b = supported = 0
    for _ in range(200):
        res = h1_test(frame(6, slope=0.0, effect=0.0, rng=rng), n_boot=10, mixed=False)
        rej_a += res.table["p_holm"].iloc[0] < 0.05
        rej_b += res.table["p_holm"].iloc[1] < 0.05
        supported += res.verdict == SUPPORTED
    bound = 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)
    assert rej_a / 200 <= bound and rej_b / 200 <= bound and supported / 200 <= bound
    # ... and near alpha, not below it: with Holm over 2 steps each step's nominal rate is
    # between alpha/2 and alpha (measured 0.02 and 0.02); a test that never rejects fails here
    assert rej_a >= 2 and rej_b >= 2


def test_opposite_sign_is_not_supported():
    res = h1_test(frame(effect=-0.01), n_boot=100, mixed=False)
    assert res.table["verdict"].tolist() == [SUPPORTED, NOT_SUPPORTED]
    assert res.verdict == NOT_SUPPORTED and "(b)" in res.reason
    res = h1_test(frame(slope=-2.0, effect=0.01), n_boot=100, mixed=False)
    assert res.table["verdict"].iloc[0] == NOT_SUPPORTED and res.verdict == NOT_SUPPORTED
    assert "opposite" in res.table["reason"].iloc[0]


def test_no_lambda_effect_is_inconclusive():
    res = h1_test(frame(effect=0.0), n_boot=100, mixed=False)
    assert res.table["verdict"].iloc[0] == SUPPORTED
    assert res.verdict == INCONCLUSIVE and "(b)" in res.reason and "not significant" in res.reason


def _dummies(seeds):
    codes = pd.factorize(pd.Series(seeds))[0]
    return np.column_stack([(codes == c).astype(float) for c in range(codes.max() + 1)])


def test_statistics_equal_statsmodels_and_scipy():
    import statsmodels.api as sm
    import statsmodels.formula.api as smf

    df = frame(7, slope=1.0, effect=0.005, rng=np.random.default_rng(5))
    res = h1_test(df, n_boot=300)
    a, b = res.table.iloc[0], res.table.iloc[1]
    seeds, D = df["seed"].to_numpy(), _dummies(df["seed"])
    lb = np.log2(df["train.batch_size"].to_numpy(float))
    lam, err = df["probe.lambda_max"].to_numpy(), df["test_error"].to_numpy()
    tl = df["final.train_loss"].to_numpy()
    # (a): OLS with seed dummies, cluster-robust by seed, t on G - 1 df
    fa = sm.OLS(lam, np.column_stack([lb, D])).fit(cov_type="cluster",
                                                   cov_kwds={"groups": seeds}, use_t=True)
    assert a["effect"] == pytest.approx(fa.params[0]) and a["se"] == pytest.approx(fa.bse[0])
    assert a["t"] == pytest.approx(fa.tvalues[0]) and a["p"] == pytest.approx(fa.pvalues[0])
    assert a["df"] == 6
    tau = stats.kendalltau(df["train.batch_size"], lam)
    assert a["corr"] == pytest.approx(tau.statistic) and a["corr_p"] == pytest.approx(tau.pvalue)
    # (b): test error on standardized λmax and train loss, seed dummies, clustered by seed
    z = (lam - lam.mean()) / lam.std(ddof=1)
    fb = sm.OLS(err, np.column_stack([z, tl, D])).fit(cov_type="cluster",
                                                      cov_kwds={"groups": seeds}, use_t=True)
    assert b["effect"] == pytest.approx(fb.params[0]) and b["se"] == pytest.approx(fb.bse[0])
    assert b["p"] == pytest.approx(fb.pvalues[0])
    design = np.column_stack([np.ones(len(tl)), tl])
    rx = lam - design @ np.linalg.lstsq(design, lam, rcond=None)[0]
    ry = err - design @ np.linalg.lstsq(design, err, rcond=None)[0]
    r = stats.pearsonr(rx, ry).statistic
    t = r * math.sqrt((len(lam) - 3) / (1 - r * r))
    assert b["corr"] == pytest.approx(r) and b["corr_p"] == pytest.approx(2 * stats.t.sf(abs(t),
                                                                                    len(lam) - 3))
    # Holm over the two steps
    lo, hi = sorted([a["p"], b["p"]])
    assert sorted(res.table["p_holm"]) == pytest.approx([min(1, 2 * lo), min(1, max(2 * lo, hi))])
    # mixed model: the slope per doubling with a seed intercept
    mixed = smf.mixedlm("y ~ x", pd.DataFrame({"y": lam, "x": lb}), groups=seeds).fit(reml=True)
    assert a["mixed_effect"] == pytest.approx(mixed.params["x"], rel=1e-3)
    # the bootstrap CI brackets the estimate; it resamples seeds
    assert a["ci_low"] < a["effect"] < a["ci_high"] and b["ci_low"] < b["effect"] < b["ci_high"]
    # the appendix refits with statsmodels and prints the same coefficient
    titles = [t for t, _ in res.summaries()]
    assert len(titles) == 4 and all("OLS Regression Results" in s for _, s in res.summaries()[:2])


def test_fe_ols_one_seed_is_hc1_and_bootstrap_is_stacked_refit():
    import statsmodels.api as sm

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=12), rng.normal(size=12)
    fit = fe_ols(y, x[:, None], np.zeros(12))
    ref = sm.OLS(y, sm.add_constant(x)).fit(cov_type="HC1", use_t=True)
    assert fit.cov == "HC1" and fit.coef[0] == pytest.approx(ref.params[1])
    assert fit.se[0] == pytest.approx(ref.bse[1]) and fit.p[0] == pytest.approx(ref.pvalues[1])
    boot = boot_coef(y, x[:, None], np.zeros(12), 0, 200, seed=0)  # one seed: resample jobs
    assert np.isfinite(boot).all() and np.percentile(boot, 2.5) < fit.coef[0] < np.percentile(
        boot, 97.5)
    one = h1_test(frame(1), n_boot=100, mixed=False)  # one seed end to end: HC1, finite CI
    assert (one.table["test"].str.contains("HC1")).all() and one.table["ci_low"].notna().all()
    # one bootstrap draw equals the fixed-effects fit on the stacked resample
    seeds = np.repeat(np.arange(4), 3)
    boot = boot_coef(y, x[:, None], seeds, 0, 1, seed=7)
    drawn = np.random.default_rng(7).integers(0, 4, size=(1, 4))[0]
    idx = np.concatenate([np.flatnonzero(seeds == g) for g in drawn])
    copies = np.concatenate([np.full(3, k) for k in range(4)])  # each copy its own seed
    D = _dummies(copies)
    stacked = np.linalg.lstsq(np.column_stack([x[idx], D]), y[idx], rcond=None)[0][0]
    assert boot[0] == pytest.approx(stacked)


def test_off_target_jobs_are_listed_and_left_out():
    df = frame(8)
    off = df.index[(df["train.batch_size"] == 256) & (df["seed"] < 3)]
    df.loc[off, "stop_reason"] = "max_epochs"
    df.loc[off, "final.train_loss"] = 0.3
    df.loc[off, "epochs_completed"] = 400
    df.loc[0, "probe.lambda_max"] = np.nan  # λmax missing: dropped from both steps
    df.loc[1, "stop_reason"] = None  # no stop reason, but train loss below the target: reached
    res = h1_test(df, n_boot=50, mixed=False)
    assert res.n_off_target == 3 and res.n_reached == 37
    assert sorted(res.off_target["job"]) == sorted(df.loc[off, "job"])
    assert res.off_target["reason"].str.contains("max_epochs").all()
    assert res.off_target["reason"].str.contains("after 400 epochs").all()
    assert not res.data.loc[res.data["job"].isin(df.loc[off, "job"]), ["in_a", "in_b"]].any().any()
    assert res.table["n"].tolist() == [36, 36]
    assert set(res.dropped["step"]) == {"a", "b"} and (res.dropped["job"] == df.loc[0, "job"]).all()
    kept = h1_test(df, n_boot=50, mixed=False, off_target_in_a=True)
    assert kept.table["n"].tolist() == [39, 36]
    assert any("did not reach" in n for n in res.notes) and "3 did not" in res.summary()


def test_without_a_target_every_job_counts_and_a_note_says_so():
    df = frame(6).drop(columns=["train.target_train_loss"]).assign(stop_reason="max_epochs")
    res = h1_test(df, n_boot=50, mixed=False)
    assert res.n_reached == 30 and res.target_loss is None
    assert any("no target train loss" in n for n in res.notes)


def test_not_included_jobs_are_not_analysed():
    df = frame(6)
    df.loc[:2, "included"] = False
    res = h1_test(df, n_boot=50, mixed=False)
    assert res.n_jobs == 27 and any("not included" in n for n in res.notes)


@pytest.mark.parametrize("change, words", [
    (lambda d: d.drop(columns="probe.lambda_max"), "probe.lambda_max"),
    (lambda d: d.drop(columns="train.batch_size"), "train.batch_size"),
    (lambda d: d.drop(columns="final.train_loss"), "final.train_loss"),
    (lambda d: d.drop(columns="test_error"), "test_error"),
    (lambda d: d.assign(**{"train.batch_size": 64}), "does not vary"),
    (lambda d: d.assign(**{"train.batch_size": 0}), "positive"),
    (lambda d: d.assign(included=False), "no included"),
    (lambda d: d.iloc[:0], "empty"),
])
def test_bad_input_raises_one_line(change, words):
    with pytest.raises(LandscopeError) as err:
        h1_test(change(frame(3)), n_boot=10, mixed=False)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_test_error_from_test_accuracy():
    df = frame(6)
    df["final.test_acc"] = 1 - df.pop("test_error")
    res = h1_test(df, n_boot=50, mixed=False)
    assert res.verdict == SUPPORTED


def _ctx(tmp_path, df, swept=("train.batch_size",)):
    from landscope.analysis.collect import Collection
    from landscope.analysis.doc import Doc
    from landscope.analysis.report import ReportContext

    coll = Collection(jobs=df, excluded=pd.DataFrame(columns=["sweep", "job", "status", "reason",
                                                              "path"]),
                      counts={"completed": len(df)}, swept=list(swept), sources=["synthetic"])
    return ReportContext(Doc("test"), coll, [], tmp_path)


def test_section_writes_table_figure_and_appendix(tmp_path):
    df = frame(6)
    df.loc[df.index[-1], ["stop_reason", "final.train_loss"]] = ["max_epochs", 0.4]
    ctx = _ctx(tmp_path, df)
    assert applies(ctx) and not applies(_ctx(tmp_path, df, swept=["model.width"]))
    section(ctx)
    md = ctx.doc.render_md()
    assert "## H1: smaller batches find flatter minima" in md and "Verdict: supported" in md
    assert "| step | regression |" in md and "p (Holm)" in md and "per doubling" in md
    assert "did not reach the target train loss" in md and df["job"].iloc[-1] in md
    assert "![H1: λmax against batch size" in md and "figures/h1_batch.png" in md
    png = tmp_path / "figures" / "h1_batch.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(tmp_path / "h1.csv")
    assert csv["step"].tolist() == ["a", "b"] and "p_holm" in csv and "verdict" in csv
    assert "data:image/png;base64," in ctx.doc.render_html("t")
    assert len(ctx.appendix) == 4 and "OLS Regression Results" in ctx.appendix[0][1]


def test_section_without_lambda_max_says_why(tmp_path):
    ctx = _ctx(tmp_path, frame(3).drop(columns="probe.lambda_max"))
    section(ctx)
    assert "H1 not tested" in ctx.doc.render_md() and not (tmp_path / "h1.csv").exists()


def test_preset_composes_with_fixed_lr_and_a_target(compose):
    cfg = compose(["experiment=h1_batch"])
    assert cfg.name == "h1_batch" and cfg.dataset.name == "mnist1d"
    assert cfg.probe.name == "standard" and cfg.optimizer.name == "sgd"
    assert cfg.train.target_train_loss and cfg.train.target_train_loss > 0
    assert cfg.train.epochs >= 200 and not cfg.train.full_batch
    from conftest import CONF
    params = yaml.safe_load((CONF / "experiment" / "h1_batch.yaml").read_text())["hydra"][
        "sweeper"]["params"]
    sizes = [int(v) for v in str(params["train.batch_size"]).split(",")]
    assert len(sizes) >= 4 and max(sizes) / min(sizes) >= 8
    assert len(str(params["seed"]).split(",")) >= 6
    assert not any(k.startswith("optimizer") for k in params)  # lr held fixed
