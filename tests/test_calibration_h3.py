"""H3's calibration scenarios: the simulated sweeps are read by the report's own loader and
tested by the report's own test; a small-R run of every scenario, and (slow) the null rates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from landscope.analysis.calibration import calibrate
from landscope.analysis.calibration.h3 import EFFECT, FINGERPRINT, MAX_STEPS, n_params, scenarios
from landscope.analysis.hypotheses.h3 import ALIGNMENT, LEGACY, TESTS, load_escapes


def test_scenarios_write_what_the_report_reads(tmp_path):
    every = {s.name: s for s in scenarios()}
    assert set(every) == {"h3_null", "h3_confounded_width", "h3_planted", "h3_noise_null",
                          "h3_noise_planted"}
    scs = {k: v for k, v in every.items() if not k.startswith("h3_noise")}  # the alignment test
    assert all(s.hypothesis == "H3" and set(s.expect) == set(TESTS.values())
               for s in scs.values())
    assert scs["h3_planted"].expect[TESTS["primary"]] == "power"
    assert scs["h3_planted"].expect[TESTS["kappa"]] == "null" and str(EFFECT) in \
        scs["h3_planted"].effect
    sweep = tmp_path / "h3_confounded_width"
    sweep.mkdir()
    scs["h3_confounded_width"].simulate(np.random.default_rng(0), sweep)
    jobs = sorted(p.name for p in sweep.iterdir())
    assert len(jobs) == 12 and "model.width=128,seed=3" in jobs
    result = json.loads((sweep / jobs[0] / "result.json").read_text())
    assert result["status"] == "completed" and result["n_params"] == result["probes"]["n_params"]
    assert (sweep / jobs[0] / "escape" / f"{FINGERPRINT}.json").is_file()
    assert (sweep / jobs[0] / "config.yaml").is_file()
    df = load_escapes(sweep)
    assert len(df) == 12 * 27 and df["job"].nunique() == 12
    assert set(df["n_params"]) == {float(n_params(w)) for w in (32, 64, 128)}
    assert df[ALIGNMENT].between(0, 1).all() and (df[LEGACY] > 0).all()
    assert 0 < (~df["escaped"]).mean() < 0.5 and (df.loc[~df["escaped"], "time"] == MAX_STEPS).all()
    # the confounded world: κ grows with width and the energy share falls
    by_width = df.groupby("n_params")[[LEGACY, ALIGNMENT]].mean()
    assert by_width[LEGACY].is_monotonic_increasing
    assert by_width[ALIGNMENT].is_monotonic_decreasing
    out = scs["h3_confounded_width"].evaluate(sweep)
    assert set(out) == set(TESTS.values()) and all(isinstance(v, bool) for v in out.values())


def test_small_r_runs_every_scenario():
    table = calibrate(scenarios(), R=4, seed=1)
    assert len(table) == 9 + 4 and (table["runs"] + table["failed"] == 4).all()
    assert (table["failed"] == 0).all()
    assert set(table["kind"]) == {"null", "power"}


@pytest.mark.slow
def test_null_rates_bounded():
    # R = 60 per scenario: every null rate within the binomial error of 5 % (≤ 0.05 + 3 sd
    # ≈ 0.134 at R = 60; the shipped goal, ≤ 6.5 % at R = 200, is measured by
    # python -m runner.calibrate); the primary test has some power at the planted size
    table = calibrate(scenarios(), R=60, seed=3)
    null = table[table["kind"] == "null"]
    assert (null["rate"] <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 60)).all(), null
    planted = table[(table["scenario"] == "h3_planted") & (table["test"] == TESTS["primary"])]
    assert planted["rate"].iloc[0] > 0.1
