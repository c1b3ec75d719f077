"""Calibration scenarios of H4 (:mod:`landscope.analysis.hypotheses.h4`).

A simulated sweep is the ``h4_pacbayes`` design: 4 configurations (MLP width 16/64 x SGD/Adam) x
``n_seeds`` seeds, one job each, carrying the PAC-Bayes scalars the H4 section reads (bounds,
complexity terms at matched posterior error, Monte Carlo errors). Log complexities are

    ln B_iso   = base + u_config + v_seed + e
    ln B_hess  = ln B_iso + shift + a_config + b_seed + eps      (a, b, eps: mean-zero noise)
    ln B_naive = ln B_hess - shift_naive + a'_config + b'_seed + eps'

so both the levels and the Hessian–isotropic difference carry per-configuration and per-seed
shared effects (jobs of one configuration or one seed are not independent).

Scenarios:

- ``h4_null_margin``: ``shift = shift_naive = ln(1 - margin)``: the Hessian complexity is exactly
  at the margin against both others (the test's null): rejections of each row are false
  positives, and so is an overall "supported";
- ``h4_null_margin_fixed``: the same without per-configuration effects on the log ratios (the
  null of the configs-fixed column, which the per-configuration effects of ``h4_null_margin``
  violate for that narrower claim);
- ``h4_null_equal``: ``shift = 0`` (no tightening at all) and the naive complexity equal to the
  Hessian one: "supported" must not be said;
- ``h4_planted``: the Hessian complexity 25 % below the isotropic one (ratio 0.75) and 90 % below
  the naive one: the power of each row and of the verdict.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from landscope.analysis.calibration.core import Scenario, completed, write_job

MARGIN = 0.05
CONFIGS = [(16, "sgd"), (16, "adam"), (64, "sgd"), (64, "adam")]
N_SEEDS = 4
SD_CONFIG, SD_SEED, SD_NOISE = 0.15, 0.1, 0.1  # of the log-ratio effects
ISO, HESS, NAIVE = "isotropic", "hessian", "naive"
TESTS = ("H4 complexity vs isotropic", "H4 complexity vs naive", "H4 supported (verdict)",
         "H4 complexity vs isotropic (configs fixed)")


def _simulate(shift: float, shift_naive: float, n_seeds: int = N_SEEDS,
              sd_config: float = SD_CONFIG):
    def simulate(rng: np.random.Generator, sweep: Path) -> None:
        C = len(CONFIGS)
        u, v = rng.normal(0, 0.5, C), rng.normal(0, 0.3, n_seeds)  # level effects
        a, b = rng.normal(0, sd_config, C), rng.normal(0, SD_SEED, n_seeds)
        a2, b2 = rng.normal(0, sd_config, C), rng.normal(0, SD_SEED, n_seeds)
        for ci, (width, opt) in enumerate(CONFIGS):
            for s in range(n_seeds):
                log_iso = math.log(0.05) + u[ci] + v[s] + rng.normal(0, SD_NOISE)
                log_hes = log_iso + shift + a[ci] + b[s] + rng.normal(0, SD_NOISE)
                log_naive = log_hes - shift_naive + a2[ci] + b2[s] + rng.normal(0, SD_NOISE)
                e_mc = float(np.clip(rng.normal(0.3, 0.03), 0.01, 0.99))
                probes = {
                    "pacbayes_matched_complexity_isotropic": math.exp(log_iso),
                    "pacbayes_matched_complexity_hessian": math.exp(log_hes),
                    "pacbayes_complexity_isotropic": math.exp(log_iso),
                    "pacbayes_complexity_hessian": math.exp(log_hes),
                    "pacbayes_complexity_naive": math.exp(log_naive),
                    "pacbayes_matched_error": e_mc,
                    "pacbayes_isotropic_e_mc": e_mc, "pacbayes_hessian_e_mc": e_mc,
                    "pacbayes_isotropic": min(1.0, e_mc + math.sqrt(math.exp(log_iso) / 2)),
                    "pacbayes_hessian": min(1.0, e_mc + math.sqrt(math.exp(log_hes) / 2)),
                    "pacbayes_naive": min(1.0, 0.2 + math.sqrt(math.exp(log_naive) / 2)),
                    "pacbayes_hessian_is_isotropic": 0.0,
                }
                config = {"seed": s, "name": "h4_pacbayes",
                          "model": {"name": "mlp", "width": width, "depth": 3},
                          "optimizer": {"name": opt, "lr": 0.05 if opt == "sgd" else 0.001},
                          "dataset": {"name": "mnist1d", "classes": None},
                          "probe": {"name": "pacbayes", "pacbayes": {"enabled": True}}}
                final = {"train_acc": float(rng.uniform(0.7, 0.9)),
                         "test_acc": float(rng.uniform(0.6, 0.8))}
                write_job(sweep, f"model.width={width},optimizer={opt},seed={s}", config,
                          completed(s, final, probes))
    return simulate


def evaluate(sweep: Path) -> dict[str, bool | None]:
    """Exactly what the report's H4 section calls: ``h4_test(collect(...).included,
    config_keys=collection.swept)``."""
    from landscope.analysis.collect import collect
    from landscope.analysis.hypotheses.h4 import h4_test

    coll = collect(sweep)
    res = h4_test(coll.included, config_keys=coll.swept)
    rows = res.table.set_index("other")
    out: dict[str, bool | None] = {}
    for other, name in ((ISO, TESTS[0]), (NAIVE, TESTS[1])):
        p = float(rows.loc[other, "p_holm"])
        out[name] = None if not math.isfinite(p) else bool(p < res.alpha)
    out[TESTS[2]] = res.verdict == "supported"
    p_fixed = float(rows.loc[ISO, "p_fixed_holm"])
    out[TESTS[3]] = None if not math.isfinite(p_fixed) else bool(p_fixed < res.alpha)
    return out


def scenarios() -> list[Scenario]:
    at_margin = math.log(1 - MARGIN)
    return [
        Scenario("h4_null_margin", "H4",
                 "Hessian complexity exactly (1 - margin) x the isotropic and the naive one; "
                 "per-config and per-seed shared effects on levels and log ratios "
                 f"({len(CONFIGS)} configs x {N_SEEDS} seeds)",
                 _simulate(at_margin, at_margin), evaluate,
                 {TESTS[0]: "null", TESTS[1]: "null", TESTS[2]: "null"}),
        Scenario("h4_null_margin_fixed", "H4",
                 "as h4_null_margin without per-config effects on the log ratios (each "
                 "configuration's own ratio is at the margin: the null of the configs-fixed "
                 "claim); per-config effects on the levels, per-seed effects on both",
                 _simulate(at_margin, at_margin, sd_config=0.0), evaluate,
                 {TESTS[0]: "null", TESTS[1]: "null", TESTS[2]: "null", TESTS[3]: "null"}),
        Scenario("h4_null_equal", "H4",
                 "Hessian, isotropic and naive complexity equal up to noise with per-config and "
                 "per-seed shared effects", _simulate(0.0, 0.0), evaluate,
                 {TESTS[2]: "null"}),
        Scenario("h4_planted", "H4",
                 "Hessian complexity 0.75 x isotropic, 0.1 x naive (log-ratio effects with "
                 "per-config sd 0.15, per-seed sd 0.1, job sd 0.1)",
                 _simulate(math.log(0.75), math.log(0.1)), evaluate,
                 {TESTS[0]: "power", TESTS[1]: "power", TESTS[2]: "power", TESTS[3]: "power"},
                 effect="complexity ratio 0.75 vs isotropic, 0.1 vs naive"),
    ]
