"""H1 as a mediation claim (log2 batch -> λmax -> test error at equal train loss): verdicts on
synthetic jobs tables (chain, direct effect only, null, reversed signs), the coefficients against
statsmodels and a hand CR2, the seed bootstrap of a·b′, the lr-varied design, jobs off the target
train loss, the report section, and the presets (composed, not trained)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from landscope.analysis.hypotheses.h1 import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    TESTS,
    applies,
    h1_test,
    section,
)
from landscope.analysis.hypotheses.mediation import boot_fe, boot_weights, expansion, mediation
from landscope.errors import LandscopeError

SIZES = (16, 32, 64, 128, 256)


def frame(n_seeds=8, slope=2.0, effect=0.01, direct=0.0, rng=None, sizes=SIZES, lrs=(0.1,),
          d_lr=2.0):
    """Jobs batch size × [lr ×] seed. λmax = 5 + slope·log2(b/16) − d_lr·log2(lr/0.1) + seed
    effect N(0,1) + noise N(0,1); train loss ~ U(0.09, 0.1) (every job at the target 0.1);
    test error = 0.3 + effect·(λmax − 9) + direct·log2(b/16) + seed effect N(0, 0.01)
    + noise N(0, 0.01) + 0.5·(train loss − 0.095)."""
    rng = rng or np.random.default_rng(0)
    rows = []
    for seed in range(n_seeds):
        u, v = rng.normal(0, 1), rng.normal(0, 0.01)
        for b in sizes:
            for lr in lrs:
                lam = 5 + slope * np.log2(b / 16) - d_lr * np.log2(lr / 0.1) + u + rng.normal()
                tl = rng.uniform(0.09, 0.1)
                err = (0.3 + effect * (lam - 9) + direct * np.log2(b / 16) + v
                       + rng.normal(0, 0.01) + 0.5 * (tl - 0.095))
                rows.append({"job": f"optimizer.lr={lr},seed={seed},train.batch_size={b}",
                             "included": True, "status": "completed", "seed": seed,
                             "train.batch_size": b, "optimizer.lr": lr,
                             "train.target_train_loss": 0.1, "stop_reason": "target_train_loss",
                             "epochs_completed": 30, "probe.lambda_max": lam,
                             "final.train_loss": tl, "test_error": err})
    return pd.DataFrame(rows)


def row(res, step):
    return res.table.set_index("step").loc[step]


def test_true_chain_is_supported_with_its_evidence():
    res = h1_test(frame(), n_boot=500)
    assert res.verdict == SUPPORTED
    steps = ["a", "b′", "c′ (direct)", "a·b′ (indirect)", "c (total)"]
    assert list(res.table["step"]) == steps
    a, ind, direct = row(res, "a"), row(res, "a·b′ (indirect)"), row(res, "c′ (direct)")
    assert 1.5 < a["effect"] < 2.5 and a["p"] < 0.01 and a["n"] == 40 and a["n_seeds"] == 8
    assert 0 < ind["ci_low"] < ind["effect"] < ind["ci_high"]
    assert direct["ci_low"] < 0 < direct["ci_high"]  # no direct effect planted
    # every verdict carries its evidence: estimate, interval, units, test and calibration
    for words in ("indirect a·b′ =", "seed bootstrap", "8 seeds, 40 jobs", "direct c′ ="):
        assert words in res.reason
    assert "calibrat" in res.reason and res.table["calibration"].iloc[0]
    assert "batch size only" in res.design and res.fit.n_seeds == 8
    assert "SUPPORTED" in res.summary() and "per doubling" in res.summary()


def test_direct_effect_only_is_not_supported():
    # batch size raises λmax and test error directly; λmax has no effect on test error: the
    # old two-step test said "supported" here (issue #16)
    res = h1_test(frame(effect=0.0, direct=0.03, rng=np.random.default_rng(2)), n_boot=500)
    assert res.verdict == NOT_SUPPORTED and "direct effect only" in res.reason
    assert row(res, "c′ (direct)")["ci_low"] > 0
    ind = row(res, "a·b′ (indirect)")
    assert ind["ci_low"] < 0 < ind["ci_high"]


def test_null_and_no_mediator_effect_are_inconclusive():
    res = h1_test(frame(slope=0.0, effect=0.0, rng=np.random.default_rng(4)), n_boot=300)
    assert res.verdict == INCONCLUSIVE
    res = h1_test(frame(effect=0.0, rng=np.random.default_rng(4)), n_boot=300)
    assert res.verdict == INCONCLUSIVE and "indirect interval includes 0" in res.reason


def test_opposite_signs_are_not_supported():
    res = h1_test(frame(effect=-0.01), n_boot=300)
    assert res.verdict == NOT_SUPPORTED
    assert "indirect effect through λmax is negative" in res.reason
    res = h1_test(frame(slope=-2.0, effect=0.0), n_boot=300)
    assert res.verdict == NOT_SUPPORTED and "falls with the batch size" in res.reason


def _dummies(seeds):
    codes = pd.factorize(pd.Series(seeds))[0]
    return np.column_stack([(codes == c).astype(float) for c in range(codes.max() + 1)])


def _cr2_se(y, X, groups, j):
    """CR2 by hand: (X'X)⁻¹ Σ_g X_g' A_g e_g e_g' A_g X_g (X'X)⁻¹, A_g = (I − H_gg)^(−½)
    (pseudo-inverse square root: the seed dummies make I − H_gg singular)."""
    M = np.linalg.inv(X.T @ X)
    e = y - X @ (M @ X.T @ y)
    H = X @ M @ X.T
    meat = np.zeros((X.shape[1], X.shape[1]))
    for g in np.unique(groups):
        i = np.flatnonzero(groups == g)
        vals, vecs = np.linalg.eigh(np.eye(len(i)) - H[np.ix_(i, i)])
        inv = np.where(vals > 1e-10, 1 / np.sqrt(np.clip(vals, 1e-300, None)), 0.0)
        s = X[i].T @ (vecs * inv) @ vecs.T @ e[i]
        meat += np.outer(s, s)
    return math.sqrt((M @ meat @ M)[j, j])


def test_coefficients_equal_statsmodels_and_cr2_by_hand():
    import statsmodels.api as sm

    df = frame(7, slope=1.0, effect=0.005, direct=0.004, rng=np.random.default_rng(5))
    res = h1_test(df, n_boot=300)
    seeds, D = df["seed"].to_numpy(), _dummies(df["seed"])
    lb = np.log2(df["train.batch_size"].to_numpy(float))
    lam, err = df["probe.lambda_max"].to_numpy(), df["test_error"].to_numpy()
    tl = df["final.train_loss"].to_numpy()
    Xa, Xb, Xc = (np.column_stack([*cols, D]) for cols in ([lb], [lam, lb, tl], [lb, tl]))
    fa, fb, fc = sm.OLS(lam, Xa).fit(), sm.OLS(err, Xb).fit(), sm.OLS(err, Xc).fit()
    assert row(res, "a")["effect"] == pytest.approx(fa.params[0])
    assert row(res, "b′")["effect"] == pytest.approx(fb.params[0])
    assert row(res, "c′ (direct)")["effect"] == pytest.approx(fb.params[1])
    assert row(res, "c (total)")["effect"] == pytest.approx(fc.params[0])
    assert row(res, "a·b′ (indirect)")["effect"] == pytest.approx(fa.params[0] * fb.params[0])
    assert row(res, "a")["se"] == pytest.approx(_cr2_se(lam, Xa, seeds, 0))
    assert row(res, "b′")["se"] == pytest.approx(_cr2_se(err, Xb, seeds, 0))
    assert row(res, "c′ (direct)")["se"] == pytest.approx(_cr2_se(err, Xb, seeds, 1))
    a = row(res, "a")
    assert 0 < a["df"] <= 6 and a["ci_low"] < a["effect"] < a["ci_high"]
    # with the same covariates in both equations, total = direct + indirect (OLS identity)
    fit = mediation(lb, lam, err, seeds, w_m=tl, w_y=tl, n_boot=50)
    assert fit.total.estimate == pytest.approx(fit.direct.estimate + fit.indirect.estimate)
    titles = [t for t, _ in res.summaries()]
    assert len(titles) == 2 and "CR2" in res.summaries()[1][1]


def test_bootstrap_refits_both_equations_on_the_stacked_resample_and_widens():
    rng = np.random.default_rng(3)
    seeds = np.repeat(np.arange(5), 4)
    x = np.tile(np.arange(4.0), 5)
    m = 2 * x + rng.normal(size=20)
    y = 0.5 * m + rng.normal(size=20)
    w = boot_weights(pd.factorize(seeds)[0], 1, seed=7)
    drawn = np.random.default_rng(7).integers(0, 5, size=(1, 5))[0]
    idx = np.concatenate([np.flatnonzero(seeds == g) for g in drawn])
    D = _dummies(np.repeat(np.arange(5), 4))  # each drawn copy is its own seed
    a = np.linalg.lstsq(np.column_stack([x[idx], D]), m[idx], rcond=None)[0][0]
    b = np.linalg.lstsq(np.column_stack([m[idx], x[idx], D]), y[idx], rcond=None)[0][0]
    codes = pd.factorize(seeds)[0]
    assert boot_fe(m, x[:, None], codes, w)[0, 0] == pytest.approx(a)
    assert boot_fe(y, np.column_stack([m, x]), codes, w)[0, 0] == pytest.approx(b)
    plain = mediation(x, m, y, seeds, n_boot=400, expand=False)
    wide = mediation(x, m, y, seeds, n_boot=400)
    f = expansion(5)
    assert f == pytest.approx(math.sqrt(5 / 4) * 2.7764451 / 1.9599640, rel=1e-6)
    est = wide.indirect.estimate
    assert wide.indirect.ci_low - est == pytest.approx(f * (plain.indirect.ci_low - est))
    assert wide.indirect.ci_high - est == pytest.approx(f * (plain.indirect.ci_high - est))
    assert np.percentile(plain.draws, 2.5) == pytest.approx(plain.indirect.ci_low)


def test_lr_varied_design_identifies_b_and_reports_the_sensitivity_row():
    df = frame(6, effect=0.0, direct=0.03, sizes=(16, 64, 256), lrs=(0.05, 0.1, 0.2),
               rng=np.random.default_rng(8))
    res = h1_test(df, n_boot=300)
    assert "optimizer.lr ∈ {0.05, 0.1, 0.2}" in res.design and res.verdict == NOT_SUPPORTED
    assert "log2(optimizer.lr)" in row(res, "a")["relation"]
    assert res.table["step"].iloc[-1] == "b′ | log2(optimizer.lr)"
    chain = h1_test(frame(6, sizes=(16, 64, 256), lrs=(0.05, 0.1, 0.2)), n_boot=300)
    assert chain.verdict == SUPPORTED and row(chain, "b′")["p"] < 1e-4


def test_too_few_seeds_is_inconclusive():
    res = h1_test(frame(2), n_boot=50)
    assert res.verdict == INCONCLUSIVE and "at least 3 seeds" in res.reason and res.fit is None


def test_off_target_jobs_are_listed_and_left_out():
    df = frame(8)
    off = df.index[(df["train.batch_size"] == 256) & (df["seed"] < 3)]
    df.loc[off, "stop_reason"] = "max_epochs"
    df.loc[off, "final.train_loss"] = 0.3
    df.loc[off, "epochs_completed"] = 400
    df.loc[0, "probe.lambda_max"] = np.nan  # λmax missing: dropped
    df.loc[1, "stop_reason"] = None  # no stop reason, but train loss below the target: reached
    res = h1_test(df, n_boot=50)
    assert res.n_off_target == 3 and res.n_reached == 37
    assert sorted(res.off_target["job"]) == sorted(df.loc[off, "job"])
    assert res.off_target["reason"].str.contains("max_epochs").all()
    assert res.off_target["reason"].str.contains("after 400 epochs").all()
    assert not res.data.loc[res.data["job"].isin(df.loc[off, "job"]), "used"].any()
    assert set(res.table["n"]) == {36}
    assert list(res.dropped["job"]) == [df.loc[0, "job"]]
    assert any("did not reach" in n for n in res.notes) and "3 did not" in res.summary()


def test_without_a_target_every_job_counts_and_a_note_says_so():
    df = frame(6).drop(columns=["train.target_train_loss"]).assign(stop_reason="max_epochs")
    res = h1_test(df, n_boot=50)
    assert res.n_reached == 30 and res.target_loss is None
    assert any("no target train loss" in n for n in res.notes)


def test_not_included_jobs_are_not_analysed():
    df = frame(6)
    df.loc[:2, "included"] = False
    res = h1_test(df, n_boot=50)
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
        h1_test(change(frame(3)), n_boot=10)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_test_error_from_test_accuracy():
    df = frame(6)
    df["final.test_acc"] = 1 - df.pop("test_error")
    assert h1_test(df, n_boot=200).verdict == SUPPORTED


def _ctx(tmp_path, df, swept=("train.batch_size",)):
    from landscope.analysis.collect import Collection
    from landscope.analysis.doc import Doc
    from landscope.analysis.report import ReportContext

    coll = Collection(jobs=df, excluded=pd.DataFrame(columns=["sweep", "job", "status", "reason",
                                                              "path"]),
                      counts={"completed": len(df)}, swept=list(swept), sources=["synthetic"])
    return ReportContext(Doc("test"), coll, [], tmp_path)


def test_section_writes_design_effects_table_figure_and_appendix(tmp_path):
    df = frame(6)
    df.loc[df.index[-1], ["stop_reason", "final.train_loss"]] = ["max_epochs", 0.4]
    ctx = _ctx(tmp_path, df)
    assert applies(ctx) and not applies(_ctx(tmp_path, df, swept=["model.width"]))
    section(ctx, n_boot=300)
    md = ctx.doc.render_md()
    assert "## H1: smaller batches find flatter minima" in md and "Verdict: supported" in md
    assert "Design: batch size only" in md and "a·b′ (indirect)" in md and "c′ (direct)" in md
    assert "6 seeds" in md and "calibration" in md
    assert "did not reach the target train loss" in md and df["job"].iloc[-1] in md
    assert "figures/h1_batch.png" in md
    png = tmp_path / "figures" / "h1_batch.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(tmp_path / "h1.csv")
    assert csv["step"].iloc[3] == "a·b′ (indirect)" and "ci_low" in csv and "calibration" in csv
    assert len(ctx.appendix) == 2 and "CR2" in ctx.appendix[0][1]


def test_section_without_lambda_max_says_why(tmp_path):
    ctx = _ctx(tmp_path, frame(3).drop(columns="probe.lambda_max"))
    section(ctx)
    assert "H1 not tested" in ctx.doc.render_md() and not (tmp_path / "h1.csv").exists()


def test_calibration_test_names_are_the_suites():
    from landscope.analysis.calibration.h1 import scenarios

    names = {t for sc in scenarios() for t in sc.expect}
    assert set(TESTS.values()) <= names


def _params(name):
    from conftest import CONF
    return yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())["hydra"][
        "sweeper"]["params"]


def test_presets_compose_with_a_target(compose):
    for name in ("h1_batch", "h1_mediation"):
        cfg = compose([f"experiment={name}"])
        assert cfg.name == name and cfg.dataset.name == "mnist1d"
        assert cfg.probe.name == "standard" and cfg.optimizer.name == "sgd"
        assert cfg.train.target_train_loss and cfg.train.target_train_loss > 0
        assert cfg.train.epochs >= 200 and not cfg.train.full_batch
    params = _params("h1_batch")
    sizes = [int(v) for v in str(params["train.batch_size"]).split(",")]
    assert len(sizes) >= 4 and max(sizes) / min(sizes) >= 8
    assert len(str(params["seed"]).split(",")) >= 6
    assert not any(k.startswith("optimizer") for k in params)  # lr held fixed
    params = _params("h1_mediation")  # λmax varied within each batch size by the lr
    assert len(str(params["optimizer.lr"]).split(",")) >= 3
    assert len(str(params["train.batch_size"]).split(",")) >= 3
    assert len(str(params["seed"]).split(",")) >= 6
