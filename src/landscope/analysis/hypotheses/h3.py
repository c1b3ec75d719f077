"""H3 (issue #5): noise–curvature alignment predicts faster escape from sharp minima.

Zhu et al. 2019 ("The anisotropic noise in stochastic gradient descent: its behavior of
escaping from sharp minima and regularization effects", ICML) show that SGD escapes sharp
minima faster than isotropic noise of equal size because its covariance Σ concentrates in
the top Hessian eigendirections (indicator tr(HΣ)).  H3 asks whether, across minima, the
measured alignment predicts the escape time, over and above the noise scale η/B
(Jastrzebski et al. 2017, "Three factors influencing minima in SGD") and the width.

**Data.**  ``python -m runner.escape SWEEP`` continues every completed job of a sweep from
its final checkpoint (a sharp minimum, e.g. :file:`conf/experiment/h3_sharp.yaml`: full-batch
gradient descent) with plain SGD at several learning rates η and batch sizes B and a few
seeds, and records the escape step (:mod:`landscope.escape`: the first evaluated step where
the train loss on a fixed subset exceeds ``L(θ0) + Δ``, confirmed over ``k`` evaluations;
runs that do not escape by ``max_steps`` are censored).  :func:`load_escapes` reads those
files into one row per continuation, with the source job's probe scalars from its
``result.json`` and its parameter count ``n_params``.

**Alignment measure.**  Primary: ``probe.noise_top_k_energy_share`` = tr(VᵀΣV)/trΣ, the
share of the noise variance in the span V of the Hessian's top-k eigenvectors (k = probe.top_k,
5 in the preset): a number in [0, 1] whose scale does not grow with the parameter count.  The
normalized cosine tr(HΣ)/(‖H‖_F‖Σ‖_F) would be the other dimension-free choice, but the probes
store no ‖H‖_F (tr H² is never estimated) and ‖Σ‖_F only as the top eigenvalues of Σ, so it
cannot be computed from what a job stores.  The old primary, κ = tr(HΣ)/((trΣ/D)·trH)
(``probe.noise_alignment_ratio``), is 1 for isotropic noise in any dimension, so for a fixed
concentration of Σ it grows like D: across widths it measures width (measured: κ ≈ 90–130 at
width 32, 1380–1660 at 128).  It is kept as a sensitivity row (its log, same test).  The
energy share of isotropic noise is k/D, so it is not free of D either; log D is in the model.

**Primary fit** (:func:`h3_test`, statistics in :mod:`~landscope.analysis.hypotheses.survival`):
a log-normal accelerated-failure-time model with right censoring, fitted by maximum
likelihood, per continuation ``i`` of source minimum ``g``::

    log T_ig = b0 + b1 z_g + b2 log(η_i/B_i) + b3 log D_g + σ ε_ig,   ε ~ N(0, 1)

``T`` the escape step, a censored run entering through its survival probability at
``max_steps`` (not imputed).  ``z`` the alignment divided by its within-stratum sd over the
minima (coefficient = log escape-time factor per within-width sd of alignment).

**Inference on b1, with the minima as units.**  The alignment is a property of the minimum, and
the ~18–27 continuations from one minimum share its basin, so there are G ≈ 12 independent
units, too few for z-tests with sandwich errors (a Cox fit with robust errors on 12 clusters
rejected 16 % of null datasets at 5 %).  The test is a permutation score test: fit the model
without z, sum each minimum's score (how much later than predicted its runs escape, censored
runs through the inverse Mills ratio), and compare ``U = Σ_g z̃_g S_g`` with its distribution
when the alignment values are permuted across minima **within strata of equal parameter count**
(width): exact under the null that, within a width, the escape-time distribution of a minimum
does not depend on its alignment.  ``n_perm`` random within-strata permutations (all of them
when there are fewer).  When too few minima share a parameter count (fewer than ``min_jobs``
in strata of ≥ 2), the alignment's residual on log D is permuted across all minima instead
(approximate; noted).  **Interval**: the set of b1 the test does not reject at ``alpha``
(test inversion on ``log T − b·z``, censoring points shifted alike).  H3 predicts **b1 < 0**.
The η/B and log D rows are reported with cluster-robust (CR1) Wald errors and t on G − 1
degrees of freedom (η/B varies within minima; log D only between ~3 widths: a covariate,
no verdict).

**Sensitivity fits** (reported, not used in the verdict): ``kappa`` (the same model and test
with log κ), ``imputed_ols`` (OLS of log T with censored runs imputed at ``max_steps``, CV3
cluster-robust errors by minimum, t with G − 1 df: statsmodels' ``cluster-crv3``).

**Calibration and power.**  :mod:`landscope.analysis.calibration.h3` simulates sweeps under a
null, a confounded null (wider nets escape slower and κ and the energy share change with width)
and a planted effect within each width, and runs :func:`h3_test` on them; the section quotes
:func:`landscope.analysis.calibration.calibration_note` for each fit's test
(:data:`TESTS`) and :func:`h3_power` (power at a planted b1 = :data:`POWER_EFFECT`, simulated
from the fitted design).

**Verdict** (the primary alignment row): ``inconclusive`` when fewer than ``min_jobs`` minima
have usable rows, the alignment takes fewer than 3 values or does not vary within strata, no
run escaped, the permutations cannot reach ``alpha`` or the fit fails; ``supported`` when the
permutation p < ``alpha`` with b1 < 0; ``not supported`` when p < ``alpha`` with b1 > 0;
``inconclusive`` otherwise (absence of evidence, no equivalence test).

**Noise design.**  The escapes ``runner.escape`` measures by default are instability exits
(η·λmax > 2; measured median 2–14 steps), not the noise-activated escapes of Zhu et al.  The
design that isolates the noise structure: at one minimum with η < 2/λmax
(``escape.lr_unit=stability``), continue with (a) SGD noise, (b) isotropic Gaussian noise of
the same trace tr Σ/B added to the full-batch gradient, (c) Gaussian noise of the same trace in
the span of the top-k Hessian eigenvectors (``escape.noise=[sgd,isotropic,topk]``;
:func:`landscope.escape.run_escape`); the paired analysis (per-minimum censored-AFT contrasts,
sign-flip test across minima) is :mod:`landscope.analysis.hypotheses.h3_noise`, added to this
section when the sweep holds such results (the alignment test above then reads the sgd runs).
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

from landscope.analysis.doc import short as _fmt
from landscope.analysis.hypotheses import survival as sv
from landscope.analysis.hypotheses.escapes import (ESCAPE_DIR, ROW_COLUMNS,  # noqa: F401
                                                   has_escapes, load_escapes)
from landscope.analysis.section import Section
from landscope.errors import LandscopeError

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
COVARIATE = "covariate"
ALIGNMENT = "probe.noise_top_k_energy_share"
LEGACY = "probe.noise_alignment_ratio"  # κ, a sensitivity row (it grows with D)
RATE = "eta_over_b"
COV_TYPE = "cluster-crv3"  # statsmodels' CV3 cluster-robust covariance (imputed OLS)
FITS = ("primary", "kappa", "imputed_ols")
TESTS = {"primary": "H3 alignment: censored AFT, permutation across minima",
         "kappa": "H3 kappa (sensitivity): censored AFT, permutation across minima",
         "imputed_ols": "H3 imputed OLS CV3 (sensitivity)"}
POWER_EFFECT = -0.3  # log escape-time factor per within-width sd of alignment (×0.74)
TABLE_COLUMNS = ["fit", "term", "measure", "predicted", "n", "n_jobs", "n_strata", "n_escaped",
                 "n_censored", "coef", "se", "ci_low", "ci_high", "ci_method", "test",
                 "statistic", "df", "p", "ratio", "verdict", "reason"]


@dataclass
class H3Result:
    """The outcome of :func:`h3_test`."""

    table: pd.DataFrame  # one row per (fit, term): TABLE_COLUMNS
    verdict: str  # the primary fit's alignment verdict
    reason: str
    alignment: str
    data: pd.DataFrame  # the rows used: job, escaped, time, log_time, z, log rate, log D
    alpha: float = 0.05
    fits: dict[str, Any] = field(default_factory=dict)  # fit name -> summary text
    notes: list[str] = field(default_factory=list)
    design: dict[str, Any] = field(default_factory=dict)  # strata, permutations (primary)

    @property
    def summaries(self) -> dict[str, str]:
        """A text summary of each fit (coefficients and their errors)."""
        return dict(self.fits)

    @property
    def n_jobs(self) -> int:
        return int(self.data["job"].nunique()) if len(self.data) else 0

    @property
    def n_censored(self) -> int:
        return int((~self.data["escaped"]).sum()) if len(self.data) else 0

    def row(self, fit: str = "primary", term: str = "alignment") -> pd.Series:
        hit = self.table[(self.table["fit"] == fit) & (self.table["term"] == term)]
        if hit.empty:
            raise KeyError(f"no row {fit}/{term}")
        return hit.iloc[0]

    def summary(self) -> str:
        lines = [f"H3 ({self.alignment} predicts faster escape): {self.verdict.upper()} - "
                 f"{self.reason}",
                 f"{len(self.data)} continuations from {self.n_jobs} minima, "
                 f"{self.n_censored} censored; alpha={self.alpha:g}"]
        for r in self.table.itertuples(index=False):
            lines.append(f"  {r.fit}/{r.term}: n={r.n} minima={r.n_jobs} coef={_fmt(r.coef)} "
                         f"[{r.ci_method} CI {_fmt(r.ci_low)}, {_fmt(r.ci_high)}] "
                         f"{r.test}: p={_fmt(r.p)} ratio={_fmt(r.ratio)} -> {r.verdict}"
                         + (f" ({r.reason})" if r.reason else ""))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------- statistics
def prepare(escapes: pd.DataFrame, alignment: str = ALIGNMENT, rate: str = RATE,
            log_alignment: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The rows :func:`h3_test` fits: ``job``, ``escaped``, ``time`` (escape step, or
    ``max_steps`` when censored), ``log_time``, ``alignment`` (raw, or its log),
    ``rate``, ``log_eta_over_b``, ``n_params``, ``log_n_params``; rows without a finite
    positive time, alignment or rate are left out (counted in the notes)."""
    for col in ("job", "escaped", "escape_step", "max_steps", rate):
        if col not in escapes.columns:
            raise LandscopeError(f"H3: no column {col!r} in the escapes table")
    if alignment not in escapes.columns:
        raise LandscopeError(f"H3: no column {alignment!r} in the escapes table (run the "
                             "source jobs with probe=standard and probe.top_k > 0, which "
                             "measure the noise alignment)")
    notes = []
    escaped = escapes["escaped"].astype(bool).to_numpy()
    step = pd.to_numeric(escapes["escape_step"], errors="coerce").to_numpy(float)
    cap = pd.to_numeric(escapes["max_steps"], errors="coerce").to_numpy(float)
    time = np.where(escaped, step, cap)
    a = pd.to_numeric(escapes[alignment], errors="coerce").to_numpy(float)
    r = pd.to_numeric(escapes[rate], errors="coerce").to_numpy(float)
    size = pd.to_numeric(escapes["n_params"], errors="coerce").to_numpy(float) \
        if "n_params" in escapes.columns else np.full(len(escapes), np.nan)
    if log_alignment:
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(a > 0, np.log(np.where(a > 0, a, 1.0)), np.nan)
    ok = np.isfinite(time) & (time > 0) & np.isfinite(a) & np.isfinite(r) & (r > 0)
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} continuations without a finite positive escape time, "
                     f"{'log ' if log_alignment else ''}{alignment} or {rate} left out")
    d = pd.DataFrame({"job": escapes["job"].astype(str).to_numpy()[ok], "escaped": escaped[ok],
                      "time": time[ok], "alignment": a[ok], "rate": r[ok], "n_params": size[ok]})
    d["log_time"] = np.log(d["time"])
    with np.errstate(divide="ignore", invalid="ignore"):
        d["log_cap"] = np.log(cap[ok])
    d["log_eta_over_b"] = np.log(d["rate"])
    with np.errstate(divide="ignore", invalid="ignore"):
        d["log_n_params"] = np.where(d["n_params"] > 0, np.log(d["n_params"].abs()), np.nan)
    return d, notes


def _empty(fit: str, term: str, measure: str, reason: str, counts: dict) -> dict[str, Any]:
    row = {c: math.nan for c in TABLE_COLUMNS}
    row.update(fit=fit, term=term, measure=measure, predicted="negative", ci_method="",
               test="", verdict=INCONCLUSIVE, reason=reason, **counts)
    return row


def _verdict(coef: float, p: float, alpha: float) -> tuple[str, str]:
    if not (math.isfinite(p) and math.isfinite(coef)):
        return INCONCLUSIVE, "fit undefined"
    if p < alpha and coef < 0:
        return SUPPORTED, f"negative as predicted (p={p:.3g} < {alpha:g})"
    if p < alpha and coef > 0:
        return NOT_SUPPORTED, f"positive, against the prediction (p={p:.3g} < {alpha:g})"
    return INCONCLUSIVE, f"not significant (p={p:.3g} >= {alpha:g})"


@dataclass
class _Design:
    """The cluster structure of one fit: row -> minimum codes, per-minimum alignment and
    strata, the permuted covariate and the design columns."""

    codes: np.ndarray
    jobs: list
    a_job: np.ndarray
    a_tilde: np.ndarray  # centred within strata (or residual on log D), in z units
    z_row: np.ndarray
    strata: np.ndarray
    mode: str  # how the alignment is permuted (words)
    use_size: bool
    use_rate: bool
    n_strata: int


def _design(d: pd.DataFrame, min_jobs: int) -> tuple[Optional[_Design], str]:
    codes, jobs = pd.factorize(d["job"])
    first = d.groupby(codes, sort=True).first()
    a_job = first["alignment"].to_numpy(float)
    size = first["n_params"].to_numpy(float)
    log_size = first["log_n_params"].to_numpy(float)
    use_size = bool(np.all(np.isfinite(log_size)) and len(np.unique(size)) > 1)
    use_rate = d["log_eta_over_b"].nunique() > 1
    g = len(a_job)
    if len(np.unique(a_job)) < 3:
        return None, "the alignment takes fewer than 3 distinct values over the minima"
    if not use_size:
        strata = np.zeros(g, int)
        a_tilde = a_job - a_job.mean()
        mode = ("across all minima (one parameter count)" if np.all(np.isfinite(log_size))
                else "across all minima (no parameter count recorded: log D not in the model)")
    else:
        strata = pd.factorize(size)[0]
        multi = sum(int((strata == s).sum()) for s in np.unique(strata)
                    if (strata == s).sum() > 1)
        if multi >= min_jobs:
            a_tilde = sv.centred_within(a_job, strata)
            mode = "within strata of equal parameter count"
        else:
            x = np.column_stack([np.ones(g), log_size])
            a_tilde = a_job - x @ np.linalg.lstsq(x, a_job, rcond=None)[0]
            strata = np.zeros(g, int)
            mode = ("residual on log D across all minima (too few minima share a parameter "
                    "count; approximate)")
    sd = float(np.std(a_tilde))
    if not sd > 1e-12 * max(1.0, float(np.abs(a_job).max())):
        return None, "the alignment does not vary within the parameter-count strata"
    z_row = ((a_job - a_job.mean()) / sd)[codes]
    return _Design(codes=codes, jobs=list(jobs), a_job=a_job, a_tilde=a_tilde / sd,
                   z_row=z_row, strata=strata, mode=mode, use_size=use_size,
                   use_rate=use_rate, n_strata=len(np.unique(first["n_params"]))
                   if use_size else 1), ""


def _null_design(d: pd.DataFrame, des: _Design) -> tuple[np.ndarray, list[str]]:
    cols, names = [np.ones(len(d))], ["const"]
    if des.use_rate:
        cols.append(d["log_eta_over_b"].to_numpy(float))
        names.append("log_eta_over_b")
    if des.use_size:
        cols.append(d["log_n_params"].to_numpy(float))
        names.append("log_n_params")
    return np.column_stack(cols), names


def _checked_design(d: pd.DataFrame, min_jobs: int) -> tuple[dict[str, Any], Any, str]:
    """The row counts of a fit, its design, and why it cannot be fitted ("" when it can):
    too few source minima, no escape at all, or what :func:`_design` refuses."""
    n, n_jobs, n_esc = len(d), int(d["job"].nunique()), int(d["escaped"].sum())
    counts = dict(n=n, n_jobs=n_jobs, n_escaped=n_esc, n_censored=n - n_esc, n_strata=math.nan)
    fail = ""
    if n_jobs < min_jobs:
        fail = f"too few source minima: {n_jobs} < min_jobs={min_jobs}"
    elif n_esc == 0:
        fail = "no run escaped (every run censored)"
    des = None
    if not fail:
        des, fail = _design(d, min_jobs)
    return counts, des, fail


def _aft_rows(name: str, d: pd.DataFrame, measure: str, alpha: float, n_perm: int, seed: int,
              min_jobs: int, interval: bool, fits: dict, notes: list, design: dict,
              covariates: bool) -> list[dict[str, Any]]:
    counts, des, fail = _checked_design(d, min_jobs)
    if not fail and sv.n_strata_permutations(des.strata) < 1 / alpha:
        fail = (f"too few permutations ({sv.n_strata_permutations(des.strata)}) to reach "
                f"p < {alpha:g}")
    if fail:
        return [_empty(name, "alignment", measure, fail, counts)]
    counts["n_strata"] = des.n_strata
    y, ev = d["log_time"].to_numpy(float), d["escaped"].to_numpy(bool)
    x0, names0 = _null_design(d, des)
    x1 = np.column_stack([x0[:, :1], des.z_row, x0[:, 1:]])
    names1 = ["const", "alignment", *names0[1:]]
    perms, exact = sv.strata_permutations(des.strata, n_perm, seed)
    full = sv.fit_aft(y, x1, ev)
    test = sv.permutation_score_test(y, x0, ev, des.codes, des.a_tilde, perms, exact)
    if not (full.converged and test.null_fit.converged):
        return [_empty(name, "alignment", measure, "the censored AFT fit did not converge",
                       counts)]
    cr = sv.cluster_robust_se(full, x1, ev, y, des.codes)
    df_t = counts["n_jobs"] - 1
    coef = float(full.params[1])
    lo = hi = math.nan
    if interval:
        lo, hi = sv.inverted_interval(y, x0, ev, des.codes, des.z_row, des.a_tilde, perms,
                                      exact, coef, max(float(cr[1]), float(full.bse[1])),
                                      alpha)
    p = test.p
    verdict, reason = _verdict(coef, p, alpha)
    if p < alpha and coef * test.u < 0:
        verdict, reason = INCONCLUSIVE, "the estimate and the score statistic disagree in sign"
    row = {c: math.nan for c in TABLE_COLUMNS}
    row.update(fit=name, term="alignment", measure=measure, predicted="negative", **counts,
               coef=coef, se=float(cr[1]), ci_low=lo, ci_high=hi,
               ci_method="inverted permutation test" if interval else "",
               test=f"permutation score test ({test.n_perm}{' (all)' if exact else ''} "
                    f"permutations {des.mode})",
               statistic=test.u, df=math.nan, p=p, ratio=math.exp(coef), verdict=verdict,
               reason=reason)
    rows = [row]
    if covariates:
        tcrit = float(stats.t.ppf(0.975, df_t))
        for k, term in enumerate(names1):
            if term not in ("log_eta_over_b", "log_n_params"):
                continue
            c, se = float(full.params[k]), float(cr[k])
            t = c / se if se > 0 else math.nan
            pk = float(2 * stats.t.sf(abs(t), df_t)) if math.isfinite(t) else math.nan
            r = {c_: math.nan for c_ in TABLE_COLUMNS}
            r.update(fit=name, term=term, measure=term, **counts, coef=c, se=se,
                     ci_low=c - tcrit * se, ci_high=c + tcrit * se, ci_method="Wald, t(G-1)",
                     test=f"cluster-robust (CR1) Wald, t with {df_t} df", statistic=t,
                     df=float(df_t), p=pk, ratio=math.exp(c))
            if term == "log_eta_over_b":
                v, why = _verdict(c, pk, alpha)
                r.update(predicted="negative", verdict=v, reason=why)
            else:
                r.update(predicted="", verdict=COVARIATE,
                         reason=f"between {des.n_strata} parameter counts only")
            rows.append(r)
    fits[name] = _aft_summary(name, measure, names1, full, cr, test, des)
    if name == "primary":
        design.update(mode=des.mode, n_perm=test.n_perm, exact=exact, strata=des.n_strata,
                      sigma=full.sigma, min_jobs=min_jobs)
    return rows


def _aft_summary(name: str, measure: str, names: list[str], fit: sv.AFTFit, cr: np.ndarray,
                 test: sv.PermTest, des: _Design) -> str:
    lines = [f"{name}: censored log-normal AFT of log escape step (alignment = {measure}, "
             f"per within-stratum sd), maximum likelihood",
             f"log-likelihood {fit.loglik:.4f}, sigma {fit.sigma:.4f}, "
             f"{len(des.a_job)} minima, alignment permuted {des.mode}",
             f"{'term':<16}{'coef':>12}{'se (model)':>12}{'se (CR1)':>12}"]
    for k, term in enumerate(names):
        lines.append(f"{term:<16}{fit.params[k]:>12.4f}{fit.bse[k]:>12.4f}{cr[k]:>12.4f}")
    lines.append(f"permutation score test of the alignment: U = {test.u:.4g}, p = {test.p:.4g} "
                 f"({test.n_perm} permutations{', all' if test.exact else ''})")
    return "\n".join(lines)


def _ols_rows(d: pd.DataFrame, measure: str, alpha: float, min_jobs: int, fits: dict
              ) -> list[dict[str, Any]]:
    import statsmodels.api as sm

    counts, des, fail = _checked_design(d, min_jobs)
    if not fail and np.std(d["log_time"]) == 0:
        fail = "log escape time does not vary"
    if fail:
        return [_empty("imputed_ols", "alignment", measure, fail, counts)]
    counts["n_strata"] = des.n_strata
    x0, names0 = _null_design(d, des)
    x = np.column_stack([x0[:, :1], des.z_row, x0[:, 1:]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.OLS(d["log_time"].to_numpy(float), x).fit(
            cov_type=COV_TYPE, cov_kwds={"groups": des.codes}, use_t=True)
    fits["imputed_ols"] = str(fit.summary(xname=["const", "alignment", *names0[1:]],
                                          yname="log escape step (censored at max_steps)"))
    coef, p = float(fit.params[1]), float(fit.pvalues[1])
    lo, hi = (float(v) for v in np.asarray(fit.conf_int(alpha))[1])
    verdict, reason = _verdict(coef, p, alpha)
    row = {c: math.nan for c in TABLE_COLUMNS}
    row.update(fit="imputed_ols", term="alignment", measure=measure, predicted="negative",
               **counts, coef=coef, se=float(fit.bse[1]), ci_low=lo, ci_high=hi,
               ci_method="Wald, t(G-1)", test=f"OLS, CV3 cluster-robust, t with {counts['n_jobs'] - 1} df",
               statistic=float(fit.tvalues[1]), df=float(counts["n_jobs"] - 1), p=p,
               ratio=math.exp(coef), verdict=verdict, reason=reason)
    return [row]


def h3_test(escapes: pd.DataFrame, alignment: str = ALIGNMENT, alpha: float = 0.05,
            n_perm: int = 999, seed: int = 0, *, rate: str = RATE, min_jobs: int = 6,
            log_alignment: bool = False, sensitivity: bool = True, interval: bool = True
            ) -> H3Result:
    """Test H3 on the escapes table (:func:`load_escapes`; the module docstring has every
    rule).  ``alignment``: the column of the source minimum's alignment measure (primary:
    the top-k energy share); ``rate``: the η/B column; ``n_perm``: random within-strata
    permutations (all when fewer); ``min_jobs``: the fewest source minima for a verdict;
    ``sensitivity``: also the κ and imputed-OLS fits; ``interval``: invert the permutation
    test for the alignment's 95 % interval (≈ 25 refits).  Raises :class:`LandscopeError`
    when a needed column is missing."""
    d, notes = prepare(escapes, alignment, rate, log_alignment)
    notes = list(escapes.attrs.get("notes", [])) + notes
    if len(d) and d["log_eta_over_b"].nunique() < 2:
        notes.append(f"{rate} does not vary: it is not in the model")
    if len(d) and not np.all(np.isfinite(d["log_n_params"])):
        notes.append("no parameter count (n_params) for some minima: log D is not in the model")
    fits: dict[str, Any] = {}
    design: dict[str, Any] = {}
    measure = f"log {alignment}" if log_alignment else alignment
    rows = _aft_rows("primary", d, measure, alpha, n_perm, seed, min_jobs, interval, fits,
                     notes, design, covariates=True)
    if sensitivity:
        if LEGACY in escapes.columns and alignment != LEGACY:
            dk, _ = prepare(escapes, LEGACY, rate, log_alignment=True)
            rows += _aft_rows("kappa", dk, f"log {LEGACY}", alpha, n_perm, seed, min_jobs,
                              False, fits, notes, {}, covariates=False)
        rows += _ols_rows(d, measure, alpha, min_jobs, fits)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    n_cens = int((~d["escaped"]).sum()) if len(d) else 0
    if len(d) and n_cens:
        notes.append(f"{n_cens} of {len(d)} continuations censored at max_steps: the primary "
                     "fit treats them as censored (the imputed OLS counts them at max_steps)")
    prim = table[(table["fit"] == "primary") & (table["term"] == "alignment")].iloc[0]
    return H3Result(table=table, verdict=prim["verdict"],
                    reason=f"alignment coefficient: {prim['reason']}", alignment=measure,
                    data=d, alpha=alpha, fits=fits, notes=notes, design=design)


def h3_power(res: H3Result, effect: float = POWER_EFFECT, R: int = 200, n_perm: int = 199,
             seed: int = 0) -> dict[str, Any]:
    """Power of the primary test at a planted alignment coefficient ``effect`` (log
    escape-time factor per within-stratum sd), simulated from the fitted design of ``res``:
    the same minima, alignments, η/B, parameter counts and censoring points; each minimum's
    intercept from an AFT with one intercept per minimum (minima that never escaped left
    out), split into a log-D trend and a between-minima sd τ; σ, the η/B slope from that fit.
    Each of ``R`` datasets is tested as :func:`h3_test` does (no interval).  Returns power
    (the fraction "supported"), its Clopper–Pearson interval, R, effect, τ, σ; empty when
    the primary fit had no verdict."""
    from landscope.analysis.calibration.core import binomial_interval

    d = res.data
    prim = res.row("primary", "alignment")
    if not len(d) or not math.isfinite(prim["p"]):
        return {}
    des, _ = _design(d, int(res.design.get("min_jobs", 6)))
    if des is None:
        return {}
    ev = d["escaped"].to_numpy(bool)
    cap = d["log_cap"].to_numpy(float)
    if not np.all(np.isfinite(cap)):
        return {}
    x0, _ = _null_design(d, des)
    g = len(des.a_job)
    seen = np.bincount(des.codes, weights=ev.astype(float), minlength=g) > 0
    keep = seen[des.codes]
    fe_codes = pd.factorize(des.codes[keep])[0]
    dummies = np.eye(int(fe_codes.max()) + 1)[fe_codes]
    x_fe = np.column_stack([dummies, x0[keep][:, 1:2]]) if des.use_rate else dummies
    fe = sv.fit_aft(d["log_time"].to_numpy(float)[keep], x_fe, ev[keep])
    alpha_j = fe.params[:dummies.shape[1]]
    slope = float(fe.params[-1]) if des.use_rate else 0.0
    first = d.groupby(des.codes, sort=True).first()
    zx = np.column_stack([np.ones(g)] + ([first["log_n_params"].to_numpy(float)]
                                          if des.use_size else []))[seen]
    coef_j = np.linalg.lstsq(zx, alpha_j, rcond=None)[0]
    dof = max(len(alpha_j) - zx.shape[1], 1)
    tau = float(np.sqrt(np.sum((alpha_j - zx @ coef_j) ** 2) / dof))
    mean_j = np.column_stack([np.ones(g)] + ([first["log_n_params"].to_numpy(float)]
                                             if des.use_size else [])) @ coef_j
    rate_term = slope * d["log_eta_over_b"].to_numpy(float) if des.use_rate else 0.0
    z_job = des.z_row  # per row
    perms, exact = sv.strata_permutations(des.strata, n_perm, seed)
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(R):
        u = mean_j + tau * rng.standard_normal(g)
        y = u[des.codes] + rate_term + effect * z_job + fe.sigma * rng.standard_normal(len(d))
        esc = y <= cap
        if not esc.any():
            continue
        yy = np.where(esc, y, cap)
        full_coef = sv.fit_aft(yy, np.column_stack([x0[:, :1], z_job, x0[:, 1:]]), esc).params[1]
        test = sv.permutation_score_test(yy, x0, esc, des.codes, des.a_tilde, perms, exact)
        hits += bool(test.p < res.alpha and full_coef < 0)
    low, high = binomial_interval(hits, R)
    return {"power": hits / R, "low": low, "high": high, "R": R, "effect": effect,
            "tau": tau, "sigma": fe.sigma, "alpha": res.alpha}


# --------------------------------------------------------------------------- report
def plot_escape(data: pd.DataFrame, path: Path, alignment: str) -> Path:
    """Log escape step against the alignment, colored by log10(η/B); censored runs (at
    max_steps) as crosses.  Matplotlib's Agg backend; written atomically."""
    from landscope.plots import pyplot, save_png

    fig, ax = pyplot().subplots(figsize=(5.5, 4))
    try:
        c = np.log10(data["rate"].to_numpy(float))
        vmin, vmax = (float(c.min()), float(c.max())) if len(c) else (0.0, 1.0)
        esc = data["escaped"].to_numpy(bool)
        sc = None
        for mask, marker, label in ((esc, "o", "escaped"), (~esc, "x", "censored at max_steps")):
            if mask.any():
                sc = ax.scatter(data["alignment"].to_numpy(float)[mask],
                                data["log_time"].to_numpy(float)[mask], c=c[mask],
                                cmap="viridis", vmin=vmin, vmax=vmax, marker=marker, s=22,
                                alpha=0.8, label=label)
        if sc is not None:
            fig.colorbar(sc, ax=ax, label="log10(η/B)")
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(alignment)
        ax.set_ylabel("log escape step")
        ax.set_title("H3: escape time vs noise–curvature alignment", fontsize=10)
        fig.tight_layout()
    except BaseException:
        pyplot().close(fig)
        raise
    return save_png(fig, path)


def applies(ctx) -> bool:
    """True when a sweep directory of the report holds escape results."""
    return any(has_escapes(p) for p in ctx.paths)


_SHOWN = [("fit", "fit"), ("term", "term"), ("predicted", "predicted sign"), ("n", "n"),
          ("n_jobs", "jobs"), ("n_censored", "censored"), ("coef", "coef"),
          ("ci_low", "CI low"), ("ci_high", "CI high"), ("statistic", "t / z"),
          ("p", "p"), ("p_holm", "p (Holm)"), ("ratio", "exp(coef)"), ("std_beta", "std β"),
          ("verdict", "verdict")]


_SHOWN = [("fit", "fit"), ("term", "term"), ("measure", "measure"), ("predicted", "predicted sign"),
          ("n", "n"), ("n_jobs", "minima"), ("n_strata", "widths"), ("n_censored", "censored"),
          ("coef", "coef"), ("ci_low", "CI low"), ("ci_high", "CI high"),
          ("ci_method", "CI"), ("test", "test"), ("p", "p"), ("ratio", "exp(coef)"),
          ("verdict", "verdict")]


def evidence(res: H3Result, fit: str = "primary") -> str:
    """The verdict of one fit's alignment row with its evidence: estimate, interval, n of
    minima, the test and its calibration (:func:`~landscope.analysis.calibration.calibration_note`)."""
    from landscope.analysis.calibration import calibration_note

    r = res.row(fit, "alignment")
    if not math.isfinite(r["p"]):
        return f"{r['verdict']} ({r['reason']}; n = {r['n_jobs']} source minima)"
    ci = (f", 95 % CI [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] ({r['ci_method']})"
          if math.isfinite(r["ci_low"]) or math.isfinite(r["ci_high"]) else "")
    return (f"{r['verdict']}: coefficient {_fmt(r['coef'])} (escape time ×{_fmt(r['ratio'])} per "
            f"within-width sd of {r['measure']}){ci}, p = {_fmt(r['p'])}, "
            f"n = {r['n_jobs']} source minima in {_fmt(r['n_strata'])} width(s) "
            f"({r['n']} continuations, {r['n_censored']} censored); {r['test']}; "
            f"{calibration_note(TESTS[fit])}")


def section(ctx) -> None:
    """The H3 report section (a :class:`landscope.analysis.report.ReportContext`)."""
    from landscope.io import atomic_write_text

    doc = ctx.doc
    frames = [load_escapes(p) for p in ctx.paths if has_escapes(p)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["notes"] = [n for f in frames for n in f.attrs.get("notes", [])]
    if "noise" in df.columns and df["noise"].nunique() > 1:  # a noise comparison only:
        notes = df.attrs["notes"]  # the alignment test reads its plain-SGD runs
        df = df[df["noise"] == "sgd"].reset_index(drop=True)
        df.attrs["notes"] = notes
    doc.heading("H3: noise–curvature alignment predicts faster escape from sharp minima")
    try:
        res = h3_test(df)
    except LandscopeError as exc:
        doc.para(f"Not tested: {exc}")
        _noise_part(ctx)
        return
    doc.para(f"Verdict: {evidence(res)}.")
    doc.para(
        f"Model: censored log-normal accelerated-failure-time regression (maximum likelihood; "
        f"censored runs enter through their survival at max_steps) of the escape step on "
        f"z({res.alignment}), log(η/B) and log D (the source minimum's parameter count). The "
        f"source minima are the independent units: the alignment is tested by permuting its "
        f"values across minima within strata of equal parameter count (a permutation score "
        f"test), and its 95 % interval is the set of coefficients this test does not reject. "
        f"H3 (Zhu et al. 2019) predicts a negative alignment coefficient (and a negative η/B "
        f"coefficient, reported with cluster-robust errors and t on G−1 df). The energy share "
        f"is used rather than κ = tr(HΣ)/((trΣ/D)·trH), which grows with D and so measures "
        f"width; the normalized cosine tr(HΣ)/(‖H‖_F‖Σ‖_F) is not computable from the stored "
        f"probes (no ‖H‖_F). Sensitivity rows (not in the verdict): the same test on log κ "
        f"({evidence(res, 'kappa') if 'kappa' in set(res.table['fit']) else 'not available'}); "
        f"OLS with censored runs imputed at max_steps and CV3 errors "
        f"({evidence(res, 'imputed_ols') if 'imputed_ols' in set(res.table['fit']) else 'n/a'}).")
    power = h3_power(res)
    if power:
        doc.para(f"Power: at a planted alignment coefficient {power['effect']:g} (escape time "
                 f"×{math.exp(power['effect']):.2f} per within-width sd), simulated {power['R']} "
                 f"times from this design (same minima, alignments, η/B and censoring; "
                 f"between-minima sd τ = {power['tau']:.3g} and σ = {power['sigma']:.3g} from "
                 f"an AFT with one intercept per minimum), the test says supported in "
                 f"{100 * power['power']:.1f} % [{100 * power['low']:.1f}, "
                 f"{100 * power['high']:.1f}] of datasets at alpha = {power['alpha']:g}.")
    doc.para("Design caveat: these escapes are dynamical-instability exits when η·λmax > 2, not "
             "the noise-activated escapes Zhu et al. analyse. The design that isolates the noise "
             "structure (one minimum, η < 2/λmax, SGD noise against isotropic noise of equal "
             "trace and noise projected on the top-k Hessian eigendirections, paired within the "
             "minimum) is runner.escape's escape.noise setting (README, H3).")
    doc.frame(res.table, _SHOWN)
    for note in res.notes:
        doc.para(f"Note: {note}")
    atomic_write_text(ctx.out / "h3.csv", res.table.to_csv(index=False))
    if len(res.data):
        png = plot_escape(res.data, ctx.out / "figures" / "h3_escape.png", res.alignment)
        doc.image(png, "figures/h3_escape.png",
                  f"log escape step against {res.alignment}, colored by log10(η/B)")
    for fit, text in res.summaries.items():
        ctx.appendix.append((f"H3 {fit} fit", text))
    _noise_part(ctx)


def _noise_part(ctx) -> None:
    """The paired noise comparison (:mod:`~landscope.analysis.hypotheses.h3_noise`) when the
    sweeps hold one; nothing otherwise."""
    from landscope.analysis.hypotheses import h3_noise

    h3_noise.section_part(ctx)


SECTION = Section("H3: escape from sharp minima", applies, section, "H3")
