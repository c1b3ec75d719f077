"""H3's fits (:mod:`landscope.analysis.hypotheses.h3`, whose docstring gives every rule): the
rows fitted (:func:`prepare`), the design of the minima, the censored AFT with its permutation
score test, the imputed-OLS sensitivity fit and :func:`h3_test`."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pandas as pd
from scipy import stats

from landscope.analysis.hypotheses import survival as sv
from landscope.analysis.hypotheses.h3_result import (
    ALIGNMENT,
    COV_TYPE,
    COVARIATE,
    INCONCLUSIVE,
    LEGACY,
    RATE,
    TABLE_COLUMNS,
    H3Result,
    _empty,
    _verdict,
)
from landscope.errors import LandscopeError


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
        rows += _covariate_rows(name, names1, full, cr, counts, df_t, des, alpha)
    fits[name] = _aft_summary(name, measure, names1, full, cr, test, des)
    if name == "primary":
        design.update(mode=des.mode, n_perm=test.n_perm, exact=exact, strata=des.n_strata,
                      sigma=full.sigma, min_jobs=min_jobs)
    return rows


def _covariate_rows(name: str, names: list[str], full: sv.AFTFit, cr: np.ndarray,
                    counts: dict[str, Any], df_t: int, des: _Design, alpha: float
                    ) -> list[dict[str, Any]]:
    """The η/B and log D rows of an AFT fit: cluster-robust (CR1) Wald, t on G − 1 df; η/B
    has a predicted sign, log D is a covariate only."""
    rows = []
    tcrit = float(stats.t.ppf(0.975, df_t))
    for k, term in enumerate(names):
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
               ci_method="Wald, t(G-1)",
               test=f"OLS, CV3 cluster-robust, t with {counts['n_jobs'] - 1} df",
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
