"""H4 (issue #5, #16 item 5): PAC-Bayes bounds with a Hessian-informed posterior are tighter than
a naive parameter-count bound and an isotropic-posterior bound.

Every job run with ``probe=pacbayes`` (:mod:`landscope.analysis.pacbayes`,
:mod:`landscope.analysis.pacbayes_optimize`; Dziugaite & Roy 2017) carries three bounds on its
own 0-1 error (``probe.pacbayes_naive``/``_isotropic``/``_hessian``) and their **complexity
terms** ``B = [KL + 2 ln j + ln(pi^2 m / (6 delta))] / (m - 1)`` (naive: ``(bits D ln 2 +
ln 1/delta) / m``). Sweeps: :file:`conf/experiment/h4_pacbayes.yaml` (10 classes) and
:file:`conf/experiment/h4_binary.yaml` (MNIST-1D digits 0 vs 1, a binary task as
Dziugaite & Roy's binary MNIST).

**Why complexity, not the bounds.** A bound is ``kl^-1(e_Q, B)``; on a saturated scale (every
bound near 1, as the 10-class sweep gives) "tighter" says little, and a lower bound can come from
a lower posterior error rather than a lower complexity. The section therefore (1) first states
non-vacuity: per bound, how many jobs are below 1 and below the error of guessing
(``chance_error``: ``1 - 1/classes``, 0.5 for two ``dataset.classes``); (2) compares complexity terms
**at matched posterior error**: each optimised posterior's covariance is scaled until its Monte
Carlo error equals a common target (``probe.pacbayes_matched_complexity_{hessian,isotropic}``;
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
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from landscope.analysis.doc import short as _fmt
from landscope.analysis.hypotheses.paired import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, holm
from landscope.analysis.section import Section
from landscope.errors import LandscopeError

HESSIAN = "probe.pacbayes_hessian"
ISOTROPIC = "probe.pacbayes_isotropic"
NAIVE = "probe.pacbayes_naive"
BOUNDS = {"naive": NAIVE, "isotropic": ISOTROPIC, "hessian": HESSIAN}
IS_ISOTROPIC = "probe.pacbayes_hessian_is_isotropic"
MATCHED = {"isotropic": "probe.pacbayes_matched_complexity_isotropic",
           "hessian": "probe.pacbayes_matched_complexity_hessian"}
COMPLEXITY = {k: f"probe.pacbayes_complexity_{k}" for k in ("naive", "isotropic", "hessian")}
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
CHANCE_ERROR = 0.9  # error of guessing uniformly among 10 classes (mnist1d, mnist, cifar10)
_ERRORS = [("test error of w", "test_error"), ("train error of w", "train_error"),
           ("train error of Q isotropic (MC)", "probe.pacbayes_isotropic_e_mc"),
           ("train error of Q Hessian (MC)", "probe.pacbayes_hessian_e_mc")]
_NOT_CONFIG = ("seed", "dataset.seed", "name", "resume")


@dataclass
class CrossedTest:
    """The outcome of :func:`crossed_mean_test`."""

    estimate: float  # the grand mean of the complete configuration x seed table
    se: float
    df: float
    t: float
    p: float
    ci_low: float
    ci_high: float
    n_jobs: int  # jobs used (in the complete table)
    n_seeds: int
    n_configs: int
    reason: str = ""
    # the configurations taken as fixed (the claim for the swept configurations only): the
    # one-sample t-test over the seed means of the complete table (units: seeds)
    t_fixed: float = math.nan
    df_fixed: float = math.nan
    p_fixed: float = math.nan


def _numeric(jobs: pd.DataFrame, column: str) -> pd.Series:
    if column in jobs.columns:
        return pd.to_numeric(jobs[column], errors="coerce").astype(float)
    if column == "test_error" and "final.test_acc" in jobs.columns:
        return 1.0 - pd.to_numeric(jobs["final.test_acc"], errors="coerce").astype(float)
    if column == "train_error" and "final.train_acc" in jobs.columns:
        return 1.0 - pd.to_numeric(jobs["final.train_acc"], errors="coerce").astype(float)
    return pd.Series(np.nan, index=jobs.index, dtype=float)


def _complete_table(table: pd.DataFrame) -> pd.DataFrame:
    """Drop the configuration or seed with the most missing cells until none is missing."""
    while table.size and table.isna().any().any():
        row_na, col_na = table.isna().sum(axis=1), table.isna().sum(axis=0)
        if row_na.max() / table.shape[1] >= col_na.max() / table.shape[0]:
            table = table.drop(index=row_na.idxmax())
        else:
            table = table.drop(columns=col_na.idxmax())
    return table


def crossed_mean_test(values: Sequence[float], configs: Sequence[Any], seeds: Sequence[Any],
                      level: float = 0.95) -> CrossedTest:
    """Test ``mean = 0`` for values with random configuration and seed effects (module
    docstring): cell means of the configuration x seed table (largest complete sub-table),
    ``Var = max(MS_c + MS_s - MS_e, MS_c, MS_s) / (C S)`` and Satterthwaite degrees of
    freedom; a two-sided t-test and a ``level`` t interval of the mean."""
    frame = pd.DataFrame({"v": np.asarray(values, float), "c": [str(c) for c in configs],
                          "s": [str(s) for s in seeds]})
    frame = frame[np.isfinite(frame["v"])]
    nan = CrossedTest(math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan,
                      0, 0, 0)
    if frame.empty:
        nan.reason = "no jobs with finite values"
        return nan
    table = _complete_table(frame.pivot_table(index="c", columns="s", values="v", aggfunc="mean"))
    C, S = table.shape
    used = frame[frame["c"].isin(table.index) & frame["s"].isin(table.columns)]
    grand = float(table.to_numpy().mean()) if table.size else math.nan
    if C * S < 2:
        nan.estimate, nan.n_jobs, nan.n_seeds, nan.n_configs = grand, len(used), S, C
        nan.reason = f"too few units: {C} configuration(s) x {S} seed(s)"
        return nan
    x = table.to_numpy(float)
    rows, cols = x.mean(axis=1), x.mean(axis=0)
    fixed = dict(t_fixed=math.nan, df_fixed=math.nan, p_fixed=math.nan)
    if S > 1 and np.std(cols) > 1e-12 * max(1.0, abs(grand)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = stats.ttest_1samp(cols, 0.0)
        fixed = dict(t_fixed=float(ref.statistic), df_fixed=S - 1.0, p_fixed=float(ref.pvalue))
    terms: list[tuple[float, float, float]] = []  # (coefficient, mean square, df)
    ms_c = S * float(((rows - grand) ** 2).sum()) / (C - 1) if C > 1 else 0.0
    ms_s = C * float(((cols - grand) ** 2).sum()) / (S - 1) if S > 1 else 0.0
    if C > 1:
        terms.append((1.0, ms_c, C - 1.0))
    if S > 1:
        terms.append((1.0, ms_s, S - 1.0))
    if C > 1 and S > 1:
        resid = x - rows[:, None] - cols[None, :] + grand
        ms_e = float((resid ** 2).sum()) / ((C - 1) * (S - 1))
        terms.append((-1.0, ms_e, (C - 1.0) * (S - 1.0)))
    combo = sum(a * ms for a, ms, _ in terms)
    floor = max(ms_c, ms_s)
    if combo < floor:  # truncate the unbiased combination at the larger main-effect term
        combo = floor
        terms = [max(terms[:2], key=lambda t: t[1])] if len(terms) > 1 else terms
    if not combo > 0:
        out = CrossedTest(grand, 0.0, math.nan, math.nan, math.nan, grand, grand, len(used), S,
                          C, "zero variance between units", **fixed)
        if grand != 0:
            out.p, out.t = 0.0, math.copysign(math.inf, grand)
        else:
            out.p, out.t = 1.0, 0.0
        return out
    df = combo ** 2 / sum((a * ms) ** 2 / d for a, ms, d in terms)
    se = math.sqrt(combo / (C * S))
    t = grand / se
    p = float(2 * stats.t.sf(abs(t), df))
    q = float(stats.t.ppf(0.5 + level / 2, df))
    return CrossedTest(grand, se, float(df), float(t), p, grand - q * se, grand + q * se,
                       len(used), S, C, **fixed)


def config_labels(jobs: pd.DataFrame, config_keys: Sequence[str] | None = None) -> pd.Series:
    """One label per job naming its configuration: the values of ``config_keys`` (default:
    every config column that varies across the jobs, seeds excluded)."""
    if config_keys is None:
        from landscope.analysis.collect import swept_keys

        measured = ("probe.", "landscape.", "final.")
        candidates = [c for c in jobs.columns if "." in c and not c.startswith(measured)
                      and c not in _NOT_CONFIG]
        config_keys = swept_keys(jobs, candidates)
    keys = [k for k in config_keys if k in jobs.columns and k not in _NOT_CONFIG]
    if not keys:
        return pd.Series("all", index=jobs.index)
    return jobs[keys].astype(str).agg("|".join, axis=1)


def chance_error(jobs: pd.DataFrame) -> float:
    """``1 - 1/classes`` of the jobs' dataset: ``dataset.classes`` when set (0.5 for two),
    0.99 for cifar100, else 0.9 (10 classes); the largest when jobs differ."""
    import json

    values = []
    chosen = jobs["dataset.classes"] if "dataset.classes" in jobs else pd.Series(None, jobs.index)
    names = jobs["dataset.name"] if "dataset.name" in jobs else pd.Series("", jobs.index)
    for c, n in zip(chosen, names):
        if isinstance(c, str):
            try:
                c = json.loads(c)
            except ValueError:
                c = None
        if isinstance(c, (list, tuple)) and len(c) >= 2:
            values.append(1.0 - 1.0 / len(c))
        else:
            values.append(0.99 if str(n) == "cifar100" else CHANCE_ERROR)
    return max(values) if values else CHANCE_ERROR


def _from_pieces(jobs: pd.DataFrame, name: str) -> pd.Series:
    """The complexity term from ``kl_*``, ``*_prior_j``, ``m`` and ``delta`` (jobs probed before
    the complexity was stored)."""
    kl, j = _numeric(jobs, f"probe.pacbayes_kl_{name}"), _numeric(jobs, f"probe.pacbayes_{name}_prior_j")
    m, delta = _numeric(jobs, "probe.pacbayes_m"), _numeric(jobs, "probe.pacbayes_delta")
    with np.errstate(divide="ignore", invalid="ignore"):
        return (kl + 2 * np.log(j) + np.log(math.pi ** 2 * m / (6 * delta))) / (m - 1)


def complexities(jobs: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """Per job the complexity terms ``hessian``, ``isotropic`` (at matched posterior error when
    the jobs carry them) and ``naive``; the flag says whether they are matched."""
    matched = all(c in jobs.columns for c in MATCHED.values()) and bool(
        np.isfinite(_numeric(jobs, MATCHED["hessian"])).any())
    out = pd.DataFrame(index=jobs.index)
    for name in ("hessian", "isotropic"):
        col = MATCHED[name] if matched else COMPLEXITY[name]
        out[name] = _numeric(jobs, col) if col in jobs.columns else _from_pieces(jobs, name)
    naive = _numeric(jobs, COMPLEXITY["naive"])
    if not np.isfinite(naive).any() and "probe.pacbayes_naive_log_hypotheses" in jobs.columns:
        naive = (_numeric(jobs, "probe.pacbayes_naive_log_hypotheses")
                 + np.log(1 / _numeric(jobs, "probe.pacbayes_delta"))) / _numeric(jobs, "probe.pacbayes_m")
    out["naive"] = naive
    return out, matched


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
    notes = []
    if not matched:
        notes.append("complexities not at matched posterior error (jobs probed with "
                     "probe.pacbayes_posterior=grid or before matching existed): a posterior "
                     "with a larger error may have a smaller complexity")
    if (~usable).any():
        notes.append(f"{int((~usable).sum())} included jobs without a finite Hessian "
                     "complexity left out of the test (their bounds are in the bounds table)")
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
    flags = per_job["hessian_is_isotropic"].to_numpy(float)
    flags = flags[np.isfinite(flags)]
    frac_non_iso = float(np.mean(flags == 0)) if len(flags) else math.nan

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
        f"{'at matched posterior error (each posterior scaled to the isotropic one’s Monte Carlo error)' if res.matched else '(not at matched posterior error: see the note)'}"
        f", not of the bounds (Dziugaite & Roy 2017; prior centred at the initialization). "
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
