"""The report's opening sections: the per-configuration summary, the measures table with its
claims and units, the joint regression, and the appendices that share the table's inference
(the within-configuration fit of the strongest measure) and state every test's calibration.

When the jobs have a shifted test split (``ood_test_error``, issue #20 item 6), the summary
adds the OOD accuracy and the measures section a second table, every measure against the OOD
error with the same columns, tests and units (``measures_ood.csv``); a sweep without one gets
exactly the report it got before.

Each function writes into a :class:`~landscope.analysis.report.ReportContext`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from landscope.analysis.calibration import calibration_note, shipped_rates
from landscope.analysis.doc import fmt, safe_name
from landscope.analysis.measures import default_measures, target_column
from landscope.analysis.measures_table import (
    config_labels,
    joint_regression,
    measures_table,
    swept_hyperparameters,
)
from landscope.io import atomic_write_text

TOP_SCATTER = 6  # measures drawn as scatter plots
# Headline measures of the per-configuration summary, when the jobs have them.
HEADLINE = ("probe.lambda_max", "probe.trace", "probe.sharpness_avg",
            "landscape.line_train_rise_mean")
# Curvature summaries regressed jointly on test error (those present, at most 3).
JOINT = ("probe.lambda_max", "probe.trace", "probe.spectral_norm_density_mass",
         "probe.sharpness_avg", "probe.keskar_sharpness")
MEASURE_TESTS = {"within_tau_p_holm": "within τ (seed permutation), Holm, any of 4",
                 "within_p_holm": "within regression (CR2, seed clusters), Holm, any of 4",
                 "between_p_holm": "between τ (config means), Holm, any of 4"}
_SHOWN = [("n", "jobs"), ("n_seeds", "seeds"), ("n_configs", "configs"),
          ("within_tau", "τ within"), ("within_tau_p_holm", "p τ within (Holm)"),
          ("within_coef", "coef/sd within"), ("within_ci_low", "CI low"),
          ("within_ci_high", "CI high"), ("within_p_holm", "p CR2 (Holm)"),
          ("between_tau", "τ between"), ("between_p_holm", "p between (Holm)"),
          ("tau", "τ pooled (descr.)"), ("psi", "Ψ (descr.)")]


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """Mean and half-width of the t interval over the finite values (seeds), and their n."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    if len(v) == 1:
        return float(v[0]), math.nan, 1
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean()), half, len(v)


def _sortable(value: Any) -> tuple:
    """Numbers before strings, numbers by value (16 < 128), strings alphabetically."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _pm(mean: float, half: float) -> str:
    return fmt(mean) if not math.isfinite(half) else f"{fmt(mean)} ± {fmt(half)}"


def config_summary(inc: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: seeds, and mean ± 95 % t-interval over seeds of test
    accuracy and each headline measure present; for SGD (no momentum), λmax against the
    stability limit 2/η (``lambda_max_x_lr_over_2`` = λmax·η/2, 1 at the edge of stability)."""
    hps = swept_hyperparameters(inc)
    labels = config_labels(inc, hps)
    present = [m for m in HEADLINE
               if m in inc and pd.to_numeric(inc[m], errors="coerce").notna().any()]
    rows = []
    groups = labels.groupby(labels, sort=False).groups
    order = sorted(groups, key=lambda lab: tuple(_sortable(inc.loc[groups[lab][0], h])
                                                  for h in hps))
    for label in order:
        part = inc.loc[groups[label]]
        name = ", ".join(f"{h}={part[h].iloc[0]}" for h in hps) if hps else "all jobs"
        rec: dict[str, Any] = {"configuration": name, "seeds": int(part["seed"].nunique())
                               if "seed" in part else len(part)}
        acc = pd.to_numeric(part.get("final.test_acc"), errors="coerce")
        rec["test_acc"] = _pm(*mean_ci(acc)[:2]) if acc is not None else "–"
        if has_ood(inc):
            ood = pd.to_numeric(part.get("final.ood_test_acc"), errors="coerce")
            rec["ood_test_acc"] = _pm(*mean_ci(ood)[:2]) if ood is not None else "–"
        for m in present:
            rec[m] = _pm(*mean_ci(pd.to_numeric(part[m], errors="coerce"))[:2])
        name = str(part["optimizer.name"].iloc[0]) if "optimizer.name" in part else ""
        mom = pd.to_numeric(part.get("optimizer.momentum", pd.Series([0.0])), errors="coerce")
        if name == "sgd" and "optimizer.lr" in part and "probe.lambda_max" in part \
                and not (mom.fillna(0) > 0).any():
            lr = float(pd.to_numeric(part["optimizer.lr"], errors="coerce").iloc[0])
            lam = mean_ci(pd.to_numeric(part["probe.lambda_max"], errors="coerce"))
            rec["2/lr"] = fmt(2.0 / lr) if lr > 0 else "–"
            rec["λmax·lr/2"] = _pm(lam[0] * lr / 2, lam[1] * lr / 2) if lr > 0 else "–"
        rows.append(rec)
    return pd.DataFrame(rows)


def summary_section(ctx: Any) -> None:
    """The per-configuration summary (mean ± 95 % interval over seeds)."""
    inc = ctx.coll.included
    if inc.empty:
        return
    table = config_summary(inc)
    ctx.doc.heading("Per-configuration summary")
    sgd = "λmax·lr/2" in table
    ctx.doc.para("Mean ± 95 % t-interval over seeds (the independent units) of test accuracy "
                 "and the headline measures, one row per configuration."
                 + (" For plain SGD, λmax is set against the stability limit 2/lr: λmax·lr/2 "
                    "near 1 is the edge of stability (Cohen et al. 2021); below 1 the minimum "
                    "is stable for the step size." if sgd else ""))
    ctx.doc.frame(table, [(c, c) for c in table.columns])
    atomic_write_text(ctx.out / "configurations.csv", table.to_csv(index=False))


def has_ood(inc: pd.DataFrame) -> bool:
    """Whether any analysed job has a finite OOD error (a shifted test split)."""
    if "ood_test_error" not in inc and "final.ood_test_acc" not in inc:
        return False
    return bool(np.isfinite(target_column(inc, "ood_test_error").to_numpy(float)).any())


def _ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Strongest first: by |τ within|, else |τ pooled|."""
    key = table["within_tau"].abs().fillna(table["tau"].abs())
    return table.loc[key.sort_values(ascending=False, na_position="last").index]


def _no_measure_reason(inc: pd.DataFrame, min_count: int = 5) -> str:
    """Why no measure qualified (:func:`default_measures`: finite, non-constant values in at
    least ``min_count`` and half of the analysed jobs), stating the actual cause."""
    need = f"at least {min_count} and half of the analysed jobs"
    if len(inc) < min_count:
        return (f"No measure: only {len(inc)} job{'s' if len(inc) != 1 else ''} completed and "
                f"can be analysed, and a measure needs finite values in {need}; run more seeds "
                "or configurations.")
    if not any(c.startswith(("probe.", "landscape.")) for c in inc.columns):
        return ("No measure: the analysed jobs have no probe or landscape results; run the "
                "sweep with probes or landscape scans (probe=..., landscape=...).")
    return (f"No measure: no probe or landscape result has finite values that are not all "
            f"equal in {need} ({len(inc)} jobs).")


def measures_section(ctx: Any) -> pd.DataFrame:
    """The measures table against test error (and ``measures_gap.csv`` against the gap), the
    joint regression and the scatter plots. Returns the table (empty when no measure)."""
    doc, inc, out = ctx.doc, ctx.coll.included, ctx.out
    doc.heading("Measures against test error")
    measures = default_measures(inc) if len(inc) else []
    if not measures:
        doc.para(_no_measure_reason(inc))
        return pd.DataFrame()
    mtable = _ranked(measures_table(inc, measures))
    atomic_write_text(out / "measures.csv", mtable.to_csv(index=False))
    gap = measures_table(inc, measures, target="gap")
    atomic_write_text(out / "measures_gap.csv", gap.to_csv(index=False))
    n_seeds, n_configs = int(mtable["n_seeds"].max()), int(mtable["n_configs"].max())
    smallest = 2.0 / math.factorial(n_configs) if n_configs <= 8 else 0.0
    doc.para(
        f"{len(measures)} measures against test error (1 − test accuracy), {len(inc)} jobs = "
        f"{n_configs} configuration{'s' if n_configs != 1 else ''} × up to {n_seeds} seeds. "
        "Jobs of one configuration share its effect, so rows are not independent units. "
        f"**Within-config** columns (units: {n_seeds} seeds) ask whether, inside a "
        "configuration, the seeds with a larger measure have a larger error: τ within is the "
        "mean over configurations of Kendall τ-b, its p from permuting seed labels (one "
        "permutation in every configuration); coef/sd within is the OLS slope of test error "
        "per sd of the measure given train loss and configuration fixed effects, CR2 standard "
        "errors clustered by seed with Satterthwaite df (95 % CI). **Between-config** columns "
        f"(units: {n_configs} configurations) rank configuration means, p from all "
        "permutations of the configurations"
        + (f" (with {n_configs} configurations the smallest attainable p is "
           f"{smallest:.2g}, so no between-config claim can reach 5 %)" if smallest > 0.05
           else "") + ". τ pooled and Ψ (granulated Kendall, Jiang et al. 2020) are given as "
        "the literature reports them, without p-values: pooled tests over jobs rejected "
        "24–57 % of null sweeps. p-values are Holm-corrected across measures. Calibration: "
        + "; ".join(f"{name}: {calibration_note(test)}" for name, test in
                    (("τ within", MEASURE_TESTS["within_tau_p_holm"]),
                     ("CR2 within", MEASURE_TESTS["within_p_holm"]),
                     ("τ between", MEASURE_TESTS["between_p_holm"])))
        + ". Every column is in measures.csv; the same against the generalization gap in "
          "measures_gap.csv.")
    doc.frame(mtable, [("measure", "measure"), *_SHOWN])
    if has_ood(inc):
        _ood_part(doc, inc, measures, out)
    _joint_part(doc, inc, measures, out)
    _scatter_part(doc, inc, mtable, out)
    return mtable


def _ood_part(doc: Any, inc: pd.DataFrame, measures: list[str], out: Path) -> None:
    """Every measure against the OOD error (1 − accuracy on the shifted test split), with the
    table's columns, tests and units (``measures_ood.csv``); jobs without the split left out."""
    table = _ranked(measures_table(inc, measures, target="ood_test_error"))
    atomic_write_text(out / "measures_ood.csv", table.to_csv(index=False))
    n_ood = int(np.isfinite(target_column(inc, "ood_test_error").to_numpy(float)).sum())
    doc.heading("Measures against the OOD error", 3)
    doc.para(
        f"The same measures against the error on the shifted test split (1 − OOD accuracy; "
        f"{n_ood} of {len(inc)} jobs have one), with the same columns, tests, units and "
        "calibration as the table above; p-values Holm-corrected across measures within this "
        "table. A measure that ranks the test error need not rank the OOD error: compare the "
        "two tables row by row (measures_ood.csv has every column).")
    doc.frame(table, [("measure", "measure"), *_SHOWN])


def _joint_part(doc: Any, inc: pd.DataFrame, measures: list[str], out: Path) -> None:
    """The joint regression of test error on up to three curvature summaries (``joint.csv``);
    nothing when none is measured."""
    joint = joint_regression(inc, [m for m in JOINT if m in measures][:3])
    if len(joint):
        atomic_write_text(out / "joint.csv", joint.to_csv(index=False))
        doc.heading("Curvature summaries jointly", 3)
        terms = [t for t in joint["term"] if t != "final.train_loss"]
        doc.para(f"One regression of test error on {', '.join(terms)} "
                 f"(standardized) and train loss, with configuration fixed effects; CR2 "
                 f"standard errors clustered by seed, Satterthwaite df; {int(joint['n'].iloc[0])} "
                 f"jobs, {int(joint['n_seeds'].iloc[0])} seeds, R² = {fmt(joint['r2'].iloc[0])} "
                 "(including the configuration effects).")
        doc.frame(joint, [("term", "term"), ("coef", "coef"), ("se", "se (CR2)"), ("df", "df"),
                          ("p", "p"), ("ci_low", "CI low"), ("ci_high", "CI high")])


def _scatter_part(doc: Any, inc: pd.DataFrame, mtable: pd.DataFrame, out: Path) -> None:
    """The scatter plots of the :data:`TOP_SCATTER` strongest measures against test error."""
    from landscope.plots import plot_measure_scatter

    doc.heading("Strongest measures", 3)
    target = target_column(inc, "test_error")
    hps = swept_hyperparameters(inc)
    hue = next((c for c in hps if c in inc and inc[c].nunique() > 1), None)
    for m in mtable["measure"].head(TOP_SCATTER):
        png = out / "figures" / f"{safe_name(m)}.png"
        plot_measure_scatter(inc[m].to_numpy(float), target.to_numpy(float), png,
                             m, "test error", None if hue is None else inc[hue].astype(str))
        doc.image(png, f"figures/{png.name}", f"{m} against test error")


def within_fit_text(inc: pd.DataFrame, measure: str) -> str:
    """The within-configuration regression of the table (standardized measure, train loss,
    configuration fixed effects, CR2 by seed, Satterthwaite df) as a plain-text summary."""
    from landscope.analysis.inference import cluster_ols, dummies

    x = pd.to_numeric(inc[measure], errors="coerce").to_numpy(float)
    y = target_column(inc, "test_error").to_numpy(float)
    z = pd.to_numeric(inc.get("final.train_loss"), errors="coerce").to_numpy(float) \
        if "final.train_loss" in inc else np.zeros(len(inc))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    if ok.sum() < 4 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0 or "seed" not in inc:
        return f"{measure}: no fit (too few finite values, or no variation)"
    configs = config_labels(inc, swept_hyperparameters(inc)).to_numpy()[ok]
    D, dn = dummies(configs, "config")
    cols, names = [np.ones(ok.sum()), (x[ok] - x[ok].mean()) / x[ok].std(ddof=1)], \
        ["const", f"{measure} (standardized)"]
    if np.ptp(z[ok]) > 0:
        cols.append(z[ok])
        names.append("final.train_loss")
    X = np.column_stack(cols + list(D.T))
    if X.shape[1] >= ok.sum() or np.linalg.matrix_rank(X) < X.shape[1]:
        return f"{measure}: no fit (the design is rank deficient)"
    fit = cluster_ols(y[ok], X, inc["seed"].astype(str).to_numpy()[ok], names + dn)
    lines = [f"Dependent variable: test error. Jobs: {fit.n}. Seed clusters: {fit.n_clusters}. "
             f"R²: {fit.r2:.4f}.",
             "Covariance: CR2 (Bell–McCaffrey), clustered by seed; t on Satterthwaite df.",
             f"{'term':<46}{'coef':>11}{'se':>11}{'df':>7}{'t':>8}{'p':>9}{'[0.025':>11}{'0.975]':>11}"]
    for i, name in enumerate(fit.names):
        t = fit.coef[i] / fit.se[i] if fit.se[i] > 0 else math.nan
        lines.append(f"{name[:45]:<46}{fit.coef[i]:>11.4g}{fit.se[i]:>11.4g}{fit.df[i]:>7.2f}"
                     f"{t:>8.3f}{fit.p[i]:>9.3g}{fit.ci_low[i]:>11.4g}{fit.ci_high[i]:>11.4g}")
    return "\n".join(lines)


def calibration_appendix(ctx: Any, hypotheses: Sequence[str]) -> None:
    """The stored calibration of every test family the report used (from the suite's
    ``rates.csv``): rate under each null scenario, power under each planted one."""
    rates = shipped_rates()
    ctx.doc.heading("Appendix: calibration of the tests", 3)
    if rates.empty:
        ctx.doc.para("The calibration suite has not been run for this installation "
                     "(python -m runner.calibrate --write stores its rates).")
        return
    rows = rates[rates["hypothesis"].isin(list(hypotheses))].copy()
    if rows.empty:
        ctx.doc.para("No stored calibration for the tests of this report.")
        return
    rows["rate (95 % CI)"] = [f"{100 * r:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"
                              for r, lo, hi in zip(rows["rate"], rows["low"], rows["high"])]
    lo, hi = int(rows["runs"].min()), int(rows["runs"].max())
    ctx.doc.para(f"From python -m runner.calibrate (R = {lo if lo == hi else f'{lo}–{hi}'} "
                 "simulated sweeps per scenario, written in the results contract and read back "
                 "as the report reads them; Clopper–Pearson intervals). Null rows are "
                 "false-positive rates (goal ≤ 5 % within binomial error), power rows the rate "
                 "at the stated planted effect, stress rows the false-positive rate in a world "
                 "that breaks an assumption no test with so few units can do without (shown, "
                 "not held to the goal).")
    ctx.doc.frame(rows, [("hypothesis", "family"), ("scenario", "scenario"), ("test", "test"),
                         ("kind", "kind"), ("rate (95 % CI)", "rate (95 % CI)"),
                         ("effect", "planted effect")])
