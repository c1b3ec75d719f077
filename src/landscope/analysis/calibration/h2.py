"""Calibration scenarios of H2 (skip connections flatten the landscape; issue #16 items 2, 6-8).

Each dataset is a simulated ``h2_skip`` sweep: ``model.skip`` true/false × ``n_seeds`` seeds,
one job directory per job (``config.yaml`` nested as the runner writes it, ``result.json`` with
``final`` and the probes λmax, trace, outlier count and mass), plus the connectivity files of
``python -m runner.connect``: ``connectivity/model.skip=<v>/<jobA>__<jobB>.json`` with
``{"scalars": {"linear_train_loss_barrier_mean": B}}`` for every pair of seeds within an arm
(8 seeds → 28 pairs per arm). :func:`evaluate` reads it back with
:func:`~landscope.analysis.collect.collect` and runs
:func:`~landscope.analysis.hypotheses.h2.report_tests`, exactly what the report's H2 section
calls.

The world (:func:`simulate`):

- per-job measures: seed s has an effect a_s ~ N(0, 2²) shared by both arms (and, scaled, by
  every measure), each job adds its own noise: λmax = 15 + a_s + N(0, 1) − Δλ·skip,
  trace = 300 + 20 a_s + N(0, 20²) − Δtr·skip, outlier count ~ Poisson(3 + |a_s|/2) (ties and
  zero differences), outlier mass ~ Beta(2, 5);
- barriers: every model (seed s, arm) sits in its own basin that adds u = c_s + b_s,arm to
  *every* barrier it is part of, with c_s ~ N(0, 0.3²) shared by the seed's two models and
  b ~ Exponential(mean 0.5) (skewed, one per model); B(i, j) = 0.2 + u_i + u_j +
  N(0, 0.1²) − ΔB·skip. This is the world in which a Wilcoxon over the 28 pairs of seeds
  rejected far too many null datasets (issue #16), because each model's basin is shared by
  7 pairs.

The rates of these scenarios (``calibrate(scenarios(), R=200)`` and the shipped rates) are in
docs/measurements.md#calibration-h2. In ``h2_null_barriers_unequal_basins`` (the known limit:
skewed seed-level differences, the t on 7 df is anti-conservative) the two ungated barrier rows
are ``stress`` rows (:mod:`~landscope.analysis.calibration.core`): equal mean barriers with an
exponential against a normal basin shape is a null for the mean, and no test of a mean over 8
units holds its level for every shape; the gated row, which decides the verdict, stays a null
row.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from landscope.analysis.calibration.core import Scenario, completed, write_job

SEEDS = 8
BARRIER = "linear_train_loss_barrier_mean"


def _name(skip: bool, seed: int) -> str:
    return f"model.skip={str(skip).lower()},seed={seed}"


def simulate(rng: np.random.Generator, sweep: Path, n_seeds: int = SEEDS, d_lambda: float = 0.0,
             d_trace: float = 0.0, d_barrier: float = 0.0, basin_mean: float = 0.5,
             off_basin: str = "exponential") -> None:
    """One simulated ``h2_skip`` sweep with its connectivity files (see the module docstring).
    ``d_*``: how much lower the measure is with skip connections (the planted effect).
    ``off_basin``: the basin distribution of the skip-off models, ``"exponential"`` (the same
    as skip on) or ``"normal"`` (N(mean, (mean/4)²): same mean, other shape and spread)."""
    seed_effect = rng.normal(0.0, 2.0, n_seeds)
    shared_basin = rng.normal(0.0, 0.3, n_seeds)
    basin = {}
    for skip in (True, False):
        for s in range(n_seeds):
            a = seed_effect[s]
            lam = 15.0 + a + rng.normal(0.0, 1.0) - (d_lambda if skip else 0.0)
            trace = 300.0 + 20.0 * a + rng.normal(0.0, 20.0) - (d_trace if skip else 0.0)
            probes = {"lambda_max": lam, "trace": trace,
                      "density_n_outliers": int(rng.poisson(3.0 + abs(a) / 2.0)),
                      "density_outlier_mass": float(rng.beta(2.0, 5.0))}
            acc = float(np.clip(0.6 + rng.normal(0.0, 0.02), 0.0, 1.0))
            final = {"train_loss": float(rng.uniform(0.5, 1.5)), "train_acc": acc + 0.1,
                     "test_acc": acc, "test_loss": 1.0, "generalization_gap": 0.1, "epoch": 20}
            config = {"seed": s, "name": "h2_skip",
                      "model": {"name": "mlp", "skip": skip, "norm": "none", "depth": 6,
                                "width": 64},
                      "train": {"epochs": 20}, "optimizer": {"name": "sgd", "lr": 0.1}}
            write_job(sweep, _name(skip, s), config, completed(s, final, probes))
            own = rng.exponential(basin_mean) if skip or off_basin == "exponential" \
                else rng.normal(basin_mean, basin_mean / 4.0)
            basin[(skip, s)] = shared_basin[s] + own
    for skip in (True, False):
        group = sweep / "connectivity" / f"model.skip={str(skip).lower()}"
        group.mkdir(parents=True, exist_ok=True)
        for i, j in itertools.combinations(range(n_seeds), 2):
            value = (0.2 + basin[(skip, i)] + basin[(skip, j)] + rng.normal(0.0, 0.1)
                     - (d_barrier if skip else 0.0))
            (group / f"{_name(skip, i)}__{_name(skip, j)}.json").write_text(
                json.dumps({"scalars": {BARRIER: float(value)}}))


def _rejected(verdict: str, power: bool) -> bool:
    from landscope.analysis.hypotheses.paired import NOT_SUPPORTED, SUPPORTED

    return verdict == SUPPORTED if power else verdict in (SUPPORTED, NOT_SUPPORTED)


def evaluate(sweep: Path, power: bool = False, alpha: float = 0.05) -> dict[str, bool | None]:
    """The report's H2 tests on one simulated sweep: ``{test name: rejected}``. Under a null
    a rejection is either verdict word (supported or not supported); with ``power`` only
    ``supported`` (the planted direction) counts."""
    from landscope.analysis.collect import collect
    from landscope.analysis.hypotheses import h2

    coll = collect(sweep)
    results, _ = h2.report_tests(coll.included, coll.swept, [sweep], alpha=alpha)
    res = results[0]
    table = res.table.set_index("measure")
    bar = f"connectivity.{BARRIER}"
    out: dict[str, bool | None] = {}
    out[h2.TEST_PRIMARY] = _rejected(res.verdict, power)
    secondary = [m for m in table.index if table.at[m, "role"] == "secondary" and m != bar]
    out[h2.TEST_SECONDARY] = any(_rejected(table.at[m, "verdict"], power) for m in secondary)
    if bar in table.index:
        row = table.loc[bar]
        out[h2.TEST_BARRIER] = _rejected(row["verdict"], power)
        p, est, p_flip = float(row["p"]), float(row["estimate"]), float(row["t_p"])
        raw = np.isfinite(p) and p < alpha and (est < 0 or not power)
        flip = np.isfinite(p_flip) and p_flip < alpha and (est < 0 or not power)
        out[h2.TEST_BARRIER_RAW] = bool(raw) if np.isfinite(p) else None
        out[h2.TEST_SIGN_FLIP_RAW] = bool(flip) if np.isfinite(p_flip) else None
    return out


def scenarios() -> list[Scenario]:
    """The H2 scenarios: two nulls with model basins in the barriers (gate closed, gate open),
    one with unequal basin shapes across the arms, and a planted skip effect (power)."""
    from landscope.analysis.hypotheses import h2

    everything = {h2.TEST_PRIMARY: "null", h2.TEST_SECONDARY: "null", h2.TEST_BARRIER: "null",
                  h2.TEST_BARRIER_RAW: "null", h2.TEST_SIGN_FLIP_RAW: "null"}
    barrier_null = {h2.TEST_SECONDARY: "null", h2.TEST_BARRIER: "null",
                    h2.TEST_BARRIER_RAW: "null", h2.TEST_SIGN_FLIP_RAW: "null"}
    return [
        Scenario(
            "h2_null_seed_effects", "H2",
            "8 seeds, skip has no effect: per-job measures share a seed effect across arms; "
            "every model's basin adds an Exponential(0.5) amount to each of its 7 barriers",
            lambda rng, sweep: simulate(rng, sweep),
            evaluate, everything),
        Scenario(
            "h2_null_barriers_gate_open", "H2",
            "8 seeds, λmax 3 lower with skip (the gate opens), every other measure and the "
            "barriers without a skip effect; model basins as in h2_null_seed_effects",
            lambda rng, sweep: simulate(rng, sweep, d_lambda=3.0),
            evaluate, barrier_null),
        Scenario(
            "h2_null_barriers_unequal_basins", "H2",
            "as h2_null_barriers_gate_open, but skip-off basins are N(0.5, 0.125²) while "
            "skip-on basins are Exponential(0.5): equal mean barrier, other shape and spread "
            "(skewed seed-level differences: the known limit of the t on n − 1 df; the "
            "ungated rows are stress rows)",
            lambda rng, sweep: simulate(rng, sweep, d_lambda=3.0, off_basin="normal"),
            evaluate, {**barrier_null, h2.TEST_BARRIER_RAW: "stress",
                       h2.TEST_SIGN_FLIP_RAW: "stress"}),
        Scenario(
            "h2_planted_skip", "H2",
            "8 seeds, skip lowers λmax by 1.5, the trace by 30 and every barrier by 1.0; "
            "model basins as in h2_null_seed_effects",
            lambda rng, sweep: simulate(rng, sweep, d_lambda=1.5, d_trace=30.0, d_barrier=1.0),
            lambda sweep: evaluate(sweep, power=True),
            {h2.TEST_PRIMARY: "power", h2.TEST_SECONDARY: "power", h2.TEST_BARRIER: "power",
             h2.TEST_BARRIER_RAW: "power", h2.TEST_SIGN_FLIP_RAW: "power"},
            effect="λmax −1.5 (paired sd 1.41: d_z 1.06), trace −30 (d_z 1.06), barrier −1.0 "
                   "(seed pseudo-value sd 1.41: 0.71 sd per seed)"),
    ]
