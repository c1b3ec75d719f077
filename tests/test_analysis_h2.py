"""H2 (skip connections flatten the landscape): pairing, statistics and verdicts on synthetic
jobs tables, load_barriers on a fake sweep, and the h2_skip preset (no training)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from landscope.analysis.hypotheses.h2 import h2_test, load_barriers
from landscope.analysis.hypotheses.paired import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, holm
from landscope.analysis.hypotheses.pairing import pair_jobs
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
    assert row["n"] == 10 and row["p_adj"] < 0.01 and row["t_p"] < 0.01
    assert row["role"] == "primary" and res.gate_open
    assert row["ci_high"] < 0 and row["median_diff"] < -2 and row["cohens_d"] < -1
    assert row["estimate"] < -2 and row["ci_low"] < row["estimate"] < row["ci_high"]
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
        assert (row["statistic"] == pytest.approx(w.statistic)
                and row["p"] == pytest.approx(w.pvalue))
        assert row["t"] == pytest.approx(t.statistic) and row["t_p"] == pytest.approx(t.pvalue)
        assert row["cohens_d"] == pytest.approx(d.mean() / d.std(ddof=1))
        assert row["median_diff"] == pytest.approx(d.median())
    # gatekeeping: λmax (primary) at alpha; the one secondary row (Holm of one) after it
    lam, tr = (res.table.set_index("measure").loc[m] for m in ("probe.lambda_max", "probe.trace"))
    assert lam["p_adj"] == pytest.approx(lam["p"]) and res.gate_open
    assert tr["p_adj"] == pytest.approx(tr["p"]) and tr["role"] == "secondary"


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
                 "probe": {"trace": {"enabled": True}}}))
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
    # one pair of seeds per arm: 2 seeds, too few for a seed-level jackknife
    assert row["test"] == "seed jackknife t" and row["n"] == 2 and row["estimate"] == -1.5
    assert row["n_on"] == 1 and row["n_off"] == 1 and row["unit"] == "seeds"
    assert row["verdict"] == INCONCLUSIVE and "3" in row["reason"]
    assert set(b["seed_a"]) == {0} and set(b["seed_b"]) == {1}


def test_load_barriers_without_connectivity_raises(tmp_path):
    with pytest.raises(LandscopeError, match="runner.connect"):
        load_barriers(tmp_path)


def barrier_frame(n_seeds=8, effect=0.0, rng=None, basin=0.5, noise=0.1, level=("model.skip",
                                                                              True, False)):
    """Every pair of seeds within each arm; each model adds its own Exponential(basin) amount
    to each of its barriers (the pairs share models), skip lowers every barrier by effect."""
    rng = rng or np.random.default_rng(3)
    factor, on, off = level
    rows = []
    for arm in (on, off):
        u = rng.exponential(basin, n_seeds)
        for i in range(n_seeds):
            for j in range(i + 1, n_seeds):
                rows.append({factor: arm, "seed_a": i, "seed_b": j,
                             "linear_train_loss_barrier_mean": 0.2 + u[i] + u[j]
                             + rng.normal(0, noise) - (effect if arm == on else 0.0)})
    return pd.DataFrame(rows)


def test_barrier_row_is_a_seed_jackknife_equal_to_its_closed_form():
    """For a complete design the delete-one-seed pseudo-values of θ = mean(d) over pairs
    (d = on − off of the same pair of seeds) are ps_s = 2 R_s/(n−2) − 2 T/((n−1)(n−2)), with
    R_s = Σ_j d_sj and T = Σ_{i<j} d_ij; the jackknife t is the one-sample t of ps on n − 1
    df, and n is the number of seeds (8), not of pairs (28)."""
    b = barrier_frame(8, effect=0.3)
    res = h2_test(frame(8, effect=3.0), barriers=b)
    row = res.table.set_index("measure").loc["connectivity.linear_train_loss_barrier_mean"]
    on = b[b["model.skip"]].set_index(["seed_a", "seed_b"])["linear_train_loss_barrier_mean"]
    off = b[~b["model.skip"]].set_index(["seed_a", "seed_b"])["linear_train_loss_barrier_mean"]
    d = (on - off).to_dict()
    n = 8
    R = np.array([sum(v for (i, j), v in d.items() if s in (i, j)) for s in range(n)])
    T = sum(d.values())
    ps = 2 * R / (n - 2) - 2 * T / ((n - 1) * (n - 2))
    t = stats.ttest_1samp(ps, 0.0)
    assert np.mean(ps) == pytest.approx(T / len(d))  # = θ
    assert row["test"] == "seed jackknife t" and row["n"] == 8 and row["n_on"] == 28
    assert row["estimate"] == pytest.approx(T / len(d))
    assert row["statistic"] == pytest.approx(t.statistic) and row["p"] == pytest.approx(t.pvalue)
    se = np.std(ps, ddof=1) / np.sqrt(n)
    crit = stats.t.ppf(0.975, n - 1)
    assert row["ci_low"] == pytest.approx(T / len(d) - crit * se)
    assert row["ci_high"] == pytest.approx(T / len(d) + crit * se)
    # the sign-flip p of the same pseudo-values, every one of the 2^8 patterns
    signs = 1 - 2 * ((np.arange(256)[:, None] >> np.arange(8)) & 1)
    assert row["t_test"] == "seed sign-flip"
    assert row["t_p"] == pytest.approx(np.mean(np.abs(signs @ ps) >= abs(ps.sum()) - 1e-12))


def test_jackknife_pseudo_values_are_the_model_effects_without_pair_noise():
    """B(i, j) = u_i + u_j per arm: the pseudo-value of seed s is exactly 2(u_s,on − u_s,off),
    one independent value per seed."""
    from landscope.analysis.hypotheses.h2 import seed_jackknife

    rng = np.random.default_rng(0)
    n = 7
    u_on, u_off = rng.exponential(1, n), rng.exponential(1, n)
    a, bb, arm, v = [], [], [], []
    for u, flag in ((u_on, True), (u_off, False)):
        for i in range(n):
            for j in range(i + 1, n):
                a.append(i), bb.append(j), arm.append(flag), v.append(u[i] + u[j])
    jk = seed_jackknife(a, bb, arm, v)
    assert np.allclose(jk["pseudo"], 2 * (u_on - u_off)) and jk["n"] == n and jk["df"] == n - 1
    assert jk["theta"] == pytest.approx(2 * np.mean(u_on - u_off))


def test_barriers_with_shared_models_are_not_rejected_as_if_pairs_were_independent():
    """40 null datasets of 8 seeds whose models carry their own basins: the old Wilcoxon over
    the 28 pairs rejects most of them, the seed jackknife keeps to alpha (within binomial
    error)."""
    rng = np.random.default_rng(11)
    jk = wil = 0
    for _ in range(40):
        b = barrier_frame(8, rng=rng)
        res = h2_test(frame(8, effect=3.0, rng=rng), measures=["probe.lambda_max"], barriers=b)
        row = res.table.set_index("measure").loc["connectivity.linear_train_loss_barrier_mean"]
        jk += row["p"] < 0.05
        d = (b[b["model.skip"]]["linear_train_loss_barrier_mean"].to_numpy()
             - b[~b["model.skip"]]["linear_train_loss_barrier_mean"].to_numpy())
        wil += stats.wilcoxon(d).pvalue < 0.05
    assert jk <= 6 and wil >= 12


def test_barrier_without_seed_columns_is_a_reason_not_a_test():
    b = barrier_frame(8).drop(columns=["seed_a", "seed_b"])
    row = h2_test(frame(8, effect=3.0), barriers=b).table.iloc[-1]
    assert row["verdict"] == INCONCLUSIVE and "seed_a" in row["reason"] and row["n"] == 0


def test_preset_composes_and_sweeps_skip(compose):
    cfg = compose(["experiment=h2_skip"])
    assert cfg.name == "h2_skip" and cfg.dataset.name == "mnist1d" and cfg.probe.name == "standard"
    assert cfg.model.name == "mlp" and cfg.model.depth >= 4 and cfg.train.epochs <= 30
    from conftest import CONF
    params = yaml.safe_load((CONF / "experiment" / "h2_skip.yaml").read_text())
    params = params["hydra"]["sweeper"]["params"]
    assert params["model.skip"] == "true,false" and len(str(params["seed"]).split(",")) >= 8


# --------------------------------------------------------------------------- normalization
def norm_frame(n_seeds=10, effects=None, rng=None, levels=("none", "batch", "layer"), extra=None):
    """Jobs ``model.norm`` × seeds (skip fixed off); λmax per seed ~ N(10, 1), minus
    ``effects[level]`` at that norm level, plus noise N(0, 0.5); the other measures noise."""
    rng = rng or np.random.default_rng(0)
    effects = effects or {}
    rows = []
    for seed in range(n_seeds):
        base = rng.normal(10, 1)
        for norm in levels:
            rows.append({"job": f"model.norm={norm},seed={seed}", "included": True,
                         "status": "completed", "seed": seed, "model.norm": norm,
                         "model.skip": False, "model.depth": 6,
                         "probe.lambda_max": base - effects.get(norm, 0.0) + rng.normal(0, 0.5),
                         "probe.trace": rng.normal(100, 5),
                         "probe.density_n_outliers": int(rng.integers(1, 6)),
                         "probe.density_outlier_mass": rng.uniform(0, 1), **(extra or {})})
    return pd.DataFrame(rows)


def test_norm_planted_effect_is_supported_for_each_level():
    # 12 seeds: one Holm family of 8 rows, so the smallest possible p_holm is 8 * 2 / 2^12
    df = norm_frame(12, effects={"batch": 3.0, "layer": 2.0})
    from landscope.analysis.hypotheses.h2 import h2_comparisons, h2_table, h2_tests

    assert h2_comparisons(df) == [("model.norm", "batch"), ("model.norm", "layer")]
    results = h2_tests(df)
    assert [r.comparison for r in results] == ["model.norm: batch vs none",
                                               "model.norm: layer vs none"]
    for res, level in zip(results, ("batch", "layer")):
        assert res.level == level and res.off == "none" and res.factor == "model.norm"
        assert res.n_pairs == 12 and res.n_unpaired == 0  # the other level is not "unpaired"
        assert res.keys == []  # skip is fixed, so pairs match on the seed alone
        # every pair: the same seed, this level vs none
        assert (df.loc[res.pairs["on"], "model.norm"] == level).all()
        assert (df.loc[res.pairs["off"], "model.norm"] == "none").all()
        assert (df.loc[res.pairs["on"], "seed"].to_numpy()
                == df.loc[res.pairs["off"], "seed"].to_numpy()).all()
        row = res.table.set_index("measure").loc["probe.lambda_max"]
        assert res.verdict == SUPPORTED and row["verdict"] == SUPPORTED
        assert row["n"] == 12 and row["p_adj"] < 0.01 and row["t_p"] < 0.01
        assert row["median_diff"] < -1 and row["ci_high"] < 0 and row["rank_biserial"] == -1.0
        assert f"model.norm={level} vs none" in res.summary()
        assert "2 comparisons: each is tested at alpha/2" in res.summary()
        assert res.n_comparisons == 2 and res.gate_open
    # each comparison at alpha/2: the primary's p_adj = 2p, the secondaries 2 × Holm of 3
    both = h2_table(results)
    assert list(both.columns[:2]) == ["comparison", "measure"] and len(both) == 8
    for _, part in both.groupby("comparison"):
        prim, sec = part[part["role"] == "primary"], part[part["role"] == "secondary"]
        assert prim["p_adj"].iloc[0] == pytest.approx(min(1.0, 2 * prim["p"].iloc[0]))
        assert np.allclose(sec["p_adj"], np.minimum(1, 2 * holm(sec["p"])), equal_nan=True)


def test_norm_single_level_equals_its_own_test_and_matches_scipy():
    df = norm_frame(12, effects={"batch": 1.0}, rng=np.random.default_rng(5))
    res = h2_test(df, factor="model.norm", level="batch", measures=["probe.lambda_max"])
    on = df[df["model.norm"] == "batch"].set_index("seed").sort_index()["probe.lambda_max"]
    off = df[df["model.norm"] == "none"].set_index("seed").sort_index()["probe.lambda_max"]
    row = res.table.iloc[0]
    w, t = stats.wilcoxon(on - off), stats.ttest_rel(on, off)
    assert row["n"] == 12 and row["p"] == pytest.approx(w.pvalue)
    assert row["t"] == pytest.approx(t.statistic) and row["p_adj"] == pytest.approx(w.pvalue)
    # only one level besides none: the level is found; several need level= or h2_tests
    two = norm_frame(8, levels=("none", "batch"))
    assert h2_test(two, factor="model.norm").level == "batch"
    with pytest.raises(LandscopeError, match="level="):
        h2_test(df, factor="model.norm")
    with pytest.raises(LandscopeError, match="true/false"):
        h2_test(frame(8), level="batch")


def test_norm_no_effect_is_not_supported():
    from landscope.analysis.hypotheses.h2 import h2_tests

    for res in h2_tests(norm_frame(10, rng=np.random.default_rng(2))):
        assert res.verdict in (INCONCLUSIVE, NOT_SUPPORTED) and res.n_pairs == 10
        assert res.verdict == INCONCLUSIVE  # no planted effect: not significant either way
    rng = np.random.default_rng(4)
    hits = sum(r.verdict == SUPPORTED for _ in range(100)
               for r in h2_tests(norm_frame(10, rng=rng), measures=["probe.lambda_max"],
                                 n_boot=20))
    assert hits / 200 <= 0.05 + 3 * (0.05 * 0.95 / 200) ** 0.5


def test_norm_pairs_on_seed_and_skip_when_both_are_swept():
    from landscope.analysis.hypotheses.h2 import h2_comparisons, h2_tests

    df = pd.concat([norm_frame(10, effects={"batch": 3.0}, extra={"model.skip": skip},
                               rng=np.random.default_rng(int(skip)))
                    .assign(job=lambda d, s=skip: d["job"] + f",model.skip={str(s).lower()}")
                    for skip in (True, False)], ignore_index=True)
    df.loc[df["model.skip"], "probe.lambda_max"] -= 2.0  # skip lowers λmax too
    comps = h2_comparisons(df)
    assert comps == [("model.skip", None), ("model.norm", "batch"), ("model.norm", "layer")]
    skip, batch, layer = h2_tests(df, comps, measures=["probe.lambda_max"])
    assert skip.keys == ["model.norm"] and skip.n_pairs == 30  # 10 seeds x 3 norms
    assert batch.keys == ["model.skip"] and batch.n_pairs == 20  # 10 seeds x 2 skips
    for res in (batch, layer):
        assert (df.loc[res.pairs["on"], "model.skip"].to_numpy()
                == df.loc[res.pairs["off"], "model.skip"].to_numpy()).all()
    assert skip.verdict == SUPPORTED and batch.verdict == SUPPORTED
    assert layer.verdict == INCONCLUSIVE


def test_norm_unpaired_jobs_and_barriers_per_level():
    df = norm_frame(9, effects={"batch": 3.0})
    df = df[~((df["model.norm"] == "none") & (df["seed"] == 8))]  # seed 8 has no none job
    pairs, unpaired, _ = pair_jobs(df, "model.norm", level="layer")
    assert len(pairs) == 8 and len(unpaired) == 1
    assert "no partner with model.norm=none" in unpaired["reason"].iloc[0]
    assert unpaired["model.norm"].iloc[0] == "layer"
    # barriers: every pair of 6 seeds per norm level; each comparison uses its own level
    # and none (the other level is not part of it)
    rng = np.random.default_rng(6)
    b = pd.DataFrame([{"model.norm": norm, "seed_a": i, "seed_b": j,
                       "linear_train_loss_barrier_mean": (0.5 if norm == "batch" else 2.0)
                       + rng.normal(0, 0.1)}
                      for i in range(6) for j in range(i + 1, 6)
                      for norm in ("none", "batch", "layer")])
    from landscope.analysis.hypotheses.h2 import h2_tests

    batch, layer = h2_tests(norm_frame(10, effects={"batch": 3.0}), barriers={"model.norm": b})
    name = "connectivity.linear_train_loss_barrier_mean"
    rb, rl = (r.table.set_index("measure").loc[name] for r in (batch, layer))
    assert rb["test"] == "seed jackknife t" and rb["n"] == 6 and rb["n_on"] == 15
    assert rb["estimate"] < -1 and rb["n_off"] == 15
    assert rl["test"] == "seed jackknife t" and rl["n"] == 6 and abs(rl["estimate"]) < 0.5
    assert not any("barriers without" in n for n in batch.notes + layer.notes)


def test_load_barriers_reads_the_norm_level(tmp_path):
    for norm in ("none", "batch"):
        for seed in (0, 1):
            job = tmp_path / f"model.norm={norm},seed={seed}"
            job.mkdir()
            (job / "config.yaml").write_text(yaml.safe_dump(
                {"seed": seed, "name": "h2_norm", "model": {"norm": norm, "skip": False}}))
        group = tmp_path / "connectivity" / f"model.norm={norm}"
        group.mkdir(parents=True)
        (group / f"model.norm={norm},seed=0__model.norm={norm},seed=1.json").write_text(
            json.dumps({"scalars": {"linear_train_loss_barrier_mean": 1.0 if norm == "none"
                                    else 0.25}}))
    b = load_barriers(tmp_path, "model.norm")
    assert b["reason"].isna().all() and b["match"].nunique() == 1
    assert b.set_index("model.norm")["linear_train_loss_barrier_mean"].to_dict() == \
        {"none": 1.0, "batch": 0.25}


def test_h2_comparisons_need_none_and_another_level():
    from landscope.analysis.hypotheses.h2 import h2_comparisons

    assert h2_comparisons(frame(8)) == [("model.skip", None)]
    assert h2_comparisons(norm_frame(8, levels=("batch", "layer"))) == []  # no "none"
    assert h2_comparisons(norm_frame(8, levels=("none",))) == []
    assert h2_comparisons(norm_frame(8), swept=["model.norm"]) == [("model.norm", "batch"),
                                                                     ("model.norm", "layer")]


def test_norm_preset_composes_and_sweeps_norm(compose):
    cfg = compose(["experiment=h2_norm"])
    skip = compose(["experiment=h2_skip"])
    assert cfg.name == "h2_norm" and cfg.dataset.name == "mnist1d"
    assert cfg.dataset.name == skip.dataset.name and cfg.probe == skip.probe  # same probes
    assert cfg.model.name == "mlp" and cfg.model.skip is False and cfg.model.norm == "none"
    assert (cfg.model.width, cfg.model.depth, cfg.train.epochs) == \
        (skip.model.width, skip.model.depth, skip.train.epochs)
    from conftest import CONF
    params = yaml.safe_load((CONF / "experiment" / "h2_norm.yaml").read_text())
    params = params["hydra"]["sweeper"]["params"]
    assert set(params) == {"model.norm", "seed"}
    assert params["model.norm"].split(",") == ["none", "batch", "layer"]
    # 2 comparisons at alpha/2 each, Holm among 4 secondary rows after the gate: Wilcoxon
    # needs 2 / 2^n * 4 < 0.05 / 2 for a secondary row to be testable
    n = len(str(params["seed"]).split(","))
    assert 2 / 2 ** n * 4 < 0.05 / 2
    for level in ("batch", "layer"):
        assert compose(["experiment=h2_norm", f"model.norm={level}"]).model.norm == level


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_report_h2_section_for_a_norm_sweep(tmp_path):
    """A saved sweep over model.norm = none, batch, layer x 10 seeds where batch norm lowers
    λmax and layer norm does not: the report's H2 section has one table per level, one
    h2.csv with a comparison column (one Holm family), and one paired figure per level."""
    from html.parser import HTMLParser

    from landscope.analysis.report import build_report

    rng = np.random.default_rng(1)
    root = tmp_path / "h2_norm"
    for seed in range(10):
        base = float(rng.uniform(5, 10))
        for norm in ("none", "batch", "layer"):
            lam = base * (0.5 if norm == "batch" else 1.0) + float(rng.normal(0, 0.2))
            job = root / f"model.norm={norm},seed={seed}"
            job.mkdir(parents=True)
            (job / "config.yaml").write_text(yaml.safe_dump(
                {"seed": seed, "name": "h2_norm",
                 "model": {"name": "mlp", "norm": norm, "skip": False, "depth": 6}}))
            (job / "result.json").write_text(json.dumps({
                "status": "completed", "seed": seed, "stop_reason": "max_epochs",
                "final": {"train_loss": 0.1, "train_acc": 0.9,
                          "test_acc": 0.7 + float(rng.normal(0, 0.01)),
                          "generalization_gap": 0.2, "epoch": 5},
                "probes": {"lambda_max": lam, "trace": 10 * lam + float(rng.normal()),
                           "density_n_outliers": int(rng.integers(1, 6)),
                           "density_outlier_mass": float(rng.uniform(0, 1))}}))
    page = build_report([root], tmp_path / "out")

    class Text(HTMLParser):
        def __init__(self):
            super().__init__()
            self.text, self.images = [], []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs)["src"])

        def handle_data(self, data):
            self.text.append(data)

    parser = Text()
    parser.feed(page.read_text())
    text = " ".join(parser.text)
    assert "H2: normalization flattens the landscape" in text
    assert "Normalization: batch vs none" in text and "Normalization: layer vs none" in text
    assert "Skip connections: on vs off" not in text
    table = pd.read_csv(tmp_path / "out" / "h2.csv")
    assert table.columns[0] == "comparison"
    assert set(table["comparison"]) == {"model.norm: batch vs none", "model.norm: layer vs none"}
    lam = table[table["measure"] == "probe.lambda_max"].set_index("comparison")
    assert (lam["n"] == 10).all()
    assert lam.loc["model.norm: batch vs none", "verdict"] == SUPPORTED
    assert lam.loc["model.norm: batch vs none", "median_diff"] < 0
    assert lam.loc["model.norm: layer vs none", "verdict"] == INCONCLUSIVE
    prim = table[table["role"] == "primary"]  # each comparison's primary at alpha/2
    assert np.allclose(prim["p_adj"], np.minimum(1, 2 * prim["p"]))
    figures = {p.name for p in (tmp_path / "out" / "figures").glob("h2_*.png")}
    assert figures == {"h2_paired_norm_batch.png", "h2_paired_norm_layer.png"}
    assert sum("h2_paired_norm" in a for a in (tmp_path / "out" / "report.md").read_text()
               .splitlines()) == 2


# --------------------------------------------------------------------------- issue #16
def test_hodges_lehmann_and_wilcoxon_interval_by_hand():
    """d = (−2, 1, 3, 4, 6, 9, 10, 15): 36 Walsh averages; HL = the mean of the 18th and 19th
    (5.5 and 6) = 5.75. Exact null of T+ for n = 8: P(T+ ≤ 3) = 5/256 ≤ 0.025 < P(T+ ≤ 4) =
    7/256, so t_up = 36 − 3 = 33, C = 36 + 1 − 33 = 4 and the interval is [W_(4), W_(33)] =
    [1, 10.5] with coverage 1 − 10/256 = 0.9609 (Hollander & Wolfe's C = 4 for n = 8); at
    90 %: P(T+ ≤ 5) = 10/256 ≤ 0.05 < 14/256, C = 6, [W_(6), W_(31)] = [2, 9.5], 0.9219."""
    from landscope.analysis.hypotheses.paired import (
        hodges_lehmann,
        signed_rank_counts,
        walsh_averages,
        wilcoxon_ci,
    )

    d = np.array([-2, 1, 3, 4, 6, 9, 10, 15.0])
    w = walsh_averages(d)
    assert len(w) == 36 and (w[17], w[18]) == (5.5, 6.0)
    assert hodges_lehmann(d) == 5.75
    counts = signed_rank_counts(8)
    assert counts.sum() == 256 and list(counts[:6]) == [1, 1, 1, 2, 2, 3]
    assert wilcoxon_ci(d) == (1.0, 10.5, pytest.approx(1 - 10 / 256))
    assert wilcoxon_ci(d, 0.90) == (2.0, 9.5, pytest.approx(1 - 20 / 256))
    # the interval inverts scipy's exact test: just outside it rejects, just inside it does not
    p = lambda th: stats.wilcoxon(d - th, method="exact").pvalue  # noqa: E731
    assert p(1.0 - 1e-9) < 0.05 <= p(1.0 + 1e-9) and p(10.5 + 1e-9) < 0.05 <= p(10.5 - 1e-9)


def test_five_pairs_cannot_give_a_95_interval_and_say_so():
    res = h2_test(frame(5, effect=5.0), measures=["probe.lambda_max"])
    row = res.table.iloc[0]
    assert row["ci_level"] == pytest.approx(1 - 2 / 32)  # [min d, max d]: 93.75 %
    assert row["verdict"] == INCONCLUSIVE and "0.0625" in row["reason"]
    assert any("cannot give a 95% Wilcoxon interval" in n for n in res.notes)
    assert "93.8% CI" in res.evidence()


def test_gate_closed_leaves_the_secondary_rows_untested():
    df = frame(10, effect=0.0, rng=np.random.default_rng(2))
    df.loc[df["model.skip"], "probe.trace"] -= 50  # a large trace effect, but λmax is null
    res = h2_test(df)
    t = res.table.set_index("measure")
    assert not res.gate_open and t.loc["probe.lambda_max", "verdict"] == INCONCLUSIVE
    assert t.loc["probe.trace", "p"] < 0.01 and np.isnan(t.loc["probe.trace", "p_adj"])
    assert t.loc["probe.trace", "verdict"] == INCONCLUSIVE
    assert "gate" in t.loc["probe.trace", "reason"]
    # with λmax lower the gate opens and the trace is tested (Holm among 3 secondary rows)
    df.loc[df["model.skip"], "probe.lambda_max"] -= 5
    res = h2_test(df)
    t = res.table.set_index("measure")
    sec = t[t["role"] == "secondary"]
    assert res.gate_open and t.loc["probe.trace", "verdict"] == SUPPORTED
    assert np.allclose(sec["p_adj"], holm(sec["p"]))


def test_evidence_names_estimate_interval_units_and_test():
    res = h2_test(frame(8, effect=3.0), barriers=barrier_frame(8))
    text = res.evidence()
    for part in ("supported", "Hodges–Lehmann", "96.1% CI", "n = 8 seeds", "Wilcoxon",
                 "primary"):
        assert part in text, part
    bar = res.evidence("connectivity.linear_train_loss_barrier_mean", calibration="cal")
    assert "n = 8 seeds (28 + 28 pairs of seeds)" in bar and "jackknife t (7 df)" in bar
    assert bar.endswith("; cal")


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_section_writes_verdict_evidence_gate_and_table(tmp_path):
    """The H2 section on a simulated sweep with connectivity files (the calibration suite's
    world, skip lowering λmax): verdict with evidence and calibration phrase, the gate, the
    barrier row at the seed level, h2.csv and the paired figure."""
    from types import SimpleNamespace

    from landscope.analysis.calibration.h2 import simulate
    from landscope.analysis.collect import collect
    from landscope.analysis.doc import Doc
    from landscope.analysis.hypotheses import h2

    sweep = tmp_path / "h2_skip"
    sweep.mkdir()
    simulate(np.random.default_rng(0), sweep, d_lambda=3.0)
    coll = collect(sweep)
    ctx = SimpleNamespace(doc=Doc("t"), coll=coll, paths=[sweep], out=tmp_path / "out",
                          appendix=[])
    assert h2.applies(ctx)
    h2.section(ctx)
    md = ctx.doc.render_md()
    assert "H2: skip connections flatten the landscape" in md
    assert "Verdict: supported" in md and "Gate open" in md
    assert "calibration" in md or "not calibrated" in md
    assert "n = 8 seeds (28 + 28 pairs of seeds)" in md
    table = pd.read_csv(tmp_path / "out" / "h2.csv")
    bar = table[table["measure"] == "connectivity.linear_train_loss_barrier_mean"].iloc[0]
    assert bar["n"] == 8 and bar["test"] == "seed jackknife t" and bar["role"] == "secondary"
    assert (tmp_path / "out" / "figures" / "h2_paired.png").is_file()
