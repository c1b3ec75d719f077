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
        assert row["n"] == 12 and row["p_holm"] < 0.01 and row["t_p_holm"] < 0.01
        assert row["median_diff"] < -1 and row["ci_high"] < 0 and row["rank_biserial"] == -1.0
        assert f"model.norm={level} vs none" in res.summary()
        assert "Holm across the 8 rows of 2 comparisons" in res.summary()
    # one Holm family over both tables (8 rows): the smallest raw p is multiplied by 8
    both = h2_table(results)
    assert list(both.columns[:2]) == ["comparison", "measure"] and len(both) == 8
    assert both["p_holm"].min() == pytest.approx(min(1.0, 8 * both["p"].min()))
    assert np.allclose(both["p_holm"], holm(both["p"]), equal_nan=True)


def test_norm_single_level_equals_its_own_test_and_matches_scipy():
    df = norm_frame(12, effects={"batch": 1.0}, rng=np.random.default_rng(5))
    res = h2_test(df, factor="model.norm", level="batch", measures=["probe.lambda_max"])
    on = df[df["model.norm"] == "batch"].set_index("seed").sort_index()["probe.lambda_max"]
    off = df[df["model.norm"] == "none"].set_index("seed").sort_index()["probe.lambda_max"]
    row = res.table.iloc[0]
    w, t = stats.wilcoxon(on - off), stats.ttest_rel(on, off)
    assert row["n"] == 12 and row["p"] == pytest.approx(w.pvalue)
    assert row["t"] == pytest.approx(t.statistic) and row["p_holm"] == pytest.approx(w.pvalue)
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
    # barriers: one per norm level and pair of seeds, paired across levels by `match`
    rng = np.random.default_rng(6)
    b = pd.DataFrame([{"model.norm": norm, "match": f"seeds {i}",
                       "linear_train_loss_barrier_mean": (0.5 if norm == "batch" else 2.0)
                       + rng.normal(0, 0.1)}
                      for i in range(10) for norm in ("none", "batch", "layer")])
    from landscope.analysis.hypotheses.h2 import h2_tests

    batch, layer = h2_tests(norm_frame(10, effects={"batch": 3.0}), barriers={"model.norm": b})
    name = "connectivity.linear_train_loss_barrier_mean"
    rb, rl = (r.table.set_index("measure").loc[name] for r in (batch, layer))
    assert rb["test"] == "wilcoxon" and rb["n"] == 10 and rb["median_diff"] < -1
    assert rl["test"] == "wilcoxon" and rl["n"] == 10 and abs(rl["median_diff"]) < 0.5
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
    params = yaml.safe_load((CONF / "experiment" / "h2_norm.yaml").read_text())["hydra"]["sweeper"]["params"]
    assert set(params) == {"model.norm", "seed"}
    assert params["model.norm"].split(",") == ["none", "batch", "layer"]
    # 2 comparisons x 5 rows in one Holm family: Wilcoxon needs 2 / 2^n * 10 < 0.05
    n = len(str(params["seed"]).split(","))
    assert 2 / 2 ** n * 10 < 0.05
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
    assert np.allclose(table["p_holm"], holm(table["p"]), equal_nan=True)  # one family
    figures = {p.name for p in (tmp_path / "out" / "figures").glob("h2_*.png")}
    assert figures == {"h2_paired_norm_batch.png", "h2_paired_norm_layer.png"}
    assert sum("h2_paired_norm" in a for a in (tmp_path / "out" / "report.md").read_text()
               .splitlines()) == 2
