"""Calibration scenarios of the initialization-scale study (issue #20 item 4;
:mod:`landscope.analysis.init_scale`).

Each dataset is a simulated ``init_scale`` sweep (``conf/experiment/init_scale.yaml``): scales
0.25, 0.5, 1, 2, 4 × 4 seeds, one job directory per job (``config.yaml`` nested as the runner
writes it, ``{"seed": s, "name": "init_scale", "model": {"init_scale": ...}, ...}``;
``result.json`` with ``final`` (train loss, test accuracy) and the probes λmax and trace).
:func:`evaluate` reads it back with :func:`~landscope.analysis.collect.collect` and calls exactly
what the section calls: :func:`~landscope.analysis.init_scale.study_jobs`,
:func:`~landscope.analysis.init_scale.trend_table` and
:func:`~landscope.analysis.init_scale.association_table`.

The world (:func:`simulate`), with L = log2(scale) and seed effects shared by every scale of a
seed (the same initial draw, scaled): λmax = 10 + a·L + u_s + N(0, 1), trace = 200 + t·L +
30 u_s + N(0, 20²), test error = 0.35 + c·L + q·L² + v_s + N(0, 0.01²), u_s ~ N(0, 1),
v_s ~ N(0, 0.02²); ``level_sd`` adds a random effect per scale (shared by every seed of it; sd
``level_sd`` times each measure's job noise sd) with no trend.

Scenarios: ``init_null`` (a = t = c = 0: every test null); ``init_null_level_effects``
(per-scale effects of 1 job-noise sd, no trend: null for the τ tests, whose permutation of the
scales is exact under exchangeable scales; a *stress* row for the per-seed slope test, which
treats the scales run as fixed levels and so counts their chance trend as an effect);
``init_planted_u`` (test error + 0.01·L², a U; nothing else: the curvature test's power, the
others' null); ``init_planted`` (a = −1, t = −20, c = +0.01 per doubling, one job-noise sd
each: the power with 4 seeds, and a null for the curvature test;
with a < 0 and c > 0 the per-scale means of λmax and test error fall in opposite order, the
association's power).

The rates (``calibrate(scenarios(), R=200)``; stored in rates.csv, hypothesis ``init_scale``)
are quoted by the section and in the report's appendix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landscope.analysis.calibration.core import Scenario, completed, write_job

SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)
SEEDS = 4
NOISE = {"lambda_max": 1.0, "trace": 20.0, "error": 0.01}
PLANTED = {"a": -1.0, "t": -20.0, "c": 0.01}  # one job-noise sd per doubling
U_SHAPE = 0.01  # test error's coefficient of log2(scale)²


def simulate(rng: np.random.Generator, sweep: Path, a: float = 0.0, t: float = 0.0,
             c: float = 0.0, level_sd: float = 0.0, q: float = 0.0, n_seeds: int = SEEDS
             ) -> None:
    """One simulated ``init_scale`` sweep (module docstring): ``a``, ``t``, ``c`` the λmax,
    trace and test-error slopes per doubling of the scale; ``q`` the test error's curvature
    (coefficient of L²); ``level_sd`` per-scale effects in units of each measure's job
    noise."""
    level = {k: rng.normal(0.0, level_sd * sd, len(SCALES)) for k, sd in NOISE.items()}
    for s in range(n_seeds):
        u, v = rng.normal(0.0, 1.0), rng.normal(0.0, 0.02)
        for i, scale in enumerate(SCALES):
            L = float(np.log2(scale))
            lam = 10.0 + a * L + u + level["lambda_max"][i] + rng.normal(0.0, NOISE["lambda_max"])
            tr = 200.0 + t * L + 30.0 * u + level["trace"][i] + rng.normal(0.0, NOISE["trace"])
            err = 0.35 + c * L + q * L * L + v + level["error"][i] + rng.normal(0.0, NOISE["error"])
            final = {"train_loss": float(rng.uniform(0.01, 0.2)), "train_acc": 0.99,
                     "test_acc": 1.0 - err, "test_loss": 1.5,
                     "generalization_gap": 0.99 - (1.0 - err), "epoch": 50}
            config = {"seed": s, "name": "init_scale",
                      "model": {"name": "mlp", "width": 128, "depth": 3, "init_scale": scale},
                      "optimizer": {"name": "sgd", "lr": 0.1}, "train": {"epochs": 50},
                      "dataset": {"name": "mnist1d"}, "probe": {"name": "basic"},
                      "landscape": {"name": "none"}}
            write_job(sweep, f"model.init_scale={scale:g},seed={s}", config,
                      completed(s, final, {"lambda_max": lam, "trace": tr}))


def evaluate(sweep: Path, alpha: float = 0.05, power: bool | str = False
             ) -> dict[str, bool | None]:
    """The section's tests on one simulated sweep: ``{test: rejected}``. With ``power`` a
    rejection counts only in the planted direction (λmax falling with the scale, the means of
    λmax and test error in opposite order); with ``power="curve"`` the curvature test counts
    the test error's row only, curving upward (a U)."""
    from landscope.analysis import init_scale as study
    from landscope.analysis.collect import collect

    coll = collect(sweep)
    if study.SCALE not in coll.swept:
        return {name: None for name in study.TESTS.values()}
    jobs = study.study_jobs(coll.included)
    trend = study.trend_table(jobs).set_index("measure")
    assoc = study.association_table(jobs)
    lam = trend.loc["probe.lambda_max"]
    pair = assoc[(assoc["sharpness"] == "λmax") & (assoc["error"] == "test error")].iloc[0]

    def hit(p: float, est: float, sign: float) -> bool | None:
        if not np.isfinite(p):
            return None
        return bool(p < alpha and (not power or np.sign(est) == sign))

    def any_row(col: str) -> bool | None:
        return None if not np.isfinite(trend[col]).all() else bool((trend[col] < alpha).any())

    err = trend.loc["test_error"]
    curve = (hit(err["curve_p_holm"], err["curve"], 1.0) if power == "curve"
             else any_row("curve_p_holm"))
    return {study.TESTS["slope"]: any_row("slope_p_holm"), study.TESTS["curve"]: curve,
            study.TESTS["slope_lambda"]: hit(lam["slope_p"], lam["slope"], -1.0),
            study.TESTS["tau_lambda"]: hit(lam["tau_p"], lam["tau"], -1.0),
            study.TESTS["assoc"]: hit(pair["p"], pair["tau"], -1.0)}


def scenarios() -> list[Scenario]:
    """A null, a null with per-scale effects (stress for the per-seed tests), a planted linear
    trend and a planted U-shaped test error (power)."""
    from landscope.analysis.init_scale import TESTS

    names = list(TESTS.values())
    linear = {**dict.fromkeys(names, "power"), TESTS["curve"]: "null"}
    u_shape = {**dict.fromkeys(names, "null"), TESTS["curve"]: "power"}
    design = f"{len(SCALES)} scales × {SEEDS} seeds"
    return [
        Scenario("init_null", "init_scale",
                 f"{design}; no effect of the scale: seed effects shared across scales "
                 "(λmax sd 1, trace sd 30, test error sd 0.02), job noise (1, 20, 0.01)",
                 lambda rng, d: simulate(rng, d), evaluate, dict.fromkeys(names, "null")),
        Scenario("init_null_level_effects", "init_scale",
                 f"{design}; as init_null plus a random effect per scale (sd = job noise) on "
                 "every measure, no trend",
                 lambda rng, d: simulate(rng, d, level_sd=1.0), evaluate,
                 {TESTS["slope"]: "stress", TESTS["curve"]: "stress",
                  TESTS["slope_lambda"]: "stress",
                  TESTS["tau_lambda"]: "null", TESTS["assoc"]: "null"}),
        Scenario("init_planted", "init_scale",
                 f"{design}; per doubling of the scale λmax −1, trace −20, test error "
                 "+0.01 (one job-noise sd each)",
                 lambda rng, d: simulate(rng, d, **PLANTED),
                 lambda d: evaluate(d, power=True), linear,
                 effect="per doubling: λmax −1, trace −20, test error +0.01 (1 noise sd); 4 seeds"),
        Scenario("init_planted_u", "init_scale",
                 f"{design}; test error U-shaped in the scale, +{U_SHAPE:g}·log2(scale)² "
                 "(0.04 higher at scales 1/4 and 4 than at 1; noise sd 0.01), nothing else",
                 lambda rng, d: simulate(rng, d, q=U_SHAPE),
                 lambda d: evaluate(d, power="curve"), u_shape,
                 effect=f"test-error curvature {U_SHAPE:g} per doubling² (noise sd 0.01); "
                        "4 seeds"),
    ]
