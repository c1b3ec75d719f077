"""Calibration scenarios of the measures table (3 optimizers × 5 seeds, like ``make run``).

Every sweep has four measures; the target is test error. The null worlds are those the
first release's pooled tests failed in (issue #16): per-configuration effects on measure and
error that are unrelated, per-seed effects shared across configurations, and fully
independent jobs. The planted worlds put a within-configuration relation (power with 5 seeds)
and a between-configuration relation over 8 configurations × 3 seeds (with 3 configurations no
between-config test can reject at 5 %).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landscope.analysis.calibration.core import Scenario, completed, write_job

MEASURES = ("probe.lambda_max", "probe.trace", "probe.sharpness_avg", "landscape.line_rise")
OPTIMIZERS = ("sgd", "adam", "momentum", "adamw", "sam", "llp", "rmsprop", "nesterov")
TESTS = {"within τ (seed permutation)": "within_tau_p",
         "within regression (CR2, seed clusters)": "within_p",
         "between τ (config means)": "between_p",
         "between Pearson r (config means, permutation)": "between_p_r"}


def _simulate(rng: np.random.Generator, sweep: Path, *, configs: int = 3, seeds: int = 5,
              config_sd: float = 1.0, seed_sd: float = 0.0, within: float = 0.0,
              between: float = 0.0) -> None:
    """X = config effect + seed effect + noise for each measure; error = its own config and
    seed effects + noise + ``within``·(x₀ − its config mean) + ``between``·(config mean of x₀),
    where x₀ is the first measure. All effects standard normal times the stated sd."""
    k = len(MEASURES)
    cx = rng.normal(0, config_sd, (configs, k))
    sx = rng.normal(0, seed_sd, (seeds, k))
    ce = rng.normal(0, config_sd, configs)
    se = rng.normal(0, seed_sd, seeds)
    for c in range(configs):
        for s in range(seeds):
            noise = rng.normal(0, 1, k)
            x = cx[c] + sx[s] + noise
            err = ce[c] + se[s] + rng.normal() + within * noise[0] + between * cx[c, 0]
            test_acc = float(0.7 - 0.02 * err)
            train_loss = float(np.exp(rng.normal(-2.3, 0.2)))
            cfg = {"seed": s, "optimizer": {"name": OPTIMIZERS[c], "lr": 0.1},
                   "model": {"name": "mlp", "width": 64}}
            write_job(sweep, f"optimizer={OPTIMIZERS[c]},seed={s}", cfg, completed(
                s, {"train_loss": train_loss, "train_acc": 0.95, "test_acc": test_acc,
                    "generalization_gap": 0.95 - test_acc, "epoch": 20},
                probes={m.split(".", 1)[1]: float(10 + x[i]) for i, m in enumerate(MEASURES)
                        if m.startswith("probe.")},
                landscape={m.split(".", 1)[1]: float(10 + x[i]) for i, m in enumerate(MEASURES)
                           if m.startswith("landscape.")}))


def _evaluate(sweep: Path, alpha: float = 0.05) -> dict[str, bool | None]:
    from landscope.analysis.collect import collect
    from landscope.analysis.measures_table import measures_table

    table = measures_table(collect(sweep).included, list(MEASURES), n_perm=500)
    first = table.set_index("measure").loc[MEASURES[0]]
    out: dict[str, bool | None] = {}
    for name, col in TESTS.items():
        p = first[col]
        out[name] = None if not np.isfinite(p) else bool(p < alpha)
        holm = table[f"{col}_holm"]
        out[f"{name}, Holm, any of 4"] = None if not np.isfinite(holm).any() else \
            bool((holm < alpha).any())
    return out


def _expect(kind_within: str, kind_between: str) -> dict[str, str]:
    out = {}
    for name in TESTS:
        kind = kind_within if name.startswith("within") else kind_between
        out[name] = kind
        out[f"{name}, Holm, any of 4"] = "null" if kind == "null" else "power"
    return out


def scenarios() -> list[Scenario]:
    return [
        Scenario("measures_null_config_effects", "measures",
                 "3 configs × 5 seeds; measure and error each carry their own per-config effect "
                 "(sd 1, unrelated) plus noise",
                 lambda rng, d: _simulate(rng, d), _evaluate, _expect("null", "null")),
        Scenario("measures_null_seed_effects", "measures",
                 "3 configs × 5 seeds; only per-seed effects (sd 1) shared across "
                 "configurations, unrelated between measure and error",
                 lambda rng, d: _simulate(rng, d, config_sd=0.0, seed_sd=1.0), _evaluate,
                 _expect("null", "null")),
        Scenario("measures_null_both_effects", "measures",
                 "3 configs × 5 seeds; per-config and per-seed effects (sd 1 each), unrelated",
                 lambda rng, d: _simulate(rng, d, seed_sd=1.0), _evaluate,
                 _expect("null", "null")),
        Scenario("measures_null_independent", "measures",
                 "3 configs × 5 seeds; independent jobs, no relation",
                 lambda rng, d: _simulate(rng, d, config_sd=0.0), _evaluate,
                 _expect("null", "null")),
        Scenario("measures_planted_within", "measures",
                 "3 configs × 5 seeds with per-config and per-seed effects; within a "
                 "configuration error rises 1.5 sd of noise per sd of the measure's noise",
                 lambda rng, d: _simulate(rng, d, seed_sd=0.5, within=1.5), _evaluate,
                 _expect("power", "null"), effect="within slope 1.5 (noise sd 1)"),
        Scenario("measures_planted_between_8_configs", "measures",
                 "8 configs × 3 seeds; the error's config effect follows the measure's "
                 "(slope 2 on config effects of sd 1), nothing within",
                 lambda rng, d: _simulate(rng, d, configs=8, seeds=3, between=2.0), _evaluate,
                 _expect("null", "power"), effect="between slope 2 (config sd 1)"),
    ]
