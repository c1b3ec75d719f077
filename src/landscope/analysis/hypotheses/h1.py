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
interval fired 7–8 % of the time on one side under b′ = 0 with 6 seeds).

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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from landscope.analysis.doc import short as _fmt
from landscope.analysis.fixed_effects import seed_codes, within
from landscope.analysis.hypotheses.h1_jobs import off_target, read_jobs
from landscope.analysis.hypotheses.mediation import Effect, Mediation, mediation
from landscope.analysis.section import Section
from landscope.errors import LandscopeError

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
DESIGN = ("optimizer.lr", "optimizer.rho")
# the calibration suite's test names (landscope.analysis.calibration.h1)
TESTS = {"verdict": "H1 supported", "a": "H1 step a", "indirect": "H1 indirect",
         "direct": "H1 direct", "b": "H1 b′"}
TABLE_COLUMNS = ["step", "relation", "effect", "effect_unit", "se", "df", "p", "ci_low",
                 "ci_high", "interval", "n", "n_seeds", "test", "calibration"]
_SHOWN = [("step", "step"), ("relation", "regression / effect"), ("effect", "estimate"),
          ("effect_unit", "unit"), ("ci_low", "CI low"), ("ci_high", "CI high"),
          ("interval", "interval"), ("p", "p"), ("df", "df"), ("n", "jobs"),
          ("n_seeds", "seeds"), ("calibration", "calibration")]


@dataclass
class H1Result:
    """The outcome of :func:`h1_test`."""

    table: pd.DataFrame  # TABLE_COLUMNS: a, b′, c′ (direct), a·b′ (indirect), c (total)
    verdict: str
    reason: str  # why, with the evidence
    design: str  # which design the sweep ran (batch only, or λmax varied within batch by ...)
    data: pd.DataFrame  # job, seed, batch_size, log2_batch, lambda_max, test_error, train_loss,
    #                     stop_reason, reached, design columns, used
    off_target: pd.DataFrame  # job, seed, batch_size, stop_reason, train_loss, target, reason
    dropped: pd.DataFrame  # job, seed, batch_size, reason (non-finite values)
    target_loss: Optional[float]  # the common target (None: none or several)
    fit: Optional[Mediation] = None
    alpha: float = 0.05
    batch: str = "train.batch_size"
    measure: str = "probe.lambda_max"
    notes: list[str] = field(default_factory=list)
    designs: dict[str, tuple] = field(default_factory=dict, repr=False)  # appendix fits

    @property
    def n_jobs(self) -> int:
        return len(self.data)

    @property
    def n_reached(self) -> int:
        return int(self.data["reached"].sum()) if len(self.data) else 0

    @property
    def n_off_target(self) -> int:
        return len(self.off_target)

    def summaries(self) -> list[tuple[str, str]]:
        """``(title, text)`` of each equation's CR2 fit (the numbers of the table; seed
        intercepts omitted)."""
        from landscope.analysis.inference import cluster_ols

        out = []
        for title, (y, X, names, seeds) in self.designs.items():
            codes = seed_codes(seeds)
            dummies = (codes[:, None] == np.arange(codes.max() + 1)[None, :]).astype(float)
            try:
                fit = cluster_ols(y, np.column_stack([X, dummies]), codes)
            except (ValueError, np.linalg.LinAlgError) as exc:
                out.append((title, f"no fit: {exc}"))
                continue
            lines = [f"{len(y)} jobs, {fit.n_clusters} seed clusters, one intercept per seed; "
                     "CR2 standard errors, Satterthwaite df",
                     f"{'term':<28}{'coef':>12}{'se':>12}{'df':>8}{'p':>10}{'CI low':>12}"
                     f"{'CI high':>12}"]
            for j, name in enumerate(names):
                lines.append(f"{name:<28}{fit.coef[j]:>12.4g}{fit.se[j]:>12.4g}"
                             f"{fit.df[j]:>8.3g}{fit.p[j]:>10.3g}{fit.ci_low[j]:>12.4g}"
                             f"{fit.ci_high[j]:>12.4g}")
            if title.startswith("H1 (a)") and self.fit is not None and self.fit.a_per_seed:
                a = self.fit.a
                lines.append(f"The table's test of {names[0]} is the t-test on the "
                             f"{fit.n_clusters} per-seed slopes (Ibragimov-Mueller): mean "
                             f"{a.estimate:.4g}, se {a.se:.4g}, df {a.df:.3g}, p {a.p:.3g}, "
                             f"CI [{a.ci_low:.4g}, {a.ci_high:.4g}]")
            out.append((title, "\n".join(lines)))
        return out

    def summary(self) -> str:
        """A few lines of text: the verdict with its evidence, the design, one line per row."""
        target = "no target" if self.target_loss is None else f"target {self.target_loss:g}"
        lines = [f"H1 (smaller batch -> lower lambda_max -> lower test error at equal train "
                 f"loss, a mediation claim): {self.verdict.upper()} - {self.reason}",
                 f"design: {self.design}",
                 f"{self.n_jobs} jobs; {self.n_reached} reached the train loss ({target}), "
                 f"{self.n_off_target} did not; alpha={self.alpha:g}"]
        for r in self.table.itertuples(index=False):
            lines.append(f"  {r.step}: {r.relation}: {_fmt(r.effect)} {r.effect_unit} "
                         f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}] ({r.interval}), "
                         f"p={_fmt(r.p)}, n={r.n}, seeds={r.n_seeds}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _design_columns(rows: pd.DataFrame, design: Sequence[str]) -> tuple[list[str], np.ndarray,
                                                                        str]:
    """The design columns that vary across ``rows``: names, covariates (log2 for a positive
    column, else the value) and the design in words."""
    names, cols, words = [], [], []
    for col in design:
        if col not in rows.columns:
            continue
        v = rows[col].to_numpy(float)
        if not np.isfinite(v).all() or np.ptp(v) == 0:
            continue
        pos = bool((v > 0).all())
        names.append(f"log2({col})" if pos else col)
        cols.append(np.log2(v) if pos else v)
        words.append(f"{col} ∈ {{{', '.join(f'{x:g}' for x in np.unique(v))}}}")
    if not names:
        return [], np.empty((len(rows), 0)), ("batch size only (λmax is varied by the batch "
                                              "size alone; b′ rests on λmax's scatter within "
                                              "a batch size)")
    return names, np.column_stack(cols), ("λmax varied within each batch size by "
                                          + " and ".join(words) + " (a covariate of (a), "
                                          "assumed to act on test error only through λmax)")


def _effect_row(step: str, relation: str, e: Effect, unit: str, interval: str, n: int,
                g: int, test: str, calibration: str) -> dict[str, Any]:
    return {"step": step, "relation": relation, "effect": e.estimate, "effect_unit": unit,
            "se": e.se, "df": e.df, "p": e.p, "ci_low": e.ci_low, "ci_high": e.ci_high,
            "interval": interval, "n": n, "n_seeds": g, "test": test,
            "calibration": calibration}


def _ci(e: Effect) -> str:
    return f"{_fmt(e.estimate)} [{_fmt(e.ci_low)}, {_fmt(e.ci_high)}]"


def decide(fit: Mediation, alpha: float = 0.05) -> tuple[str, str]:
    """The verdict word and its reason (the evidence) from a fitted chain (module docstring)."""
    from landscope.analysis.calibration import calibration_note

    a, ind, direct = fit.a, fit.indirect, fit.direct
    evidence = (f"indirect a·b′ = {_ci(ind)} per doubling (seed bootstrap, {fit.n_boot} draws, "
                f"widened ×{fit.expansion:.2f}); a = {_ci(a)} λmax per doubling "
                f"({'per-seed slope t' if fit.a_per_seed else 'CR2'} p = {_fmt(a.p)}); direct c′ = {_ci(direct)} per doubling (CR2 p = "
                f"{_fmt(direct.p)}); {fit.n_seeds} seeds, {fit.n} jobs; "
                f"{calibration_note(TESTS['verdict'])}")
    a_pos = a.p < alpha and a.estimate > 0
    a_neg = a.p < alpha and a.estimate < 0
    if a_pos and ind.sign > 0:
        return SUPPORTED, ("λmax rises with the batch size and the indirect effect through "
                           f"λmax is positive: {evidence}")
    if ind.sign < 0:
        return NOT_SUPPORTED, f"the indirect effect through λmax is negative: {evidence}"
    if a_neg:
        return NOT_SUPPORTED, f"λmax falls with the batch size: {evidence}"
    if direct.p < alpha and ind.sign == 0:
        way = "raises" if direct.estimate > 0 else "lowers"
        return NOT_SUPPORTED, (f"direct effect only: the batch size {way} test error at equal "
                               f"λmax while the indirect interval includes 0: {evidence}")
    why = "(a) not significant" if not a_pos else "the indirect interval includes 0"
    return INCONCLUSIVE, f"{why}: {evidence}"


# --------------------------------------------------------------------------- the test
def h1_test(jobs: pd.DataFrame, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0, *,
            batch: str = "train.batch_size", measure: str = "probe.lambda_max",
            target: str = "test_error", control: str = "final.train_loss",
            cluster: str = "seed", target_loss: Optional[float] = None,
            design: Sequence[str] = DESIGN) -> H1Result:
    """Test H1 as a mediation claim on a collected jobs table (module docstring).

    ``target_loss``: the train loss every job was trained to (default: each job's
    ``train.target_train_loss``). ``design``: columns that may vary λmax within a batch size.
    Raises :class:`LandscopeError` on a missing column, no included job or fewer than two
    batch sizes."""
    from landscope.analysis.calibration import calibration_note

    data, common, notes = read_jobs(jobs, batch, measure, target, control, cluster, target_loss,
                                 extra=[c for c in design if c in jobs.columns])
    off = off_target(data)
    if len(off):
        notes.append(f"{len(off)} of {len(data)} jobs did not reach the target train loss: "
                     "left out")
    need = ["lambda_max", "log2_batch", "test_error", "train_loss"]
    reached = data["reached"].to_numpy(bool)
    finite = np.isfinite(data[need].to_numpy(float)).all(axis=1)
    dropped = pd.DataFrame(
        [{"job": r.job, "seed": r.seed, "batch_size": r.batch_size,
          "reason": "non-finite " + ", ".join(c for c in need if not math.isfinite(getattr(r, c)))}
         for r in data[reached & ~finite].itertuples(index=False)],
        columns=["job", "seed", "batch_size", "reason"])
    if len(dropped):
        notes.append(f"{len(dropped)} jobs without finite values left out")
    used = reached & finite
    codes = seed_codes(data["seed"].to_numpy())
    sizes = np.bincount(codes[used], minlength=codes.max() + 1 if len(codes) else 0)
    alone = used & (sizes[codes] == 1) if len(codes) else used
    if alone.any():
        notes.append(f"{int(alone.sum())} jobs alone in their seed left out (no within-seed "
                     "comparison)")
    data["used"] = used & ~alone
    rows = data[data["used"]].reset_index(drop=True)
    dnames, dcols, words = _design_columns(rows, design)
    res = H1Result(table=pd.DataFrame(columns=TABLE_COLUMNS), verdict=INCONCLUSIVE, reason="",
                   design=words, data=data, off_target=off, dropped=dropped,
                   target_loss=common, alpha=alpha, batch=batch, measure=measure, notes=notes)
    seeds = rows["seed"].to_numpy()
    g = len(np.unique(seed_codes(seeds))) if len(rows) else 0
    x, m, y = (rows[c].to_numpy(float) for c in ("log2_batch", "lambda_max", "test_error"))
    tl = rows["train_loss"].to_numpy(float)
    if g < 3 or len(rows) < g + 3 + dcols.shape[1] or np.ptp(within(x, seed_codes(seeds))) == 0:
        res.reason = (f"too few usable jobs or seeds ({len(rows)} jobs, {g} seeds; the seed "
                      "bootstrap needs at least 3 seeds and batch sizes varying within seeds)")
        return res
    use_tl = bool(np.ptp(within(tl, seed_codes(seeds))) > 0)
    if not use_tl:
        notes.append("train loss does not vary within seeds: dropped from (b′)")
    w_y = tl[:, None] if use_tl else None
    ynames = [measure, f"log2({batch})"] + ([control] if use_tl else [])
    sens = {f"b′ | {' + '.join(dnames)}": dcols} if dnames else {}
    try:
        fit = mediation(x, m, y, seeds, w_m=dcols if dnames else None, w_y=w_y, n_boot=n_boot,
                        seed=seed, sensitivity=sens)
    except (np.linalg.LinAlgError, ValueError) as exc:
        res.reason = f"singular design ({exc})"
        return res
    if fit.n_singular:
        notes.append(f"{fit.n_singular} of {n_boot} bootstrap draws singular, dropped")
    res.fit = fit
    res.designs = {
        f"H1 (a): {measure} ~ log2({batch})" + "".join(f" + {d}" for d in dnames) + " + seed":
            (m, np.column_stack([x, dcols]), [f"log2({batch})", *dnames], seeds),
        f"H1 (b′): {target} ~ " + " + ".join(ynames) + " + seed":
            (y, np.column_stack([m, x] + ([tl] if use_tl else [])), ynames, seeds)}
    n, cr2 = len(rows), "CR2 t interval"
    test = "OLS with seed intercepts, CR2 SE clustered by seed, Satterthwaite df"
    cal = {k: calibration_note(v) for k, v in TESTS.items()}
    doubling = "test error per doubling of the batch size"
    table = [
        _effect_row("a", f"{measure} ~ log2({batch})" + "".join(f" + {d}" for d in dnames)
                    + " + seed", fit.a, "λmax per doubling",
                    "per-seed t interval" if fit.a_per_seed else cr2, n, g,
                    f"t-test on the {g} per-seed slopes (Ibragimov–Müller), t on {g - 1} df"
                    if fit.a_per_seed else test, cal["a"]),
        _effect_row("b′", f"{target} ~ " + " + ".join(ynames) + " + seed", fit.b,
                    "test error per unit λmax at equal batch size and train loss", cr2, n, g,
                    test, cal["b"]),
        _effect_row("c′ (direct)", f"log2({batch}) in (b′)", fit.direct, doubling, cr2, n, g,
                    test, cal["direct"]),
        _effect_row("a·b′ (indirect)", "product of coefficients", fit.indirect, doubling,
                    f"seed bootstrap percentile, widened ×{fit.expansion:.2f}", n, g,
                    f"seed-level bootstrap ({n_boot} draws, both equations refitted)",
                    cal["indirect"]),
        _effect_row("c (total)", f"{target} ~ log2({batch})" + (f" + {control}" if use_tl
                                                                 else "") + " + seed",
                    fit.total, doubling, cr2, n, g, test, ""),
    ]
    for name, e in fit.extra.items():
        table.append(_effect_row(name, "sensitivity: b′ with the design column in (b′) too",
                                 e, "test error per unit λmax", cr2, n, g, test, ""))
    res.table = pd.DataFrame(table, columns=TABLE_COLUMNS)
    res.verdict, res.reason = decide(fit, alpha)
    return res


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
