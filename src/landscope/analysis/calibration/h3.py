"""Calibration scenarios of H3 (:mod:`landscope.analysis.hypotheses.h3`).

Each simulated sweep has the preset's shape (``experiment=h3_sharp`` then ``runner.escape``
with its defaults): 12 source minima, MLP widths 32/64/128 × 4 seeds, each continued at
η ∈ {0.05, 0.1, 0.2} × B ∈ {4, 16, 64} × 3 seeds (27 continuations), escape checked every 2
steps, censored at 600.  Per minimum ``g`` of width ``w`` and continuation ``i``::

    log T_ig = log 150 + b_rate·log(η_i/B_i / 0.01) + c·log(D_w/D_32) + b·e_g + u_g + ε_ig

with ``u_g ~ N(0, 0.4²)`` (the minimum's basin, shared by its continuations),
``ε ~ N(0, 0.5²)``, ``b_rate = −0.5``; ``T`` rounded up to an even step (at least 2) and
censored at 600 (a minority of the runs: docs/measurements.md#analysis-calibration).  The minimum's
energy share is ``m_w + 0.05·e_g`` with ``e_g ~ N(0, 1)`` (so ``b`` is the effect per within-width
sd), κ is ``D/10 · exp(N(0, 0.15²))``; ``n_params`` = D of a depth-3 MLP on MNIST-1D (40 inputs, 10
classes).  Files: ``config.yaml``, ``result.json`` (probes with both alignment measures and
``n_params``) and ``escape/<fingerprint>.json`` exactly as :func:`~landscope.analysis.
hypotheses.h3.load_escapes` reads them.

Scenarios: ``h3_null`` (m_w = 0.45, c = 0, b = 0), ``h3_confounded_width`` (wider nets escape
slower, c = 0.5; the energy share falls with width, m_w = 0.6 − 0.08·log2(w/32); κ grows with
D; alignment irrelevant within a width: b = 0) and ``h3_planted`` (the confounded world plus
b = −0.3 within each width: escape time ×0.74 per within-width sd of the energy share; κ
carries no effect, so its test stays a null there).

``evaluate`` runs :func:`~landscope.analysis.hypotheses.h3.h3_test` with the report section's
arguments (999 permutations, the inverted interval) on :func:`load_escapes` of the sweep.  A
null test "rejects" when its verdict is not inconclusive (p < 0.05 in either direction); a
power test when it says "supported".  :func:`~landscope.analysis.hypotheses.h3.h3_power`
(the section's power simulation) is not a test and is not run here.

**The noise comparison** (:mod:`landscope.analysis.hypotheses.h3_noise`): the same 12 minima,
each continued with noise ∈ {sgd, isotropic, topk} at η = f·2/λmax, f ∈ {0.5, 0.8}, B ∈ {4, 16}
and 3 seeds (36 runs per minimum; ``escape.lr_unit=stability``), evaluated every 2 steps,
censored at 400::

    log T = log 60 + u_g + 0.4·log(B/4) − 0.5·log(f/0.5) + c_noise + ε,
    u_g ~ N(0, 0.5²),  ε ~ N(0, 0.6²)

rounded up to an even step (a minority censored).  ``h3_noise_null``: ``c`` = 0 for every
noise type (the type is irrelevant: the labels are exchangeable within a minimum).
``h3_noise_planted``: ``c_topk`` = :data:`NOISE_EFFECT` (top-k noise escape time ×0.74),
``c_sgd = c_isotropic = 0`` (the sgd test stays a null).  ``evaluate`` reads the files with
:func:`~landscope.analysis.hypotheses.h3_noise.load_noise_escapes` and runs
:func:`~landscope.analysis.hypotheses.h3_noise.noise_test` (exact sign flips, no interval); a
null test rejects when its verdict is not inconclusive, a power test when it says supported.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from landscope.analysis.calibration.core import Scenario, completed, write_job

WIDTHS, SEEDS = (32, 64, 128), (0, 1, 2, 3)
LRS, BATCHES, RUN_SEEDS = (0.05, 0.1, 0.2), (4, 16, 64), (0, 1, 2)
MAX_STEPS, EVAL_EVERY = 600, 2
JOB_SD, NOISE_SD, B_RATE, SHARE_SD = 0.4, 0.5, -0.5, 0.05
EFFECT = -0.3
FINGERPRINT = "calibration00h3"


def n_params(width: int, depth: int = 3, d_in: int = 40, d_out: int = 10) -> int:
    """Parameters of an MLP with ``depth`` hidden layers of ``width`` units."""
    return d_in * width + width + (depth - 1) * (width * width + width) + width * d_out + d_out


def _simulate(rng: np.random.Generator, sweep: Path, *, width_effect: float, share_slope: float,
              b_align: float) -> None:
    d0 = n_params(WIDTHS[0])
    for w in WIDTHS:
        dim = n_params(w)
        for s in SEEDS:
            e = rng.standard_normal()
            share = 0.45 + share_slope * math.log2(w / WIDTHS[0]) + (0.15 if share_slope else 0)
            share = float(np.clip(share + SHARE_SD * e, 0.01, 0.99))
            kappa = dim / 10 * math.exp(0.15 * rng.standard_normal())
            job_mean = (math.log(150) + width_effect * math.log(dim / d0) + b_align * e
                        + JOB_SD * rng.standard_normal())
            name = f"model.width={w},seed={s}"
            probes = {"noise_top_k_energy_share": share, "noise_alignment_ratio": kappa,
                      "noise_alignment": "lowrank", "n_params": dim, "top_k": 5,
                      "lambda_max": float(20 + 5 * rng.standard_normal())}
            job = _write_minimum(sweep, name, w, s, dim, probes)
            runs = []
            for lr in LRS:
                for b in BATCHES:
                    for seed in RUN_SEEDS:
                        log_t = (job_mean + B_RATE * math.log(lr / b / 0.01)
                                 + NOISE_SD * rng.standard_normal())
                        t = max(EVAL_EVERY, EVAL_EVERY * math.ceil(math.exp(log_t) / EVAL_EVERY))
                        escaped = t <= MAX_STEPS
                        runs.append({"lr": lr, "batch_size": b, "requested_batch_size": b,
                                     "seed": seed, "escaped": escaped,
                                     "escape_step": int(t) if escaped else None,
                                     "radius_step": None, "diverged": False,
                                     "max_steps": MAX_STEPS, "eval_every": EVAL_EVERY,
                                     "steps_run": int(min(t, MAX_STEPS)), "loss0": 0.02,
                                     "threshold": 0.12})
            (job / "escape").mkdir(exist_ok=True)
            (job / "escape" / f"{FINGERPRINT}.json").write_text(json.dumps(
                {"job": name, "fingerprint": FINGERPRINT, "complete": True, "n_params": dim,
                 "runs": runs}))


def _evaluate(sweep: Path, power: bool) -> dict[str, bool | None]:
    from landscope.analysis.hypotheses.h3 import (
        INCONCLUSIVE,
        SUPPORTED,
        TESTS,
        h3_test,
        load_escapes,
    )

    res = h3_test(load_escapes(sweep))
    out: dict[str, bool | None] = {}
    for fit, test in TESTS.items():
        hit = res.table[(res.table["fit"] == fit) & (res.table["term"] == "alignment")]
        if hit.empty or not math.isfinite(float(hit.iloc[0]["p"])):
            out[test] = None
            continue
        verdict = hit.iloc[0]["verdict"]
        out[test] = verdict == SUPPORTED if (power and fit != "kappa") else verdict != INCONCLUSIVE
    return out


NOISES = ("sgd", "isotropic", "topk")
NOISE_FRACTIONS, NOISE_BATCHES, NOISE_MAX_STEPS = (0.5, 0.8), (4, 16), 400
NOISE_JOB_SD, NOISE_RUN_SD = 0.5, 0.6
NOISE_EFFECT = -0.3
NOISE_FINGERPRINT = "calibrat0noiseh3"


def _write_minimum(sweep: Path, name: str, width: int, seed: int, dim: int, probes: dict
                   ) -> Path:
    """One source minimum's job directory (config and result.json with ``n_params``)."""
    result = completed(seed, {"train_loss": 0.02, "train_acc": 1.0}, probes)
    result["n_params"] = dim
    return write_job(sweep, name, {"name": "h3_sharp", "seed": seed,
                                   "model": {"name": "mlp", "width": width, "depth": 3}}, result)


def _simulate_noise(rng: np.random.Generator, sweep: Path, *, topk_effect: float) -> None:
    effects = {"sgd": 0.0, "isotropic": 0.0, "topk": topk_effect}
    settings = {"noise": list(NOISES), "lr_unit": "stability", "lrs": list(NOISE_FRACTIONS),
                "batch_sizes": list(NOISE_BATCHES), "seeds": list(RUN_SEEDS),
                "max_steps": NOISE_MAX_STEPS, "eval_every": EVAL_EVERY}
    for w in WIDTHS:
        dim = n_params(w)
        for s in SEEDS:
            lam = float(7 + rng.uniform(-1, 1.5))
            u = NOISE_JOB_SD * rng.standard_normal()
            name = f"model.width={w},seed={s}"
            probes = {"noise_top_k_energy_share": 0.45, "noise_alignment_ratio": dim / 10,
                      "n_params": dim, "top_k": 5, "lambda_max": lam}
            job = _write_minimum(sweep, name, w, s, dim, probes)
            runs = []
            for noise in NOISES:
                for f in NOISE_FRACTIONS:
                    lr = f * 2 / lam
                    for b in NOISE_BATCHES:
                        for seed in RUN_SEEDS:
                            log_t = (math.log(60) + u + 0.4 * math.log(b / 4)
                                     - 0.5 * math.log(f / 0.5) + effects[noise]
                                     + NOISE_RUN_SD * rng.standard_normal())
                            t = max(EVAL_EVERY,
                                    EVAL_EVERY * math.ceil(math.exp(log_t) / EVAL_EVERY))
                            escaped = t <= NOISE_MAX_STEPS
                            runs.append({"noise": noise, "lr": lr, "requested_lr": f,
                                         "lambda_max": lam, "batch_size": b,
                                         "requested_batch_size": b, "seed": seed,
                                         "escaped": escaped,
                                         "escape_step": int(t) if escaped else None,
                                         "radius_step": None, "diverged": False,
                                         "max_steps": NOISE_MAX_STEPS, "eval_every": EVAL_EVERY,
                                         "steps_run": int(min(t, NOISE_MAX_STEPS)),
                                         "loss0": 0.02, "threshold": 0.12,
                                         "noise_trace": None if noise == "sgd" else 1.8 / b})
            (job / "escape").mkdir(exist_ok=True)
            (job / "escape" / f"{NOISE_FINGERPRINT}.json").write_text(json.dumps(
                {"job": name, "fingerprint": NOISE_FINGERPRINT, "settings": settings,
                 "complete": True, "n_params": dim, "runs": runs}))


def _evaluate_noise(sweep: Path, power: bool) -> dict[str, bool | None]:
    from landscope.analysis.hypotheses.h3_noise import (
        INCONCLUSIVE,
        SUPPORTED,
        TESTS,
        load_noise_escapes,
        noise_test,
    )

    df = load_noise_escapes(sweep)
    if df is None:
        return {t: None for t in TESTS.values()}
    res = noise_test(df, interval=False)
    out: dict[str, bool | None] = {}
    for contrast, test in TESTS.items():
        row = res.row(contrast)
        if not math.isfinite(float(row["p"])):
            out[test] = None
        elif power and contrast == "topk":
            out[test] = row["verdict"] == SUPPORTED
        else:
            out[test] = row["verdict"] != INCONCLUSIVE
    return out


def scenarios() -> list[Scenario]:
    from landscope.analysis.hypotheses.h3 import TESTS
    from landscope.analysis.hypotheses.h3_noise import TESTS as noise_tests

    null = {t: "null" for t in TESTS.values()}
    planted = {t: ("null" if fit == "kappa" else "power") for fit, t in TESTS.items()}
    return [
        Scenario("h3_null", "H3", "alignment irrelevant; no width effect; 12 minima × 27 "
                 "continuations, minimum effect sd 0.4",
                 lambda rng, sweep: _simulate(rng, sweep, width_effect=0.0, share_slope=0.0,
                                              b_align=0.0),
                 lambda sweep: _evaluate(sweep, False), null),
        Scenario("h3_confounded_width", "H3", "alignment irrelevant within a width; wider nets "
                 "escape slower (log T + 0.5 log D); the energy share falls and κ grows with "
                 "width",
                 lambda rng, sweep: _simulate(rng, sweep, width_effect=0.5, share_slope=-0.08,
                                              b_align=0.0),
                 lambda sweep: _evaluate(sweep, False), null),
        Scenario("h3_planted", "H3", "the confounded world plus a true alignment effect "
                 "within each width",
                 lambda rng, sweep: _simulate(rng, sweep, width_effect=0.5, share_slope=-0.08,
                                              b_align=EFFECT),
                 lambda sweep: _evaluate(sweep, True), planted,
                 effect=f"b = {EFFECT} per within-width sd of the energy share "
                        f"(escape time ×{math.exp(EFFECT):.2f})"),
        Scenario("h3_noise_null", "H3", "noise comparison: the noise type is irrelevant; 12 "
                 "minima × 3 noise types × 2 η × 2 B × 3 seeds, minimum effect sd 0.5",
                 lambda rng, sweep: _simulate_noise(rng, sweep, topk_effect=0.0),
                 lambda sweep: _evaluate_noise(sweep, False),
                 {t: "null" for t in noise_tests.values()}),
        Scenario("h3_noise_planted", "H3", "noise comparison: top-k noise escapes faster at "
                 "equal trace; sgd and isotropic alike",
                 lambda rng, sweep: _simulate_noise(rng, sweep, topk_effect=NOISE_EFFECT),
                 lambda sweep: _evaluate_noise(sweep, True),
                 {t: ("power" if c == "topk" else "null") for c, t in noise_tests.items()},
                 effect=f"log escape-time ratio topk:isotropic = {NOISE_EFFECT} "
                        f"(×{math.exp(NOISE_EFFECT):.2f})"),
    ]
