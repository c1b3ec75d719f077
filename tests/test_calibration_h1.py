"""The H1 calibration scenarios (landscope.analysis.calibration.h1): simulated h1_batch and
h1_mediation sweeps in the results contract, read back with collect() and tested with what the
report's H1 section calls (h1_test). The fast test runs a few datasets per scenario; the slow one
bounds the false-positive rates at R = 60."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from landscope.analysis.calibration import NULL_LIMIT, calibrate
from landscope.analysis.calibration.h1 import evaluate, scenarios, simulate
from landscope.analysis.collect import collect
from landscope.analysis.hypotheses.h1 import TESTS


def test_scenarios_are_named_and_cover_the_report_tests():
    scs = scenarios()
    names = [s.name for s in scs]
    assert len(set(names)) == len(names) and all(s.hypothesis == "H1" for s in scs)
    assert {"h1_null", "h1_direct_only", "h1_chain", "h1_lr_direct_only",
            "h1_lr_chain"} <= set(names)
    kinds = {(t, k) for s in scs for t, k in s.expect.items()}
    for test in TESTS.values():
        assert (test, "null") in kinds and (test, "power") in kinds, test
    for s in scs:
        if "direct_only" in s.name:  # the chain is false there: "supported" is a false positive
            assert s.expect["H1 supported"] == "null" and s.effect


def test_simulated_sweep_is_read_back_like_a_real_one(tmp_path):
    sweep = tmp_path / "h1_mediation"
    sweep.mkdir()
    simulate(np.random.default_rng(0), sweep, a=3.0, b=0.004, design="lr")
    jobs = collect(sweep).included
    assert len(jobs) == 54 and (jobs["stop_reason"] == "target_train_loss").all()
    assert sorted(jobs["optimizer.lr"].unique()) == [0.05, 0.1, 0.2]
    assert sorted(jobs["train.batch_size"].unique()) == [16, 64, 256]
    assert jobs["test_error"].notna().all() and jobs["probe.lambda_max"].notna().all()
    out = evaluate(sweep)
    assert set(out) == {"H1 supported", "H1 not supported", "H1 step a", "H1 b′", "H1 direct",
                        "H1 indirect"}
    assert out["H1 step a"] is True and out["H1 supported"] is True


def test_direct_effect_only_world_is_not_called_supported():
    scs = {s.name: s for s in scenarios()}
    df = calibrate([scs["h1_direct_only"], scs["h1_lr_direct_only"], scs["h1_lr_chain"]], R=40)
    assert (df["failed"] == 0).all() and (df["runs"] == 40).all()
    rate = df.set_index(["scenario", "test"])["rate"]
    assert rate["h1_direct_only", "H1 supported"] <= 0.10  # measured 2.5 % at R = 200
    assert rate["h1_lr_direct_only", "H1 supported"] <= 0.10
    assert rate["h1_lr_direct_only", "H1 not supported"] >= 0.8  # direct effect only, said so
    assert rate["h1_lr_chain", "H1 supported"] >= 0.8


@pytest.mark.slow
def test_null_rates_within_a_binomial_bound():
    R = 60  # kept small for make test's 10 minutes; the shipped rates use 200-1000
    df = calibrate(scenarios(), R=R)
    null = df[df["kind"] == "null"]
    # at most the one-sided 99.5 % binomial quantile around 5 % (R = 60: 8 rejections)
    bound = stats.binom.ppf(0.995, R, 0.05)
    worst = null.loc[null["rejections"].idxmax()]
    assert (null["rejections"] <= bound).all(), worst.to_dict()
    assert NULL_LIMIT == 0.065
