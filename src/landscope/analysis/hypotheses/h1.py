"""H1 (issue #5): a smaller batch finds a flatter minimum (lower λmax), and the flatter minimum
has the lower test error at equal train loss.

The claim goes back to Keskar et al. 2017 ("On large-batch training for deep learning:
generalization gap and sharp minima", ICLR 2017: large batches converge to sharp minima that
generalize worse) and Jastrzębski et al. 2018 ("Three factors influencing minima in SGD",
ICANN 2018 / arXiv:1711.04623: the ratio of learning rate to batch size sets the SGD noise,
and a higher ratio ends in wider minima). The sweep is :file:`conf/experiment/h1_batch.yaml`:
``train.batch_size`` ∈ {16, 32, 64, 128, 256} × 6 seeds, the default 3-layer MLP on mnist1d,
plain SGD with the learning rate **held fixed** (lr 0.1: the batch size alone changes the
lr/batch ratio; scaling lr with the batch would remove the mechanism), every job trained to
the same target train loss (``train.target_train_loss`` = 0.1, epoch cap 400),
``probe=standard`` for λmax. Measured here: 30 jobs in 19.7 min with
``hydra/launcher=parallel`` on 2 heavily shared CPU cores (394 s of CPU time), all at the
target (batch 16 after 29-37 epochs, batch 256 after 185-198); λmax rose by 3.0 per doubling
(95% CI 2.8-3.2, Holm p 3e-6; mean λmax 4.7 at batch 16, 16.2 at 256, below the SGD stability
limit 2/lr = 20, which bends the curve at large batches) and test error by 0.018 per SD of
λmax at equal train loss (CI 0.014-0.022, Holm p 6e-4): supported. Caveat: across this sweep
λmax is almost a function of the batch size, so step (b) cannot tell λmax from any other
effect of the batch size on test error (adding log2(batch) to (b) leaves λmax at p 0.59).

:func:`h1_test` runs two regressions, one row each of :attr:`H1Result.table`:

(a) ``probe.lambda_max ~ log2(train.batch_size) + seed``: OLS with one fixed effect per seed
    and standard errors clustered by seed (CR1, t with G − 1 degrees of freedom for G seeds;
    :func:`fe_ols`, equal to statsmodels' ``OLS(...).fit(cov_type="cluster", use_t=True)`` with
    seed dummies). Effect: the slope, the change of λmax per **doubling** of the batch size.
    The prediction is a positive slope. Alongside: Kendall τ-b between batch size and λmax
    (scipy, pooled) and a linear mixed model with a random intercept per seed (statsmodels
    MixedLM, REML; slope and Wald p).
(b) ``test_error ~ z(λmax) + final.train_loss + seed`` over the jobs that reached the target:
    the same estimator, z = λmax standardized over the rows of (b) (mean 0, sd 1, ddof 1).
    Effect: the change of test error per standard deviation of λmax at equal train loss. The
    prediction is a positive coefficient. Alongside: the partial correlation of test error and
    λmax given train loss (:func:`~landscope.analysis.measures.partial_correlation`: Pearson on
    the residuals, t on n − 3 df, pooled over seeds) and the mixed model
    ``test_error ~ z + train_loss`` with a seed intercept. When train loss does not vary
    within seeds, the control is dropped (noted).

For both rows:

- ``ci_low``, ``ci_high``: percentile 95% bootstrap CI of the effect, resampling **seeds** (the
  clusters) with replacement, ``n_boot`` draws of ``numpy.random.default_rng(seed)``; each
  draw refits the same fixed-effects OLS by weighted least squares on the within-seed data (a
  job's weight = how often its seed was drawn, which equals refitting on the stacked
  resample); draws with a singular design (e.g. one seed drawn every time and no variation
  left) are dropped and counted in ``note``;
- ``p_holm``: Holm correction (:func:`~landscope.analysis.hypotheses.paired.holm`) of the two OLS
  p-values (one family of two tests);
- ``verdict``: ``supported`` when ``p_holm < alpha`` and the effect is positive (the predicted
  sign), ``not supported`` when ``p_holm < alpha`` and it is negative, ``inconclusive``
  otherwise (not significant, too few rows, no variation).

The overall verdict (:attr:`H1Result.verdict`) is ``supported`` when both steps are,
``not supported`` when either step is significant with the opposite sign, and ``inconclusive``
otherwise. The decision uses the two fixed-effects OLS t-tests only; τ, the partial correlation,
the mixed models and the CIs are reported, not combined.

Choices and their reasons:

- **Equal train loss.** A job reached the target when its ``stop_reason`` is
  ``target_train_loss`` (the trainer stops at the first epoch whose exact train loss is at or
  below the target) or, when the stop reason is missing, when ``final.train_loss`` ≤ the
  target. The target is the job's ``train.target_train_loss`` (or the ``target_loss``
  argument). Jobs that did not reach it (stopped at the epoch cap) are listed in
  :attr:`H1Result.off_target` with the reason, and left out of step (b), because H1 compares
  test errors at equal train loss; they are also left out of step (a) by default, because
  "λmax at the minimum" is measured at the target too (``off_target_in_a=True`` keeps them
  there). The remaining train-loss differences (each job overshoots the target by a different
  amount within its last epoch) are controlled for in (b). Without any target (no column, or
  null), every job counts as reached and the control alone stands for "equal train loss"
  (noted).
- **log2 batch size.** Batch sizes are swept geometrically; the slope per doubling is the
  natural effect size and makes the fit insensitive to the largest batch's leverage.
- **Seed fixed effects, clustered by seed.** A seed fixes the initialization and the data
  order generator, so jobs of one seed share errors; H1 compares batch sizes at the same
  seed, and a seed that starts in a better region (lower λmax *and* lower test error) would
  otherwise count as evidence. The fixed effects remove that between-seed component; the
  cluster-robust SEs cover what correlation is left. Calibration (simulated here, 2000 null
  draws of 8 seeds × 5 batch sizes with a seed effect in both λmax and test error): pooled
  OLS with cluster-robust SEs rejected a true null of step (b) in 8.8% of draws at nominal
  5% when λmax carried a seed component and no batch trend (5.4% with a batch trend); with
  seed fixed effects 4.7% and 3.6%. With a balanced design (every seed runs every batch
  size) the step-(a) slope equals the pooled OLS slope; only its SE differs. With fewer than
  10 seeds cluster-robust SEs are approximate (noted). Seeds with a single usable job carry no
  within-seed comparison and are left out of that step (noted). With one seed the fixed effect
  is the intercept and each job is its own cluster (HC1, t on n − K df; the bootstrap
  resamples jobs; noted).
- **Only included jobs** (``included`` true when the column exists: completed, not diverged
  or failed) are analysed; rows with a non-finite value of a column a step needs are left out
  of that step and listed in :attr:`H1Result.dropped`.
- Test error is ``test_error`` (1 − ``final.test_acc`` when that column is absent).

Bad input raises :class:`~landscope.errors.LandscopeError` with a one-line message: a missing
column (batch size, λmax, test error, train loss, seed), no included job, a batch size that is
not a positive number, or fewer than two distinct batch sizes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from scipy import stats

from landscope.analysis.fixed_effects import (boot_coef, fe_ols, seed_codes, statsmodels_fit,
                                               within)
from landscope.analysis.hypotheses.paired import holm
from landscope.analysis.measures import partial_correlation
from landscope.analysis.doc import short as _fmt
from landscope.errors import LandscopeError

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
STOP_TARGET = "target_train_loss"  # landscope.train.STOP_TARGET_LOSS (not imported: torch)
TABLE_COLUMNS = ["step", "relation", "test", "n", "n_clusters", "effect", "effect_unit", "se",
                 "ci_low", "ci_high", "t", "df", "p", "p_holm", "corr_name", "corr", "corr_p",
                 "mixed_effect", "mixed_se", "mixed_p", "mixed_note", "predicted", "verdict",
                 "reason", "note"]
_SHOWN = [("step", "step"), ("relation", "regression"), ("n", "n"), ("n_clusters", "seeds"),
          ("effect", "effect"), ("effect_unit", "effect unit"), ("ci_low", "CI low"),
          ("ci_high", "CI high"), ("t", "t"), ("df", "df"), ("p", "p"),
          ("p_holm", "p (Holm)"), ("corr_name", "rank/partial"), ("corr", "value"),
          ("corr_p", "p"), ("mixed_effect", "mixed effect"), ("mixed_p", "mixed p"),
          ("verdict", "verdict")]


@dataclass
class H1Result:
    """The outcome of :func:`h1_test`."""

    table: pd.DataFrame  # two rows, step "a" and "b" (TABLE_COLUMNS)
    verdict: str
    reason: str
    data: pd.DataFrame  # the analysed jobs: job, seed, batch_size, log2_batch, lambda_max,
    #                     test_error, train_loss, stop_reason, reached, in_a, in_b
    off_target: pd.DataFrame  # job, seed, batch_size, stop_reason, train_loss, target, reason
    dropped: pd.DataFrame  # job, seed, batch_size, step, reason (non-finite values)
    target_loss: Optional[float]  # the common target (None: none or several)
    alpha: float = 0.05
    batch: str = "train.batch_size"
    measure: str = "probe.lambda_max"
    notes: list[str] = field(default_factory=list)
    fits: dict[str, Any] = field(default_factory=dict, repr=False)  # mixed models (statsmodels)
    # the OLS designs, (y, X, names, seeds, yname): refitted with statsmodels for the summaries
    designs: dict[str, tuple] = field(default_factory=dict, repr=False)

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
        """``(title, statsmodels summary text)`` of every fit: the OLS fits of the two steps
        (refitted with statsmodels here, with one dummy per seed; the table's numbers are
        :func:`fe_ols`'s, equal to these) and the mixed models."""
        out = []
        fits = {title: statsmodels_fit(*design) for title, design in self.designs.items()}
        for name, fit in {**fits, **self.fits}.items():
            try:
                out.append((name, str(fit.summary())))
            except Exception as exc:  # noqa: BLE001 - a summary is decoration
                out.append((name, f"no summary: {type(exc).__name__}: {exc}"))
        return out

    def summary(self) -> str:
        """A few lines of text: the verdict, the jobs at target, one line per step."""
        target = "no target" if self.target_loss is None else f"target {self.target_loss:g}"
        lines = [f"H1 (smaller batch -> lower lambda_max -> lower test error at equal train "
                 f"loss): {self.verdict.upper()} - {self.reason}",
                 f"{self.n_jobs} jobs; {self.n_reached} reached the train loss ({target}), "
                 f"{self.n_off_target} did not; Holm over 2 steps, alpha={self.alpha:g}"]
        for r in self.table.itertuples(index=False):
            lines.append(
                f"  ({r.step}) {r.relation}: n={r.n}, seeds={r.n_clusters}, "
                f"effect={_fmt(r.effect)} "
                f"{r.effect_unit} [95% CI {_fmt(r.ci_low)}, {_fmt(r.ci_high)}], t={_fmt(r.t)} "
                f"(df {_fmt(r.df)}), p={_fmt(r.p)}, p_holm={_fmt(r.p_holm)}; {r.corr_name}="
                f"{_fmt(r.corr)} (p={_fmt(r.corr_p)}); mixed {_fmt(r.mixed_effect)} "
                f"(p={_fmt(r.mixed_p)}) -> {r.verdict}" + (f" ({r.reason})" if r.reason else ""))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------- input
def _numeric(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)


def _require(jobs: pd.DataFrame, columns: dict[str, str]) -> None:
    missing = [f"{col!r} ({why})" for col, why in columns.items() if col not in jobs.columns]
    if missing:
        raise LandscopeError("H1: the jobs table has no column " + ", ".join(missing))


def _frame(jobs: pd.DataFrame, batch: str, measure: str, target: str, control: str,
           cluster: str, target_loss: Optional[float]) -> tuple[pd.DataFrame, Optional[float],
                                                                list[str]]:
    """The analysed rows with normalized column names, the common target and notes."""
    if not isinstance(jobs, pd.DataFrame) or jobs.empty:
        raise LandscopeError("H1: the jobs table is empty")
    needs = {batch: "batch size", measure: "the curvature measure", control: "train loss",
             cluster: "clusters"}
    _require(jobs, needs)
    if target not in jobs.columns and not (target == "test_error" and "final.test_acc" in jobs):
        raise LandscopeError(f"H1: the jobs table has no column {target!r} (test error)")
    notes: list[str] = []
    rows = jobs
    if "included" in jobs.columns:
        inc = jobs["included"].fillna(False).astype(bool)
        if (~inc).any():
            notes.append(f"{int((~inc).sum())} jobs not included (not completed) are not analysed")
        rows = jobs[inc]
    if rows.empty:
        raise LandscopeError("H1: no included (completed) job in the jobs table")
    y = (_numeric(rows[target]) if target in rows.columns
         else 1.0 - _numeric(rows["final.test_acc"]))
    b = _numeric(rows[batch])
    bad = np.isfinite(b) & (b <= 0)
    if bad.any():
        raise LandscopeError(f"H1: {batch} must be a positive number; got "
                             f"{sorted(set(b[bad].tolist()))}")
    distinct = np.unique(b[np.isfinite(b)])
    if len(distinct) < 2:
        raise LandscopeError(f"H1: {batch} does not vary across the included jobs "
                             f"({', '.join(f'{v:g}' for v in distinct) or 'no value'}); "
                             f"H1 needs at least two batch sizes")
    n = len(rows)
    names = np.array([str(v) for v in (rows["job"] if "job" in rows.columns else rows.index)],
                     dtype=object)
    stop = rows["stop_reason"].to_numpy(dtype=object) if "stop_reason" in rows.columns \
        else np.full(n, None, dtype=object)
    train_loss = _numeric(rows[control])
    # the target train loss: the argument, else each job's train.target_train_loss
    if target_loss is not None:
        goal = np.full(n, float(target_loss))
    elif "train.target_train_loss" in rows.columns:
        goal = _numeric(rows["train.target_train_loss"])
    else:
        goal = np.full(n, np.nan)
    targets = np.unique(goal[np.isfinite(goal)])
    common = float(targets[0]) if len(targets) == 1 else None
    if len(targets) == 0:
        notes.append("no target train loss set (train.target_train_loss is null or absent): "
                     "every job counts as at target; equal train loss rests on the train-loss "
                     "control of step (b) alone")
        reached = np.ones(n, dtype=bool)
    else:
        if len(targets) > 1:
            notes.append(f"{len(targets)} different target train losses "
                         f"({', '.join(f'{t:g}' for t in targets)}): each job is judged against "
                         "its own; the train losses are not equal across targets")
        stopped = np.array([s == STOP_TARGET for s in stop], dtype=bool)
        no_reason = np.array([s is None or (isinstance(s, float) and math.isnan(s))
                              for s in stop], dtype=bool)
        no_target = ~np.isfinite(goal)
        with np.errstate(invalid="ignore"):
            below = train_loss <= goal
        reached = stopped | (no_reason & below) | no_target
        if no_target.any():
            notes.append(f"{int(no_target.sum())} jobs without a target train loss count as at "
                         "target")
    data = pd.DataFrame({
        "job": pd.Series(names, dtype=object), "seed": rows[cluster].to_numpy(),
        "batch_size": b, "log2_batch": np.log2(np.where(np.isfinite(b), b, np.nan)),
        "lambda_max": _numeric(rows[measure]), "test_error": y, "train_loss": train_loss,
        "stop_reason": pd.Series(stop, dtype=object),
        "epochs": _numeric(rows["epochs_completed"]) if "epochs_completed" in rows.columns
        else np.full(n, np.nan), "target": goal, "reached": reached})
    return data, common, notes


def _off_target(data: pd.DataFrame) -> pd.DataFrame:
    columns = ["job", "seed", "batch_size", "stop_reason", "train_loss", "target", "reason"]
    if data["reached"].all():
        return pd.DataFrame(columns=columns)
    off = data[~data["reached"]]
    reasons = []
    for r in off.itertuples(index=False):
        loss = "nan" if not math.isfinite(r.train_loss) else f"{r.train_loss:.4g}"
        where = f" after {int(r.epochs)} epochs" if math.isfinite(r.epochs) else ""
        reasons.append(f"stopped ({r.stop_reason or 'no stop reason'}){where} at train loss "
                       f"{loss} > target {r.target:g}")
    return pd.DataFrame({"job": off["job"].to_numpy(), "seed": off["seed"].to_numpy(),
                         "batch_size": off["batch_size"].to_numpy(),
                         "stop_reason": off["stop_reason"].to_numpy(),
                         "train_loss": off["train_loss"].to_numpy(),
                         "target": off["target"].to_numpy(), "reason": reasons},
                        columns=columns)


def _mixed(data: pd.DataFrame, formula: str, term: str, groups: np.ndarray):
    """MixedLM ``formula`` with a random intercept per seed: (coef, se, p, note, fit)."""
    import statsmodels.formula.api as smf

    if len(np.unique(groups)) < 2:
        return math.nan, math.nan, math.nan, "undefined (one seed)", None
    scale = float(np.std(data["y"], ddof=1)) or 1.0
    d = data.assign(y=(data["y"] - data["y"].mean()) / scale, g=groups)
    notes = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit = smf.mixedlm(formula, d, groups=d["g"]).fit(reml=True)
        for w in caught:
            text = str(w.message)
            for pattern, tag in (("boundary", "seed variance on the boundary (≈ 0)"),
                                 ("converge", "convergence warning"),
                                 ("singular", "singular random-effects covariance"),
                                 ("positive definite", "Hessian not positive definite")):
                if pattern in text:
                    notes.append(tag)
    except Exception as exc:  # noqa: BLE001 - singular designs, failed optimizers
        return math.nan, math.nan, math.nan, f"failed: {type(exc).__name__}: {exc}", None
    coef, se, p = (float(fit.params[term]) * scale, float(fit.bse[term]) * scale,
                   float(fit.pvalues[term]))
    if not getattr(fit, "converged", True):
        notes.append("did not converge")
        se, p = math.nan, math.nan
    return coef, se, p, "; ".join(dict.fromkeys(notes)), fit


def _row(step: str, relation: str, effect_unit: str) -> dict[str, Any]:
    row = {c: math.nan for c in TABLE_COLUMNS}
    row.update(step=step, relation=relation, effect_unit=effect_unit, n=0, n_clusters=0,
               test="OLS with seed fixed effects, t-test with SE clustered by seed (CR1, "
                    "df = seeds - 1)", corr_name="", mixed_note="", predicted="+",
               verdict=INCONCLUSIVE, reason="", note="")
    return row


def _fit_step(row: dict[str, Any], y: np.ndarray, X: np.ndarray, names: list[str],
              seeds: np.ndarray, yname: str, n_boot: int, seed: int, designs: dict,
              title: str) -> None:
    """Fill the OLS columns of ``row``: effect = the first slope of ``X``."""
    notes = []
    codes = seed_codes(seeds)
    sizes = np.bincount(codes)
    if len(sizes) >= 2 and (sizes == 1).any():
        keep = sizes[codes] > 1  # a seed with one job carries no within-seed information
        notes.append(f"{int((~keep).sum())} jobs alone in their seed left out (no within-seed "
                     "comparison)")
        y, X, seeds, codes = y[keep], X[keep], seeds[keep], seed_codes(seeds[keep])
    row.update(n=len(y), n_clusters=int(codes.max() + 1) if len(codes) else 0)
    if len(y) < X.shape[1] + 2 or np.ptp(within(X[:, 0], codes)) == 0:
        row["reason"] = f"too few jobs ({len(y)}) or no within-seed variation of {names[0]}"
        row["note"] = "; ".join(notes)
        return
    try:
        fit = fe_ols(y, X, seeds)
    except np.linalg.LinAlgError:
        row["reason"] = f"singular design ({', '.join(names)} collinear within seeds)"
        row["note"] = "; ".join(notes)
        return
    designs[title] = (y, X, list(names), seeds, yname)
    if fit.cov == "HC1":
        row["test"] = "OLS, t-test with HC1 SE (one seed: each job its own cluster)"
        notes.append("one seed: HC1 standard errors, bootstrap over jobs")
    elif fit.n_clusters < 10:
        notes.append(f"{fit.n_clusters} seed clusters (< 10): cluster-robust SEs are approximate")
    row.update(effect=float(fit.coef[0]), se=float(fit.se[0]), t=float(fit.t[0]),
               p=float(fit.p[0]), df=fit.df)
    boot = boot_coef(y, X, seeds, 0, n_boot, seed)
    ok = np.isfinite(boot)
    if ok.sum() >= 2:
        row.update(ci_low=float(np.percentile(boot[ok], 2.5)),
                   ci_high=float(np.percentile(boot[ok], 97.5)))
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} of {n_boot} bootstrap draws singular, dropped")
    row["note"] = "; ".join(notes)


def _step_a(rows: pd.DataFrame, n_boot: int, seed: int, mixed: bool, designs: dict,
            fits: dict, batch: str, measure: str) -> dict[str, Any]:
    row = _row("a", f"{measure} ~ log2({batch}) + seed", "λmax per doubling of the batch size")
    y, x = rows["lambda_max"].to_numpy(float), rows["log2_batch"].to_numpy(float)
    seeds = rows["seed"].to_numpy()
    _fit_step(row, y, x[:, None], [f"log2({batch})"], seeds, measure, n_boot, seed, designs,
              f"H1 step (a): OLS {measure} ~ log2({batch}) + seed fixed effects, "
              "clustered by seed")
    if row["reason"]:
        return row
    tau = stats.kendalltau(rows["batch_size"], y) if np.ptp(y) > 0 else None
    row.update(corr_name="Kendall τ (batch, λmax)",
               corr=float(tau.statistic) if tau else math.nan,
               corr_p=float(tau.pvalue) if tau else math.nan)
    if mixed:
        d = pd.DataFrame({"y": y, "x": x})
        coef, se, p, note, fit = _mixed(d, "y ~ x", "x", seed_codes(seeds))
        row.update(mixed_effect=coef, mixed_se=se, mixed_p=p, mixed_note=note)
        if fit is not None:
            fits["H1 step (a): MixedLM standardized λmax ~ log2(batch), seed intercept"] = fit
    return row


def _step_b(rows: pd.DataFrame, n_boot: int, seed: int, mixed: bool, designs: dict,
            fits: dict, measure: str, target: str, control: str,
            notes: list[str]) -> dict[str, Any]:
    row = _row("b", f"{target} ~ z({measure}) + {control} + seed",
               "test error per SD of λmax at equal train loss")
    lam = rows["lambda_max"].to_numpy(float)
    if len(rows) < 4 or np.ptp(lam) == 0:
        row.update(n=len(rows), reason=f"too few jobs at target ({len(rows)}) or λmax constant")
        return row
    sd = float(np.std(lam, ddof=1))
    z = (lam - lam.mean()) / sd
    y, tl = rows["test_error"].to_numpy(float), rows["train_loss"].to_numpy(float)
    seeds = rows["seed"].to_numpy()
    use_control = bool(np.ptp(within(tl, seed_codes(seeds))) > 0)
    X = np.column_stack([z, tl]) if use_control else z[:, None]
    names = [f"z({measure})", control][: X.shape[1]]
    row["effect_unit"] = f"test error per SD of λmax (SD {sd:.3g}) at equal train loss"
    _fit_step(row, y, X, names, seeds, target, n_boot, seed, designs,
              f"H1 step (b): OLS {target} ~ z({measure}) + {control} + seed fixed effects, "
              "clustered by seed")
    if row["reason"]:
        return row
    if use_control:
        r, p = partial_correlation(lam, y, tl)
        row.update(corr_name="partial r (λmax, test error | train loss)", corr=r, corr_p=p)
    else:
        notes.append("step (b): train loss does not vary within seeds: control dropped")
        r = stats.pearsonr(lam, y) if np.ptp(y) > 0 else None
        row.update(corr_name="Pearson r (λmax, test error)",
                   corr=float(r.statistic) if r else math.nan,
                   corr_p=float(r.pvalue) if r else math.nan)
    if mixed:
        d = pd.DataFrame({"y": y, "z": z, "tl": tl})
        coef, se, p, note, fit = _mixed(d, "y ~ z + tl" if use_control else "y ~ z", "z",
                                        seed_codes(seeds))
        row.update(mixed_effect=coef, mixed_se=se, mixed_p=p, mixed_note=note)
        if fit is not None:
            fits["H1 step (b): MixedLM standardized test error ~ z(λmax) + train loss, "
                 "seed intercept"] = fit
    return row


def _verdict(row: dict[str, Any], alpha: float, what: tuple[str, str]) -> tuple[str, str]:
    if row["reason"]:
        return INCONCLUSIVE, row["reason"]
    p, eff = row["p_holm"], row["effect"]
    if not (math.isfinite(p) and math.isfinite(eff)):
        return INCONCLUSIVE, "the regression is undefined"
    if p < alpha and eff > 0:
        return SUPPORTED, f"{what[0]} (Holm p={p:.3g} < {alpha:g})"
    if p < alpha and eff < 0:
        return NOT_SUPPORTED, f"{what[1]}: opposite to the prediction (Holm p={p:.3g} < {alpha:g})"
    return INCONCLUSIVE, f"not significant (Holm p={p:.3g} >= {alpha:g})"


# --------------------------------------------------------------------------- the test
def h1_test(jobs: pd.DataFrame, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0, *,
            batch: str = "train.batch_size", measure: str = "probe.lambda_max",
            target: str = "test_error", control: str = "final.train_loss",
            cluster: str = "seed", target_loss: Optional[float] = None,
            off_target_in_a: bool = False, mixed: bool = True) -> H1Result:
    """Test H1 on a collected jobs table (see the module docstring for every rule).

    ``target_loss``: the train loss every job was trained to (default: each job's
    ``train.target_train_loss``). ``off_target_in_a``: keep the jobs that did not reach it in
    step (a) (they are always left out of step (b)). ``mixed``: also fit the mixed models
    (reported, not used in the verdict; ~0.1 s each). Raises :class:`LandscopeError` on a
    missing column, no included job or fewer than two batch sizes."""
    data, common, notes = _frame(jobs, batch, measure, target, control, cluster, target_loss)
    off = _off_target(data)
    if len(off):
        notes.append(f"{len(off)} of {len(data)} jobs did not reach the target train loss: "
                     f"left out of step (b)" + ("" if off_target_in_a else " and step (a)"))
    dropped = []
    need_a = ["lambda_max", "log2_batch"]
    need_b = ["lambda_max", "test_error", "train_loss"]
    reached = data["reached"].to_numpy(bool)
    base_a = reached | off_target_in_a
    in_a = base_a & np.isfinite(data[need_a].to_numpy(float)).all(axis=1)
    in_b = reached & np.isfinite(data[need_b].to_numpy(float)).all(axis=1)
    for step, base, need, used in (("a", base_a, need_a, in_a), ("b", reached, need_b, in_b)):
        for i in np.flatnonzero(base & ~used):
            r = data.iloc[i]
            bad = [c for c in need if not math.isfinite(r[c])]
            dropped.append({"job": r["job"], "seed": r["seed"], "batch_size": r["batch_size"],
                            "step": step, "reason": "non-finite " + ", ".join(bad)})
    dropped_df = pd.DataFrame(dropped, columns=["job", "seed", "batch_size", "step", "reason"])
    if len(dropped_df):
        notes.append(f"{len(dropped_df)} (job, step) rows without finite values left out")
    data["in_a"], data["in_b"] = in_a, in_b
    fits: dict[str, Any] = {}
    designs: dict[str, tuple] = {}
    row_a = _step_a(data[in_a], n_boot, seed, mixed, designs, fits, batch, measure)
    row_b = _step_b(data[in_b], n_boot, seed, mixed, designs, fits, measure, target, control,
                    notes)
    row_a["p_holm"], row_b["p_holm"] = holm([row_a["p"], row_b["p"]])
    for row, what in ((row_a, ("λmax rises with the batch size",
                               "λmax falls with the batch size")),
                      (row_b, ("test error rises with λmax at equal train loss",
                               "test error falls with λmax at equal train loss"))):
        row["verdict"], row["reason"] = _verdict(row, alpha, what)
    table = pd.DataFrame([row_a, row_b], columns=TABLE_COLUMNS)
    va, vb = table["verdict"]
    if NOT_SUPPORTED in (va, vb):
        which = " and ".join(f"({s})" for s, v in zip("ab", (va, vb)) if v == NOT_SUPPORTED)
        verdict, reason = NOT_SUPPORTED, f"step {which} significant with the opposite sign"
    elif va == SUPPORTED and vb == SUPPORTED:
        verdict, reason = SUPPORTED, "both steps significant with the predicted sign"
    else:
        verdict = INCONCLUSIVE
        reason = "; ".join(f"({s}) {v}: {r}" for s, v, r in zip("ab", table["verdict"],
                                                                 table["reason"])
                           if v != SUPPORTED)
    return H1Result(table=table, verdict=verdict, reason=reason, data=data, off_target=off,
                    dropped=dropped_df, target_loss=common, alpha=alpha, batch=batch,
                    measure=measure, notes=notes, fits=fits, designs=designs)


# --------------------------------------------------------------------------- figure
def plot_h1(res: H1Result, path: Path) -> Path:
    """Two panels: λmax against batch size (log2 axis, with the step-(a) fit) and test error
    against λmax coloured by batch size; jobs off target are drawn as crosses."""
    from landscope.plots import pyplot, save_png

    plt = pyplot()
    d = res.data
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8), layout="constrained")
    sizes = np.unique(d["batch_size"].dropna())
    colours = {b: plt.cm.viridis(i / max(len(sizes) - 1, 1)) for i, b in enumerate(sizes)}
    jitter = np.random.default_rng(0).uniform(-0.08, 0.08, len(d))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    for mask, marker, label in ((d["reached"], "o", "at target"), (~d["reached"], "x",
                                                                     "off target")):
        sub = d[mask]
        if sub.empty:
            continue
        c = [colours.get(b, "grey") for b in sub["batch_size"]]
        ax1.scatter(sub["log2_batch"] + jitter[mask.to_numpy()], sub["lambda_max"], c=c,
                    marker=marker, s=22, alpha=0.8)
        ax1.scatter([], [], color="grey", marker=marker, s=22, label=label)
        ax2.scatter(sub["lambda_max"], sub["test_error"], c=c, marker=marker, s=22, alpha=0.8)
    a = res.table.iloc[0]
    used = d[d["in_a"]]
    if math.isfinite(a["effect"]) and len(used):
        xs = np.linspace(used["log2_batch"].min(), used["log2_batch"].max(), 2)
        icpt = used["lambda_max"].mean() - a["effect"] * used["log2_batch"].mean()
        ax1.plot(xs, icpt + a["effect"] * xs, "k--", lw=1,
                 label=f"OLS: {a['effect']:.3g} per doubling")
    ax1.set_xticks(np.log2(sizes), [f"{b:g}" for b in sizes])
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("λmax")
    ax1.set_title(f"(a) {a['verdict']}, Holm p={_fmt(a['p_holm'])}", fontsize=9)
    ax1.legend(fontsize=7)
    b = res.table.iloc[1]
    ax2.set_xlabel("λmax")
    ax2.set_ylabel("test error")
    ax2.set_title(f"(b) {b['verdict']}, Holm p={_fmt(b['p_holm'])}", fontsize=9)
    for size in sizes:
        ax2.scatter([], [], color=colours[size], s=22, label=f"batch {size:g}")
    ax2.legend(fontsize=7)
    return save_png(fig, path)


# --------------------------------------------------------------------------- report section
def applies(ctx) -> bool:
    """The section is written when the collected jobs vary ``train.batch_size``."""
    return "train.batch_size" in ctx.coll.swept


def section(ctx) -> None:
    """H1 section of the report: verdict, test description, table (``h1.csv``), jobs off
    target, a two-panel figure and the statsmodels summaries in the appendix."""
    from landscope.io import atomic_write_text

    doc, out = ctx.doc, Path(ctx.out)
    doc.heading("H1: smaller batches find flatter minima that generalize better")
    try:
        res = h1_test(ctx.coll.included)
    except LandscopeError as exc:
        doc.para(f"H1 not tested: {exc}")
        return
    target = ("no target train loss was set, so equal train loss rests on the control alone"
              if res.target_loss is None else f"target train loss {res.target_loss:g}")
    doc.para(
        f"Verdict: {res.verdict} ({res.reason}). Step (a): OLS of λmax on log2(batch size); "
        f"effect = change of λmax per doubling of the batch size. Step (b): OLS of test error "
        f"on standardized λmax and final train loss over the jobs that reached the target "
        f"train loss; effect = change of test error per standard deviation of λmax at equal "
        f"train loss. Both with seed fixed effects (batch sizes compared within a seed) and "
        f"standard errors clustered by seed (CR1, t on seeds − 1 df), "
        f"two-sided p-values Holm-corrected across the two steps (alpha {res.alpha:g}), 95% "
        f"bootstrap CIs resampling seeds. Supported when both effects are significant and "
        f"positive; not supported when either is significant and negative. Kendall τ (a), the "
        f"partial correlation given train loss (b) and mixed models with a seed intercept are "
        f"reported alongside. {res.n_jobs} jobs, {res.n_reached} reached the train loss "
        f"({target}), {res.n_off_target} did not"
        + (" and are left out of both steps (listed below)." if res.n_off_target else "."))
    doc.frame(res.table, _SHOWN)
    atomic_write_text(out / "h1.csv", res.table.to_csv(index=False))
    if res.n_off_target:
        doc.heading("Jobs that did not reach the target train loss", 3)
        doc.frame(res.off_target, [("job", "job"), ("seed", "seed"), ("batch_size", "batch"),
                                   ("train_loss", "train loss"), ("reason", "reason")])
    notes = res.notes + [f"step ({r.step}): {r.note}" for r in res.table.itertuples() if r.note]
    if notes:
        doc.para("Notes: " + "; ".join(notes) + ".")
    png = out / "figures" / "h1_batch.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_h1(res, png)
    doc.image(png, f"figures/{png.name}",
              "H1: λmax against batch size (a) and test error against λmax (b)")
    ctx.appendix.extend(res.summaries())
