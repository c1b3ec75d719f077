"""H3 (issue #5): noise–curvature alignment predicts faster escape from sharp minima.

Zhu et al. 2019 ("The anisotropic noise in stochastic gradient descent: its behavior of
escaping from sharp minima and regularization effects", ICML) show that SGD escapes sharp
minima faster than isotropic noise of equal size because its covariance Σ concentrates in
the top Hessian eigendirections (indicator tr(HΣ)).  H3 asks whether, across minima, the
measured alignment predicts the escape time, over and above the noise scale η/B
(Jastrzebski et al. 2017, "Three factors influencing minima in SGD") and the width.

**Data.**  ``python -m runner.escape SWEEP`` continues every completed job of a sweep from
its final checkpoint (a sharp minimum, e.g. :file:`conf/experiment/h3_sharp.yaml`: full-batch
gradient descent) with plain SGD at several learning rates η and batch sizes B and a few
seeds, and records the escape step (:mod:`landscope.escape`: the first evaluated step where
the train loss on a fixed subset exceeds ``L(θ0) + Δ``, confirmed over ``k`` evaluations;
runs that do not escape by ``max_steps`` are censored).  :func:`load_escapes` reads those
files into one row per continuation, with the source job's probe scalars from its
``result.json`` and its parameter count ``n_params``.

**Alignment measure.**  Primary: ``probe.noise_top_k_energy_share`` = tr(VᵀΣV)/trΣ, the
share of the noise variance in the span V of the Hessian's top-k eigenvectors (k = probe.top_k,
5 in the preset): a number in [0, 1] whose scale does not grow with the parameter count.  The
normalized cosine tr(HΣ)/(‖H‖_F‖Σ‖_F) would be the other dimension-free choice, but the probes
store no ‖H‖_F (tr H² is never estimated) and ‖Σ‖_F only as the top eigenvalues of Σ, so it
cannot be computed from what a job stores.  The old primary, κ = tr(HΣ)/((trΣ/D)·trH)
(``probe.noise_alignment_ratio``), is 1 for isotropic noise in any dimension, so for a fixed
concentration of Σ it grows like D: across widths it measures width (the values measured at
two widths: docs/measurements.md#analysis-h3).  It is kept as a sensitivity row (its log, same
test).  The energy share of isotropic noise is k/D, so it is not free of D either; log D is in the
model.

**Primary fit** (:func:`h3_test`, statistics in :mod:`~landscope.analysis.hypotheses.survival`):
a log-normal accelerated-failure-time model with right censoring, fitted by maximum
likelihood, per continuation ``i`` of source minimum ``g``::

    log T_ig = b0 + b1 z_g + b2 log(η_i/B_i) + b3 log D_g + σ ε_ig,   ε ~ N(0, 1)

``T`` the escape step, a censored run entering through its survival probability at
``max_steps`` (not imputed).  ``z`` the alignment divided by its within-stratum sd over the
minima (coefficient = log escape-time factor per within-width sd of alignment).

**Inference on b1, with the minima as units.**  The alignment is a property of the minimum, and
the ~18–27 continuations from one minimum share its basin, so there are G ≈ 12 independent
units, too few for z-tests with sandwich errors (a Cox fit with robust errors on 12 clusters
rejected null datasets far above 5 %: docs/measurements.md#analysis-h3).  The test is a permutation
score test: fit the model without z, sum each minimum's score (how much later than predicted its
runs escape, censored runs through the inverse Mills ratio), and compare ``U = Σ_g z̃_g S_g`` with
its distribution when the alignment values are permuted across minima **within strata of equal
parameter count** (width): exact under the null that, within a width, the escape-time distribution
of a minimum does not depend on its alignment.  ``n_perm`` random within-strata permutations (all of
them when there are fewer).  When too few minima share a parameter count (fewer than ``min_jobs``
in strata of ≥ 2), the alignment's residual on log D is permuted across all minima instead
(approximate; noted).  **Interval**: the set of b1 the test does not reject at ``alpha``
(test inversion on ``log T − b·z``, censoring points shifted alike).  H3 predicts **b1 < 0**.
The η/B and log D rows are reported with cluster-robust (CR1) Wald errors and t on G − 1
degrees of freedom (η/B varies within minima; log D only between ~3 widths: a covariate,
no verdict).

**Sensitivity fits** (reported, not used in the verdict): ``kappa`` (the same model and test
with log κ), ``imputed_ols`` (OLS of log T with censored runs imputed at ``max_steps``, CV3
cluster-robust errors by minimum, t with G − 1 df: statsmodels' ``cluster-crv3``).

**Calibration and power.**  :mod:`landscope.analysis.calibration.h3` simulates sweeps under a
null, a confounded null (wider nets escape slower and κ and the energy share change with width)
and a planted effect within each width, and runs :func:`h3_test` on them; the section quotes
:func:`landscope.analysis.calibration.calibration_note` for each fit's test
(:data:`TESTS`) and :func:`h3_power` (power at a planted b1 = :data:`POWER_EFFECT`, simulated
from the fitted design).

**Verdict** (the primary alignment row): ``inconclusive`` when fewer than ``min_jobs`` minima
have usable rows, the alignment takes fewer than 3 values or does not vary within strata, no
run escaped, the permutations cannot reach ``alpha`` or the fit fails; ``supported`` when the
permutation p < ``alpha`` with b1 < 0; ``not supported`` when p < ``alpha`` with b1 > 0;
``inconclusive`` otherwise (absence of evidence, no equivalence test).

**Noise design.**  The escapes ``runner.escape`` measures by default are instability exits
(η·λmax > 2; a few steps, docs/measurements.md#analysis-h3), not the noise-activated escapes of Zhu
et al.  The design that isolates the noise structure: at one minimum with η < 2/λmax
(``escape.lr_unit=stability``), continue with (a) SGD noise, (b) isotropic Gaussian noise of
the same trace tr Σ/B added to the full-batch gradient, (c) Gaussian noise of the same trace in
the span of the top-k Hessian eigenvectors (``escape.noise=[sgd,isotropic,topk]``;
:func:`landscope.escape.run_escape`); the paired analysis (per-minimum censored-AFT contrasts,
sign-flip test across minima) is :mod:`landscope.analysis.hypotheses.h3_noise`, added to this
section when the sweep holds such results (the alignment test above then reads the sgd runs).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from landscope.analysis.doc import short as _fmt
from landscope.analysis.hypotheses.escapes import (  # noqa: F401
    ESCAPE_DIR,
    ROW_COLUMNS,
    has_escapes,
    load_escapes,
)
from landscope.analysis.hypotheses.h3_fit import h3_test, prepare  # noqa: F401
from landscope.analysis.hypotheses.h3_power import h3_power
from landscope.analysis.hypotheses.h3_result import (  # noqa: F401 - the public names of H3
    ALIGNMENT,
    COV_TYPE,
    COVARIATE,
    FITS,
    INCONCLUSIVE,
    LEGACY,
    NOT_SUPPORTED,
    POWER_EFFECT,
    RATE,
    SUPPORTED,
    TABLE_COLUMNS,
    TESTS,
    H3Result,
)
from landscope.analysis.section import Section
from landscope.errors import LandscopeError


# --------------------------------------------------------------------------- report
def plot_escape(data: pd.DataFrame, path: Path, alignment: str) -> Path:
    """Log escape step against the alignment, colored by log10(η/B); censored runs (at
    max_steps) as crosses.  Matplotlib's Agg backend; written atomically."""
    from landscope.plots import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(5.5, 4))
    try:
        c = np.log10(data["rate"].to_numpy(float))
        vmin, vmax = (float(c.min()), float(c.max())) if len(c) else (0.0, 1.0)
        esc = data["escaped"].to_numpy(bool)
        sc = None
        for mask, marker, label in ((esc, "o", "escaped"), (~esc, "x", "censored at max_steps")):
            if mask.any():
                sc = ax.scatter(data["alignment"].to_numpy(float)[mask],
                                data["log_time"].to_numpy(float)[mask], c=c[mask],
                                cmap="viridis", vmin=vmin, vmax=vmax, marker=marker, s=22,
                                alpha=0.8, label=label)
        if sc is not None:
            fig.colorbar(sc, ax=ax, label="log10(η/B)")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(alignment)
        ax.set_ylabel("log escape step")
        ax.set_title("H3: escape time vs noise–curvature alignment", fontsize=10)
        fig.tight_layout()
    except BaseException:
        pyplot().close(fig)
        raise
    return save_png(fig, path)


def applies(ctx) -> bool:
    """True when a sweep directory of the report holds escape results."""
    return any(has_escapes(p) for p in ctx.paths)


_SHOWN = [("fit", "fit"), ("term", "term"), ("measure", "measure"), ("predicted", "predicted sign"),
          ("n", "n"), ("n_jobs", "minima"), ("n_strata", "widths"), ("n_censored", "censored"),
          ("coef", "coef"), ("ci_low", "CI low"), ("ci_high", "CI high"),
          ("ci_method", "CI"), ("test", "test"), ("p", "p"), ("ratio", "exp(coef)"),
          ("verdict", "verdict")]


def evidence(res: H3Result, fit: str = "primary") -> str:
    """The verdict of one fit's alignment row with its evidence: estimate, interval, n of
    minima, the test and its calibration
    (:func:`~landscope.analysis.calibration.calibration_note`)."""
    from landscope.analysis.calibration import calibration_note

    r = res.row(fit, "alignment")
    if not math.isfinite(r["p"]):
        return f"{r['verdict']} ({r['reason']}; n = {r['n_jobs']} source minima)"
    ci = (f", 95 % CI [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] ({r['ci_method']})"
          if math.isfinite(r["ci_low"]) or math.isfinite(r["ci_high"]) else "")
    return (f"{r['verdict']}: coefficient {_fmt(r['coef'])} (escape time ×{_fmt(r['ratio'])} per "
            f"within-width sd of {r['measure']}){ci}, p = {_fmt(r['p'])}, "
            f"n = {r['n_jobs']} source minima in {_fmt(r['n_strata'])} width(s) "
            f"({r['n']} continuations, {r['n_censored']} censored); {r['test']}; "
            f"{calibration_note(TESTS[fit])}")


def section(ctx) -> None:
    """The H3 report section (a :class:`landscope.analysis.report.ReportContext`)."""
    from landscope.io import atomic_write_text

    doc = ctx.doc
    frames = [load_escapes(p) for p in ctx.paths if has_escapes(p)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["notes"] = [n for f in frames for n in f.attrs.get("notes", [])]
    if "noise" in df.columns and df["noise"].nunique() > 1:  # a noise comparison only:
        notes = df.attrs["notes"]  # the alignment test reads its plain-SGD runs
        df = df[df["noise"] == "sgd"].reset_index(drop=True)
        df.attrs["notes"] = notes
    doc.heading("H3: noise–curvature alignment predicts faster escape from sharp minima")
    try:
        res = h3_test(df)
    except LandscopeError as exc:
        doc.para(f"Not tested: {exc}")
        _noise_part(ctx)
        return
    doc.para(f"Verdict: {evidence(res)}.")
    doc.para(
        f"Model: censored log-normal accelerated-failure-time regression (maximum likelihood; "
        f"censored runs enter through their survival at max_steps) of the escape step on "
        f"z({res.alignment}), log(η/B) and log D (the source minimum's parameter count). The "
        f"source minima are the independent units: the alignment is tested by permuting its "
        f"values across minima within strata of equal parameter count (a permutation score "
        f"test), and its 95 % interval is the set of coefficients this test does not reject. "
        f"H3 (Zhu et al. 2019) predicts a negative alignment coefficient (and a negative η/B "
        f"coefficient, reported with cluster-robust errors and t on G−1 df). The energy share "
        f"is used rather than κ = tr(HΣ)/((trΣ/D)·trH), which grows with D and so measures "
        f"width; the normalized cosine tr(HΣ)/(‖H‖_F‖Σ‖_F) is not computable from the stored "
        f"probes (no ‖H‖_F). Sensitivity rows (not in the verdict): the same test on log κ "
        f"({evidence(res, 'kappa') if 'kappa' in set(res.table['fit']) else 'not available'}); "
        f"OLS with censored runs imputed at max_steps and CV3 errors "
        f"({evidence(res, 'imputed_ols') if 'imputed_ols' in set(res.table['fit']) else 'n/a'}).")
    power = h3_power(res)
    if power:
        doc.para(f"Power: at a planted alignment coefficient {power['effect']:g} (escape time "
                 f"×{math.exp(power['effect']):.2f} per within-width sd), simulated {power['R']} "
                 f"times from this design (same minima, alignments, η/B and censoring; "
                 f"between-minima sd τ = {power['tau']:.3g} and σ = {power['sigma']:.3g} from "
                 f"an AFT with one intercept per minimum), the test says supported in "
                 f"{100 * power['power']:.1f} % [{100 * power['low']:.1f}, "
                 f"{100 * power['high']:.1f}] of datasets at alpha = {power['alpha']:g}.")
    doc.para("Design caveat: these escapes are dynamical-instability exits when η·λmax > 2, not "
             "the noise-activated escapes Zhu et al. analyse. The design that isolates the noise "
             "structure (one minimum, η < 2/λmax, SGD noise against isotropic noise of equal "
             "trace and noise projected on the top-k Hessian eigendirections, paired within the "
             "minimum) is runner.escape's escape.noise setting (README, H3).")
    doc.frame(res.table, _SHOWN)
    for note in res.notes:
        doc.para(f"Note: {note}")
    atomic_write_text(ctx.out / "h3.csv", res.table.to_csv(index=False))
    if len(res.data):
        png = plot_escape(res.data, ctx.out / "figures" / "h3_escape.png", res.alignment)
        doc.image(png, "figures/h3_escape.png",
                  f"log escape step against {res.alignment}, colored by log10(η/B)")
    for fit, text in res.summaries.items():
        ctx.appendix.append((f"H3 {fit} fit", text))
    _noise_part(ctx)


def _noise_part(ctx) -> None:
    """The paired noise comparison (:mod:`~landscope.analysis.hypotheses.h3_noise`) when the
    sweeps hold one; nothing otherwise."""
    from landscope.analysis.hypotheses import h3_noise

    h3_noise.section_part(ctx)


SECTION = Section("H3: escape from sharp minima", applies, section, "H3")
