"""H1 (issue #5, as a mediation claim since issue #16): a smaller batch finds a flatter minimum
(lower λmax), and the flatter minimum has the lower test error at equal train loss, i.e. the
chain log2(batch) → λmax → test error.

The claim goes back to Keskar et al. 2017 ("On large-batch training for deep learning:
generalization gap and sharp minima", ICLR 2017) and Jastrzębski et al. 2018 ("Three factors
influencing minima in SGD", arXiv:1711.04623: the ratio of learning rate to batch size sets the
SGD noise, and a higher ratio ends in wider minima). "Test error correlates with λmax" does not
support it while the batch size drives both (GUIDE §7), so :func:`h1_test` estimates the chain
with :func:`~landscope.analysis.hypotheses.mediation.mediation` on the jobs that reached the
target train loss, with one intercept per seed in every equation:

(a)  ``λmax ~ log2(batch) [+ design] + seed``: a = λmax per doubling of the batch size;
(b′) ``test error ~ λmax + log2(batch) + train loss + seed``: b′ = test error per unit λmax
     *given* the batch size and the train loss; the direct effect c′ = the coefficient of
     log2(batch) there (test error per doubling not through λmax);
     indirect effect a·b′ (test error per doubling through λmax); total effect c
     (``test error ~ log2(batch) + train loss + seed``) reported.

a: the t-test on the per-seed slopes (exact in a balanced design; CR2 when a seed cannot fit
the equation alone); b′, c′ and c: CR2 cluster-robust t-tests by seed with Satterthwaite df
and their t intervals;
a·b′: a seed-level bootstrap percentile interval (both equations refitted on each resample of
seeds), widened by sqrt(G/(G−1))·t_{G−1}/z for G seeds (see the mediation module: the plain
interval is too narrow with few seeds, docs/measurements.md#analysis-mediation).

Verdict (an intersection–union test: every component must hold, so no Holm across them):

- ``supported``: a > 0 (p < alpha) **and** the indirect effect's interval lies above 0;
- ``not supported``: the indirect interval lies below 0, or a < 0 significantly, or the
  evidence points to a direct effect only (c′'s interval excludes 0 while a·b′'s includes it);
- ``inconclusive``: otherwise (or too few seeds: the bootstrap needs at least 3).

**Design.** With the learning rate fixed, λmax is nearly a function of the batch size (the
h1_batch sweep), so b′ rests on the small within-batch scatter of λmax and has little power.
Varying λmax *within* a batch size makes b′ identifiable: the ``h1_mediation`` preset also
sweeps ``optimizer.lr`` (a larger step caps λmax lower, edge of stability). When a design column
(``design``, default ``optimizer.lr`` and ``optimizer.rho``) varies across the analysed jobs,
its log2 (lr) or value (rho) is a covariate of (a) and is left out of (b′): the assumption is
that the learning rate moves test error only through λmax (and the batch size). The table adds a
sensitivity row, b′ with the design column in (b′) too (identified by the within-cell scatter
alone), reported and not used in the verdict. The section says which design was run.

Equal train loss: a job reached the target when its ``stop_reason`` is ``target_train_loss`` or,
when the stop reason is missing, when ``final.train_loss`` ≤ the target
(``train.target_train_loss`` or ``target_loss``); others are listed in
:attr:`H1Result.off_target` and left out (without any target every job counts and the
train-loss covariate alone stands for "equal train loss"). The train loss is dropped from (b′)
when it does not vary within seeds (noted). Only included jobs are analysed; rows with a
non-finite value are listed in :attr:`H1Result.dropped`; seeds with one job carry no within-seed
comparison and are left out. Test error is ``test_error`` (1 − ``final.test_acc`` when absent).
Every verdict carries its evidence: estimate, interval, n of seeds, test and the calibration
phrase of :func:`landscope.analysis.calibration.calibration_note` (scenarios in
:mod:`landscope.analysis.calibration.h1`).

Bad input raises :class:`~landscope.errors.LandscopeError` with a one-line message: a missing
column, no included job, a batch size that is not a positive number, or fewer than two distinct
batch sizes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from landscope.analysis.hypotheses.h1_result import (  # noqa: F401 - the public names of H1
    DESIGN,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    TABLE_COLUMNS,
    TESTS,
    H1Result,
    _ci,
)
from landscope.analysis.hypotheses.h1_stats import decide, h1_test  # noqa: F401
from landscope.analysis.section import Section
from landscope.errors import LandscopeError

_SHOWN = [("step", "step"), ("relation", "regression / effect"), ("effect", "estimate"),
          ("effect_unit", "unit"), ("ci_low", "CI low"), ("ci_high", "CI high"),
          ("interval", "interval"), ("p", "p"), ("df", "df"), ("n", "jobs"),
          ("n_seeds", "seeds"), ("calibration", "calibration")]



# --------------------------------------------------------------------------- figure
def plot_h1(res: H1Result, path: Path) -> Path:
    """Two panels: λmax against batch size (log2 axis, with the slope a) and test error
    against λmax coloured by batch size; jobs not analysed are drawn as crosses."""
    from landscope.plots import pyplot, save_png

    plt = pyplot()
    d = res.data
    used = d["used"] if "used" in d else d["reached"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8), layout="constrained")
    sizes = np.unique(d["batch_size"].dropna())
    colours = {b: plt.cm.viridis(i / max(len(sizes) - 1, 1)) for i, b in enumerate(sizes)}
    jitter = np.random.default_rng(0).uniform(-0.08, 0.08, len(d))
    for mask, marker, label in ((used, "o", "analysed"), (~used, "x", "left out")):
        sub = d[mask]
        if sub.empty:
            continue
        c = [colours.get(b, "grey") for b in sub["batch_size"]]
        ax1.scatter(sub["log2_batch"] + jitter[mask.to_numpy()], sub["lambda_max"], c=c,
                    marker=marker, s=22, alpha=0.8)
        ax1.scatter([], [], color="grey", marker=marker, s=22, label=label)
        ax2.scatter(sub["lambda_max"], sub["test_error"], c=c, marker=marker, s=22, alpha=0.8)
    fit = res.fit
    if fit is not None and used.any():
        u = d[used]
        xs = np.linspace(u["log2_batch"].min(), u["log2_batch"].max(), 2)
        icpt = u["lambda_max"].mean() - fit.a.estimate * u["log2_batch"].mean()
        ax1.plot(xs, icpt + fit.a.estimate * xs, "k--", lw=1,
                 label=f"a = {fit.a.estimate:.3g} per doubling")
        ax2.set_title(f"indirect a·b′ {_ci(fit.indirect)}\ndirect c′ {_ci(fit.direct)}",
                      fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.set_xticks(np.log2(sizes), [f"{b:g}" for b in sizes])
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("λmax")
    ax1.set_title(f"H1 {res.verdict}", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.set_xlabel("λmax")
    ax2.set_ylabel("test error")
    for size in sizes:
        ax2.scatter([], [], color=colours[size], s=22, label=f"batch {size:g}")
    ax2.legend(fontsize=7)
    return save_png(fig, path)


# --------------------------------------------------------------------------- report section
def applies(ctx) -> bool:
    """The section is written when the collected jobs vary ``train.batch_size``."""
    return "train.batch_size" in ctx.coll.swept


def section(ctx, n_boot: int = 2000) -> None:
    """H1 section of the report: the verdict with its evidence, the design, the mediation table
    (``h1.csv``), jobs off target, a two-panel figure and each equation's fit in the appendix."""
    from landscope.io import atomic_write_text

    doc, out = ctx.doc, Path(ctx.out)
    doc.heading("H1: smaller batches find flatter minima that generalize better")
    try:
        res = h1_test(ctx.coll.included, n_boot=n_boot)
    except LandscopeError as exc:
        doc.para(f"H1 not tested: {exc}")
        return
    target = ("no target train loss was set, so equal train loss rests on the train-loss "
              "covariate alone" if res.target_loss is None
              else f"target train loss {res.target_loss:g}")
    doc.para(f"Verdict: {res.verdict} ({res.reason}).")
    doc.para(
        f"Design: {res.design}. H1 is a mediation claim, log2(batch size) → λmax → test "
        f"error. "
        f"(a) OLS of λmax on log2(batch size); (b′) OLS of test error on λmax, log2(batch "
        f"size) and the final train loss, so b′ is the effect of λmax at equal batch size and "
        f"train loss and c′ the direct effect of the batch size. Every equation has one "
        f"intercept per seed; (a) is tested by the t-test on the per-seed slopes (t on "
        f"seeds − 1 df), (b′) and c′ by CR2 standard errors clustered by seed (Satterthwaite "
        f"df). "
        f"The indirect effect a·b′ (test error per doubling through λmax) has a seed-level "
        f"bootstrap percentile interval (seeds resampled, both equations refitted, widened "
        f"for few seeds); the direct effect c′ stands beside it. Supported when a > 0 "
        f"(p < {res.alpha:g}) and the indirect interval lies above 0; not supported when it "
        f"lies below 0, a < 0, or only the direct effect is there; inconclusive otherwise "
        f"(an intersection–union test: no multiplicity correction). {res.n_jobs} jobs, "
        f"{res.n_reached} reached the train loss ({target}), {res.n_off_target} did not"
        + (" and are left out (listed below)." if res.n_off_target else "."))
    if len(res.table):
        doc.frame(res.table, _SHOWN)
        atomic_write_text(out / "h1.csv", res.table.to_csv(index=False))
    if res.n_off_target:
        doc.heading("Jobs that did not reach the target train loss", 3)
        doc.frame(res.off_target, [("job", "job"), ("seed", "seed"), ("batch_size", "batch"),
                                   ("train_loss", "train loss"), ("reason", "reason")])
    if res.notes:
        doc.para("Notes: " + "; ".join(res.notes) + ".")
    png = out / "figures" / "h1_batch.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_h1(res, png)
    doc.image(png, f"figures/{png.name}",
              "H1: λmax against batch size (a) and test error against λmax")
    ctx.appendix.extend(res.summaries())


SECTION = Section("H1: batch size, sharpness and generalization", applies, section, "H1")
