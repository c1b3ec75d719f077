"""H4 (issue #5, #16 item 5): PAC-Bayes bounds with a Hessian-informed posterior are tighter than
a naive parameter-count bound and an isotropic-posterior bound.

Every job run with ``probe=pacbayes`` (:mod:`landscope.probes.pacbayes`,
:mod:`landscope.probes.pacbayes_optimize`; Dziugaite & Roy 2017) carries three bounds on its
own 0-1 error (``probe.pacbayes_naive``/``_isotropic``/``_hessian``) and their **complexity
terms** ``B = [KL + 2 ln j + ln(pi^2 m / (6 delta))] / (m - 1)`` (naive: ``(bits D ln 2 +
ln 1/delta) / m``). Sweeps: :file:`conf/experiment/h4_pacbayes.yaml` (10 classes) and
:file:`conf/experiment/h4_binary.yaml` (MNIST-1D digits 0 vs 1, a binary task as
Dziugaite & Roy's binary MNIST).

**Why complexity, not the bounds.** A bound is ``kl^-1(e_Q, B)``; on a saturated scale (every
bound near 1, as the 10-class sweep gives) "tighter" says little, and a lower bound can come from
a lower posterior error rather than a lower complexity. The section therefore (1) first states
non-vacuity: per bound, how many jobs are below 1 and below the error of guessing
(``chance_error``: ``1 - 1/classes``, 0.5 for two ``dataset.classes``); (2) compares complexity
terms **at matched posterior error**: each optimised posterior's covariance is scaled until its
Monte Carlo error equals a common target (``probe.pacbayes_matched_complexity_{hessian,isotropic}``;
jobs probed with the grid search have only their own complexities, used with a note saying the
errors are not matched).

**Inference at the level of independent units.** The comparison is within a job (both terms are
computed on the same network), but jobs of one configuration share its effect and jobs of one
seed share that seed's data order and initialization. Per job ``d = ln(B_hessian / B_other) -
ln(1 - margin)``: the log ratio of complexities shifted by the margin (the claim is a relative
tightening of more than ``margin``, default 5 %, fixed before any sweep). ``d`` is modelled as
``mu + a_config + b_seed + e`` with random configuration and seed effects
(:func:`crossed_mean_test`): the jobs are averaged into a configuration × seed table (largest
complete sub-table), ``Var(mean) = (MS_config + MS_seed - MS_residual) / (C S)`` (two-way ANOVA
mean squares, floored at ``max(MS_config, MS_seed) / (C S)``) and a t-test with Satterthwaite
degrees of freedom. With one configuration this is the one-sample t-test over seed means, with
one seed over configuration means. Its n of independent units is reported as ``n_seeds`` and
``n_configs``; the t interval of ``mu`` gives the ratio's interval ``exp(mu + ln(1 - margin))``.
Holm over the two rows (vs isotropic, vs naive). Reported beside it, not used in the verdict:
``p_fixed``, the configurations taken as fixed (the claim only for the swept configurations): a
one-sample t-test over the seed means (units: the seeds).

**Verdict** per row: ``supported`` when Holm ``p < alpha`` and the estimate is below the margin
(``ratio < 1 - margin``), ``not supported`` when Holm ``p < alpha`` and above it, ``inconclusive``
otherwise; overall ``supported`` when both rows are, ``not supported`` when either is. Every
verdict carries the ratio, its interval, the units, the test and the calibration phrase from
:func:`landscope.analysis.calibration.calibration_note` (scenarios in
:mod:`landscope.analysis.calibration.h4`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from landscope.analysis.doc import short as _fmt
from landscope.analysis.hypotheses.h4_crossed import CrossedTest, crossed_mean_test  # noqa: F401
from landscope.analysis.hypotheses.h4_data import (  # noqa: F401 - the public names of H4
    BOUNDS,
    CHANCE_ERROR,
    COMPLEXITY,
    HESSIAN,
    IS_ISOTROPIC,
    ISOTROPIC,
    MATCHED,
    NAIVE,
    _numeric,
    chance_error,
    complexities,
    config_labels,
)
from landscope.analysis.hypotheses.paired import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    holm,
)
from landscope.analysis.section import Section
from landscope.errors import LandscopeError

MARGIN = 0.05  # minimum relative tightening that counts (fixed before any sweep was run)
TEST = "crossed random-effects t (config × seed, Satterthwaite df)"
TEST_NAMES = {"isotropic": "H4 complexity vs isotropic", "naive": "H4 complexity vs naive"}
VERDICT_TEST = "H4 supported (verdict)"
TABLE_COLUMNS = ["comparison", "other", "matched", "n_jobs", "n_seeds", "n_configs", "margin",
                 "median_hessian", "median_other", "ratio", "ratio_ci_low", "ratio_ci_high",
                 "estimate", "se", "df", "t", "p", "p_holm", "p_fixed", "p_fixed_holm", "test",
                 "calibration", "verdict", "reason"]
BOUNDS_COLUMNS = ["quantity", "column", "n", "median", "mean", "min", "max", "frac_below_1",
                  "frac_below_chance"]
_ERRORS = [("test error of w", "test_error"), ("train error of w", "train_error"),
           ("train error of Q isotropic (MC)", "probe.pacbayes_isotropic_e_mc"),
           ("train error of Q Hessian (MC)", "probe.pacbayes_hessian_e_mc")]


@dataclass
class H4Result:
    """The outcome of :func:`h4_test`."""

    table: pd.DataFrame  # one row per comparison (TABLE_COLUMNS)
    bounds: pd.DataFrame  # one row per bound / error (BOUNDS_COLUMNS)
    jobs: pd.DataFrame  # one row per usable job: job, seed, config, bounds, complexities, ...
    verdict: str
    reason: str
    margin: float = MARGIN
    alpha: float = 0.05
    chance_error: float = CHANCE_ERROR
    matched: bool = False
    frac_non_isotropic: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def n_jobs(self) -> int:
        return len(self.jobs)

    def nonvacuity(self) -> str:
        """One sentence: how many jobs have each bound below 1 and below chance."""
        b = self.bounds.set_index("quantity")
        parts = []
        for name in BOUNDS:
            r = b.loc[f"{name} bound"]
            if r["n"]:
                parts.append(f"{name}: {int(round(r['frac_below_1'] * r['n']))} of {int(r['n'])} "
                             f"below 1, {int(round(r['frac_below_chance'] * r['n']))} below "
                             f"chance {self.chance_error:g} (median {_fmt(r['median'])})")
        return "Non-vacuity (bounds on the stochastic network's 0-1 error): " + "; ".join(parts)

    def summary(self) -> str:
        lines = [f"H4 (Hessian-informed PAC-Bayes complexity smaller by > {self.margin:.0%}): "
                 f"{self.verdict.upper()} - {self.reason}", self.nonvacuity()]
        for r in self.table.itertuples(index=False):
            lines.append(
                f"  hessian vs {r.other}{' (matched error)' if r.matched else ''}: complexity "
                f"ratio {_fmt(r.ratio)} [95% CI {_fmt(r.ratio_ci_low)}, {_fmt(r.ratio_ci_high)}], "
                f"{r.n_jobs} jobs = {r.n_configs} configs x {r.n_seeds} seeds, {r.test}: "
                f"t={_fmt(r.t)} df={_fmt(r.df)} p_holm={_fmt(r.p_holm)} (configs fixed: "
                f"p_holm={_fmt(r.p_fixed_holm)}); {r.calibration} -> "
                f"{r.verdict} ({r.reason})")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _bounds_table(jobs: pd.DataFrame, chance: float) -> pd.DataFrame:
    rows = []
    for quantity, column in [*((f"{k} bound", c) for k, c in BOUNDS.items()), *_ERRORS]:
        v = _numeric(jobs, column).to_numpy(float)
        v = v[np.isfinite(v)]
        rows.append({"quantity": quantity, "column": column, "n": len(v),
                     "median": float(np.median(v)) if len(v) else math.nan,
                     "mean": float(np.mean(v)) if len(v) else math.nan,
                     "min": float(np.min(v)) if len(v) else math.nan,
                     "max": float(np.max(v)) if len(v) else math.nan,
                     "frac_below_1": float(np.mean(v < 1.0)) if len(v) else math.nan,
                     "frac_below_chance": float(np.mean(v < chance)) if len(v) else math.nan})
    return pd.DataFrame(rows, columns=BOUNDS_COLUMNS)


def comparison_row(hessian: np.ndarray, other: np.ndarray, configs: Sequence[Any],
                   seeds: Sequence[Any], other_name: str, margin: float = MARGIN,
                   matched: bool = True) -> dict[str, Any]:
    """One comparison without the Holm column and the verdict: the crossed test of
    ``ln(hessian / other) - ln(1 - margin)`` (jobs with both values finite and positive)."""
    h, o = np.asarray(hessian, float), np.asarray(other, float)
    ok = np.isfinite(h) & np.isfinite(o) & (h > 0) & (o > 0)
    d = np.log(h[ok] / o[ok]) - math.log(1.0 - margin)
    res = crossed_mean_test(d, np.asarray(configs, object)[ok], np.asarray(seeds, object)[ok])
    shift = math.log(1.0 - margin)
    row = {c: math.nan for c in TABLE_COLUMNS}
    row.update(comparison=f"hessian vs {other_name}", other=other_name, matched=matched,
               n_jobs=res.n_jobs, n_seeds=res.n_seeds, n_configs=res.n_configs, margin=margin,
               median_hessian=float(np.median(h[ok])) if ok.any() else math.nan,
               median_other=float(np.median(o[ok])) if ok.any() else math.nan,
               ratio=math.exp(res.estimate + shift) if math.isfinite(res.estimate) else math.nan,
               ratio_ci_low=math.exp(res.ci_low + shift) if math.isfinite(res.ci_low) else math.nan,
               ratio_ci_high=math.exp(res.ci_high + shift) if math.isfinite(res.ci_high)
               else math.nan, estimate=res.estimate, se=res.se, df=res.df, t=res.t, p=res.p,
               p_fixed=res.p_fixed,
               test=TEST, verdict=INCONCLUSIVE, reason=res.reason)
    return row


def _verdict(row: pd.Series, alpha: float) -> tuple[str, str]:
    p, est, margin = row["p_holm"], row["estimate"], row["margin"]
    evidence = (f"complexity ratio {_fmt(row['ratio'])} [95% CI {_fmt(row['ratio_ci_low'])}, "
                f"{_fmt(row['ratio_ci_high'])}], {row['n_seeds']} seeds x {row['n_configs']} "
                f"configs, Holm p={_fmt(p)}")
    if row["reason"] and not math.isfinite(p):
        return INCONCLUSIVE, row["reason"]
    if not math.isfinite(p):
        return INCONCLUSIVE, "test undefined"
    if p < alpha and est < 0:
        return SUPPORTED, f"smaller than {row['other']}'s by more than {margin:.0%}: {evidence}"
    if p < alpha and est > 0:
        return NOT_SUPPORTED, (f"tightening over {row['other']} significantly below the "
                               f"{margin:.0%} margin: {evidence}")
    return INCONCLUSIVE, f"not significant at alpha={alpha:g}: {evidence}"


def _notes(matched: bool, usable: np.ndarray) -> list[str]:
    """The notes on the complexities: not at matched error, jobs without a Hessian one."""
    notes = []
    if not matched:
        notes.append("complexities not at matched posterior error (jobs probed with "
                     "probe.pacbayes.posterior=grid or before matching existed): a posterior "
                     "with a larger error may have a smaller complexity")
    if (~usable).any():
        notes.append(f"{int((~usable).sum())} included jobs without a finite Hessian "
                     "complexity left out of the test (their bounds are in the bounds table)")
    return notes


def _per_job(sel: pd.DataFrame, seeds: pd.Series, configs: pd.Series, cx: pd.DataFrame
             ) -> pd.DataFrame:
    """One row per included job: its seed, configuration, bounds, complexity terms, errors
    and whether its Hessian posterior fell back to isotropic (``h4_jobs.csv``)."""
    per_job = pd.DataFrame({"job": sel["job"] if "job" in sel.columns else sel.index.astype(str),
                            "seed": seeds.to_numpy(), "config": configs.to_numpy()})
    for name, col in BOUNDS.items():
        per_job[name] = _numeric(sel, col).to_numpy()
    for name in ("hessian", "isotropic", "naive"):
        per_job[f"complexity_{name}"] = cx[name].to_numpy()
    for name, col in (("test_error", "test_error"), ("train_error", "train_error"),
                      ("matched_error", "probe.pacbayes_matched_error"),
                      ("hessian_is_isotropic", IS_ISOTROPIC)):
        per_job[name] = _numeric(sel, col).to_numpy()
    return per_job


def _overall(table: pd.DataFrame) -> tuple[str, str]:
    """The overall verdict: supported when every comparison is, not supported when one is
    not, else inconclusive; the reason joins the comparisons that decide it."""
    verdict_list = list(table["verdict"])
    if verdict_list and all(v == SUPPORTED for v in verdict_list):
        verdict, reason = SUPPORTED, "; ".join(f"{r.comparison}: {r.reason}"
                                                for r in table.itertuples())
    elif NOT_SUPPORTED in verdict_list:
        verdict = NOT_SUPPORTED
        reason = "; ".join(f"{r.comparison}: {r.reason}" for r in table.itertuples()
                           if r.verdict == NOT_SUPPORTED)
    else:
        verdict = INCONCLUSIVE
        reason = "; ".join(f"{r.comparison}: {r.reason}" for r in table.itertuples()
                           if r.verdict != SUPPORTED) or "no comparison"
    return verdict, reason

def h4_test(jobs: pd.DataFrame, margin: float = MARGIN, alpha: float = 0.05,
            others: Sequence[str] = ("isotropic", "naive"),
            config_keys: Sequence[str] | None = None,
            chance: float | None = None) -> H4Result:
    """Test H4 on a collected jobs table (module docstring). ``config_keys``: the columns
    naming a configuration (default: the swept config columns). ``chance``: the error of
    guessing (default from the dataset columns). Raises :class:`LandscopeError` when a bound
    column is missing (no job ran ``probe=pacbayes``)."""
    from landscope.analysis.calibration import calibration_note

    if not 0.0 <= margin < 1.0:
        raise LandscopeError(f"H4: margin must lie in [0, 1) (got {margin!r})")
    missing = [c for c in (HESSIAN, *(BOUNDS[o] for o in others)) if c not in jobs.columns]
    if missing:
        raise LandscopeError(f"H4: no column {', '.join(missing)} in the jobs table; run the "
                             "sweep with probe=pacbayes (e.g. experiment=h4_pacbayes)")
    sel = jobs[jobs["included"].astype(bool)] if "included" in jobs.columns else jobs
    cx, matched = complexities(sel)
    usable = np.isfinite(cx["hessian"].to_numpy(float))
    configs = config_labels(sel, config_keys)
    seeds = sel["seed"] if "seed" in sel.columns else pd.Series(range(len(sel)), index=sel.index)
    chance = chance_error(sel) if chance is None else chance
    notes = _notes(matched, usable)
    table = pd.DataFrame([comparison_row(cx["hessian"].to_numpy(), cx[o].to_numpy(),
                                         list(configs), list(seeds), o, margin,
                                         matched if o != "naive" else False) for o in others])
    table["p_holm"] = holm(table["p"].to_numpy(float))
    table["p_fixed_holm"] = holm(table["p_fixed"].to_numpy(float))
    table["calibration"] = [calibration_note(TEST_NAMES.get(o, o)) for o in others]
    verdicts = [_verdict(r, alpha) for _, r in table.iterrows()]
    table["verdict"] = [v for v, _ in verdicts]
    table["reason"] = [r for _, r in verdicts]
    table = table[TABLE_COLUMNS].reset_index(drop=True)

    per_job = _per_job(sel, seeds, configs, cx)
    flags = per_job["hessian_is_isotropic"].to_numpy(float)
    flags = flags[np.isfinite(flags)]
    frac_non_iso = float(np.mean(flags == 0)) if len(flags) else math.nan
    verdict, reason = _overall(table)
    return H4Result(table=table, bounds=_bounds_table(sel, chance), jobs=per_job.reset_index(
        drop=True), verdict=verdict, reason=reason, margin=margin, alpha=alpha,
        chance_error=chance, matched=matched, frac_non_isotropic=frac_non_iso, notes=notes)


# --------------------------------------------------------------------------- report section
def applies(ctx: Any) -> bool:
    """True when the included jobs carry the three bounds (``probe=pacbayes``), at least one
    job with all three finite."""
    inc = ctx.coll.included
    if any(c not in inc.columns for c in BOUNDS.values()):
        return False
    values = np.column_stack([_numeric(inc, c).to_numpy(float) for c in BOUNDS.values()])
    return bool(np.isfinite(values).all(axis=1).any())


def section(ctx: Any) -> None:
    """H4: the report section (``ctx`` a :class:`landscope.analysis.report.ReportContext`):
    non-vacuity first, then the verdict with its evidence, the comparisons table (``h4.csv``),
    the bounds table (``h4_bounds.csv``), the per-job values (``h4_jobs.csv``) and
    ``figures/h4_bounds.png`` and ``figures/h4_complexity.png`` (isotropic vs Hessian bound and
    complexity, one line per job)."""
    from landscope.io import atomic_write_text
    from landscope.plots import plot_paired

    doc, out = ctx.doc, ctx.out
    res = h4_test(ctx.coll.included, config_keys=getattr(ctx.coll, "swept", None))
    doc.heading("H4: Hessian-informed PAC-Bayes bounds are tighter")
    doc.para(res.nonvacuity() + ". A bound in [chance, 1) is below 1 but says less than "
             "guessing; the bounds hold for the stochastic network Q, whose Monte Carlo training "
             "error is listed next to the trained network's errors.")
    doc.frame(res.bounds, [("quantity", "quantity"), ("n", "n"), ("median", "median"),
                           ("mean", "mean"), ("min", "min"), ("max", "max"),
                           ("frac_below_1", "fraction < 1"),
                           ("frac_below_chance", f"fraction < {res.chance_error:g}")])
    doc.para(
        f"Verdict: {res.verdict} ({res.reason}). The comparison is of complexity terms "
        f"[KL + 2 ln j + ln(π²m/6δ)]/(m − 1) "
        + ("at matched posterior error (each posterior scaled to the isotropic one’s "
           "Monte Carlo error)" if res.matched
           else "(not at matched posterior error: see the note)")
        + f", not of the bounds (Dziugaite & Roy 2017; prior centred at the initialization). "
        f"Per job ln(B_hessian/B_other) − ln(1 − {res.margin:g}) (a tightening of more than "
        f"{res.margin:.0%} counts); jobs of one configuration share its effect and jobs of one "
        f"seed share its model start, so the test is a {TEST} whose units are the seeds and "
        f"configurations (the claim generalises over configurations; with few configurations "
        f"its degrees of freedom are few); Holm over the two rows. Beside it, not used in the "
        f"verdict: the configurations taken as fixed (the claim for the swept configurations "
        f"only), a one-sample t-test over seed means (units: seeds). Calibration: "
        + "; ".join(f"{r.comparison}: {r.calibration}" for r in res.table.itertuples()) + ".")
    doc.frame(res.table, [("comparison", "comparison"), ("matched", "matched error"),
                          ("n_jobs", "jobs"), ("n_seeds", "seeds"), ("n_configs", "configs"),
                          ("median_hessian", "B Hessian"), ("median_other", "B other"),
                          ("ratio", "ratio"), ("ratio_ci_low", "CI low"),
                          ("ratio_ci_high", "CI high"), ("df", "df"), ("p_holm", "p (Holm)"),
                          ("p_fixed_holm", "p configs fixed (Holm)"), ("verdict", "verdict")])
    for n in res.notes:
        doc.para(f"Note: {n}.")
    atomic_write_text(out / "h4.csv", res.table.to_csv(index=False))
    atomic_write_text(out / "h4_bounds.csv", res.bounds.to_csv(index=False))
    atomic_write_text(out / "h4_jobs.csv", res.jobs.to_csv(index=False))
    iso, hes = (res.jobs[f"complexity_{k}"].to_numpy(float) for k in ("isotropic", "hessian"))
    for stem, (a, b), what in (
            ("h4_bounds", (res.jobs["isotropic"].to_numpy(float),
                           res.jobs["hessian"].to_numpy(float)), "PAC-Bayes bound (0-1 error)"),
            ("h4_complexity", (iso, hes), "complexity term B")):
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.any():
            png = out / "figures" / f"{stem}.png"
            plot_paired(a[ok], b[ok], png, what, ("isotropic", "Hessian"))
            doc.image(png, f"figures/{png.name}",
                      f"{what}, isotropic vs Hessian-informed posterior, one line per job")


SECTION = Section("H4: Hessian-informed PAC-Bayes bounds", applies, section, "H4")
