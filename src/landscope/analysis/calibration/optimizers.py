"""Calibration scenarios of the optimizer study (issue #7; issue #16 items 7-8).

Each dataset is a simulated ``optimizer_study`` sweep (``conf/experiment/optimizer_study.yaml``):
SGD, momentum, Adam, SAM and LLP × 5 seeds, one job directory per job (``config.yaml`` nested as
the runner writes it, ``{"seed": s, "name": "optimizer_study", "optimizer": {"name": ..., "lr":
...}, ...}``; ``result.json`` with ``final`` (test accuracy, grad_evals) and the probes λmax and
trace; for LLP a ``metrics.jsonl`` with ``llp_curvature`` and ``llp_lr`` per epoch, which the
section averages). :func:`evaluate` reads it back with :func:`~landscope.analysis.collect.collect`
and calls exactly what the section calls: :func:`~landscope.analysis.optimizer_study.job_table`
and :func:`~landscope.analysis.optimizer_study.paired_tests` (paired t over seeds, Holm across
the baselines, one family per measure).

The world (:func:`simulate`): seed s has an effect a_s ~ N(0, 1) shared by every optimizer's
job with that seed (data order, initialisation); each job adds its own noise:
test accuracy = 0.70 + 0.02 a_s + e (e ~ N(0, 0.01²)), λmax = 20 + 3 a_s + e (sd 1.5),
trace = 400 + 60 a_s + e (sd 30); in the planted scenario SGD's jobs are shifted so that
LLP − SGD is the planted effect (LLP equals the other baselines). ``skewed=True`` draws LLP's job
noise as sd·(Exponential(1) − 1): mean 0, same sd, skewness 2 (LLP occasionally trains much worse or
sharper), the paired t-test's known weak spot with 5 pairs.

The tests (:data:`landscope.analysis.optimizer_study.TESTS`, one per measure): under a null a
dataset counts as a rejection when the verdict of *any* baseline on that measure is
``higher`` or ``lower`` (the family-wise rate Holm controls); under the planted scenario (LLP
differs from SGD only) when the SGD row's verdict is the planted direction.

LLP's meta-model (issue 21): ``simulate(meta=...)`` adds a sixth arm, LLP + meta (config
``optimizer.name = llp``, ``optimizer.llp.meta = true``, as ``optimizer=llp_meta`` writes it),
shifted from LLP by ``meta`` per measure. :func:`evaluate_meta` scores the direct comparison
LLP + meta − LLP (:data:`~landscope.analysis.optimizer_study.META_TESTS`, one test per
measure) and, under the null (``opt_meta_null``: LLP + meta = LLP = every baseline), also the
LLP + meta − baseline family (the same :data:`TESTS`, so their calibration covers both
challengers); ``opt_meta_planted`` gives the power at LLP + meta − LLP = +0.02 accuracy, −3
λmax, −60 trace (d_z 1.41 each).

The rates of these scenarios (``calibrate(scenarios(), R=200)``; stored in rates.csv,
hypothesis ``optimizers``): docs/measurements.md#calibration-optimizers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping

import numpy as np

from landscope.analysis.calibration.core import Scenario, completed, write_job

SEEDS = 5
BASELINES = ("sgd", "momentum", "adam", "sam")
OPTIMIZERS = BASELINES + ("llp",)
LR = {"sgd": 0.1, "momentum": 0.03, "adam": 0.003, "sam": 0.03, "llp": 0.1}
GRAD_EVALS = {"sgd": 1.0, "momentum": 1.0, "adam": 1.0, "sam": 2.0, "llp": 1.4}
# measure: (level, seed-effect scale, job noise sd)
WORLD = {"final.test_acc": (0.70, 0.02, 0.01), "probe.lambda_max": (20.0, 3.0, 1.5),
         "probe.trace": (400.0, 60.0, 30.0)}
# planted LLP − SGD differences (power): 2.12 paired sd each (paired sd = √2 · job sd)
PLANTED = {"final.test_acc": -0.03, "probe.lambda_max": 4.5, "probe.trace": 90.0}
# planted LLP + meta − LLP differences (power of the meta comparison): 1.41 paired sd each
META_PLANTED = {"final.test_acc": 0.02, "probe.lambda_max": -3.0, "probe.trace": -60.0}


def _noise(rng: np.random.Generator, sd: float, skewed: bool) -> float:
    return sd * (float(rng.exponential(1.0)) - 1.0) if skewed else float(rng.normal(0.0, sd))


def simulate(rng: np.random.Generator, sweep: Path, n_seeds: int = SEEDS,
             planted: Mapping[str, float] | None = None, skewed: bool = False,
             meta: Mapping[str, float] | None = None) -> None:
    """One simulated ``optimizer_study`` sweep (see the module docstring). ``planted``: LLP −
    SGD difference per measure (SGD only; LLP equals the other baselines). ``skewed``: LLP's
    job noise is a centred exponential (mean 0, same sd). ``meta``: add the LLP + meta arm
    (``optimizer=llp_meta``: name llp, ``llp.meta`` true) with LLP + meta − LLP = ``meta``
    per measure (its own job noise)."""
    planted = dict(planted or {})
    seed_effect = rng.normal(0.0, 1.0, n_seeds)
    for opt in OPTIMIZERS + (("llp_meta",) if meta is not None else ()):
        for s in range(n_seeds):
            value = {}
            for col, (level, scale, sd) in WORLD.items():
                v = level + scale * seed_effect[s] + _noise(rng, sd, skewed and opt == "llp")
                if opt == "sgd":
                    v -= planted.get(col, 0.0)  # LLP − SGD = planted
                if opt == "llp_meta":
                    v += dict(meta or {}).get(col, 0.0)  # LLP + meta − LLP = meta
                value[col] = v
            acc = float(np.clip(value["final.test_acc"], 0.0, 1.0))
            final = {"train_loss": float(rng.uniform(0.5, 1.0)), "train_acc": acc + 0.05,
                     "test_acc": acc, "test_loss": 1.0, "generalization_gap": 0.05,
                     "epoch": 40, "grad_evals": int(round(GRAD_EVALS.get(opt, 1.4) * 40 * 63))}
            probes = {"lambda_max": value["probe.lambda_max"], "trace": value["probe.trace"]}
            optimizer = {"name": opt if opt != "llp_meta" else "llp", "lr": LR.get(opt, 0.1)}
            if opt in ("momentum", "sam"):
                optimizer["momentum"] = 0.9
            if opt in ("llp", "llp_meta"):
                optimizer.update(base="sgd", llp={"probes": 4, "eps": 0.001, "every": 10,
                                                  "c": 1.0, "meta": opt == "llp_meta"})
            config = {"seed": s, "name": "optimizer_study",
                      "model": {"name": "mlp", "width": 128, "depth": 3, "activation": "gelu"},
                      "optimizer": optimizer, "train": {"epochs": 40},
                      "dataset": {"name": "mnist1d"}, "probe": {"name": "standard"},
                      "landscape": {"name": "none"}}
            job = write_job(sweep, f"optimizer={opt},seed={s}", config,
                            completed(s, final, probes))
            if opt in ("llp", "llp_meta"):
                rows = [{"epoch": e, "llp_curvature": float(3.0 + e + rng.normal(0.0, 0.5)),
                         "llp_lr": float(min(0.1, 1.0 / (3.0 + e)))} for e in (1, 2, 3)]
                (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def evaluate(sweep: Path, power: bool = False) -> dict[str, bool | None]:
    """Exactly what the report's optimizer-study section calls, on one simulated sweep:
    ``collect`` → :func:`~landscope.analysis.optimizer_study.applies`,
    :func:`~landscope.analysis.optimizer_study.job_table`,
    :func:`~landscope.analysis.optimizer_study.paired_tests`. Returns ``{test name:
    rejected}``: under a null any baseline's verdict ``higher``/``lower`` on that measure; with
    ``power`` the SGD row's verdict in the planted direction. ``None`` when the section would
    not apply or a row could not be tested."""
    from landscope.analysis import optimizer_study as study
    from landscope.analysis.collect import collect

    coll = collect(sweep)
    out: dict[str, bool | None] = {}
    if not study.applies(SimpleNamespace(coll=coll)):
        return {name: None for name in study.TESTS.values()}
    inc = coll.included
    tests = study.paired_tests(inc, list(coll.swept), study.job_table(inc))
    for col, name in study.TESTS.items():
        t = tests[tests["measure"] == col]
        t = t[t["challenger"] == "llp"]
        if t.empty or not np.isfinite(t["t_p_holm"].to_numpy(float)).all():
            out[name] = None
            continue
        if power:
            row = t[t["baseline"] == "sgd"].iloc[0]
            want = "higher" if PLANTED[col] > 0 else "lower"
            out[name] = bool(row["verdict"] == want)
        else:
            out[name] = bool(t["verdict"].isin(["higher", "lower"]).any())
    return out


def evaluate_meta(sweep: Path, power: bool = False) -> dict[str, bool | None]:
    """As :func:`evaluate`, for the LLP + meta − LLP rows (:data:`~landscope.analysis.
    optimizer_study.META_TESTS`): under the null the verdict ``higher``/``lower``, with
    ``power`` the verdict in the planted direction. Under the null also the LLP + meta −
    baseline rows (the :data:`~landscope.analysis.optimizer_study.TESTS` family with 6 arms):
    any verdict ``higher``/``lower``."""
    from landscope.analysis import optimizer_study as study
    from landscope.analysis.collect import collect

    coll = collect(sweep)
    if not study.applies(SimpleNamespace(coll=coll)):
        return {name: None for name in study.META_TESTS.values()}
    inc = coll.included
    tests = study.paired_tests(inc, list(coll.swept), study.job_table(inc))
    out: dict[str, bool | None] = {}
    for col, name in study.META_TESTS.items():
        t = tests[tests["test"] == name]
        if len(t) != 1 or not np.isfinite(float(t["t_p_holm"].iloc[0])):
            out[name] = None
            continue
        verdict = t["verdict"].iloc[0]
        want = "higher" if META_PLANTED[col] > 0 else "lower"
        out[name] = bool(verdict == want) if power else bool(verdict in ("higher", "lower"))
    if not power:
        rows = tests[(tests["challenger"] == study.META) & tests["test"].isin(study.TESTS.values())]
        for col, name in study.TESTS.items():
            t = rows[rows["measure"] == col]
            ok = len(t) and np.isfinite(t["t_p_holm"].to_numpy(float)).all()
            out[name] = bool(t["verdict"].isin(["higher", "lower"]).any()) if ok else None
    return out


def scenarios() -> list[Scenario]:
    """Two nulls (LLP = every baseline: normal job noise; LLP's noise skewed) and a planted
    LLP − SGD difference (power); with the LLP + meta arm, a null (LLP + meta = LLP = every
    baseline) and a planted LLP + meta − LLP difference (power)."""
    from landscope.analysis.optimizer_study import META_TESTS, TESTS

    null = {name: "null" for name in TESTS.values()}
    paired_sd = {col: math.sqrt(2.0) * sd for col, (_, _, sd) in WORLD.items()}
    effect = ", ".join(f"{col.split('.')[-1]} {PLANTED[col]:+g} (d_z "
                       f"{abs(PLANTED[col]) / paired_sd[col]:.2f})" for col in PLANTED)
    return [
        Scenario(
            "opt_null_seed_effects", "optimizers",
            f"{len(OPTIMIZERS)} optimizers × {SEEDS} seeds, LLP = every baseline: per-seed "
            "effects shared across optimizers (sd 0.02, 3 and 60 for accuracy, λmax, trace), "
            "normal job noise (sd 0.01, 1.5, 30)",
            lambda rng, sweep: simulate(rng, sweep), evaluate, dict(null)),
        Scenario(
            "opt_null_skewed_llp", "optimizers",
            "as opt_null_seed_effects, but LLP's job noise is a centred exponential (mean 0, "
            "same sd, skewness 2): skewed paired differences on 5 seeds",
            lambda rng, sweep: simulate(rng, sweep, skewed=True), evaluate, dict(null)),
        Scenario(
            "opt_planted_sgd", "optimizers",
            "as opt_null_seed_effects, but LLP − SGD = −0.03 test accuracy, +4.5 λmax, +90 "
            "trace; LLP equals momentum, Adam and SAM (Holm across 4 baselines, 3 true nulls)",
            lambda rng, sweep: simulate(rng, sweep, planted=PLANTED),
            lambda sweep: evaluate(sweep, power=True),
            {name: "power" for name in TESTS.values()},
            effect=f"LLP − SGD: {effect}; 5 seeds"),
        Scenario(
            "opt_meta_null", "optimizers",
            "as opt_null_seed_effects with a sixth arm, LLP + meta (optimizer.llp.meta=true), "
            "equal to LLP and every baseline: the LLP + meta − LLP tests and the LLP + meta − "
            "baseline family (Holm across 4 baselines)",
            lambda rng, sweep: simulate(rng, sweep, meta={}), evaluate_meta,
            {**null, **{name: "null" for name in META_TESTS.values()}}),
        Scenario(
            "opt_meta_planted", "optimizers",
            "as opt_meta_null, but LLP + meta − LLP = +0.02 test accuracy, −3 λmax, −60 trace",
            lambda rng, sweep: simulate(rng, sweep, meta=META_PLANTED),
            lambda sweep: evaluate_meta(sweep, power=True),
            {name: "power" for name in META_TESTS.values()},
            effect="LLP + meta − LLP: " + ", ".join(
                f"{col.split('.')[-1]} {META_PLANTED[col]:+g} (d_z "
                f"{abs(META_PLANTED[col]) / paired_sd[col]:.2f})" for col in META_PLANTED)
            + "; 5 seeds"),
    ]
