"""Calibration of the optimizer study's tests (landscope.analysis.calibration.optimizers):
simulated optimizer_study sweeps in the results contract, read back with collect() and tested
exactly as the report's optimizer-study section does. Fast: a few datasets per scenario,
structure and speed. Slow: R = 60 per scenario, the null rates within a bound and the power
printed (measured at R = 200, seed 0, rates.csv hypothesis "optimizers": null 3.0-5.5 %, the worst
5.5 % [2.8, 9.6] (trace, skewed LLP noise); power 70 % test accuracy, 62 % λmax, 67 % trace at
d_z 2.1 against one of four baselines)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from landscope.analysis.calibration import MODULES, all_scenarios, calibrate
from landscope.analysis.calibration.optimizers import (
    OPTIMIZERS,
    SEEDS,
    evaluate,
    evaluate_meta,
    scenarios,
)
from landscope.analysis.collect import collect
from landscope.analysis.optimizer_study import META_TESTS, TESTS, job_table, paired_tests


def test_scenarios_write_the_sweep_the_section_reads(tmp_path):
    assert "optimizers" in MODULES
    sc = {s.name: s for s in scenarios()}
    assert set(sc) == {"opt_null_seed_effects", "opt_null_skewed_llp", "opt_planted_sgd",
                       "opt_meta_null", "opt_meta_planted"}
    assert all(s.hypothesis == "optimizers" for s in sc.values())
    assert {s.name for s in all_scenarios(("optimizers",))} == set(sc)
    assert set(sc["opt_planted_sgd"].expect) == set(TESTS.values())
    assert set(sc["opt_planted_sgd"].expect.values()) == {"power"} and sc["opt_planted_sgd"].effect
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    sc["opt_planted_sgd"].simulate(np.random.default_rng(0), sweep)
    coll = collect(sweep)
    inc = coll.included
    assert len(inc) == len(OPTIMIZERS) * SEEDS
    assert "optimizer.name" in coll.swept and "seed" not in coll.swept
    assert {"final.test_acc", "probe.lambda_max", "probe.trace", "final.grad_evals"} <= set(inc)
    jobs = job_table(inc)
    assert jobs.loc[jobs["optimizer"] == "llp", "llp_curvature"].notna().all()  # metrics.jsonl
    evaluate(sweep)  # warm the imports
    start = time.perf_counter()
    out = evaluate(sweep, power=True)
    assert time.perf_counter() - start < 2.0  # ~0.1 s on an idle core
    assert set(out) == set(TESTS.values()) and all(isinstance(v, bool) for v in out.values())


def test_the_meta_arm_is_told_apart_and_its_tests_evaluated(tmp_path):
    sc = {s.name: s for s in scenarios()}
    assert set(sc["opt_meta_planted"].expect) == set(META_TESTS.values())
    assert set(sc["opt_meta_null"].expect) == set(META_TESTS.values()) | set(TESTS.values())
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    sc["opt_meta_planted"].simulate(np.random.default_rng(0), sweep)
    inc = collect(sweep).included
    jobs = job_table(inc)
    assert (jobs["optimizer"] == "llp+meta").sum() == SEEDS == (jobs["optimizer"] == "llp").sum()
    tests = paired_tests(inc, list(collect(sweep).swept), jobs)
    meta = tests[tests["test"].isin(META_TESTS.values())]
    assert list(meta["baseline"]) == ["llp"] * 3 and (meta["n"] == SEEDS).all()
    assert len(tests) == 2 * 3 * 4 + 3  # two challengers × 3 measures × 4 baselines, + meta
    out = evaluate_meta(sweep, power=True)
    assert set(out) == set(META_TESTS.values()) and all(isinstance(v, bool) for v in out.values())
    assert evaluate(sweep, power=True).keys() == set(TESTS.values())  # LLP rows only


def test_small_calibration_run():
    table = calibrate(scenarios(), R=3)
    assert len(table) == 4 * len(TESTS) + 2 * len(META_TESTS) and (table["runs"] == 3).all()
    assert (table["failed"] == 0).all()
    assert set(table["hypothesis"]) == {"optimizers"}


@pytest.mark.slow
def test_null_rates_within_the_bound_and_power_printed():
    table = calibrate(scenarios(), R=60, seed=1)
    print(table[["scenario", "test", "kind", "rate", "low", "high"]].to_string())
    null = table[table["kind"] == "null"]
    # at R = 60 the binomial error is wide: 5 % true rate gives ≤ 7/60 in 99 % of runs (seed 1:
    # worst 6/60)
    assert (null["rate"] <= 7 / 60).all(), null
    power = table[table["kind"] == "power"]
    assert (power["rate"] >= 0.2).all(), power
