"""The optimizer-study report section on a synthetic collected frame."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from landscope.analysis.calibration import calibration_note
from landscope.analysis.collect import Collection
from landscope.analysis.doc import Doc
from landscope.analysis.optimizer_study import (
    META_TESTS,
    TESTS,
    applies,
    job_table,
    paired_tests,
    section,
    summary_table,
)
from landscope.analysis.report import ReportContext

SEEDS = range(6)
# LLP - baseline differences in test accuracy, by seed
DIFF = {"sgd": [0.05, 0.06, 0.04, 0.05, 0.055, 0.045],  # clearly higher
        "momentum": [-0.02, 0.01, 0.03, -0.01, -0.01, 0.0],  # no difference
        "adam": [-0.04, -0.05, -0.045, -0.06, -0.05, -0.04],  # clearly lower
        "sam": [0.01, -0.01, 0.02, -0.02, 0.0, 0.005]}


def _frame(tmp_path, with_llp=True) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    base_acc = 0.6 + 0.01 * np.arange(len(SEEDS))
    rows = []
    names = ["sgd", "momentum", "adam", "sam"] + (["llp"] if with_llp else [])
    for name in names:
        for s in SEEDS:
            job = tmp_path / f"optimizer={name},seed={s}"
            job.mkdir(parents=True)
            acc = base_acc[s] + (-DIFF["sgd"][s] if name == "sgd" else 0.0) \
                - (DIFF[name][s] if name in DIFF and name != "sgd" else 0.0)
            metrics = [{"epoch": e, "test_acc": acc} for e in (1, 2)]
            if name == "llp":
                acc = base_acc[s]
                metrics = [{"epoch": 1, "llp_curvature": 10.0 + s, "llp_lr": 0.05},
                           {"epoch": 2, "llp_curvature": 20.0 + s, "llp_lr": 0.03}]
            (job / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in metrics) + "\n")
            rows.append({"sweep": "s", "job": job.name, "path": str(job), "included": True,
                         "status": "completed", "seed": s, "optimizer.name": name,
                         "optimizer.lr": 0.1 if name != "adam" else 0.003,
                         "final.test_acc": acc, "final.grad_evals": 100,
                         "probe.lambda_max": 10 + rng.normal() + (5 if name == "llp" else 0),
                         "probe.trace": 100 + rng.normal()})
    return pd.DataFrame(rows)


def _ctx(tmp_path, df, swept=("optimizer.name", "optimizer.lr")):
    coll = Collection(jobs=df, excluded=pd.DataFrame(), counts={"completed": len(df)},
                      swept=list(swept))
    out = tmp_path / "report"
    out.mkdir()
    return ReportContext(Doc("t"), coll, [tmp_path], out)


def test_applies_only_to_sweeps_over_optimizers_with_llp(tmp_path):
    assert applies(_ctx(tmp_path / "a", _frame(tmp_path / "a")))
    assert not applies(_ctx(tmp_path / "b", _frame(tmp_path / "b", with_llp=False)))
    assert not applies(_ctx(tmp_path / "c", _frame(tmp_path / "c"), swept=["model.width"]))


def test_tables_verdicts_and_files(tmp_path):
    df = _frame(tmp_path)
    ctx = _ctx(tmp_path, df)
    jobs = job_table(ctx.coll.included)
    llp = jobs[jobs["optimizer"] == "llp"]
    assert llp["llp_curvature"].tolist() == pytest.approx([15.0 + s for s in SEEDS])
    assert jobs.loc[jobs["optimizer"] == "sgd", "llp_curvature"].isna().all()
    summary = summary_table(jobs)
    assert summary["optimizer"].tolist() == ["sgd", "momentum", "adam", "sam", "llp"]
    assert summary.set_index("optimizer").at["llp", "llp_lr_mean"] == pytest.approx(0.04)

    tests = paired_tests(ctx.coll.included, ctx.coll.swept, jobs).set_index(
        ["measure", "baseline"])
    acc = tests.loc["final.test_acc"]
    assert (acc["n"] == len(SEEDS)).all()
    assert acc.at["sgd", "verdict"] == "higher"
    assert acc.at["adam", "verdict"] == "lower"
    assert acc.at["momentum", "verdict"] == "no significant difference"
    assert acc.at["sgd", "median_diff"] == pytest.approx(np.median(DIFF["sgd"]))
    # the estimate is the mean difference with its 95 % paired-t interval (the deciding test's)
    d = np.asarray(DIFF["sgd"])
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert acc.at["sgd", "mean_diff"] == pytest.approx(d.mean())
    assert acc.at["sgd", "ci_low"] == pytest.approx(d.mean() - half)
    assert acc.at["sgd", "ci_high"] == pytest.approx(d.mean() + half)
    # beside it: Hodges–Lehmann with the Wilcoxon-inverted interval (exact coverage 1 - 2/64)
    assert acc.at["sgd", "hl_low"] <= acc.at["sgd", "hl"] <= acc.at["sgd", "hl_high"]
    assert acc.at["sgd", "hl_level"] == pytest.approx(1 - 2 / 64)
    assert (acc["test"] == TESTS["final.test_acc"]).all()
    # Holm across the four baselines: adjusted >= raw, and the minimum is raw * 4
    assert (acc["t_p_holm"] >= acc["t_p"] - 1e-15).all()
    assert acc["t_p_holm"].min() == pytest.approx(min(1.0, 4 * acc["t_p"].min()))
    assert tests.loc[("probe.lambda_max", "sgd"), "verdict"] == "higher"  # LLP +5 in λmax

    section(ctx)
    md = ctx.doc.render_md()
    assert "Optimizer study" in md and "figures/optimizer_study.png" in md
    assert "significantly more accurate than sgd" in md
    assert "significantly less accurate than adam" in md
    # every claim carries its evidence: estimate, interval, n of seeds, test, calibration
    mean = float(np.mean(DIFF["sgd"]))
    assert f"sgd (mean difference {mean:+.3g}, 95 % CI [" in md
    assert md.count("n = 6 seeds") == 2 * 4  # test accuracy and λmax, four baselines each
    assert "Test: paired t over seeds, Holm across the 4 baselines" in md
    for col in ("final.test_acc", "probe.lambda_max"):
        assert calibration_note(TESTS[col]) in md
        assert calibration_note(TESTS[col]).startswith("calibration (R=")  # shipped rates
    assert (ctx.out / "figures" / "optimizer_study.png").stat().st_size > 1000
    csv = pd.read_csv(ctx.out / "optimizer_study.csv")
    assert list(csv["optimizer"]) == ["sgd", "momentum", "adam", "sam", "llp"]
    assert len(pd.read_csv(ctx.out / "optimizer_study_tests.csv")) == 3 * 4


def test_unpaired_llp_gives_too_few_pairs(tmp_path):
    df = _frame(tmp_path)
    df.loc[df["optimizer.name"] == "llp", "seed"] += 100  # no common seed
    ctx = _ctx(tmp_path, df)
    tests = paired_tests(ctx.coll.included, ctx.coll.swept)
    assert (tests["n"] == 0).all() and (tests["verdict"] == "too few pairs").all()
    section(ctx)  # still writes a section
    assert "LLP" in ctx.doc.render_md()


def test_llp_and_llp_meta_side_by_side(tmp_path):
    df = _frame(tmp_path)
    df["optimizer.llp.meta"] = False
    meta = df[df["optimizer.name"] == "llp"].copy()
    gain = np.array([0.01, 0.02, 0.015, 0.01, 0.02, 0.012])  # LLP + meta − LLP, by seed
    meta["final.test_acc"] = meta["final.test_acc"].to_numpy() + gain
    meta["optimizer.llp.meta"] = True
    meta["job"] = meta["job"] + "_meta"
    ctx = _ctx(tmp_path, pd.concat([df, meta], ignore_index=True))
    jobs = job_table(ctx.coll.included)
    assert (jobs["optimizer"] == "llp+meta").sum() == len(SEEDS)
    assert list(summary_table(jobs)["optimizer"])[-2:] == ["llp", "llp+meta"]
    tests = paired_tests(ctx.coll.included, ctx.coll.swept, jobs)
    assert len(tests) == 2 * 3 * 4 + 3
    vs = tests[tests["test"].isin(META_TESTS.values())].set_index("measure")
    assert (vs["challenger"] == "llp+meta").all() and (vs["baseline"] == "llp").all()
    assert vs.at["final.test_acc", "mean_diff"] == pytest.approx(gain.mean())
    assert vs.at["final.test_acc", "t_p_holm"] == vs.at["final.test_acc", "t_p"]  # one test
    assert vs.at["final.test_acc", "verdict"] == "higher"
    assert vs.at["probe.trace", "mean_diff"] == pytest.approx(0.0)  # same jobs otherwise
    llp = tests[(tests["challenger"] == "llp") & (tests["measure"] == "final.test_acc")]
    assert llp.set_index("baseline").at["sgd", "mean_diff"] == pytest.approx(np.mean(DIFF["sgd"]))
    section(ctx)
    md = ctx.doc.render_md()
    for heading in ("LLP against each baseline", "LLP + meta against each baseline",
                    "LLP + meta against LLP"):
        assert heading in md
    assert "On test accuracy (LLP + meta − LLP), LLP + meta is significantly more accurate " \
        f"than llp (mean difference {gain.mean():+.3g}" in md
    assert len(pd.read_csv(ctx.out / "optimizer_study_tests.csv")) == 2 * 3 * 4 + 3
