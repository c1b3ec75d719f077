"""H4 (issue #5): PAC-Bayes bounds with a Hessian-informed posterior are tighter than a naive
parameter-count bound and an isotropic-posterior bound.

Every job run with ``probe=pacbayes`` (:mod:`landscope.analysis.pacbayes`, Dziugaite & Roy 2017)
carries the three bounds on its own 0-1 error: ``probe.pacbayes_naive`` (Occam bound over the
``2^(32 D)`` float32 weight vectors), ``probe.pacbayes_isotropic`` (``Q = N(w, s I)``) and
``probe.pacbayes_hessian`` (``Q`` diagonal in the basis of the top-k Hessian eigenvectors). The
comparison is therefore **paired by job**: no matching of configurations is needed, and jobs of
different configurations are pooled (the signed-rank test only needs the differences to be
independent and, under its null, symmetric about 0). The sweep is
:file:`conf/experiment/h4_pacbayes.yaml`.

**What an honest test is here.** ``pacbayes_hessian <= pacbayes_isotropic`` holds *by
construction*: the isotropic posterior is a member of the Hessian family and the Hessian bound is
the smaller of the final bounds of the two winners. A test of "Hessian < isotropic" would
therefore be significant as soon as a few jobs differ at all, even when the difference is
Monte-Carlo noise picked by the minimum or a negligible tightening. We test a **margin** instead:
the claim is that the Hessian bound is tighter by more than ``margin`` (default 5%) in relative
terms, i.e. that the margin-shifted difference

    d_m = hessian - (1 - margin) * other        (other = isotropic or naive)

is negative (``d_m < 0`` exactly when ``(other - hessian) / other > margin``). Nothing forces
``d_m`` below 0, so the test has a real null. The same margin is applied to the naive
comparison (there the ordering is not guaranteed by construction, but a bound that is tighter
by a hair is not "tighter" in any useful sense). The margin is fixed in advance (the default was
chosen before any sweep was run) and reported in every row.

Per comparison, :func:`h4_test` reports (one row of :attr:`H4Result.table`):

- ``n`` jobs with both bounds finite and ``other > 0``; ``median_hessian``, ``median_other``;
- ``median_diff`` = median of ``hessian - other`` (raw) with a percentile bootstrap 95% CI
  ``ci_low``/``ci_high`` (``n_boot`` resamples of the jobs, ``numpy.random.default_rng(seed)``),
  ``median_rel_improvement`` = median of ``(other - hessian) / other`` with its CI
  ``rel_ci_low``/``rel_ci_high`` (the same resamples), and ``n_above_margin`` (jobs whose
  relative improvement exceeds the margin);
- ``test`` = ``wilcoxon (margin-shifted)``: :func:`scipy.stats.wilcoxon` on ``d_m``, two-sided,
  zero differences dropped (scipy's defaults, via
  :func:`~landscope.analysis.hypotheses.paired.paired_stats`);
  ``statistic`` (min(T+, T-)), ``p``; ``median_shifted`` = median of ``d_m``;
- ``t``/``t_p``: paired t-test of ``hessian`` against ``(1 - margin) * other``;
- effect sizes of ``d_m``: ``cohens_d`` (d_z = mean / sd) and ``rank_biserial`` (Kerby 2014,
  negative when the Hessian bound beats the margin);
- ``p_holm``/``t_p_holm``: Holm across the two rows;
- ``verdict``/``reason``: ``supported`` when ``p_holm < alpha`` and ``median_shifted < 0``;
  ``not supported`` when ``p_holm < alpha`` and ``median_shifted > 0`` (the improvement is
  significantly *below* the margin: evidence against a meaningful tightening); ``inconclusive``
  otherwise, and whenever the exact Wilcoxon p cannot reach ``alpha`` (``2 / 2^n``: at least 6
  jobs at alpha 0.05; with Holm over the two rows at least 7 for any row to be supported).

The overall :attr:`H4Result.verdict` is ``supported`` when both rows are supported, ``not
supported`` when either row is, and ``inconclusive`` otherwise. Reported alongside, not used in
the verdict (:attr:`H4Result.bounds`): per bound the median, mean, range, the fraction of
jobs where it is non-vacuous (< 1) and the fraction below the error of uniform guessing
(``chance_error``, 0.9 for 10 classes: a bound in [0.9, 1) is below 1 but says less than
guessing does); the test and train error of the trained networks and the
Monte Carlo training errors of the two posteriors for comparison (the PAC-Bayes bounds bound the
error of the *stochastic* network ``Q``, which may exceed that of ``w``); the fraction of jobs in
which the Hessian-family winner is a non-isotropic member (``probe.pacbayes_hessian_is_isotropic``
= 0): in the others the Hessian bound *is* the isotropic one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from landscope.analysis.doc import short as _fmt
from landscope.analysis.hypotheses.paired import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, holm,
                                                  paired_stats)
from landscope.errors import LandscopeError

HESSIAN = "probe.pacbayes_hessian"
ISOTROPIC = "probe.pacbayes_isotropic"
NAIVE = "probe.pacbayes_naive"
BOUNDS = {"naive": NAIVE, "isotropic": ISOTROPIC, "hessian": HESSIAN}
IS_ISOTROPIC = "probe.pacbayes_hessian_is_isotropic"
MARGIN = 0.05  # minimum relative tightening that counts (fixed before any sweep was run)
TABLE_COLUMNS = ["comparison", "other", "n", "margin", "median_hessian", "median_other",
                 "median_diff", "ci_low", "ci_high", "median_rel_improvement", "rel_ci_low",
                 "rel_ci_high", "n_above_margin", "median_shifted", "test", "statistic", "p",
                 "p_holm", "t", "t_p", "t_p_holm", "cohens_d", "rank_biserial", "verdict",
                 "reason"]
BOUNDS_COLUMNS = ["quantity", "column", "n", "median", "mean", "min", "max", "frac_below_1",
                  "frac_below_chance"]
CHANCE_ERROR = 0.9  # error of guessing uniformly among 10 classes (mnist1d, mnist, cifar10)
# Compared with the bounds (reported, not tested): the trained network's errors and the
# Monte Carlo training errors of the two selected posteriors.
_ERRORS = [("test error of w", "test_error"), ("train error of w", "train_error"),
           ("train error of Q isotropic (MC)", "probe.pacbayes_isotropic_e_mc"),
           ("train error of Q Hessian (MC)", "probe.pacbayes_hessian_e_mc")]


@dataclass
class H4Result:
    """The outcome of :func:`h4_test`."""

    table: pd.DataFrame  # one row per comparison (TABLE_COLUMNS)
    bounds: pd.DataFrame  # one row per bound / error (BOUNDS_COLUMNS)
    jobs: pd.DataFrame  # one row per usable job: job, seed, the three bounds, errors, ...
    verdict: str
    reason: str
    margin: float = MARGIN
    alpha: float = 0.05
    chance_error: float = CHANCE_ERROR
    frac_non_isotropic: float = math.nan  # jobs whose Hessian winner is not the isotropic member
    notes: list[str] = field(default_factory=list)

    @property
    def n_jobs(self) -> int:
        return len(self.jobs)

    def summary(self) -> str:
        """A few lines of text: the verdict, then one line per comparison and per bound."""
        lines = [f"H4 (Hessian-informed PAC-Bayes bound tighter by > {self.margin:.0%}): "
                 f"{self.verdict.upper()} - {self.reason}",
                 f"{self.n_jobs} jobs, paired by job; Holm-corrected, alpha={self.alpha:g}; "
                 f"Hessian winner non-isotropic in {_count_non_isotropic(self)} jobs"]
        for r in self.table.itertuples(index=False):
            lines.append(
                f"  hessian vs {r.other}: n={r.n}, median diff={_fmt(r.median_diff)} "
                f"[95% CI {_fmt(r.ci_low)}, {_fmt(r.ci_high)}], median rel. improvement="
                f"{_fmt(r.median_rel_improvement)} [{_fmt(r.rel_ci_low)}, {_fmt(r.rel_ci_high)}], "
                f"{r.n_above_margin} above margin; {r.test} W={_fmt(r.statistic)} p={_fmt(r.p)} "
                f"p_holm={_fmt(r.p_holm)}; d_z={_fmt(r.cohens_d)} r_rb={_fmt(r.rank_biserial)} "
                f"-> {r.verdict} ({r.reason})")
        for r in self.bounds.itertuples(index=False):
            lines.append(f"  {r.quantity}: n={r.n} median={_fmt(r.median)} "
                         f"range=[{_fmt(r.min)}, {_fmt(r.max)}] frac<1={_fmt(r.frac_below_1)} "
                         f"frac<{self.chance_error:g}={_fmt(r.frac_below_chance)}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _numeric(jobs: pd.DataFrame, column: str) -> pd.Series:
    if column in jobs.columns:
        return pd.to_numeric(jobs[column], errors="coerce").astype(float)
    if column == "test_error" and "final.test_acc" in jobs.columns:
        return 1.0 - pd.to_numeric(jobs["final.test_acc"], errors="coerce").astype(float)
    if column == "train_error" and "final.train_acc" in jobs.columns:
        return 1.0 - pd.to_numeric(jobs["final.train_acc"], errors="coerce").astype(float)
    return pd.Series(np.nan, index=jobs.index, dtype=float)


def comparison_row(hessian: np.ndarray, other: np.ndarray, name: str, other_name: str,
                   margin: float = MARGIN, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """One comparison (a table row without the Holm columns and the verdict): the
    margin-shifted Wilcoxon test and effect sizes of ``hessian - (1 - margin) * other`` and the
    raw and relative differences with bootstrap CIs. Pairs with a non-finite value or
    ``other <= 0`` are dropped."""
    h, o = np.asarray(hessian, dtype=float), np.asarray(other, dtype=float)
    ok = np.isfinite(h) & np.isfinite(o) & (o > 0)
    h, o = h[ok], o[ok]
    base = paired_stats(h, (1.0 - margin) * o, name, n_boot=n_boot, seed=seed)
    row = {c: math.nan for c in TABLE_COLUMNS}
    row.update(comparison=name, other=other_name, n=len(h), margin=margin,
               test="wilcoxon (margin-shifted)", verdict=INCONCLUSIVE, reason=base["reason"],
               n_above_margin=0, _min_p=base.get("_min_p", 1.0),
               _n_nonzero=base.get("_n_nonzero", 0))
    for key in ("statistic", "p", "t", "t_p", "cohens_d", "rank_biserial"):
        row[key] = base[key]
    row["median_shifted"] = base["median_diff"]
    if len(h) == 0:
        return row
    diff, rel = h - o, (o - h) / o
    row.update(median_hessian=float(np.median(h)), median_other=float(np.median(o)),
               median_diff=float(np.median(diff)), median_rel_improvement=float(np.median(rel)),
               n_above_margin=int((rel > margin).sum()))
    if len(h) >= 2:
        idx = np.random.default_rng(seed).integers(0, len(h), size=(n_boot, len(h)))
        bd, br = np.median(diff[idx], axis=1), np.median(rel[idx], axis=1)
        row.update(ci_low=float(np.percentile(bd, 2.5)), ci_high=float(np.percentile(bd, 97.5)),
                   rel_ci_low=float(np.percentile(br, 2.5)),
                   rel_ci_high=float(np.percentile(br, 97.5)))
    return row


def _verdict(row: pd.Series, alpha: float) -> tuple[str, str]:
    if row["reason"]:
        return INCONCLUSIVE, row["reason"]
    n_nonzero = int(row["_n_nonzero"])
    if row["_min_p"] >= alpha:
        return INCONCLUSIVE, (f"too few: {n_nonzero} non-zero differences; the smallest possible "
                              f"two-sided Wilcoxon p is {row['_min_p']:.3g} >= alpha={alpha:g}")
    p, med, margin = row["p_holm"], row["median_shifted"], row["margin"]
    rel = row["median_rel_improvement"]
    if not math.isfinite(p):
        return INCONCLUSIVE, "wilcoxon undefined"
    if p < alpha and med < 0:
        return SUPPORTED, (f"tighter than {row['other']} by more than {margin:.0%} (median "
                           f"relative improvement {rel:.3g}, Holm p={p:.3g} < {alpha:g})")
    if p < alpha and med > 0:
        return NOT_SUPPORTED, (f"improvement over {row['other']} significantly below the "
                               f"{margin:.0%} margin (median {rel:.3g}, Holm p={p:.3g} < "
                               f"{alpha:g})")
    if p < alpha:
        return INCONCLUSIVE, f"significant (Holm p={p:.3g}) but the median shifted difference is 0"
    return INCONCLUSIVE, f"not significant (Holm p={p:.3g} >= {alpha:g})"


def _bounds_table(jobs: pd.DataFrame, chance_error: float) -> pd.DataFrame:
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
                     "frac_below_chance": float(np.mean(v < chance_error)) if len(v) else math.nan})
    return pd.DataFrame(rows, columns=BOUNDS_COLUMNS)


def h4_test(jobs: pd.DataFrame, margin: float = MARGIN, alpha: float = 0.05, n_boot: int = 2000,
            seed: int = 0, others: Sequence[str] = ("isotropic", "naive"),
            chance_error: float = CHANCE_ERROR) -> H4Result:
    """Test H4 on a collected jobs table (see the module docstring for every rule).

    ``jobs``: e.g. ``collect(SWEEP).included``; rows with an ``included`` column set to False
    are ignored. ``margin`` in [0, 1): the relative tightening that counts. ``chance_error``:
    the error of uniform guessing (``1 - 1/classes``), for the ``frac_below_chance`` column
    (a bound in [chance, 1) is below 1 but says less than guessing does). Raises
    :class:`LandscopeError` when a bound column is missing (no job ran ``probe=pacbayes``)."""
    if not 0.0 <= margin < 1.0:
        raise LandscopeError(f"H4: margin must lie in [0, 1) (got {margin!r})")
    missing = [c for c in (HESSIAN, *(BOUNDS[o] for o in others)) if c not in jobs.columns]
    if missing:
        raise LandscopeError(f"H4: no column {', '.join(missing)} in the jobs table; run the "
                             "sweep with probe=pacbayes (e.g. experiment=h4_pacbayes)")
    rows = jobs[jobs["included"].astype(bool)] if "included" in jobs.columns else jobs
    h = _numeric(rows, HESSIAN)
    usable = np.isfinite(h.to_numpy())
    notes = ["pacbayes_hessian <= pacbayes_isotropic holds by construction (the isotropic "
             "posterior is a member of the Hessian family): the test asks for a relative "
             f"tightening of more than {margin:.0%}, which nothing forces"]
    if (~usable).any():
        notes.append(f"{int((~usable).sum())} included jobs without a finite pacbayes_hessian "
                     "left out")
    sel = rows[usable]
    table_rows = [comparison_row(h[usable].to_numpy(), _numeric(sel, BOUNDS[o]).to_numpy(),
                                 f"hessian vs {o}", o, margin, n_boot, seed) for o in others]
    table = pd.DataFrame(table_rows)
    table["p_holm"] = holm(table["p"].to_numpy(float))
    table["t_p_holm"] = holm(table["t_p"].to_numpy(float))
    verdicts = [_verdict(r, alpha) for _, r in table.iterrows()]
    table["verdict"] = [v for v, _ in verdicts]
    table["reason"] = [r for _, r in verdicts]
    table = table[TABLE_COLUMNS].reset_index(drop=True)

    per_job = pd.DataFrame({"job": sel["job"] if "job" in sel.columns else sel.index.astype(str),
                            "seed": sel["seed"] if "seed" in sel.columns else np.nan})
    for name, col in BOUNDS.items():
        per_job[name] = _numeric(sel, col)
    for name, col in (("test_error", "test_error"), ("train_error", "train_error"),
                      ("hessian_is_isotropic", IS_ISOTROPIC),
                      ("hessian_n_shrunk", "probe.pacbayes_hessian_n_shrunk")):
        per_job[name] = _numeric(sel, col)
    per_job["rel_improvement_isotropic"] = (per_job["isotropic"] - per_job["hessian"]) \
        / per_job["isotropic"]
    per_job = per_job.reset_index(drop=True)
    flags = per_job["hessian_is_isotropic"].to_numpy(float)
    flags = flags[np.isfinite(flags)]
    frac_non_iso = float(np.mean(flags == 0)) if len(flags) else math.nan

    verdict_list = list(table["verdict"])
    if verdict_list and all(v == SUPPORTED for v in verdict_list):
        verdict = SUPPORTED
        reason = "the Hessian bound is tighter than " + " and ".join(others) + \
                 f" by more than {margin:.0%}"
    elif NOT_SUPPORTED in verdict_list:
        verdict = NOT_SUPPORTED
        reason = "; ".join(f"{r.comparison}: {r.reason}" for r in table.itertuples()
                           if r.verdict == NOT_SUPPORTED)
    else:
        verdict = INCONCLUSIVE
        reason = "; ".join(f"{r.comparison}: {r.reason}" for r in table.itertuples()
                           if r.verdict != SUPPORTED) or "no comparison"
    return H4Result(table=table, bounds=_bounds_table(sel, chance_error), jobs=per_job,
                    verdict=verdict, reason=reason, margin=margin, alpha=alpha,
                    chance_error=chance_error, frac_non_isotropic=frac_non_iso,
                    notes=notes)


# --------------------------------------------------------------------------- report section
def _count_non_isotropic(res: H4Result) -> str:
    flags = res.jobs["hessian_is_isotropic"].to_numpy(float)
    flags = flags[np.isfinite(flags)]
    return f"{int((flags == 0).sum())} of {len(flags)}" if len(flags) else "an unknown number of"


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
    verdict, the comparisons table (also ``h4.csv``), the bounds table (``h4_bounds.csv``),
    the per-job values (``h4_jobs.csv``) and ``figures/h4_bounds.png`` (isotropic vs Hessian,
    one line per job)."""
    from landscope.io import atomic_write_text
    from landscope.plots import plot_paired

    doc, out = ctx.doc, ctx.out
    res = h4_test(ctx.coll.included)
    doc.heading("H4: Hessian-informed PAC-Bayes bounds are tighter")
    doc.para(
        f"Verdict: {res.verdict} ({res.reason}). Each job carries three bounds on its 0-1 error "
        f"(Dziugaite & Roy 2017; prior centred at the initialization, prior variance paid for by "
        f"a union bound over a grid, posterior error by Monte Carlo with its own kl confidence): "
        f"naive (parameter count), isotropic posterior, and a posterior diagonal in the top-k "
        f"Hessian eigenbasis; the comparison is paired by job ({res.n_jobs} jobs). The Hessian "
        f"bound is never above the isotropic one by construction, so the test asks for more "
        f"than a {res.margin:.0%} relative tightening: Wilcoxon signed-rank (two-sided, exact) on "
        f"hessian − (1 − {res.margin:g})·other, Holm-corrected over the two rows (paired t "
        f"alongside); effect sizes d_z and rank-biserial of that shifted difference; 95% "
        f"bootstrap CIs of the median raw difference and of the median relative improvement. "
        f"The Hessian-family winner is a non-isotropic posterior in {_count_non_isotropic(res)} "
        f"jobs (in the others the Hessian bound is the isotropic one).")
    doc.frame(res.table, [("comparison", "comparison"), ("n", "n"), ("median_hessian", "Hessian"),
                          ("median_other", "other"), ("median_diff", "median diff"),
                          ("ci_low", "CI low"), ("ci_high", "CI high"),
                          ("median_rel_improvement", "rel. improvement"),
                          ("n_above_margin", "n > margin"), ("statistic", "W"),
                          ("p_holm", "p (Holm)"), ("t_p_holm", "p t (Holm)"),
                          ("cohens_d", "d_z"), ("rank_biserial", "r_rb"), ("verdict", "verdict")])
    doc.para(f"Bounds against the errors they bound (over the jobs). Non-vacuous means below 1; "
             f"a bound between the error of uniform guessing ({res.chance_error:g}) and 1 is "
             f"non-vacuous but says less than guessing. The bounds hold for the stochastic "
             f"network Q; its Monte Carlo training error is shown next to the trained network's "
             f"errors.")
    doc.frame(res.bounds, [("quantity", "quantity"), ("n", "n"), ("median", "median"),
                           ("mean", "mean"), ("min", "min"), ("max", "max"),
                           ("frac_below_1", "fraction < 1"),
                           ("frac_below_chance", f"fraction < {res.chance_error:g}")])
    atomic_write_text(out / "h4.csv", res.table.to_csv(index=False))
    atomic_write_text(out / "h4_bounds.csv", res.bounds.to_csv(index=False))
    atomic_write_text(out / "h4_jobs.csv", res.jobs.to_csv(index=False))
    ok = np.isfinite(res.jobs["isotropic"].to_numpy(float)) & \
        np.isfinite(res.jobs["hessian"].to_numpy(float))
    if ok.any():
        png = out / "figures" / "h4_bounds.png"
        plot_paired(res.jobs["isotropic"].to_numpy(float)[ok],
                    res.jobs["hessian"].to_numpy(float)[ok], png, "PAC-Bayes bound (0-1 error)",
                    ("isotropic", "Hessian"))
        doc.image(png, f"figures/{png.name}",
                  "PAC-Bayes bound, isotropic vs Hessian-informed posterior, one line per job")
