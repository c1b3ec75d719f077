"""landscope.analysis.measures: hand-computed cases, planted effects, false-positive rates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from landscope.analysis.inference import cluster_ols, dummies
from landscope.analysis.measures import (
    correct,
    default_measures,
    granulated_kendall,
    kendall,
    partial_correlation,
)
from landscope.analysis.measures_table import joint_regression, measures_table


def test_kendall_hand_cases():
    # x = 1 2 3 4, y = 1 3 2 4: of the 6 pairs only (2,3) is discordant: τ = (5 − 1)/6 = 2/3.
    assert kendall([1, 2, 3, 4], [1, 3, 2, 4])[0] == pytest.approx(2 / 3)
    # Ties, τ-b: x = 1 2 2 3, y = 1 2 3 3. Pairs: (1,2) C, (1,3) C, (1,4) C, (2,3) tie in x,
    # (2,4) C, (3,4) tie in y. C = 4, D = 0, n0 = 6, ties n1 = 1 (x), n2 = 1 (y):
    # τ-b = (C − D)/√((n0 − n1)(n0 − n2)) = 4/√(5·5) = 0.8.
    assert kendall([1, 2, 2, 3], [1, 2, 3, 3])[0] == pytest.approx(0.8)
    assert math.isnan(kendall([1, 1, 1], [1, 2, 3])[0])  # constant measure: undefined


def _grid():
    # Two hyperparameters a ∈ {0,1,2}, b ∈ {0,1}, one model each; measure m, target t.
    return pd.DataFrame({"included": True, "hp.a": [0, 1, 2, 0, 1, 2], "hp.b": [0, 0, 0, 1, 1, 1],
                         "m": [1., 2., 3., 4., 5., 6.], "t": [1., 2., 3., 6., 4., 5.]})


def test_granulated_kendall_hand_case():
    g = granulated_kendall(_grid(), "m", "t", ["hp.a", "hp.b"])
    # ψ_a: groups b=0: m 1 2 3 vs t 1 2 3 → τ = 1;  b=1: m 4 5 6 vs t 6 4 5: pairs (4,5) D,
    #      (4,6) D, (5,6) C → τ = (1 − 2)/3 = −1/3;  ψ_a = (1 − 1/3)/2 = 1/3.
    # ψ_b: groups a=0: (1,1),(4,6) C; a=1: (2,2),(5,4) C; a=2: (3,3),(6,5) C → τ = 1 each; ψ_b = 1.
    # Ψ = (1/3 + 1)/2 = 2/3.
    assert g.per_hyperparameter == pytest.approx({"hp.a": 1 / 3, "hp.b": 1.0})
    assert g.psi == pytest.approx(2 / 3)
    assert g.groups_used == {"hp.a": 2, "hp.b": 3} and g.groups_skipped == {"hp.a": 0, "hp.b": 0}
    # The same grid with two seeds: groups are also split by seed (models differing only in
    # the hyperparameter), identical copies give the same Ψ with twice the groups.
    twice = pd.concat([_grid().assign(seed=0), _grid().assign(seed=1)], ignore_index=True)
    g2 = granulated_kendall(twice, "m", "t", ["hp.a", "hp.b"])
    assert g2.psi == pytest.approx(2 / 3) and g2.groups_used == {"hp.a": 4, "hp.b": 6}
    # Defaults: hyperparameters detected from the dotted columns that differ.
    assert granulated_kendall(_grid(), "m", "t").psi == pytest.approx(2 / 3)


def test_granulated_kendall_skips_undefined_groups():
    df = _grid()
    df.loc[df["hp.b"] == 1, "t"] = 5.0  # target constant in group b=1 → τ undefined there
    df.loc[5, "m"] = np.nan  # dropped row (a=2, b=1)
    g = granulated_kendall(df, "m", "t", ["hp.a", "hp.b"])
    # ψ_a: b=0 → τ = 1; b=1 (m 4 5, t 5 5) skipped; ψ_a = 1.
    # ψ_b: a=0: (1,1),(4,5) C; a=1: (2,2),(5,5) C → 1; a=2 has one row left → skipped.
    assert g.per_hyperparameter == pytest.approx({"hp.a": 1.0, "hp.b": 1.0})
    assert g.groups_skipped == {"hp.a": 1, "hp.b": 1}
    # A hyperparameter with no valid group is NaN and Ψ averages the others.
    df2 = _grid().assign(**{"hp.c": [0, 0, 0, 0, 0, 1]})
    g3 = granulated_kendall(df2, "m", "t", ["hp.a", "hp.c"])
    # hp.c: groups by hp.a: a=2 holds (c=0: m3,t3), (c=1: m6,t5) → τ = 1; others have one value.
    assert g3.per_hyperparameter["hp.c"] == pytest.approx(1.0) and g3.groups_used["hp.c"] == 1
    g4 = granulated_kendall(_grid().assign(**{"hp.c": 0}), "m", "t", ["hp.c"])
    assert math.isnan(g4.per_hyperparameter["hp.c"]) and math.isnan(g4.psi)


def test_partial_correlation_closed_form():
    rng = np.random.default_rng(0)
    z = rng.normal(size=40)
    x, y = z + rng.normal(size=40), 0.5 * z + 0.3 * rng.normal(size=40)
    r = np.corrcoef([x, y, z])
    rxy, rxz, ryz = r[0, 1], r[0, 2], r[1, 2]
    expected = (rxy - rxz * ryz) / math.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))
    got, p = partial_correlation(x, y, z)
    assert got == pytest.approx(expected, abs=1e-12)
    t = expected * math.sqrt((40 - 3) / (1 - expected ** 2))  # n − 2 − k = 37 degrees of freedom
    from scipy import stats
    assert p == pytest.approx(2 * stats.t.sf(abs(t), 37), rel=1e-10)
    # Exact: x = z + e, y = z − e with e ⟂ [1, z] → residuals e and −e → r = −1.
    w = np.array([1., 2., 3., 4., 5.])
    e = np.array([1., -1., 0., -1., 1.])  # mean 0, Σ e·w = 1 − 2 + 0 − 4 + 5 = 0
    assert partial_correlation(w + e, w - e, w)[0] == pytest.approx(-1.0)
    # Spearman version = the same on ranks.
    rs = partial_correlation(x ** 3, y, z, rank=True)[0]
    from scipy.stats import rankdata
    assert rs == pytest.approx(partial_correlation(rankdata(x), rankdata(y), rankdata(z))[0])


def test_holm_and_bh_by_hand():
    p = [0.01, 0.04, 0.03, 0.2]
    # Holm: sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 = 0.04, 0.09, 0.08, 0.2, made
    # monotone (running max) = 0.04, 0.09, 0.09, 0.2; back in the original order:
    assert correct(p, "holm") == pytest.approx([0.04, 0.09, 0.09, 0.2])
    # BH: p_(i)·m/i = 0.04, 0.06, 0.0533, 0.2; running min from the top = 0.04, 0.0533, 0.0533, 0.2.
    assert correct(p, "fdr_bh") == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    # NaN p-values stay NaN and do not count in m.
    out = correct([0.01, np.nan, 0.03], "holm")
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.03)


def _synthetic(rng, n_configs=10, n_seeds=6, effect=0.02, between=0.0):
    """Configurations of optimizer.lr × seeds; the error follows the measure within each
    configuration (``effect``) and, with ``between``, through the configuration means too."""
    lr = np.repeat(np.linspace(0.01, 0.1, n_configs), n_seeds)
    config = np.repeat(np.arange(n_configs), n_seeds)
    seed = np.tile(np.arange(n_seeds), n_configs)
    shift = rng.normal(size=n_configs)[config]
    m = rng.normal(size=len(lr)) + shift
    err = 0.3 + effect * (m - shift) + between * shift + 0.01 * rng.normal(size=len(lr)) \
        + 0.005 * rng.normal(size=n_seeds)[seed]
    return pd.DataFrame({"included": True, "seed": seed, "optimizer.lr": lr,
                         "final.train_loss": rng.gamma(2.0, 0.05, size=len(lr)),
                         "final.test_acc": 1 - err, "probe.sharp": m,
                         "probe.noise": rng.normal(size=len(lr)),
                         "probe.probe_seconds": rng.uniform(size=len(lr))})


def test_planted_effect_is_detected_with_its_claims_and_units():
    df = _synthetic(np.random.default_rng(1), between=0.02)
    table = measures_table(df).set_index("measure")
    assert list(table.index) == ["probe.sharp", "probe.noise"]  # probe_seconds is bookkeeping
    row = table.loc["probe.sharp"]
    assert (row["n"], row["n_seeds"], row["n_configs"]) == (60, 6, 10)
    assert row["within_tau"] > 0.5 and row["tau"] > 0.5 and row["psi"] > 0.5
    for col in ("within_tau_p", "within_p", "between_p", "between_p_r", "within_tau_p_holm",
                "within_p_holm", "between_p_holm"):
        assert row[col] < 0.01, col
    # within: the slope per SD of the measure given train loss and configuration effects,
    # equal to the CR2 fit by hand; the planted slope is 0.02 per unit of within-config spread
    x = df["probe.sharp"].to_numpy()
    D, _ = dummies(df["optimizer.lr"])
    X = np.column_stack([np.ones(60), (x - x.mean()) / x.std(ddof=1), df["final.train_loss"], D])
    ref = cluster_ols(1 - df["final.test_acc"], X, df["seed"])
    assert row["within_coef"] == pytest.approx(ref.coef[1], rel=1e-9)
    assert row["within_df"] == pytest.approx(ref.df[1], rel=1e-9)
    assert row["within_coef"] / x.std(ddof=1) == pytest.approx(0.02, rel=0.2)
    assert row["within_ci_low"] < row["within_coef"] < row["within_ci_high"]
    # corrected columns are the corrections of the raw column across measures
    assert table["within_p_holm"].to_numpy() == pytest.approx(correct(table["within_p"], "holm"))
    # "gap" names final.generalization_gap (here set equal to the test error)
    gap = measures_table(df.assign(**{"final.generalization_gap": 1 - df["final.test_acc"]}),
                         ["probe.sharp"], target="gap")
    assert gap["within_tau"][0] == pytest.approx(row["within_tau"])


def test_between_config_effect_is_not_a_within_claim():
    # Only the configuration means relate: the within columns stay null, the between ones fire.
    df = _synthetic(np.random.default_rng(6), effect=0.0, between=0.05)
    row = measures_table(df).set_index("measure").loc["probe.sharp"]
    assert row["within_tau_p"] > 0.05 and row["within_p"] > 0.05
    assert row["between_tau"] > 0.6 and row["between_p"] < 0.01


def test_no_config_or_seed_variation_gives_undefined_columns_not_errors():
    df = _synthetic(np.random.default_rng(7), n_configs=6, n_seeds=1)
    row = measures_table(df).set_index("measure").loc["probe.sharp"]
    assert row["n_seeds"] == 1 and math.isnan(row["within_tau"]) and math.isnan(row["within_p"])
    assert "undefined" in row["within_note"] and row["n_configs"] == 6
    one = _synthetic(np.random.default_rng(8), n_configs=1, n_seeds=8)
    row = measures_table(one).set_index("measure").loc["probe.sharp"]
    assert row["n_configs"] == 1 and math.isnan(row["between_tau"]) and row["within_tau"] > 0.5


def test_joint_regression_matches_cr2_by_hand():
    rng = np.random.default_rng(9)
    df = _synthetic(rng).assign(**{"probe.other": rng.normal(size=60)})
    joint = joint_regression(df, ["probe.sharp", "probe.other"]).set_index("term")
    assert list(joint.index) == ["probe.sharp", "probe.other", "final.train_loss"]
    assert ((joint["n"] == 60).all() and (joint["n_seeds"] == 6).all()
            and 0 < joint["r2"].iloc[0] < 1)
    a, b = df["probe.sharp"].to_numpy(), df["probe.other"].to_numpy()
    D, _ = dummies(df["optimizer.lr"].astype(str))
    X = np.column_stack([np.ones(60), (a - a.mean()) / a.std(ddof=1),
                         (b - b.mean()) / b.std(ddof=1), df["final.train_loss"], D])
    ref = cluster_ols(1 - df["final.test_acc"], X, df["seed"].astype(str))
    assert joint["coef"].to_numpy() == pytest.approx(ref.coef[1:4], rel=1e-9)
    assert joint["p"].to_numpy() == pytest.approx(ref.p[1:4], rel=1e-9)
    assert joint.loc["probe.sharp", "p"] < 0.01 and joint.loc["probe.other", "p"] > 0.01


def test_default_measures_rule():
    n = 10
    df = pd.DataFrame({
        "included": [True] * n + [False],
        "probe.trace": np.arange(n + 1.0),
        "probe.trace_stderr": np.ones(n + 1),  # bookkeeping
        "probe.hvps": np.arange(n + 1),  # bookkeeping
        "probe.eig_all_converged": [True] * (n + 1),  # boolean
        "probe.hvp_method": ["cached"] * (n + 1),  # string
        "probe.constant": np.ones(n + 1),  # no variation
        "probe.sparse": [1.0, 2.0] + [np.nan] * (n - 1),  # too few finite values
        "landscape.line_train_rise_mean": np.arange(n + 1.0) ** 2,
        "landscape.line_train_loss_centre": np.arange(n + 1.0),  # the loss itself, not a measure
        "landscape.landscape_line_seconds": np.arange(n + 1.0),
        "final.train_loss": np.arange(n + 1.0),  # not probe/landscape
    })
    assert default_measures(df) == ["probe.trace", "landscape.line_train_rise_mean"]
