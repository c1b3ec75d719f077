"""The shifted test split in the analysis (issue #20 item 6): collect's OOD columns, the
measures table against the OOD error, and the report's OOD table, on simulated job
directories; a sweep without OOD results gets none of it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from landscope.analysis.calibration import completed, write_job
from landscope.analysis.collect import collect
from landscope.analysis.measures import target_column
from landscope.analysis.measures_table import measures_table
from landscope.analysis.report import build_report

OPTS = ("sgd", "adam", "momentum")


def _sweep(root, ood: bool = True, seeds: int = 6, skip_ood=()):
    """3 optimizers × ``seeds`` seeds. Within a configuration, λmax's noise ranks the OOD error
    and the trace's noise ranks the test error (planted, slope 0.02 per unit, noise sd 1e-6);
    configurations shift both errors. ``skip_ood``: job names written without OOD keys."""
    rng = np.random.default_rng(1)
    for c, opt in enumerate(OPTS):
        for s in range(seeds):
            lam, tr = rng.normal(0, 1, 2)
            err = 0.3 + 0.05 * c + 0.02 * tr + rng.normal(0, 1e-6)
            ood_err = 0.5 + 0.04 * c + 0.02 * lam + rng.normal(0, 1e-6)
            final = {"train_loss": float(rng.uniform(0.01, 0.02)), "train_acc": 1.0,
                     "test_acc": 1 - err, "test_loss": 1.0, "generalization_gap": err,
                     "epoch": 5}
            name = f"optimizer={opt},seed={s}"
            if ood and name not in skip_ood:
                final.update(ood_test_acc=1 - ood_err, ood_test_loss=2.0 + ood_err)
            cfg = {"seed": s, "optimizer": {"name": opt, "lr": 0.1}, "model": {"name": "mlp"},
                   "dataset": {"name": "mnist1d", "ood": {"enabled": ood}}}
            write_job(root, name, cfg, completed(s, final, {"lambda_max": 10 + lam,
                                                            "trace": 100 + tr}))
    return root


def test_collect_adds_ood_columns_only_when_present(tmp_path):
    skipped = "optimizer=adam,seed=0"
    jobs = collect(_sweep(tmp_path / "ood", skip_ood=(skipped,))).jobs
    acc = jobs["final.ood_test_acc"].to_numpy(float)
    assert np.allclose(jobs["ood_test_error"].to_numpy(float), 1 - acc, equal_nan=True)
    assert list(jobs.columns).index("ood_test_error") == \
        list(jobs.columns).index("final.ood_test_acc") + 1
    row = jobs.set_index("job").loc[skipped]
    assert math.isnan(row["ood_test_error"]) and math.isnan(row["final.ood_test_loss"])
    assert np.isfinite(jobs["ood_test_error"]).sum() == 17
    assert jobs["final.ood_test_loss"].dtype == float
    plain = collect(_sweep(tmp_path / "plain", ood=False)).jobs
    assert not [c for c in plain.columns if "ood_test" in c]
    assert "dataset.ood.enabled" in plain.columns  # a config key, never swept here


def test_target_column_derives_the_ood_error():
    df = pd.DataFrame({"final.ood_test_acc": [0.75, 0.5]})
    assert target_column(df, "ood_test_error").tolist() == [0.25, 0.5]
    assert target_column(df, "ood_error").tolist() == [0.25, 0.5]
    with pytest.raises(KeyError):
        target_column(pd.DataFrame({"x": [1]}), "ood_test_error")


def test_measures_table_finds_the_measure_planted_on_the_ood_error(tmp_path):
    inc = collect(_sweep(tmp_path / "s")).included
    ms = ["probe.lambda_max", "probe.trace"]
    ood = measures_table(inc, ms, target="ood_test_error").set_index("measure")
    test = measures_table(inc, ms).set_index("measure")
    # 6 seeds: 720 permutations, exact; the planted pair is ranked perfectly in every config
    assert ood.loc["probe.lambda_max", "within_tau"] == pytest.approx(1.0)
    # only the identity permutation reaches a mean τ of 1
    assert ood.loc["probe.lambda_max", "within_tau_p"] == pytest.approx(1 / 720)
    assert ood.loc["probe.lambda_max", "within_tau_p_holm"] < 0.01
    assert abs(ood.loc["probe.trace", "within_tau"]) < 0.5
    assert ood.loc["probe.trace", "within_tau_p"] > 0.05
    assert test.loc["probe.trace", "within_tau"] == pytest.approx(1.0)
    assert test.loc["probe.lambda_max", "within_tau_p"] > 0.05
    assert (ood["target"] == "ood_test_error").all() and (ood["n_seeds"] == 6).all()


def test_report_has_the_ood_table_and_summary_column(tmp_path):
    out = tmp_path / "r"
    build_report([_sweep(tmp_path / "s")], out)
    md = (out / "report.md").read_text()
    assert "### Measures against the OOD error" in md and "18 of 18 jobs have one" in md
    table = pd.read_csv(out / "measures_ood.csv")
    assert table["measure"].iloc[0] == "probe.lambda_max"  # the strongest first
    assert table["within_tau"].iloc[0] == pytest.approx(1.0)
    summary = pd.read_csv(out / "configurations.csv")
    assert "ood_test_acc" in summary.columns and summary["ood_test_acc"].str.contains("±").all()
    assert pd.read_csv(out / "measures.csv")["measure"].iloc[0] == "probe.trace"


def test_report_without_ood_results_mentions_none(tmp_path):
    out = tmp_path / "r"
    build_report([_sweep(tmp_path / "s", ood=False)], out)
    md = (out / "report.md").read_text()
    assert "OOD" not in md and "ood_test" not in md
    assert not (out / "measures_ood.csv").exists()
    assert "ood_test_acc" not in pd.read_csv(out / "configurations.csv").columns
    assert not [c for c in pd.read_csv(out / "jobs.csv").columns if "ood_test" in c]
