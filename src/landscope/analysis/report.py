"""The statistical report of one or more sweeps, as Markdown and a self-contained HTML page.

:func:`build_report` reads only the saved results (``result.json`` and ``config.yaml`` of
every job, through :func:`~landscope.analysis.collect.collect`), so a report can be
regenerated at any time, and writes into ``out_dir``:

- ``report.md`` and ``report.html`` (the same content; the HTML embeds its figures as data
  URIs, so the one file is enough to share);
- ``jobs.csv``, ``jobs.parquet``, ``excluded.csv``, ``collection.json`` (the tidy table);
- ``configurations.csv`` (the per-configuration summary), ``measures.csv`` (every measure
  against test error), ``measures_gap.csv`` (against the generalization gap), ``joint.csv``
  (the joint regression);
- ``figures/*.png`` (the measure-against-error scatter plots).

Sections: the sweep summary (jobs per status, the swept hyperparameters), the jobs that were
not included and why, the per-configuration summary (mean ± 95 % interval over seeds; for SGD
λmax against 2/η), the measures table (within-configuration claims with seeds as units,
between-configuration claims with configurations as units:
:mod:`~landscope.analysis.measures_table`), the joint regression, scatter plots of the
strongest measures (:mod:`~landscope.analysis.report_measures`). Then one section per hypothesis or
study that applies to the collected jobs (:data:`SECTIONS`): H1 when ``train.batch_size`` is swept
(:mod:`~landscope.analysis.hypotheses.h1`), H2 when ``model.skip`` is swept or ``model.norm``
with ``none`` and another level (``h2``), H3 when the sweep has ``runner.escape`` results (``h3``),
H4 when the jobs carry PAC-Bayes bounds (``h4``), the optimizer study when LLP is among the
optimizers (:mod:`~landscope.analysis.optimizer_study`), the founding studies by their
experiment names (:mod:`~landscope.analysis.studies`), the initialization-scale study when
``model.init_scale`` is swept (:mod:`~landscope.analysis.init_scale`), and the edge of stability
when jobs measured λmax every k steps (:mod:`~landscope.analysis.eos`), the class structure
of the outliers when jobs ran ``probe.classes`` (:mod:`~landscope.analysis.class_structure`),
and the SGD-as-SDE check when the sweep has ``runner.sde`` results
(:mod:`~landscope.analysis.sde`). With a shifted test split (``dataset.ood``) the measures
section adds every measure against the OOD error. The appendix holds the fits and the
calibration of every test family the report used
(:mod:`~landscope.analysis.calibration`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from landscope.analysis import class_structure, eos, init_scale, optimizer_study, sde, studies
from landscope.analysis.collect import Collection, collect, save
from landscope.analysis.doc import Doc, table
from landscope.analysis.hypotheses import h1, h2, h3, h4
from landscope.analysis.report_measures import (
    TOP_SCATTER,
    calibration_appendix,
    measures_section,
    summary_section,
    within_fit_text,
)
from landscope.analysis.section import Section
from landscope.errors import LandscopeError
from landscope.io import atomic_write_text

__all__ = ["ReportContext", "SECTIONS", "Section", "TOP_SCATTER", "build_report"]


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

    def figure(self, name: str, draw: Callable[[Path], object], alt: str) -> Path:
        """Draw ``out/figures/<name>.png`` with ``draw(path)`` and put it into the document
        under the caption ``alt``; returns the PNG's path."""
        png = self.out / "figures" / f"{name}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        draw(png)
        self.doc.image(png, f"figures/{png.name}", alt)
        return png


# The hypothesis and study sections, in report order; each is written when it applies.
SECTIONS: list[Section] = [h1.SECTION, h2.SECTION, h3.SECTION, h4.SECTION,
                           optimizer_study.SECTION, *studies.SECTIONS, init_scale.SECTION,
                           eos.SECTION, class_structure.SECTION, sde.SECTION]


def build_report(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                 title: Optional[str] = None, setting: Optional[dict] = None) -> Path:
    """Collect the sweeps in ``paths``, analyse them and write the report into ``out_dir``.
    Returns the path of ``report.html``. Raises :class:`LandscopeError` when no job is found
    (or none ran ``setting``, :func:`~landscope.analysis.collect.collect`'s choice)."""
    paths = [Path(p) for p in paths]
    out = Path(out_dir)
    coll: Collection = collect(paths, setting)
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
    for note in coll.notes:  # the probe and landscape settings measured
        doc.para(note)
    if coll.excluded.empty:
        doc.para("Every job completed; none is excluded.")
    else:
        doc.heading("Jobs not included", 3)
        doc.table(*table(coll.excluded, [("sweep", "sweep"), ("job", "job"),
                                          ("status", "status"), ("reason", "reason")]))

    ctx = ReportContext(doc, coll, paths, out)
    summary_section(ctx)
    mtable = measures_section(ctx)
    used = ["measures"]
    for section in SECTIONS:
        if section.applies(ctx):
            section.write(ctx)
            if section.calibration is not None:
                used.append(section.calibration)

    doc.heading("Appendix: fits")
    if len(mtable):
        best = str(mtable["measure"].iloc[0])
        doc.para(f"The within-configuration regression of the measures table for the strongest "
                 f"measure, {best}: test error on the standardized measure, train loss and "
                 "configuration fixed effects, CR2 standard errors clustered by seed "
                 "(the same standardization and inference as the table).")
        doc.pre(within_fit_text(inc, best))
    else:
        doc.para("No fit: no measure.")
    for name, text in ctx.appendix:
        doc.heading(name, 3)
        doc.pre(text)
    calibration_appendix(ctx, used)

    atomic_write_text(out / "report.md", doc.render_md())
    page = out / "report.html"
    atomic_write_text(page, doc.render_html(title))
    return page
