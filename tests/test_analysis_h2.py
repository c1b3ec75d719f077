"""H2 (skip connections flatten the landscape): pairing, statistics and verdicts on synthetic
jobs tables, load_barriers on a fake sweep, and the h2_skip preset (no training)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from landscope.analysis.hypotheses.h2 import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, h2_test,
                                              holm, load_barriers, pair_jobs)
from landscope.errors import LandscopeError


def frame(n_seeds=10, effect=0.0, rng=None, extra=None):
    """Jobs ``model.skip`` × seeds; λmax per seed ~ N(10, 1), minus ``effect`` with skip, plus
    noise N(0, 0.5); the other measures are pure noise."""
    rng = rng or np.random.default_rng(0)
    rows = []
    for seed in range(n_seeds):
        base = rng.normal(10, 1)
        for skip in (True, False):
            rows.append({"job": f"model.skip={str(skip).lower()},seed={seed}", "included": True,
                         "status": "completed", "seed": seed, "model.skip": skip,
                         "model.depth": 6, "optimizer.lr": 0.1,
                         "probe.lambda_max": base - (effect if skip else 0) + rng.normal(0, 0.5),
                         "probe.trace": rng.normal(100, 5),
                         "probe.density_n_outliers": int(rng.integers(1, 6)),
                         "probe.density_outlier_mass": rng.uniform(0, 1), **(extra or {})})
    return pd.DataFrame(rows)


def test_planted_effect_is_supported():
    res = h2_test(frame(10, effect=3.0))
    row = res.table.set_index("measure").loc["probe.lambda_max"]
    assert res.verdict == SUPPORTED and row["verdict"] == SUPPORTED
    assert row["n"] == 10 and row["p_holm"] < 0.01 and row["t_p_holm"] < 0.01
    assert row["ci_high"] < 0 and row["median_diff"] < -2 and row["cohens_d"] < -1
    assert row["rank_biserial"] == -1.0
    assert res.n_pairs == 10 and res.n_unpaired == 0
    assert list(res.table["measure"]) == ["probe.lambda_max", "probe.trace",
                                          "probe.density_n_outliers", "probe.density_outlier_mass"]
    assert "SUPPORTED" in res.summary() and "probe.lambda_max" in res.summary()


def test_opposite_effect_is_not_supported():
    res = h2_test(frame(10, effect=-3.0), measures=["probe.lambda_max"])
    assert res.verdict == NOT_SUPPORTED and "higher" in res.reason


def test_no_effect_false_positive_rate_at_most_alpha():
    # 200 seeded null draws of 10 pairs; λmax only (one row, so Holm changes nothing). A
    # two-sided test at 0.05 with the direction required gives ≈ 0.025 supported; the bound
    # allows alpha + 3 binomial sd (0.05 + 3·sqrt(0.05·0.95/200) ≈ 0.096).
    rng = np.random.default_rng(1)
    hits = sum(h2_test(frame(10, 0.0, rng), measures=["probe.lambda_max"], n_boot=50).verdict
               == SUPPORTED for _ in range(200))
    assert hits / 200 <= 0.096


def test_statistics_equal_scipy():
    df = frame(12, effect=1.0, rng=np.random.default_rng(5))
    res = h2_test(df, measures=["probe.lambda_max", "probe.trace"])
    on = df[df["model.skip"]].set_index("seed").sort_index()
    off = df[~df["model.skip"]].set_index("seed").sort_index()
    for measure, row in res.table.set_index("measure").iterrows():
        w = stats.wilcoxon(on[measure] - off[measure])
        t = stats.ttest_rel(on[measure], off[measure])
        d = on[measure] - off[measure]
        assert row["statistic"] == pytest.approx(w.statistic) and row["p"] == pytest.approx(w.pvalue)
        assert row["t"] == pytest.approx(t.statistic) and row["t_p"] == pytest.approx(t.pvalue)
        assert row["cohens_d"] == pytest.approx(d.mean() / d.std(ddof=1))
        assert row["median_diff"] == pytest.approx(d.median())
    ps = sorted(res.table["p"])
    assert res.table["p_holm"].min() == pytest.approx(min(1.0, 2 * ps[0]))  # Holm, 2 rows


def test_holm_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, 0.04, 0.03, 0.2, 0.005, 0.5])
    assert np.allclose(holm(p), multipletests(p, method="holm")[1])
    assert np.isnan(holm([np.nan, 0.01])[0]) and holm([np.nan, 0.01])[1] == 0.01


def test_pairing_with_an_extra_swept_key_and_unpaired_rows():
    a = frame(8, effect=3.0, extra={"optimizer.lr": 0.1})
    b = frame(8, effect=3.0, rng=np.random.default_rng(9), extra={"optimizer.lr": 0.05})
    # lr=0.05 keeps skip=true only for seeds 0-3 and skip=false only for seeds 4-7: no pairs
    b = b[(b["model.skip"] & (b["seed"] < 4)) | (~b["model.skip"] & (b["seed"] >= 4))]
    failed = frame(1, extra={"optimizer.lr": 0.1}).assign(included=False, seed=99)
    df = pd.concat([a, b, failed], ignore_index=True)
    pairs, unpaired, keys = pair_jobs(df)
    assert keys == ["optimizer.lr"]
    assert len(pairs) == 8 and (pairs["optimizer.lr"] == 0.1).all()
    assert (df.loc[pairs["on"], "optimizer.lr"].to_numpy() == df.loc[pairs["off"], "optimizer.lr"]
            .to_numpy()).all() and (df.loc[pairs["on"], "seed"].to_numpy()
                                    == df.loc[pairs["off"], "seed"].to_numpy()).all()
    assert len(unpaired) == 8 and unpaired["reason"].str.contains("no partner").all()
    res = h2_test(df)
    assert res.n_pairs == 8 and res.n_unpaired == 8 and "8 included jobs unpaired" in res.summary()


def test_string_factor_values_and_ambiguous_duplicates():
    df = frame(6, effect=3.0)
    df["model.skip"] = df["model.skip"].map(lambda v: "true" if v else "false")
    dup = df.iloc[[0]].assign(job="dup")
    pairs, unpaired, _ = pair_jobs(pd.concat([df, dup], ignore_index=True))
    assert len(pairs) == 5 and len(unpaired) == 3
    assert unpaired["reason"].str.contains("ambiguous").all()


@pytest.mark.parametrize("n", [0, 1, 5])
def test_too_few_pairs_is_inconclusive(n):
    res = h2_test(frame(max(n, 1), effect=5.0).iloc[: 2 * n], n_boot=100)
    assert res.verdict == INCONCLUSIVE
    reason = res.table.set_index("measure").loc["probe.lambda_max", "reason"]
    assert ("too few" in reason and "0.0625" in reason) if n == 5 else "pair" in reason


def test_missing_factor_raises_one_line():
    with pytest.raises(LandscopeError) as err:
        h2_test(frame(6).drop(columns="model.skip"))
    assert "model.skip" in str(err.value) and "\n" not in str(err.value)


def test_missing_measure_is_a_row_not_a_crash():
    res = h2_test(frame(8, effect=3.0), measures=["probe.lambda_max", "probe.nope"])
    row = res.table.set_index("measure").loc["probe.nope"]
    assert row["verdict"] == INCONCLUSIVE and "no column" in row["reason"]
    assert res.verdict == SUPPORTED


def _fake_sweep(tmp_path, skips=(True, False), seeds=(0, 1), barrier=None):
    for skip in skips:
        for seed in seeds:
            job = tmp_path / f"model.skip={str(skip).lower()},seed={seed}"
            job.mkdir()
            (job / "config.yaml").write_text(yaml.safe_dump(
                {"seed": seed, "name": "h2_skip", "model": {"skip": skip, "depth": 6},
                 "probe": {"trace": True}}))
        group = tmp_path / "connectivity" / f"model.skip={str(skip).lower()}"
        group.mkdir(parents=True)
        a, b = (f"model.skip={str(skip).lower()},seed={s}" for s in seeds[:2])
        value = barrier(skip) if barrier else (0.5 if skip else 2.0)
        (group / f"{a}__{b}.json").write_text(json.dumps(
            {"scalars": {"linear_train_loss_barrier_mean": value}}))


def test_load_barriers_maps_factor(tmp_path):
    _fake_sweep(tmp_path)
    b = load_barriers(tmp_path, "model.skip")
    assert len(b) == 2 and b["reason"].isna().all()
    by = b.set_index("model.skip")["linear_train_loss_barrier_mean"]
    assert by[True] == 0.5 and by[False] == 2.0
    assert b["match"].nunique() == 1  # same config apart from skip, same seeds
    assert set(b["job_a"]) == {"model.skip=true,seed=0", "model.skip=false,seed=0"}
    # one pair: a paired row, inconclusive (n = 1)
    res = h2_test(frame(8, effect=3.0), barriers=b)
    row = res.table.set_index("measure").loc["connectivity.linear_train_loss_barrier_mean"]
    assert row["test"] == "wilcoxon" and row["n"] == 1 and row["median_diff"] == -1.5
    assert row["verdict"] == INCONCLUSIVE


def test_load_barriers_without_connectivity_raises(tmp_path):
    with pytest.raises(LandscopeError, match="runner.connect"):
        load_barriers(tmp_path)


def test_barriers_unpaired_use_mann_whitney():
    rng = np.random.default_rng(3)
    b = pd.DataFrame({"model.skip": [True] * 8 + [False] * 8,
                      "linear_train_loss_barrier_mean": np.r_[rng.normal(0.5, 0.1, 8),
                                                              rng.normal(2.0, 0.1, 8)]})
    res = h2_test(frame(8, effect=3.0), barriers=b)
    row = res.table.set_index("measure").loc["connectivity.linear_train_loss_barrier_mean"]
    u = stats.mannwhitneyu(b.iloc[:8, 1], b.iloc[8:, 1])
    assert row["test"] == "mannwhitneyu" and row["p"] == pytest.approx(u.pvalue)
    assert row["rank_biserial"] == -1.0 and row["verdict"] == SUPPORTED and row["ci_high"] < 0


def test_preset_composes_and_sweeps_skip(compose):
    cfg = compose(["experiment=h2_skip"])
    assert cfg.name == "h2_skip" and cfg.dataset.name == "mnist1d" and cfg.probe.name == "standard"
    assert cfg.model.name == "mlp" and cfg.model.depth >= 4 and cfg.train.epochs <= 30
    from conftest import CONF
    params = yaml.safe_load((CONF / "experiment" / "h2_skip.yaml").read_text())["hydra"]["sweeper"]["params"]
    assert params["model.skip"] == "true,false" and len(str(params["seed"]).split(",")) >= 8
