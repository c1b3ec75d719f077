"""H3 (alignment predicts faster escape): the censored log-normal AFT (against OLS, a closed
form, and simulated parameters), the within-strata permutation score test and its inverted
interval, verdicts, sensitivity fits, power, load_escapes on a fake sweep, the report section
and the h3_sharp preset."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from landscope.analysis.hypotheses import survival as sv
from landscope.analysis.hypotheses.h3 import (
    ALIGNMENT,
    COVARIATE,
    INCONCLUSIVE,
    LEGACY,
    NOT_SUPPORTED,
    SUPPORTED,
    TESTS,
    applies,
    evidence,
    h3_power,
    h3_test,
    load_escapes,
    section,
)
from landscope.errors import LandscopeError

LRS, BATCHES, SEEDS = (0.05, 0.1, 0.2), (4, 16, 64), (0, 1)
WIDTHS = (32, 64, 128)


def frame(per_width=4, b_align=0.0, b_rate=-0.5, rng=None, max_steps=600, job_sd=0.4,
          noise_sd=0.5, width_effect=0.0, widths=WIDTHS):
    """Escape rows: ``per_width`` minima per width; minimum g has energy share
    0.45 + 0.05 e_g and a random effect ~ N(0, job_sd); log T = 3 + b_align e_g + b_rate
    log(η/B / 0.01) + width_effect log(D/1000) + effect + N(0, noise_sd), rounded up to an even
    step, censored at ``max_steps``; κ = D/10 · exp(N(0, 0.15))."""
    rng = rng or np.random.default_rng(0)
    rows = []
    for w in widths:
        dim = 50 * w + 2 * w * w
        for s in range(per_width):
            e = rng.standard_normal()
            effect = rng.normal(0, job_sd)
            share, kappa = 0.45 + 0.05 * e, dim / 10 * math.exp(0.15 * rng.standard_normal())
            for lr in LRS:
                for b in BATCHES:
                    for seed in SEEDS:
                        log_t = (3 + b_align * e + b_rate * math.log(lr / b / 0.01) + effect
                                 + width_effect * math.log(dim / 1000)
                                 + rng.normal(0, noise_sd))
                        t = max(2, 2 * math.ceil(math.exp(log_t) / 2))
                        escaped = t <= max_steps
                        rows.append({"job": f"model.width={w},seed={s}", "seed": seed, "lr": lr,
                                     "batch_size": b, "eta_over_b": lr / b, "escaped": escaped,
                                     "escape_step": float(t) if escaped else math.nan,
                                     "max_steps": max_steps, "n_params": float(dim),
                                     ALIGNMENT: share, LEGACY: kappa})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the AFT
def _censored_sample(rng, n=4000, beta=(1.0, 0.5, -0.3), sigma=0.7, q=0.7):
    x = np.column_stack([np.ones(n), rng.normal(size=n), rng.normal(size=n)])
    y = x @ np.asarray(beta) + sigma * rng.normal(size=n)
    c = np.quantile(y, q)
    return x, np.minimum(y, c), y <= c


def test_aft_without_censoring_is_ols():
    rng = np.random.default_rng(0)
    x, _, _ = _censored_sample(rng, n=200)
    y = x @ [1.0, 0.5, -0.3] + 0.7 * rng.normal(size=200)
    fit = sv.fit_aft(y, x, np.ones(200, bool))
    b = np.linalg.lstsq(x, y, rcond=None)[0]
    assert fit.params == pytest.approx(b, abs=1e-8)
    assert fit.sigma ** 2 == pytest.approx(np.sum((y - x @ b) ** 2) / 200, rel=1e-7)
    assert fit.converged and np.allclose(fit.w, (y - x @ b) / fit.sigma ** 2, atol=1e-8)


def test_aft_closed_form_one_group_and_derivatives():
    # intercept only, every row censored at c except events: the likelihood of a single
    # censored normal sample; check the gradient/Hessian against finite differences and the
    # MLE against a direct scipy maximisation of the closed-form log-likelihood
    rng = np.random.default_rng(1)
    x, y, ev = _censored_sample(rng, n=300)
    theta = np.array([0.9, 0.4, -0.2, math.log(0.8)])
    assert optimize.check_grad(sv._negll, sv._neggrad, theta, y, x, ev) < 1e-4
    num = np.column_stack([(sv._neggrad(theta + h, y, x, ev) - sv._neggrad(theta - h, y, x, ev))
                           / 2e-6 for h in np.eye(4) * 1e-6])
    assert np.abs(num - sv._neghess(theta, y, x, ev)).max() < 1e-3
    y1, ev1 = y[:100], ev[:100]

    def negll(t):
        mu, s = t
        return -(np.sum(stats.norm.logpdf(y1[ev1], mu, math.exp(s)))
                 + np.sum(stats.norm.logsf(y1[~ev1], mu, math.exp(s))))

    ref = optimize.minimize(negll, [0.0, 0.0], method="Nelder-Mead",
                            options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 5000}).x
    fit = sv.fit_aft(y1, np.ones((100, 1)), ev1)
    assert fit.params[0] == pytest.approx(ref[0], abs=1e-5)
    assert math.log(fit.sigma) == pytest.approx(ref[1], abs=1e-5)
    assert fit.loglik == pytest.approx(-negll(ref), abs=1e-6)


def test_aft_recovers_simulated_parameters_under_heavy_censoring():
    x, y, ev = _censored_sample(np.random.default_rng(2), n=6000, q=0.5)
    fit = sv.fit_aft(y, x, ev)
    assert (~ev).mean() == pytest.approx(0.5, abs=0.01)
    assert fit.params == pytest.approx([1.0, 0.5, -0.3], abs=0.04)
    assert fit.sigma == pytest.approx(0.7, abs=0.03)
    naive = np.linalg.lstsq(x, y, rcond=None)[0]  # imputing at the cap attenuates
    assert abs(naive[1]) < abs(fit.params[1]) - 0.1


def test_strata_permutations():
    strata = np.array([0, 0, 1, 1, 1, 2])
    perms, exact = sv.strata_permutations(strata, 100)
    assert exact and len(perms) == 2 * 6 * 1 == sv.n_strata_permutations(strata)
    assert len({tuple(p) for p in perms}) == 12
    for p in perms:
        assert (strata[p] == strata).all()
    perms, exact = sv.strata_permutations(strata, 5, seed=1)
    assert not exact and perms.shape == (5, 6) and all((strata[p] == strata).all()
                                                       for p in perms)
    assert sv.centred_within(np.arange(6.0), strata) == pytest.approx([-.5, .5, -1, 0, 1, 0])


# --------------------------------------------------------------------------- h3_test
def test_planted_effect_is_supported_with_interval_and_covariates():
    res = h3_test(frame(b_align=-1.0, rng=np.random.default_rng(1), width_effect=0.5))
    row = res.row("primary", "alignment")
    assert res.verdict == SUPPORTED and row["p"] < 0.01 and row["coef"] < -0.5
    assert row["ci_low"] < row["coef"] < row["ci_high"] < 0 and row["ratio"] < 1
    assert row["n_jobs"] == 12 and row["n_strata"] == 3 and "within strata" in row["test"]
    assert res.row("primary", "log_eta_over_b")["verdict"] == SUPPORTED
    assert res.row("primary", "log_n_params")["verdict"] == COVARIATE
    assert list(res.table["fit"].unique()) == ["primary", "kappa", "imputed_ols"]
    assert res.row("imputed_ols")["coef"] < 0
    assert "SUPPORTED" in res.summary() and set(res.summaries) == set(TESTS)
    assert res.design["n_perm"] == 999 and res.design["strata"] == 3
    text = evidence(res)
    assert text.startswith("supported: coefficient") and "12 source minima" in text
    assert "not calibrated" in text or "calibration (R=" in text


def test_interval_ends_are_where_the_permutation_test_turns():
    res = h3_test(frame(b_align=-0.5, rng=np.random.default_rng(4)), sensitivity=False)
    row = res.row()
    d = res.data.copy()
    for b, inside in ((row["ci_low"] + 0.02, True), (row["ci_low"] - 0.05, False),
                      (row["ci_high"] - 0.02, True), (row["ci_high"] + 0.05, False)):
        shifted = res.data.copy()
        # shifting log T by −b·z moves the true coefficient by −b: test b = 0 on the result
        codes = pd.factorize(d["job"])[0]
        a_job = d.groupby(codes).first()["alignment"].to_numpy()
        strata = pd.factorize(d.groupby(codes).first()["n_params"])[0]
        sd = np.std(sv.centred_within(a_job, strata))
        z = ((a_job - a_job.mean()) / sd)[codes]
        shifted["time"] = np.exp(d["log_time"] - b * z)
        shifted["escape_step"] = np.where(d["escaped"], shifted["time"], np.nan)
        shifted["max_steps"] = np.exp(d["log_cap"] - b * z)
        shifted["eta_over_b"], shifted[ALIGNMENT] = d["rate"], d["alignment"]
        p = h3_test(shifted, sensitivity=False, interval=False).row()["p"]
        assert (p >= 0.05) == inside, (b, p)


def test_opposite_effect_is_not_supported_and_null_inconclusive():
    res = h3_test(frame(b_align=1.0, rng=np.random.default_rng(2)), sensitivity=False,
                  interval=False)
    assert res.verdict == NOT_SUPPORTED and "against the prediction" in res.reason
    res = h3_test(frame(rng=np.random.default_rng(3)), sensitivity=False, interval=False)
    assert res.verdict in (INCONCLUSIVE, SUPPORTED, NOT_SUPPORTED)
    assert np.isnan(res.row()["ci_low"])  # no interval asked


def test_null_rate_in_a_confounded_world():
    # wider nets escape slower and κ grows with D; alignment irrelevant within a width.
    # The within-width permutation test keeps its level (alpha + 3 binomial sd at R = 100);
    # κ without log D (the old primary's setting) is significant far more often.
    import statsmodels.api as sm

    rng = np.random.default_rng(11)
    hits = naive = 0
    for _ in range(100):
        df = frame(rng=rng, width_effect=0.5, max_steps=10 ** 6)
        res = h3_test(df, sensitivity=False, interval=False, n_perm=199)
        hits += res.row()["p"] < 0.05
        d = res.data
        x = sm.add_constant(np.column_stack([np.log(df[LEGACY]), d["log_eta_over_b"]]))
        fit = sm.OLS(d["log_time"].to_numpy(), x).fit(
            cov_type="cluster", cov_kwds={"groups": pd.factorize(d["job"])[0]})
        naive += fit.pvalues[1] < 0.05
    assert hits / 100 <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 100)
    assert naive / 100 > 0.5


def test_imputed_ols_equals_statsmodels():
    import statsmodels.api as sm

    df = frame(b_align=-0.2, rng=np.random.default_rng(5), max_steps=150)
    res = h3_test(df, interval=False)
    d = res.data
    time = np.where(df["escaped"], df["escape_step"], df["max_steps"]).astype(float)
    assert np.allclose(d["log_time"], np.log(time))
    codes = pd.factorize(df["job"])[0]
    a_job = df.groupby(codes).first()[ALIGNMENT].to_numpy()
    strata = pd.factorize(df.groupby(codes).first()["n_params"])[0]
    z = ((a_job - a_job.mean()) / np.std(sv.centred_within(a_job, strata)))[codes]
    x = sm.add_constant(np.column_stack([z, np.log(df["eta_over_b"]), np.log(df["n_params"])]))
    fit = sm.OLS(np.log(time), x).fit(cov_type="cluster-crv3", cov_kwds={"groups": codes},
                                      use_t=True)
    row = res.row("imputed_ols")
    assert row["coef"] == pytest.approx(fit.params[1], rel=1e-10)
    assert row["p"] == pytest.approx(fit.pvalues[1], rel=1e-10) and row["df"] == 11
    # the primary AFT treats the censored runs as censored
    assert res.row()["n_censored"] == int((~df["escaped"]).sum()) > 0
    cens = d[~d["escaped"]]
    assert (cens["time"] == 150).all()


def test_inconclusive_cases():
    res = h3_test(frame(per_width=1, b_align=-1.0), interval=False)
    assert res.verdict == INCONCLUSIVE and "too few source minima" in res.reason
    df = frame(b_align=-1.0)
    df[ALIGNMENT] = 0.3
    res = h3_test(df, sensitivity=False, interval=False)
    assert res.verdict == INCONCLUSIVE and "fewer than 3 distinct" in res.reason
    all_cens = frame(rng=np.random.default_rng(8), max_steps=1)
    res = h3_test(all_cens, interval=False)
    assert res.verdict == INCONCLUSIVE and "no run escaped" in res.reason
    with pytest.raises(LandscopeError, match="probe.nope"):
        h3_test(frame(), alignment="probe.nope")
    one_rate = frame(b_align=-1.0)
    one_rate["eta_over_b"] = 0.01
    res = h3_test(one_rate, sensitivity=False, interval=False)
    assert any("does not vary" in n for n in res.notes)
    assert "log_eta_over_b" not in set(res.table["term"])
    # every minimum its own width: the residual on log D is permuted across all minima
    lone = frame(per_width=1, widths=tuple(range(16, 16 + 8 * 12, 8)), b_align=-1.0)
    res = h3_test(lone, sensitivity=False, interval=False)
    assert "residual on log D" in res.row()["test"] and res.verdict == SUPPORTED
    # no parameter count: one stratum, log D not in the model
    res = h3_test(frame(b_align=-1.0).drop(columns="n_params"), sensitivity=False,
                  interval=False)
    assert any("log D is not in the model" in n for n in res.notes)
    assert "log_n_params" not in set(res.table["term"]) and res.verdict == SUPPORTED
    other = h3_test(frame(b_align=-0.5), alignment=LEGACY, log_alignment=True,
                    sensitivity=False, interval=False)
    assert other.alignment == f"log {LEGACY}"


def test_power_simulation():
    res = h3_test(frame(rng=np.random.default_rng(6)), sensitivity=False, interval=False)
    small = h3_power(res, effect=-0.05, R=30, n_perm=99)
    large = h3_power(res, effect=-1.5, R=30, n_perm=99)
    assert large["power"] > 0.8 and small["power"] < large["power"]
    assert large["low"] <= large["power"] <= large["high"] and large["R"] == 30
    assert 0.1 < large["tau"] < 1.0 and 0.3 < large["sigma"] < 0.7


# --------------------------------------------------------------------------- files and report
def fake_sweep(root, n_jobs=8, settings=("aaaa",), incomplete=()):
    """SWEEP/<job>/{result.json, escape/<fp>.json} as runner.escape writes them."""
    rng = np.random.default_rng(0)
    for j in range(n_jobs):
        width = (32, 64)[j % 2]
        job = root / f"model.width={width},seed={j}"
        (job / "escape").mkdir(parents=True)
        (job / "result.json").write_text(json.dumps({
            "status": "completed", "seed": j, "n_params": 100 * width,
            "probes": {"noise_alignment_ratio": 100.0 + 10 * j, "noise_alignment": "lowrank",
                       "noise_top_k_energy_share": 0.3 + 0.01 * j if j != 0 or n_jobs > 3
                       else None, "lambda_max": 5.0 + j, "n_params": 100 * width}}))
        for fp in settings:
            runs = []
            for lr in LRS:
                for b in BATCHES:
                    for s in SEEDS:
                        step = int(2 * rng.integers(1, 50))
                        escaped = step < 80
                        runs.append({"lr": lr, "batch_size": b, "requested_batch_size": b,
                                     "seed": s, "escaped": escaped,
                                     "escape_step": step if escaped else None,
                                     "radius_step": None, "diverged": False,
                                     "max_steps": 80, "eval_every": 2, "steps_run": 80,
                                     "loss0": 0.02, "threshold": 0.12})
            (job / "escape" / f"{fp}.json").write_text(json.dumps({
                "runs": runs, "complete": not (j in incomplete and fp == settings[0])}))
    return root


def test_load_escapes_reads_rows_and_probe_scalars(tmp_path):
    sweep = fake_sweep(tmp_path / "s", n_jobs=3, settings=("aaaa", "bbbb"), incomplete=(0,))
    df = load_escapes(sweep)
    # aaaa is complete in 2 jobs, bbbb in 3: the most common complete settings win
    assert set(df["settings"]) == {"bbbb"} and df["job"].nunique() == 3
    assert len(df) == 3 * len(LRS) * len(BATCHES) * len(SEEDS)
    assert any("incomplete" in n for n in df.attrs["notes"])
    assert any("using bbbb" in n for n in df.attrs["notes"])
    row = df.iloc[0]
    assert row["probe.noise_alignment_ratio"] == 100.0 and row["job_seed"] == 0
    assert row["n_params"] == 3200
    assert np.isnan(row["probe.noise_top_k_energy_share"]) and "probe.noise_alignment" not in df
    assert (df["eta_over_b"] == df["lr"] / df["batch_size"]).all()
    cens = df[~df["escaped"]]
    assert cens["escape_step"].isna().all() and (cens["time"] == 80).all()
    assert set(load_escapes(sweep, settings="aaaa")["job"]) == {"model.width=64,seed=1",
                                                                 "model.width=32,seed=2"}
    with pytest.raises(LandscopeError, match="no escape results with settings"):
        load_escapes(sweep, settings="cccc")
    with pytest.raises(LandscopeError, match="python -m runner.escape"):
        load_escapes(tmp_path / "empty")


def test_report_section(tmp_path):
    from types import SimpleNamespace

    from landscope.analysis.doc import Doc

    def ReportContext(doc, coll, paths, out):  # the fields section() reads (report.py's)
        return SimpleNamespace(doc=doc, coll=coll, paths=paths, out=out, appendix=[])

    sweep = fake_sweep(tmp_path / "s", n_jobs=8)
    out = tmp_path / "report"
    ctx = ReportContext(Doc("t"), None, [sweep], out)
    assert applies(ctx)
    assert not applies(ReportContext(Doc("t"), None, [tmp_path / "nothing"], out))
    section(ctx)
    md = ctx.doc.render_md()
    assert "H3: noise–curvature alignment" in md and "Verdict:" in md
    assert "source minima" in md and "permutation" in md and "Power:" in md
    assert "not calibrated" in md or "calibration (R=" in md
    assert "figures/h3_escape.png" in md and (out / "figures" / "h3_escape.png").is_file()
    table = pd.read_csv(out / "h3.csv")
    assert set(table["fit"]) == {"primary", "kappa", "imputed_ols"} and len(table) == 5
    assert [t for t, _ in ctx.appendix] == ["H3 primary fit", "H3 kappa fit",
                                            "H3 imputed_ols fit"]
    assert "censored log-normal AFT" in ctx.appendix[0][1]
    assert "OLS Regression Results" in ctx.appendix[2][1]


def test_preset_composes(compose):
    cfg = compose(["experiment=h3_sharp"])
    assert cfg.name == "h3_sharp" and cfg.train.full_batch and cfg.dataset.train_size == 256
    assert cfg.probe.noise.enabled and cfg.probe.top_k == 5
    assert str(cfg.landscape.name.value) == "none"
    assert cfg.train.target_train_loss == 0.02
