"""The founding-study presets (issue #5, item 6): one table per study in the report.

Each study is a preset in ``conf/experiment`` whose ``name`` is also the study's name; a job's
``config.yaml`` stores ``name``, so the collected jobs table (:mod:`landscope.analysis.collect`)
tells the studies apart by its ``name`` column, whatever sweep directory they were run into.

- ``study_training`` (a): three training configurations on the default MLP (Adam at its
  default lr, SGD at a high lr, SGD at a low lr with high weight decay): test accuracy against
  λmax per configuration (mean ± sd over seeds) and Kendall τ between the two across jobs.
- ``study_width`` (b): MLP widths 32/64/128 and CNN widths 16/32/64, SGD lr 0.01 momentum 0.9:
  the epochs to reach :data:`TARGET_TEST_ACC` test accuracy (first epoch of ``metrics.jsonl``
  with ``test_acc >=`` the target; a job that never gets there is *not reached* and counted,
  its epochs left out of the mean), λmax and the 2-D slice scalars (``landscape.plane_*``).
- ``study_optimizers`` (c): SGD, momentum and Adam on the MLP and the CNN, 5 epochs each: λmax,
  the 1-D and 2-D slice scalars, and the linear-interpolation barrier between seeds read from
  ``python -m runner.connect`` (``SWEEP/connectivity``, through
  :func:`landscope.analysis.hypotheses.h2.load_barriers`).

Every value is a mean ± sample sd (ddof 1) over the seeds of a configuration (over the seed
pairs for barriers); ``n`` counts the included jobs. Each ``section_<study>(ctx)`` writes a
heading, a paragraph, the table, ``<study>.csv`` into ``ctx.out`` and one figure into
``ctx.out/figures``; ``applies_<study>(ctx)`` says whether the collected jobs hold the study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from landscope.analysis.doc import fmt
from landscope.analysis.section import Section
from landscope.analysis.stage_settings import measured_column
from landscope.analysis.studies_figures import (
    plot_optimizers,
    plot_training,
    plot_width,
)
from landscope.analysis.studies_tables import (  # noqa: F401 - the public names of the studies
    _ARCH_KEYS,
    _OPT_KEYS,
    BARRIERS,
    OPTIMIZER_MEASURES,
    OPTIMIZERS,
    TARGET_TEST_ACC,
    TRAINING,
    TRAINING_MEASURES,
    WIDTH,
    WIDTH_MEASURES,
    _code,
    _groups,
    _num,
    _sortable,
    _summaries,
    _training_keys,
    arch_label,
    epochs_to_target,
    load_study_barriers,
    mean_sd,
    optimizers_table,
    pm,
    study_jobs,
    training_kendall,
    training_label,
    training_table,
    width_epochs,
    width_table,
)
from landscope.io import atomic_write_text
from landscope.wording import counted


# --------------------------------------------------------------------------- report sections
def _write(ctx: Any, study: str, table: pd.DataFrame) -> None:
    atomic_write_text(Path(ctx.out) / f"{study}.csv", table.to_csv(index=False))


def _grid_step(jobs: pd.DataFrame) -> str:
    points, span = (pd.to_numeric(measured_column(jobs, f"config.landscape.plane.{k}"),
                                  errors="coerce") for k in ("points", "range"))
    if points.nunique() == 1 and span.nunique() == 1 and points.iloc[0] > 1:
        n, r = int(points.iloc[0]), float(span.iloc[0])
        return f": {2 * r / (n - 1):g} on these {n} × {n} grids over [−{r:g}, {r:g}]"
    return ""


def applies_study_training(ctx: Any) -> bool:
    return not study_jobs(ctx.coll.included, TRAINING).empty


def applies_study_width(ctx: Any) -> bool:
    return not study_jobs(ctx.coll.included, WIDTH).empty


def applies_study_optimizers(ctx: Any) -> bool:
    return not study_jobs(ctx.coll.included, OPTIMIZERS).empty


def section_study_training(ctx: Any) -> None:
    """(a) Test accuracy against λmax for three training configurations."""
    jobs = study_jobs(ctx.coll.included, TRAINING)
    table = training_table(jobs)
    k = training_kendall(jobs)
    ctx.doc.heading("Study (a): training configuration, test accuracy against λmax")
    ctx.doc.para(
        f"{len(jobs)} jobs of experiment=study_training in {len(table)} configurations; "
        "each cell is the mean ± sd over seeds. λmax is the top Hessian eigenvalue of the "
        "training loss at the final checkpoint (probe subset); 2/lr is plain SGD's "
        "edge-of-stability limit. Across all jobs, Kendall τ between λmax and test accuracy "
        f"is {fmt(k['tau'])} (two-sided p = {fmt(k['p'])}, n = {k['n']}); a negative τ means "
        "sharper solutions generalize worse. Across configurations that differ in optimizer, "
        "learning rate and weight decay at once, τ mixes their effects: read it per row.")
    ctx.doc.frame(table, [("configuration", "configuration"), ("n", "n"),
                          ("test_acc", "test accuracy"), ("lambda_max", "λmax"),
                          ("stability_limit", "2/lr"), ("train_loss", "train loss")])
    _write(ctx, TRAINING, table)
    if len(table):
        ctx.figure(TRAINING, lambda png: plot_training(jobs, table, png),
                   "study (a): test accuracy against λmax, one colour per configuration")


def section_study_width(ctx: Any, target: float = TARGET_TEST_ACC) -> None:
    """(b) Epochs to a target accuracy, λmax and the 2-D slice per architecture and width."""
    jobs = study_jobs(ctx.coll.included, WIDTH)
    table = width_table(jobs, target)
    not_reached = int(table["n_not_reached"].sum()) if len(table) else 0
    missing = int(table["n_no_metrics"].sum()) if len(table) else 0
    ctx.doc.heading("Study (b): architecture and width")
    ctx.doc.para(
        f"{len(jobs)} jobs of experiment=study_width (SGD lr 0.01, momentum 0.9). Epochs to "
        f"target: the first epoch whose test accuracy is at least {target:g} (metrics.jsonl); "
        f"the mean ± sd is over the seeds that reached it, and 'reached' counts them "
        f"({counted(not_reached, 'job')} never reached it within their budget"
        + (f", {missing} without a readable metrics.jsonl" if missing else "") + "). λmax: top "
        "Hessian eigenvalue at the final checkpoint. 2-D slice (filter-normalized random "
        "plane): border rise = mean train loss on the grid's border minus the centre's, basin "
        "= share of the grid within L(0) + 0.1, radius = distance of the nearest grid point "
        "above it (it cannot resolve less than one grid step" + _grid_step(jobs) + ").")
    ctx.doc.frame(table, [("architecture", "architecture"), ("n_params", "parameters"),
                          ("n", "n"), ("reached", "reached"), ("epochs", "epochs to target"),
                          ("epochs_budget", "budget"), ("test_acc", "final test acc."),
                          ("lambda_max", "λmax"), ("plane_rise", "plane border rise"),
                          ("plane_basin", "plane basin"), ("plane_radius", "plane radius")])
    _write(ctx, WIDTH, table)
    if len(table):
        ctx.figure(WIDTH, lambda png: plot_width(table, png, target),
                   f"study (b): epochs to {target:g} test accuracy, λmax and 2-D slice "
                   "rise against width")


def section_study_optimizers(ctx: Any) -> None:
    """(c) λmax, slices and seed-to-seed barriers per optimizer × architecture."""
    jobs = study_jobs(ctx.coll.included, OPTIMIZERS)
    barriers = load_study_barriers(ctx.paths)
    table = optimizers_table(jobs, barriers)
    ctx.doc.heading("Study (c): optimizers across architectures at a fixed budget")
    note = ("" if barriers is not None and len(table) and table["n_pairs"].sum() else
            " No connectivity results for these jobs: run python -m runner.connect "
            "<sweep dir> landscape.bezier.enabled=false for the barrier columns.")
    ctx.doc.para(
        f"{len(jobs)} jobs of experiment=study_optimizers; mean ± sd over seeds. Line rise: "
        "mean over filter-normalized random directions of the train-loss rise at ±1; plane "
        "border rise and basin as in study (b). Barrier: linear interpolation between two "
        "seeds of the same configuration, max along the path minus the mean of the endpoints, "
        "of train loss and of test error; mean ± sd over the pairs (n pairs)." + note)
    ctx.doc.frame(table, [("optimizer", "optimizer"), ("architecture", "architecture"),
                          ("n", "n"), ("test_acc", "test accuracy"), ("lambda_max", "λmax"),
                          ("line_rise", "line rise"), ("line_radius", "line radius"),
                          ("plane_rise", "plane border rise"), ("plane_basin", "plane basin"),
                          ("n_pairs", "pairs"), ("barrier_loss", "barrier (train loss)"),
                          ("barrier_test_error", "barrier (test error)")])
    _write(ctx, OPTIMIZERS, table)
    if len(table):
        ctx.figure(OPTIMIZERS, lambda png: plot_optimizers(table, png),
                   "study (c): λmax, slices and barriers per optimizer and architecture")


#: The founding studies' report sections, in report order.
SECTIONS = [
    Section("study (a): training dynamics", applies_study_training, section_study_training),
    Section("study (b): width", applies_study_width, section_study_width),
    Section("study (c): optimizers and architectures", applies_study_optimizers,
            section_study_optimizers),
]
