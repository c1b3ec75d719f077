"""The initialization-scale study (issue #20 item 4; ``conf/experiment/init_scale.yaml``): how the
scale of the initial weights (``model.init_scale``: every weight with dim > 1 multiplied by it
after the default init) moves sharpness and generalization.

The section applies to any sweep whose jobs vary ``model.init_scale``. A seed draws the same
initial weights at every scale (scaled), so the seeds are the independent units and the scales
are compared within each seed (a randomized block design; GUIDE §7). It writes:

- per scale (``init_scale.csv``): jobs, and mean ± sd over seeds of test error, train loss,
  λmax, the Hessian trace and, when the jobs have a shifted test split, the OOD error;
- the trend of each measure with the scale (``init_scale_trend.csv``), two claims per row:

  * **per-seed slope** (units: seeds): within each seed, the OLS slope of the measure on
    log2(init scale); the estimate is the mean over seeds and the test the one-sample t-test of
    the seeds' slopes on S − 1 df (:func:`~landscope.analysis.hypotheses.mediation.per_seed_t`,
    Ibragimov & Müller 2010: exact for normal job noise in a balanced design, whatever the seeds
    share across scales). Holm across the rows of the table (one family). The scales are the
    levels run (fixed effects): the claim is about these scales, not a population of them;
  * **curvature** (units: seeds): the coefficient of L² (L = log2 scale) in the per-seed OLS on
    [1, L, L²], tested the same way: > 0 is a U shape (the measure lowest at a middle scale);
  * **τ over scales** (units: scales): Kendall τ-b between the scale and the per-scale mean,
    p from all permutations of the scales' means
    (:func:`~landscope.analysis.inference.config_means_association`; with 5 scales the smallest
    attainable p is 2/120). It asks for a monotone trend; the slope asks for a linear one.
- sharpness against generalization across scales: Kendall τ-b between the per-scale mean of
  λmax (and of the trace) and the per-scale mean test error (OOD error), exact permutation p,
  units: scales. The scale drives both, so this is an association between configurations,
  not a claim that sharpness causes the error (that would be a mediation claim, GUIDE §7);
  within a scale, the measures table relates each measure to the error over seeds.

Rows with a non-finite value of the measure are left out of that row (n says how many jobs
and seeds entered); a seed enters the slope test only with at least 3 distinct scales, the
curvature test with at least 4.
The tests' calibration: :mod:`landscope.analysis.calibration.init_scale`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from landscope.analysis.doc import fmt
from landscope.analysis.fixed_effects import seed_codes
from landscope.analysis.hypotheses.mediation import per_seed_t
from landscope.analysis.inference import config_means_association
from landscope.analysis.measures import correct, target_column
from landscope.analysis.section import Section
from landscope.analysis.studies_tables import mean_sd, pm
from landscope.io import atomic_write_text

SCALE = "model.init_scale"
#: measured columns of the study: {column: label}, those the jobs have
MEASURES = {"test_error": "test error", "ood_test_error": "OOD error",
            "final.train_loss": "train loss", "probe.lambda_max": "λmax",
            "probe.trace": "Hessian trace"}
#: the trend rows (the train loss is shown, not tested)
TRENDS = ("probe.lambda_max", "probe.trace", "test_error", "ood_test_error")
SHARPNESS = ("probe.lambda_max", "probe.trace")
ERRORS = ("test_error", "ood_test_error")
#: the calibration suite's test names (rates.csv), quoted in the section
TESTS = {"slope": "init-scale trend (per-seed slope t), Holm, any row",
         "curve": "init-scale curvature (per-seed quadratic t), Holm, any row",
         "slope_lambda": "init-scale trend of λmax (per-seed slope t)",
         "tau_lambda": "init-scale trend of λmax (τ over scale means)",
         "assoc": "λmax–test error across scales (τ on means)"}


def study_jobs(included: pd.DataFrame) -> pd.DataFrame:
    """The included jobs with a finite ``model.init_scale`` (what the section analyses)."""
    keep = np.isfinite(pd.to_numeric(included[SCALE], errors="coerce").to_numpy(float))
    return included[keep].reset_index(drop=True)


def _values(jobs: pd.DataFrame, col: str) -> np.ndarray:
    if col in ERRORS:
        try:
            return target_column(jobs, col).to_numpy(float)
        except KeyError:
            return np.full(len(jobs), np.nan)
    if col not in jobs:
        return np.full(len(jobs), np.nan)
    return pd.to_numeric(jobs[col], errors="coerce").to_numpy(float)


def present(jobs: pd.DataFrame) -> list[str]:
    """The study's columns with at least one finite value among ``jobs``."""
    return [c for c in MEASURES if np.isfinite(_values(jobs, c)).any()]


def scale_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per init scale (ascending): ``init_scale``, ``n`` (jobs), ``seeds``, and for
    each present column ``<col>_mean``, ``<col>_sd`` (over seeds, ddof 1) and a ``<col>``
    cell "mean ± sd"."""
    scale = pd.to_numeric(jobs[SCALE], errors="coerce").to_numpy(float)
    cols = present(jobs)
    rows = []
    for s in np.unique(scale[np.isfinite(scale)]):
        part = jobs[scale == s]
        rec: dict[str, Any] = {"init_scale": float(s), "n": len(part),
                               "seeds": int(part["seed"].nunique()) if "seed" in part
                               else len(part)}
        for c in cols:
            m, sd, _ = mean_sd(_values(part, c))
            rec[f"{c}_mean"], rec[f"{c}_sd"], rec[c] = m, sd, pm(m, sd)
        rows.append(rec)
    return pd.DataFrame(rows)


def _per_seed(y: np.ndarray, X: np.ndarray, seeds: np.ndarray, min_scales: int
              ) -> tuple[tuple | None, int]:
    """per_seed_t (the first column of ``X``) on the seeds with at least ``min_scales``
    distinct scales (``X[:, -1]`` is log2 of the scale): (result or None, seeds used)."""
    x = X[:, -1]
    ok = np.isfinite(y) & np.isfinite(x)
    frame = pd.DataFrame({"x": x[ok], "seed": seeds[ok]})
    enough = frame.groupby("seed")["x"].nunique()
    keep = ok.copy()
    keep[ok] = frame["seed"].isin(enough[enough >= min_scales].index).to_numpy()
    if len(enough[enough >= min_scales]) < 2:
        return None, int((enough >= min_scales).sum())
    codes = seed_codes(seeds[keep])
    return per_seed_t(y[keep], X[keep], codes, 0.95), int(codes.max() + 1)


def trend_table(jobs: pd.DataFrame, n_perm: int = 5000) -> pd.DataFrame:
    """One row per present trend column (:data:`TRENDS`): the per-seed slope per doubling of
    the scale (``slope``, ``slope_se``, ``slope_df``, ``slope_p``, ``slope_ci_low/high``,
    ``slope_p_holm`` across the rows, ``n_seeds``: seeds with >= 3 scales); the per-seed
    curvature, the coefficient of L² in the OLS of the measure on [1, L, L²] within each seed
    (L = log2 scale; > 0: U-shaped, lowest inside or beyond the range), tested the same way
    (``curve``, ``curve_p``, ``curve_p_holm``; seeds with >= 4 scales); and Kendall τ-b
    between the scale and the per-scale means with its exact permutation p (``tau``,
    ``tau_p``, ``n_scales``)."""
    x = np.log2(pd.to_numeric(jobs[SCALE], errors="coerce").to_numpy(float))
    seeds = (jobs["seed"].astype(str).to_numpy() if "seed" in jobs
             else np.arange(len(jobs)).astype(str))
    scales = pd.to_numeric(jobs[SCALE], errors="coerce").astype(str).to_numpy()
    rows = []
    for col in [c for c in TRENDS if c in present(jobs)]:
        y = _values(jobs, col)
        res, g = _per_seed(y, x[:, None], seeds, 3)
        est, se, df, p, lo, hi = res if res is not None else (math.nan,) * 6
        quad, _ = _per_seed(y, np.column_stack([x * x, x]), seeds, 4)
        ok = np.isfinite(y) & np.isfinite(x)
        tau = config_means_association(x[ok], y[ok], scales[ok], "kendall", n_perm)
        rows.append({"measure": col, "label": MEASURES[col], "n": int(ok.sum()),
                     "n_seeds": g, "slope": est, "slope_se": se, "slope_df": df,
                     "slope_p": p, "slope_ci_low": lo, "slope_ci_high": hi,
                     "curve": quad[0] if quad else math.nan,
                     "curve_p": quad[3] if quad else math.nan,
                     "tau": tau.estimate, "tau_p": tau.p, "n_scales": tau.n_units})
    table = pd.DataFrame(rows)
    if len(table):
        table["slope_p_holm"] = correct(table["slope_p"], "holm")
        table["curve_p_holm"] = correct(table["curve_p"], "holm")
    return table


def association_table(jobs: pd.DataFrame, n_perm: int = 5000) -> pd.DataFrame:
    """Kendall τ-b between the per-scale means of each sharpness measure and each error
    (units: scales; exact permutation p): ``sharpness``, ``error``, ``tau``, ``p``,
    ``n_scales``, ``smallest_p`` (the smallest p the number of scales allows)."""
    scales = pd.to_numeric(jobs[SCALE], errors="coerce").astype(str).to_numpy()
    have = present(jobs)
    rows = []
    for m in [c for c in SHARPNESS if c in have]:
        for e in [c for c in ERRORS if c in have]:
            a = config_means_association(_values(jobs, m), _values(jobs, e), scales,
                                         "kendall", n_perm)
            rows.append({"sharpness": MEASURES[m], "error": MEASURES[e], "tau": a.estimate,
                         "p": a.p, "n_scales": a.n_units,
                         "smallest_p": a.extra.get("smallest_p", math.nan)})
    return pd.DataFrame(rows)


def plot_init_scale(jobs: pd.DataFrame, path: Path) -> Path:
    """One panel per present measure of :data:`TRENDS`: the measure against the init scale
    (log2 axis), one line per seed, the per-scale mean in black."""
    from landscope.plots import pyplot, save_png

    plt = pyplot()
    cols = [c for c in TRENDS if c in present(jobs)]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.2), layout="constrained",
                             squeeze=False)
    scale = pd.to_numeric(jobs[SCALE], errors="coerce").to_numpy(float)
    seeds = jobs["seed"].astype(str).to_numpy() if "seed" in jobs else np.zeros(len(jobs))
    for ax, col in zip(axes[0], cols):
        y = _values(jobs, col)
        for s in pd.unique(seeds):
            o = np.argsort(scale[seeds == s])
            ax.plot(scale[seeds == s][o], y[seeds == s][o], "o-", lw=0.8, ms=3, alpha=0.5)
        t = scale_table(jobs)
        ax.plot(t["init_scale"], t[f"{col}_mean"], "ks-", lw=1.6, ms=4, label="mean")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("init scale")
        ax.set_ylabel(MEASURES[col])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return save_png(fig, path)


# --------------------------------------------------------------------------- report section
def applies(ctx: Any) -> bool:
    """The section is written when the collected jobs vary ``model.init_scale``."""
    return SCALE in ctx.coll.swept


_TREND_SHOWN = [("label", "measure"), ("n", "jobs"), ("n_seeds", "seeds"),
                ("slope", "slope per doubling"), ("slope_ci_low", "CI low"),
                ("slope_ci_high", "CI high"), ("slope_p_holm", "p slope t (Holm)"),
                ("curve", "curvature"), ("curve_p_holm", "p curvature t (Holm)"),
                ("n_scales", "scales"), ("tau", "τ over scales"), ("tau_p", "p τ (exact)")]


def section(ctx: Any) -> None:
    """The study's section: per-scale table, trend table, association table, figure."""
    from landscope.analysis.calibration import calibration_note

    doc, out, jobs = ctx.doc, Path(ctx.out), study_jobs(ctx.coll.included)
    doc.heading("Initialization scale: sharpness and generalization")
    table, trend, assoc = scale_table(jobs), trend_table(jobs), association_table(jobs)
    cols = present(jobs)
    doc.para(
        f"{len(jobs)} jobs at {len(table)} initialization scales (model.init_scale: every "
        "weight with dim > 1 multiplied by it after the default init); mean ± sd over seeds. "
        "A seed draws the same initial weights at every scale, so seeds are the independent "
        "units and scales are compared within each seed.")
    doc.frame(table, [("init_scale", "init scale"), ("n", "jobs"), ("seeds", "seeds")]
              + [(c, MEASURES[c]) for c in cols])
    atomic_write_text(out / "init_scale.csv", table.to_csv(index=False))
    if len(trend):
        doc.para(
            "Trend with the scale. Slope per doubling: within each seed, the OLS slope of the "
            "measure on log2(init scale), averaged over seeds; its test is the t-test of the "
            "seeds' slopes on seeds − 1 df (units: seeds; the scales are the levels run, fixed "
            "effects), Holm across the rows. τ over scales: Kendall τ-b between the scale and "
            "the per-scale means, p from all permutations of the scales (units: scales; a "
            "monotone rather than linear trend). Curvature: the coefficient of log2(scale)² in "
            "the per-seed OLS on [1, log2 scale, log2 scale²], tested the same way (Holm across "
            "rows); > 0 is U-shaped (lowest at a middle scale or beyond the range), < 0 "
            "inverted. The τ column is not "
            "corrected across rows (with 5 scales its smallest p, 2/120, cannot survive Holm "
            "over 3 rows): λmax's row is the primary. Calibration: "
            + "; ".join(f"{TESTS[k]}: {calibration_note(TESTS[k])}"
                        for k in ("slope", "curve", "slope_lambda", "tau_lambda")) + ".")
        doc.frame(trend, _TREND_SHOWN)
        atomic_write_text(out / "init_scale_trend.csv", trend.to_csv(index=False))
    if len(assoc):
        n = int(assoc["n_scales"].max())
        doc.para(
            f"Sharpness against error across scales: Kendall τ-b between per-scale means "
            f"(units: {n} scales; exact permutation p, smallest attainable "
            f"{fmt(float(assoc['smallest_p'].min()))}). The scale drives both, so this is an "
            "association between configurations, not evidence that sharpness causes the "
            "error (a mediation claim would need the indirect effect and its interval); "
            "within a scale, the measures table relates each measure to the error over seeds. "
            f"Calibration: {calibration_note(TESTS['assoc'])}.")
        doc.frame(assoc, [("sharpness", "sharpness"), ("error", "error"), ("tau", "τ"),
                          ("p", "p (exact)"), ("n_scales", "scales")])
        atomic_write_text(out / "init_scale_association.csv", assoc.to_csv(index=False))
    if len(table) and any(c in cols for c in TRENDS):
        ctx.figure("init_scale", lambda png: plot_init_scale(jobs, png),
                   "init scale: each measure against the scale, one line per seed")


SECTION = Section("initialization scale", applies, section, "init_scale")
