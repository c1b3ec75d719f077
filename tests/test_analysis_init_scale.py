"""The initialization-scale study (landscope.analysis.init_scale) on simulated job directories:
exact tables, a planted trend found and a null left alone, the report section, its calibration
scenarios; and the issue #20 sweep presets (composition and the documented sweep, no training)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from conftest import CONF
from landscope.analysis import init_scale as st
from landscope.analysis.calibration import all_scenarios, calibrate, completed, write_job
from landscope.analysis.calibration import init_scale as calib
from landscope.analysis.collect import collect
from landscope.analysis.report import SECTIONS, build_report

SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def _sweep(root, lam, err, ood=None, seeds=4):
    """Jobs at SCALES × seeds with λmax = lam(L, s), test error = err(L, s) (L = log2 scale),
    trace = 100 + s·L, and optionally the OOD error ood(L, s)."""
    for s in range(seeds):
        for scale in SCALES:
            L = math.log2(scale)
            final = {"train_loss": 0.1, "train_acc": 1.0, "test_acc": 1 - err(L, s),
                     "generalization_gap": err(L, s), "epoch": 5}
            if ood is not None:
                final["ood_test_acc"] = 1 - ood(L, s)
            cfg = {"seed": s, "name": "init_scale", "model": {"name": "mlp", "init_scale": scale}}
            write_job(root, f"model.init_scale={scale:g},seed={s}", cfg,
                      completed(s, final, {"lambda_max": lam(L, s), "trace": 100 + s * L}))
    return root


def _jobs(root):
    return st.study_jobs(collect(root).included)


def test_tables_exact_on_a_planted_trend(tmp_path):
    # λmax = 10 + s − (2 + 0.1 s)·L: per-seed slopes −2, −2.1, −2.2, −2.3; error U-shaped
    # with per-seed curvatures 0.01, 0.011, 0.012, 0.013
    jobs = _jobs(_sweep(tmp_path, lambda L, s: 10 + s - (2 + 0.1 * s) * L,
                        lambda L, s: 0.3 + (0.01 + 0.001 * s) * L * L + 0.001 * s))
    table = st.scale_table(jobs)
    assert table["init_scale"].tolist() == list(SCALES) and (table["n"] == 4).all()
    lam = [10 + s - (2 + 0.1 * s) * math.log2(0.25) for s in range(4)]
    assert table["probe.lambda_max_mean"].iloc[0] == pytest.approx(np.mean(lam))
    assert table["probe.lambda_max_sd"].iloc[0] == pytest.approx(np.std(lam, ddof=1))
    assert "ood_test_error" not in table and "final.train_loss_mean" in table
    trend = st.trend_table(jobs).set_index("measure")
    assert list(trend.index) == ["probe.lambda_max", "probe.trace", "test_error"]
    row = trend.loc["probe.lambda_max"]
    slopes = np.array([-2.0, -2.1, -2.2, -2.3])
    ref = stats.ttest_1samp(slopes, 0.0)
    assert row["slope"] == pytest.approx(slopes.mean())
    assert row["slope_p"] == pytest.approx(ref.pvalue) and row["slope_df"] == 3
    assert row["slope_se"] == pytest.approx(slopes.std(ddof=1) / 2)
    assert (row["tau"], row["tau_p"], row["n_scales"]) == (pytest.approx(-1.0),
                                                            pytest.approx(2 / 120), 5)
    assert trend["slope_p_holm"].tolist() == pytest.approx(list(_holm(trend["slope_p"].to_numpy())))
    # the U-shaped error has no linear trend (slope 0 in every seed) but a curvature
    err = trend.loc["test_error"]
    assert err["slope"] == pytest.approx(0.0, abs=1e-12)
    curves = np.array([0.01, 0.011, 0.012, 0.013])
    assert err["curve"] == pytest.approx(curves.mean())
    assert err["curve_p"] == pytest.approx(stats.ttest_1samp(curves, 0.0).pvalue)
    assert row["curve"] == pytest.approx(0.0, abs=1e-9)  # λmax is linear in L
    assoc = st.association_table(jobs)
    assert assoc[["sharpness", "error"]].values.tolist() == [["λmax", "test error"],
                                                             ["Hessian trace", "test error"]]


def _holm(p):
    order = np.argsort(p)
    adj = np.maximum.accumulate([(len(p) - i) * p[j] for i, j in enumerate(order)])
    out = np.empty(len(p))
    out[order] = np.minimum(adj, 1.0)
    return out


def test_null_sweep_is_not_called_a_trend(tmp_path):
    rng = np.random.default_rng(3)
    noise = {(L, s): rng.normal() for L in (-2, -1, 0, 1, 2) for s in range(4)}
    jobs = _jobs(_sweep(tmp_path, lambda L, s: 10 + s + noise[(L, s)],
                        lambda L, s: 0.3 + 0.01 * noise[(-L, s)]))
    trend = st.trend_table(jobs).set_index("measure")
    lam = trend.loc["probe.lambda_max"]
    assert lam["slope_p"] > 0.05 and lam["tau_p"] > 0.05
    # per-seed slopes by hand: OLS of λmax on L within each seed
    slopes = [np.polyfit([-2, -1, 0, 1, 2], [10 + s + noise[(L, s)] for L in (-2, -1, 0, 1, 2)],
                         1)[0] for s in range(4)]
    assert lam["slope"] == pytest.approx(np.mean(slopes))
    assert lam["slope_p"] == pytest.approx(stats.ttest_1samp(slopes, 0.0).pvalue)


def test_ood_error_gets_a_trend_row_and_an_association(tmp_path):
    jobs = _jobs(_sweep(tmp_path, lambda L, s: 10 - 2 * L + 0.1 * s * s * L,
                        lambda L, s: 0.3, ood=lambda L, s: 0.5 + 0.02 * L + 0.001 * s * L))
    trend = st.trend_table(jobs).set_index("measure")
    assert trend.loc["ood_test_error", "slope"] == pytest.approx(0.02 + 0.0015)
    assert trend.loc["ood_test_error", "tau"] == pytest.approx(1.0)
    assoc = st.association_table(jobs)
    row = assoc[(assoc["sharpness"] == "λmax") & (assoc["error"] == "OOD error")].iloc[0]
    assert row["tau"] == pytest.approx(-1.0) and row["p"] == pytest.approx(2 / 120)
    assert "ood_test_error_mean" in st.scale_table(jobs)


def test_a_seed_with_fewer_than_three_scales_is_left_out_of_the_slope(tmp_path):
    root = _sweep(tmp_path, lambda L, s: 10 - L, lambda L, s: 0.3 + 0.01 * s)
    for scale in (0.25, 0.5, 1.0):  # seed 3 keeps scales 2 and 4 only
        (root / f"model.init_scale={scale:g},seed=3" / "result.json").unlink()
    row = st.trend_table(_jobs(root)).set_index("measure").loc["probe.lambda_max"]
    assert row["n_seeds"] == 3 and row["n"] == 17 and row["slope"] == pytest.approx(-1.0)


def test_report_section_on_a_simulated_sweep(tmp_path):
    sweep = tmp_path / "init_scale"
    sweep.mkdir()
    calib.simulate(np.random.default_rng(0), sweep, **calib.PLANTED)
    out = tmp_path / "r"
    build_report([sweep], out)
    md = (out / "report.md").read_text()
    assert "## Initialization scale: sharpness and generalization" in md
    assert "20 jobs at 5 initialization scales" in md and "](figures/init_scale.png)" in md
    assert (out / "figures" / "init_scale.png").stat().st_size > 1000
    trend = pd.read_csv(out / "init_scale_trend.csv")
    assert set(trend["measure"]) == {"probe.lambda_max", "probe.trace", "test_error"}
    assert len(pd.read_csv(out / "init_scale.csv")) == 5
    assert len(pd.read_csv(out / "init_scale_association.csv")) == 2


def test_section_applies_only_when_the_scale_is_swept(tmp_path):
    section = next(s for s in SECTIONS if s.write is st.section)
    assert section.calibration == "init_scale"
    cfg = {"seed": 0, "model": {"name": "mlp", "init_scale": 2.0}, "optimizer": {"lr": 0.1}}
    for s in range(3):
        for lr in (0.1, 0.2):
            write_job(tmp_path / "x", f"lr={lr},seed={s}", {**cfg, "seed": s,
                                                             "optimizer": {"lr": lr}},
                      completed(s, {"test_acc": 0.5, "train_acc": 1.0}, {"lambda_max": 1.0}))
    coll = collect(tmp_path / "x")
    assert not st.applies(type("C", (), {"coll": coll})())


# --------------------------------------------------------------------------- calibration
def test_calibration_scenarios_and_a_small_run(tmp_path):
    sc = {s.name: s for s in calib.scenarios()}
    assert set(sc) == {"init_null", "init_null_level_effects", "init_planted", "init_planted_u"}
    assert {s.name for s in all_scenarios(("init_scale",))} == set(sc)
    assert all(set(s.expect) == set(st.TESTS.values()) for s in sc.values())
    assert sc["init_null_level_effects"].expect[st.TESTS["slope"]] == "stress"
    assert sc["init_null_level_effects"].expect[st.TESTS["tau_lambda"]] == "null"
    assert sc["init_planted"].expect[st.TESTS["curve"]] == "null"
    assert sc["init_planted_u"].expect == {**dict.fromkeys(st.TESTS.values(), "null"),
                                           st.TESTS["curve"]: "power"}
    table = calibrate(list(sc.values()), R=3)
    assert len(table) == 20 and (table["runs"] == 3).all() and (table["failed"] == 0).all()
    assert set(table["hypothesis"]) == {"init_scale"}


def test_calibration_evaluate_counts_direction_under_power(tmp_path):
    # a strong upward λmax trend is a rejection under the null, not power (planted: downward)
    root = _sweep(tmp_path, lambda L, s: 10 + 3 * L + 0.1 * s * L, lambda L, s: 0.3 - 0.01 * L)
    null, power = calib.evaluate(root), calib.evaluate(root, power=True)
    assert null[st.TESTS["slope_lambda"]] and null[st.TESTS["tau_lambda"]]
    assert not power[st.TESTS["slope_lambda"]] and not power[st.TESTS["tau_lambda"]]
    # an inverted U in test error (curvature −0.01 − 0.002 s) is not the planted U
    root = _sweep(tmp_path / "n", lambda L, s: 10.0 + s,
                  lambda L, s: 0.3 - (0.01 + 0.002 * s) * L * L)
    assert calib.evaluate(root)[st.TESTS["curve"]]
    assert not calib.evaluate(root, power="curve")[st.TESTS["curve"]]
    root = _sweep(tmp_path / "u", lambda L, s: 10.0 + s,
                  lambda L, s: 0.3 + (0.01 + 0.002 * s) * L * L)
    assert calib.evaluate(root, power="curve")[st.TESTS["curve"]]


# --------------------------------------------------------------------------- presets
PRESETS = {"learning_rate": ("optimizer.lr", [0.01, 0.03, 0.1, 0.3, 1.0], 4),
           "momentum": ("optimizer.momentum", [0, 0.5, 0.8, 0.9, 0.95], 4),
           "weight_decay": ("optimizer.weight_decay", [0, 0.0001, 0.001, 0.003, 0.01], 4),
           "augmentation": ("augment", ["none", "basic"], 6),
           "init_scale": ("model.init_scale", [0.25, 0.5, 1, 2, 4], 4)}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_sweep_presets_compose_with_every_swept_value(compose, preset):
    from landscope.config import validate

    key, values, seeds = PRESETS[preset]
    spec = yaml.safe_load((CONF / "experiment" / f"{preset}.yaml").read_text())
    params = spec["hydra"]["sweeper"]["params"]
    assert set(params) == {key, "seed"} and "cases" not in spec["hydra"]["sweeper"]
    assert [yaml.safe_load(v) for v in str(params[key]).split(",")] == values
    assert str(params["seed"]).split(",") == [str(s) for s in range(seeds)]
    for v in values:
        cfg = compose([f"experiment={preset}", f"{key}={v}"])
        validate(cfg)
        assert cfg.name == preset and cfg.dataset.name == "mnist1d"
        got = cfg.augment.name if key == "augment" else \
            cfg[key.split(".")[0]][key.split(".")[1]]
        assert got == v
        assert cfg.probe.top_k >= 1 and cfg.probe.trace.enabled
        assert not cfg.probe.sharpness.enabled and cfg.landscape.name == "none"
        assert cfg.train.epochs == 50 and cfg.model.name == "mlp"
        if preset != "augmentation":
            assert cfg.augment.name == "none"
    if preset in ("learning_rate", "momentum", "weight_decay"):
        cfg = compose([f"experiment={preset}"])
        assert cfg.optimizer.name == "sgd"
        assert cfg.optimizer.lr == {"momentum": 0.03}.get(preset, 0.1)
