"""The statistical report of one or more sweeps, as Markdown and a self-contained HTML page.

:func:`build_report` reads only the saved results (``result.json`` and ``config.yaml`` of
every job, through :func:`~landscope.analysis.collect.collect`), so a report can be
regenerated at any time, and writes into ``out_dir``:

- ``report.md`` and ``report.html`` (the same content; the HTML embeds its figures as data
  URIs, so the one file is enough to share);
- ``jobs.csv``, ``jobs.parquet``, ``excluded.csv``, ``collection.json`` (the tidy table);
- ``measures.csv`` (every measure against test error) and ``measures_gap.csv`` (against the
  generalization gap);
- ``figures/*.png`` (the measure-against-error scatter plots).

Sections: the sweep summary (jobs per status, the swept hyperparameters), the jobs that were
not included and why, the measures table (Kendall τ, Spearman ρ, granulated Ψ, partial
correlation given train loss, cluster-robust OLS, with Holm and Benjamini–Hochberg corrected
p-values), scatter plots of the strongest measures, and an appendix with the statsmodels
summary of the OLS fit of the strongest measure. Then one section per hypothesis or study that
applies to the collected jobs (:data:`SECTIONS`): H1 when ``train.batch_size`` is swept
(:mod:`~landscope.analysis.hypotheses.h1`), H2 when ``model.skip`` is swept or ``model.norm``
with ``none`` and another level (``h2``), H3 when the sweep has ``runner.escape`` results (``h3``), H4 when the jobs carry PAC-Bayes bounds
(``h4``), the optimizer study when LLP is among the optimizers
(:mod:`~landscope.analysis.optimizer_study`), and the founding studies by their experiment
names (:mod:`~landscope.analysis.studies`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from landscope.analysis.collect import Collection, collect, save
from landscope.analysis.doc import Doc, safe_name, table
from landscope.analysis.measures import default_measures, measures_table, target_column
from landscope.errors import LandscopeError
from landscope.io import atomic_write_text

TOP_SCATTER = 6  # measures drawn as scatter plots
_SHOWN = [("n", "n"), ("kendall_tau", "τ"), ("kendall_p_holm", "p τ (Holm)"),
          ("spearman_rho", "ρ"), ("psi", "Ψ"), ("partial_r", "partial r (train loss)"),
          ("partial_p_bh", "p partial (BH)"), ("ols_coef", "OLS coef / sd"),
          ("ols_p_holm", "p OLS (Holm)")]


def _hue(df: pd.DataFrame, swept: Sequence[str]) -> Optional[str]:
    return next((c for c in swept if c in df.columns and df[c].nunique() > 1), None)


def _ols_summary(df: pd.DataFrame, measure: str, target: pd.Series) -> str:
    import statsmodels.api as sm

    x = pd.to_numeric(df[measure], errors="coerce").to_numpy(float)
    y = target.to_numpy(float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.ptp(x[ok]) == 0:  # ptp: the std of equal values need not be 0
        return f"{measure}: too few finite values for a fit"
    if np.ptp(y[ok]) == 0:
        return f"{measure}: test error is the same in every job ({y[ok][0]:.4g}); no fit"
    z = (x[ok] - x[ok].mean()) / x[ok].std()
    fit = sm.OLS(y[ok], sm.add_constant(z)).fit(
        cov_type="cluster", cov_kwds={"groups": df["seed"].to_numpy()[ok]}) \
        if "seed" in df and df["seed"].nunique() > 1 else sm.OLS(y[ok], sm.add_constant(z)).fit()
    return str(fit.summary(xname=["const", f"{measure} (standardized)"], yname="test error"))


@dataclass
class ReportContext:
    """What a report section gets: the document to write into, the collected jobs, the sweep
    directories (for files beyond ``result.json``, e.g. connectivity), the output directory
    (figures go to ``out/figures``, tables as CSV next to the report) and the appendix, a list
    of ``(title, text)`` (statsmodels summaries) printed at the end of the report."""

    doc: Doc
    coll: Collection
    paths: list[Path]
    out: Path
    appendix: list[tuple[str, str]] = field(default_factory=list)


# The hypothesis and study sections, in report order: (applies, section), each a
# "module:function" taking a ReportContext. A section is written when ``applies`` is true.
SECTIONS: list[tuple[str, str]] = [
    ("landscope.analysis.hypotheses.h1:applies", "landscope.analysis.hypotheses.h1:section"),
    ("landscope.analysis.hypotheses.h2:applies", "landscope.analysis.hypotheses.h2:section"),
    ("landscope.analysis.hypotheses.h3:applies", "landscope.analysis.hypotheses.h3:section"),
    ("landscope.analysis.hypotheses.h4:applies", "landscope.analysis.hypotheses.h4:section"),
    ("landscope.analysis.optimizer_study:applies", "landscope.analysis.optimizer_study:section"),
    *[(f"landscope.analysis.studies:applies_{s}", f"landscope.analysis.studies:section_{s}")
      for s in ("study_training", "study_width", "study_optimizers")],
]


def _resolve(ref: str):
    import importlib

    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def build_report(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                 title: Optional[str] = None) -> Path:
    """Collect the sweeps in ``paths``, analyse them and write the report into ``out_dir``.
    Returns the path of ``report.html``. Raises :class:`LandscopeError` when no job is found."""
    from landscope.plots import plot_measure_scatter

    paths = [Path(p) for p in paths]
    out = Path(out_dir)
    coll: Collection = collect(paths)
    if coll.jobs.empty:
        raise LandscopeError(f"no jobs found in {', '.join(map(str, paths))}")
    out.mkdir(parents=True, exist_ok=True)
    save(coll, out)
    title = title or "landscope report: " + ", ".join(p.name for p in paths)
    doc = Doc(title)
    inc = coll.included

    doc.heading("Sweep summary")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(coll.counts.items()))
    doc.para(f"{len(coll.jobs)} jobs from {', '.join(coll.sources)}: {counts}. "
             f"{len(inc)} completed jobs are analysed. Swept hyperparameters (besides the "
             f"seed): {', '.join(coll.swept) if coll.swept else 'none'}.")
    if coll.excluded.empty:
        doc.para("Every job completed; none is excluded.")
    else:
        doc.heading("Jobs not included", 3)
        doc.table(*table(coll.excluded, [("sweep", "sweep"), ("job", "job"),
                                          ("status", "status"), ("reason", "reason")]))

    doc.heading("Measures against test error")
    measures = default_measures(inc) if len(inc) else []
    if len(measures) == 0:
        doc.para("No measure has enough finite values across the analysed jobs (at least "
                 "5 and half of the jobs); run the sweep with probes or landscape scans.")
        mtable = pd.DataFrame()
    else:
        mtable = measures_table(inc, measures)
        mtable = mtable.reindex(mtable["kendall_tau"].abs().sort_values(ascending=False).index)
        atomic_write_text(out / "measures.csv", mtable.to_csv(index=False))
        gap = measures_table(inc, measures, target="gap")
        atomic_write_text(out / "measures_gap.csv", gap.to_csv(index=False))
        doc.para(f"{len(measures)} measures, sorted by |τ| against test error (1 − test "
                 f"accuracy) over {len(inc)} jobs. τ: Kendall τ-b; ρ: Spearman; Ψ: granulated "
                 "Kendall over the swept hyperparameters (Jiang et al. 2020); partial r: "
                 "correlation with test error after regressing both on train loss; OLS coef: "
                 "change of test error per standard deviation of the measure, standard errors "
                 "clustered by seed. p-values are corrected across measures (Holm, or "
                 "Benjamini–Hochberg where marked). Every column is in measures.csv; the same "
                 "against the generalization gap is in measures_gap.csv.")
        doc.table(*table(mtable, [("measure", "measure"), *_SHOWN]))

        doc.heading("Strongest measures", 3)
        target = target_column(inc, "test_error")
        hue = _hue(inc, coll.swept)
        for m in mtable["measure"].head(TOP_SCATTER):
            png = out / "figures" / f"{safe_name(m)}.png"
            plot_measure_scatter(inc[m].to_numpy(float), target.to_numpy(float), png,
                                 m, "test error", None if hue is None else inc[hue].astype(str))
            doc.image(png, f"figures/{png.name}", f"{m} against test error")

    ctx = ReportContext(doc, coll, paths, out)
    for applies, section in SECTIONS:
        if _resolve(applies)(ctx):
            _resolve(section)(ctx)

    doc.heading("Appendix: statsmodels summaries")
    if len(mtable):
        best = str(mtable["measure"].iloc[0])
        doc.para(f"OLS of test error on the strongest measure, {best} (standardized), with "
                 "cluster-robust standard errors by seed:")
        doc.pre(_ols_summary(inc, best, target_column(inc, "test_error")))
    else:
        doc.para("No fit: no measure.")
    for name, text in ctx.appendix:
        doc.heading(name, 3)
        doc.pre(text)

    atomic_write_text(out / "report.md", doc.render_md())
    page = out / "report.html"
    atomic_write_text(page, doc.render_html(title))
    return page
