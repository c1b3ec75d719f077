"""H3 (issue #5): noise–curvature alignment predicts faster escape from sharp minima.

Zhu et al. 2019 ("The anisotropic noise in stochastic gradient descent: its behavior of
escaping from sharp minima and regularization effects", ICML) show that SGD escapes sharp
minima faster than isotropic noise of equal size because its covariance Σ concentrates in
the top Hessian eigendirections (indicator tr(HΣ)).  H3 asks whether, across minima, the
measured alignment predicts the escape time, over and above the noise scale η/B
(Jastrzebski et al. 2017, "Three factors influencing minima in SGD").

**Data.**  ``python -m runner.escape SWEEP`` continues every completed job of a sweep from
its final checkpoint (a sharp minimum, e.g. :file:`conf/experiment/h3_sharp.yaml`: full-batch
gradient descent) with plain SGD at several learning rates η and batch sizes B and a few
seeds, and records the escape step (:mod:`landscope.escape` defines it: the first evaluated
step where the train loss on a fixed subset exceeds ``L(θ0) + Δ``, confirmed over ``k``
evaluations; runs that do not escape by ``max_steps`` are censored).  :func:`load_escapes`
reads those files into one row per continuation, with the source job's probe scalars
(``probe.noise_alignment_ratio`` = κ = tr(HΣ)/((trΣ/D) trH), ``probe.noise_top_k_energy_share``,
...) from its ``result.json``.

**Test** (:func:`h3_test`).  Per continuation ``i`` of source job ``j``::

    log T_ij = b0 + b1 z_j + b2 log(η_i / B_i) + e_ij

``T`` is the escape step; ``z`` the alignment standardized over the rows used (mean 0, sd 1,
ddof 0; ``log_alignment=True`` takes its log first).  OLS (:class:`statsmodels.api.OLS`) with
**cluster-robust standard errors by source job**, because every continuation from one
minimum shares its alignment and its basin: ``cov_type="cluster-crv3"`` (CV3, the
jackknife-type cluster-robust covariance that MacKinnon, Nielsen & Webb 2023, "Cluster-robust
inference: a guide to empirical practice", recommend for few clusters) with ``use_t=True``
(t with G − 1 degrees of freedom for G jobs).  The alignment varies only between clusters,
which is where the usual CV1 (``cov_type="cluster"``) is liberal: in 300 null draws of the
design in the tests (12 jobs, 18 continuations each, a job random effect) CV1 rejected at
0.14 for a nominal 0.05, CV3 at 0.067.  The two
coefficients are tested two-sided; Holm's correction is applied across them (per fit).
H3 predicts **b1 < 0** (more alignment, faster escape) and **b2 < 0** (more noise, faster
escape).

**Censoring.**  Primary fit: a censored run enters with ``T = max_steps`` (its censoring
point, a lower bound of its escape time), so slow conditions are counted rather than
dropped; this compresses the slow end and usually attenuates the slopes, but it is not an
unbiased estimator.  Two sensitivity fits are reported alongside (not used in the verdict):
``uncensored`` (escaped runs only: no imputation, but it selects on the outcome) and ``cox``,
a Cox proportional-hazards model (:class:`statsmodels.duration.hazard_regression.PHReg`,
Breslow ties, robust covariance grouped by job) that treats censored runs as censored; its
coefficients are log hazard ratios, so H3 predicts them **positive** (higher escape hazard).

**Effect sizes.**  ``coef`` (log escape time per sd of alignment / per unit log(η/B)),
``ratio = exp(coef)`` (escape-time factor; hazard ratio for Cox) and ``std_beta`` = coef ·
sd(x) / sd(log T) (OLS).  **CI**: percentile bootstrap (``n_boot`` resamples of *source jobs*
with replacement, all their continuations kept; the standardization of the full sample is
kept fixed; resamples whose design is rank-deficient are skipped and counted) for the OLS
fits; Wald 95% CI from the robust covariance for Cox.

**Verdict** (the ``primary`` fit's alignment row; the other rows are reported, not combined):

* ``inconclusive`` when fewer than ``min_jobs`` source jobs (clusters) have usable rows
  (cluster-robust errors are unreliable with few clusters), when the alignment takes fewer
  than 3 distinct values, when no run escaped, or when the fit is undefined;
* ``supported`` when the Holm-corrected p < ``alpha`` and the coefficient has the predicted
  sign (negative for OLS);
* ``not supported`` when Holm p < ``alpha`` with the opposite sign (evidence against H3);
* ``inconclusive`` otherwise (not significant: absence of evidence, no equivalence test).

**Measured** (``experiment=h3_sharp``: 12 full-batch minima, MLP widths 32/64/128 × 4 seeds,
train loss 0.02; ``runner.escape`` defaults: 324 continuations, 117 censored; 2-core CPU,
sweep 9.9 min and escapes 3.3 min wall, both slowed by other processes): primary alignment
coefficient +0.175 per sd of κ (escape time ×1.19), CV3 t = 2.05, Holm p = 0.065, bootstrap
CI [0.053, 0.314] → inconclusive; log(η/B) −1.50 (p ≈ 1e-16, supported).  Sensitivity fits
go against H3 (uncensored +0.124, p = 0.016; Cox log hazard ratio −0.20, p = 0.002).
Caveats: κ = tr(HΣ)/((trΣ/D) trH) grows with the parameter count D, so across widths it
mostly tracks width (κ ≈ 90-130 at width 32, 370-550 at 64, 1380-1660 at 128; the top-5
energy share barely varies, 0.36-0.51); and the escapes are fast, dynamical-instability
exits (median 2-14 steps per (η, B) cell where they happen; 7 of the 9 cells escape
always or never, the other two in 94% and 81% of runs), not the slow noise-activated
escapes of Zhu et al.'s analysis.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from landscope.analysis.doc import short as _fmt
from landscope.analysis.hypotheses.paired import holm
from landscope.errors import LandscopeError

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
ALIGNMENT = "probe.noise_alignment_ratio"
RATE = "eta_over_b"
COV_TYPE = "cluster-crv3"  # statsmodels' CV3 cluster-robust covariance (module docstring)
ESCAPE_DIR = "escape"  # <job>/escape/<settings fingerprint>.json (runner.escape)
TERMS = ("alignment", "log_eta_over_b")
FITS = ("primary", "uncensored", "cox")
TABLE_COLUMNS = ["fit", "term", "predicted", "n", "n_jobs", "n_escaped", "n_censored", "coef",
                 "se", "statistic", "df", "p", "p_holm", "ci_low", "ci_high", "ci_method",
                 "ratio", "std_beta", "verdict", "reason"]
ROW_COLUMNS = ["sweep", "job", "settings", "seed", "job_seed", "lr", "batch_size", "eta_over_b",
               "escaped", "escape_step", "radius_step", "diverged", "max_steps", "eval_every",
               "steps_run", "loss0", "threshold"]


@dataclass
class H3Result:
    """The outcome of :func:`h3_test`."""

    table: pd.DataFrame  # one row per (fit, term): TABLE_COLUMNS
    verdict: str  # the primary fit's alignment verdict
    reason: str
    alignment: str
    data: pd.DataFrame  # the rows used: job, escaped, time, log_time, z_alignment, log_eta_over_b
    alpha: float = 0.05
    fits: dict[str, Any] = field(default_factory=dict)  # fit name -> (statsmodels result, xname)
    notes: list[str] = field(default_factory=list)

    @property
    def summaries(self) -> dict[str, str]:
        """The statsmodels summary text of each fit (rendered on demand: ~30 ms each)."""
        out = {}
        for name, (fit, xname) in self.fits.items():
            out[name] = str(fit.summary(xname=xname, yname="log escape step")) \
                if name != "cox" else str(fit.summary(xname=xname))
        return out

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
                 f"{self.n_censored} censored; Holm per fit, alpha={self.alpha:g}"]
        for r in self.table.itertuples(index=False):
            lines.append(f"  {r.fit}/{r.term}: n={r.n} coef={_fmt(r.coef)} se={_fmt(r.se)} "
                         f"[{r.ci_method} CI {_fmt(r.ci_low)}, {_fmt(r.ci_high)}] "
                         f"stat={_fmt(r.statistic)} p={_fmt(r.p)} p_holm={_fmt(r.p_holm)} "
                         f"ratio={_fmt(r.ratio)} -> {r.verdict}"
                         + (f" ({r.reason})" if r.reason else ""))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------- loading
def _job_dirs(path: Path) -> list[Path]:
    if (path / ESCAPE_DIR).is_dir() and (path / "result.json").is_file():
        return [path]
    return sorted({p.parent.parent for p in path.glob(f"*/{ESCAPE_DIR}/*.json")})


def has_escapes(path: str | Path) -> bool:
    """True when ``path`` (a sweep or a job directory) holds escape results."""
    path = Path(path)
    return any((j / ESCAPE_DIR).glob("*.json") for j in _job_dirs(path)) if path.is_dir() \
        else False


def _probe_scalars(job: Path) -> tuple[dict[str, Any], Optional[int]]:
    try:
        result = json.loads((job / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, None
    probes = result.get("probes") if isinstance(result, dict) else None
    out = {}
    if isinstance(probes, dict):
        for k, v in probes.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"probe.{k}"] = float(v)
            elif v is None:
                out[f"probe.{k}"] = math.nan
    seed = result.get("seed") if isinstance(result, dict) else None
    return out, seed


def load_escapes(sweep_dir: str | Path, settings: Optional[str] = None) -> pd.DataFrame:
    """One row per continuation of ``SWEEP/*/escape/<fingerprint>.json`` (or of one job
    directory): :data:`ROW_COLUMNS` (``seed`` is the continuation seed, ``job_seed`` the
    source job's), ``time`` (escape step, or ``max_steps`` when censored), and every numeric
    probe scalar of the job's ``result.json`` as ``probe.*`` (NaN when absent).

    ``settings``: the fingerprint to read (the file stem).  Default: when the jobs hold
    results of several settings, the fingerprint found in the most jobs (ties: the
    alphabetically first); the choice and the files left out are in ``df.attrs["notes"]``.
    Incomplete files (an interrupted run) are left out and noted.  Raises
    :class:`LandscopeError` when there are no escape results."""
    root = Path(sweep_dir)
    jobs = _job_dirs(root) if root.is_dir() else []
    files = [(job, p) for job in jobs for p in sorted((job / ESCAPE_DIR).glob("*.json"))]
    if not files:
        raise LandscopeError(f"no escape results in {root}: run python -m runner.escape "
                             f"{root} first")
    notes: list[str] = []
    records = []
    for job, path in files:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rec, dict) or not isinstance(rec.get("runs"), list):
                raise ValueError("no runs")
        except (OSError, ValueError) as exc:
            notes.append(f"unreadable {path.relative_to(root) if root in path.parents else path}"
                         f" ({type(exc).__name__})")
            continue
        if not rec.get("complete", False):
            notes.append(f"incomplete (interrupted) escape results left out: {job.name}/"
                         f"{path.name}")
            continue
        records.append((job, path.stem, rec))
    if not records:
        raise LandscopeError(f"no complete escape results in {root}"
                             + (f" ({'; '.join(notes)})" if notes else ""))
    counts: dict[str, int] = {}
    for _, fp, _ in records:
        counts[fp] = counts.get(fp, 0) + 1
    if settings is None:
        settings = sorted(counts, key=lambda k: (-counts[k], k))[0]
        if len(counts) > 1:
            notes.append(f"{len(counts)} escape settings in {root.name}; using {settings} "
                         f"({counts[settings]} jobs), leaving out "
                         + ", ".join(f"{k} ({v} jobs)" for k, v in counts.items() if k != settings))
    elif settings not in counts:
        raise LandscopeError(f"no escape results with settings {settings} in {root} (found "
                             f"{', '.join(sorted(counts))})")
    rows = []
    sweep_name = root.name
    for job, fp, rec in records:
        if fp != settings:
            continue
        probes, job_seed = _probe_scalars(job)
        for run in rec["runs"]:
            lr, b = float(run["lr"]), int(run["batch_size"])
            escaped = bool(run["escaped"])
            max_steps = int(run["max_steps"])
            step = run.get("escape_step")
            rows.append({"sweep": sweep_name, "job": job.name, "settings": fp,
                         "seed": int(run["seed"]), "job_seed": job_seed, "lr": lr,
                         "batch_size": b, "eta_over_b": lr / b, "escaped": escaped,
                         "escape_step": float(step) if step is not None else math.nan,
                         "radius_step": float(run["radius_step"])
                         if run.get("radius_step") is not None else math.nan,
                         "diverged": bool(run.get("diverged", False)), "max_steps": max_steps,
                         "eval_every": int(run["eval_every"]), "steps_run": int(run["steps_run"]),
                         "loss0": run.get("loss0"), "threshold": run.get("threshold"),
                         "time": float(step) if escaped else float(max_steps), **probes})
    df = pd.DataFrame(rows)
    for col in ROW_COLUMNS:
        if col not in df.columns:
            df[col] = math.nan
    df.attrs["notes"] = notes
    return df


# --------------------------------------------------------------------------- statistics
def _empty_rows(fit: str, reason: str, predicted: str, n: int = 0, n_jobs: int = 0,
                n_escaped: int = 0, n_censored: int = 0, terms: Sequence[str] = TERMS
                ) -> list[dict[str, Any]]:
    rows = []
    for term in terms:
        row = {c: math.nan for c in TABLE_COLUMNS}
        row.update(fit=fit, term=term, predicted=predicted, n=n, n_jobs=n_jobs,
                   n_escaped=n_escaped, n_censored=n_censored,
                   ci_method="bootstrap" if fit != "cox" else "wald",
                   verdict=INCONCLUSIVE, reason=reason)
        rows.append(row)
    return rows


def _cluster_codes(jobs: pd.Series) -> np.ndarray:
    return pd.factorize(jobs.astype(str))[0]


def ols_fit(y: np.ndarray, x: np.ndarray, groups: np.ndarray):
    """The statsmodels OLS of ``y`` on ``[1, x]`` with the CV3 cluster-robust covariance by
    ``groups`` and t inference (G − 1 df): exactly what :func:`h3_test` reports."""
    import statsmodels.api as sm

    return sm.OLS(y, sm.add_constant(x, has_constant="add")).fit(
        cov_type=COV_TYPE, cov_kwds={"groups": groups}, use_t=True)


def _bootstrap(y: np.ndarray, x: np.ndarray, groups: np.ndarray, n_boot: int, seed: int
               ) -> tuple[np.ndarray, int]:
    """Coefficients (n_boot x p, without the constant) of OLS refits on resampled clusters;
    rank-deficient resamples are NaN rows. Returns (coefs, n_skipped)."""
    design = np.column_stack([np.ones(len(y)), x])
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    g = len(members)
    rng = np.random.default_rng(seed)
    out = np.full((n_boot, x.shape[1]), np.nan)
    skipped = 0
    for b in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, g, size=g)])
        a = design[idx]
        if np.linalg.matrix_rank(a) < a.shape[1]:
            skipped += 1
            continue
        out[b] = np.linalg.lstsq(a, y[idx], rcond=None)[0][1:]
    return out, skipped


def _verdict(row: dict[str, Any], alpha: float) -> tuple[str, str]:
    if row["reason"]:
        return INCONCLUSIVE, row["reason"]
    p, coef = row["p_holm"], row["coef"]
    if not (math.isfinite(p) and math.isfinite(coef)):
        return INCONCLUSIVE, "fit undefined"
    want_negative = row["predicted"] == "negative"
    agrees = coef < 0 if want_negative else coef > 0
    if p < alpha and coef != 0 and agrees:
        return SUPPORTED, f"{row['predicted']} as predicted (Holm p={p:.3g} < {alpha:g})"
    if p < alpha and coef != 0:
        return NOT_SUPPORTED, (f"{'positive' if want_negative else 'negative'}, against the "
                               f"prediction (Holm p={p:.3g} < {alpha:g})")
    return INCONCLUSIVE, f"not significant (Holm p={p:.3g} >= {alpha:g})"


def _ols_rows(name: str, d: pd.DataFrame, terms: list[str], min_jobs: int, n_boot: int,
              seed: int, fits: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
    n, n_jobs = len(d), int(d["job"].nunique())
    n_esc = int(d["escaped"].sum())
    counts = dict(n=n, n_jobs=n_jobs, n_escaped=n_esc, n_censored=n - n_esc)
    if n_jobs < min_jobs:
        return _empty_rows(name, f"too few source jobs: {n_jobs} < min_jobs={min_jobs} "
                           "(cluster-robust errors need clusters)", "negative", terms=terms,
                           **counts)
    if n_esc == 0:
        return _empty_rows(name, "no run escaped (every run censored)", "negative",
                           terms=terms, **counts)
    if d["z_alignment"].nunique() < 3:
        return _empty_rows(name, "the alignment takes fewer than 3 distinct values",
                           "negative", terms=terms, **counts)
    y = d["log_time"].to_numpy(float)
    if np.std(y) == 0:
        return _empty_rows(name, "log escape time does not vary", "negative", terms=terms,
                           **counts)
    cols = ["z_alignment" if t == "alignment" else "log_eta_over_b" for t in terms]
    x = d[cols].to_numpy(float)
    groups = _cluster_codes(d["job"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ols_fit(y, x, groups)
    fits[name] = (fit, ["const", *terms])
    boot, skipped = _bootstrap(y, x, groups, n_boot, seed) if n_boot > 0 else \
        (np.full((0, len(terms)), np.nan), 0)
    if skipped:
        notes.append(f"{name}: {skipped} of {n_boot} bootstrap resamples rank-deficient, "
                     "skipped")
    rows = []
    sd_y = float(np.std(y))
    for k, term in enumerate(terms):
        row = {c: math.nan for c in TABLE_COLUMNS}
        coef = float(fit.params[k + 1])
        b = boot[:, k][np.isfinite(boot[:, k])]
        row.update(fit=name, term=term, predicted="negative", **counts,
                   coef=coef, se=float(fit.bse[k + 1]), statistic=float(fit.tvalues[k + 1]),
                   df=float(fit.df_resid_inference) if getattr(fit, "df_resid_inference", None)
                   is not None else float(n_jobs - 1),
                   p=float(fit.pvalues[k + 1]), ci_method="bootstrap",
                   ci_low=float(np.percentile(b, 2.5)) if len(b) else math.nan,
                   ci_high=float(np.percentile(b, 97.5)) if len(b) else math.nan,
                   ratio=math.exp(coef), std_beta=coef * float(np.std(x[:, k])) / sd_y,
                   verdict=INCONCLUSIVE, reason="")
        rows.append(row)
    return rows


def _cox_rows(d: pd.DataFrame, terms: list[str], min_jobs: int, fits: dict[str, Any]
              ) -> list[dict[str, Any]]:
    n, n_jobs, n_esc = len(d), int(d["job"].nunique()), int(d["escaped"].sum())
    counts = dict(n=n, n_jobs=n_jobs, n_escaped=n_esc, n_censored=n - n_esc)
    if n_jobs < min_jobs:
        return _empty_rows("cox", f"too few source jobs: {n_jobs} < min_jobs={min_jobs}",
                           "positive", terms=terms, **counts)
    if n_esc == 0:
        return _empty_rows("cox", "no run escaped (every run censored)", "positive",
                           terms=terms, **counts)
    if d["z_alignment"].nunique() < 3:
        return _empty_rows("cox", "the alignment takes fewer than 3 distinct values",
                           "positive", terms=terms, **counts)
    from scipy import stats
    from statsmodels.duration.hazard_regression import PHReg

    cols = ["z_alignment" if t == "alignment" else "log_eta_over_b" for t in terms]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = PHReg(d["time"].to_numpy(float), d[cols].to_numpy(float),
                        status=d["escaped"].to_numpy(int), ties="breslow").fit(
                groups=_cluster_codes(d["job"]))
        params, bse = np.asarray(fit.params, float), np.asarray(fit.bse, float)
        fits["cox"] = (fit, list(terms))
    except Exception as exc:  # noqa: BLE001 - a failed sensitivity fit is a reason
        return _empty_rows("cox", f"Cox fit failed: {type(exc).__name__}", "positive",
                           terms=terms, **counts)
    rows = []
    for k, term in enumerate(terms):
        row = {c: math.nan for c in TABLE_COLUMNS}
        z = params[k] / bse[k] if bse[k] > 0 else math.nan
        row.update(fit="cox", term=term, predicted="positive", **counts, coef=float(params[k]),
                   se=float(bse[k]), statistic=float(z), df=math.nan,
                   p=float(2 * stats.norm.sf(abs(z))) if math.isfinite(z) else math.nan,
                   ci_method="wald", ci_low=float(params[k] - 1.959963984540054 * bse[k]),
                   ci_high=float(params[k] + 1.959963984540054 * bse[k]),
                   ratio=math.exp(params[k]), verdict=INCONCLUSIVE, reason="")
        rows.append(row)
    return rows


def prepare(escapes: pd.DataFrame, alignment: str = ALIGNMENT, rate: str = RATE,
            log_alignment: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The rows :func:`h3_test` fits: ``job``, ``escaped``, ``time`` (escape step, or
    ``max_steps`` when censored), ``log_time``, ``alignment`` (raw), ``z_alignment``,
    ``log_eta_over_b``; rows without a finite positive time, alignment or rate are left out
    (counted in the notes)."""
    for col in ("job", "escaped", "escape_step", "max_steps", rate):
        if col not in escapes.columns:
            raise LandscopeError(f"H3: no column {col!r} in the escapes table")
    if alignment not in escapes.columns:
        raise LandscopeError(f"H3: no column {alignment!r} in the escapes table (run the "
                             "source jobs with probe=standard, which measures noise alignment)")
    notes = []
    escaped = escapes["escaped"].astype(bool).to_numpy()
    step = pd.to_numeric(escapes["escape_step"], errors="coerce").to_numpy(float)
    cap = pd.to_numeric(escapes["max_steps"], errors="coerce").to_numpy(float)
    time = np.where(escaped, step, cap)
    a = pd.to_numeric(escapes[alignment], errors="coerce").to_numpy(float)
    r = pd.to_numeric(escapes[rate], errors="coerce").to_numpy(float)
    if log_alignment:
        with np.errstate(divide="ignore", invalid="ignore"):
            a = np.where(a > 0, np.log(np.where(a > 0, a, 1.0)), np.nan)
    ok = np.isfinite(time) & (time > 0) & np.isfinite(a) & np.isfinite(r) & (r > 0)
    if (~ok).any():
        notes.append(f"{int((~ok).sum())} continuations without a finite positive escape time, "
                     f"{'log ' if log_alignment else ''}alignment or {rate} left out")
    d = pd.DataFrame({"job": escapes["job"].astype(str).to_numpy()[ok], "escaped": escaped[ok],
                      "time": time[ok], "alignment": a[ok], "rate": r[ok]})
    d["log_time"] = np.log(d["time"])
    sd = float(d["alignment"].std(ddof=0)) if len(d) else 0.0
    d["z_alignment"] = (d["alignment"] - d["alignment"].mean()) / sd if sd > 0 else 0.0
    d["log_eta_over_b"] = np.log(d["rate"])
    return d, notes


def h3_test(escapes: pd.DataFrame, alignment: str = ALIGNMENT, alpha: float = 0.05,
            n_boot: int = 2000, seed: int = 0, *, rate: str = RATE, min_jobs: int = 6,
            log_alignment: bool = False, sensitivity: bool = True) -> H3Result:
    """Test H3 on the escapes table (:func:`load_escapes`; see the module docstring for
    every rule).  ``alignment``: the column of the source job's alignment measure;
    ``rate``: the η/B column; ``min_jobs``: the fewest source jobs (clusters) for a verdict;
    ``sensitivity``: also fit the uncensored-only OLS and the Cox model.  Raises
    :class:`LandscopeError` when a needed column is missing."""
    d, notes = prepare(escapes, alignment, rate, log_alignment)
    notes = list(escapes.attrs.get("notes", [])) + notes
    terms = list(TERMS)
    if len(d) and d["log_eta_over_b"].nunique() < 2:
        terms = ["alignment"]
        notes.append(f"{rate} does not vary: only the alignment is in the model")
    fits: dict[str, Any] = {}
    rows = _ols_rows("primary", d, terms, min_jobs, n_boot, seed, fits, notes)
    if sensitivity:
        rows += _ols_rows("uncensored", d[d["escaped"]], terms, min_jobs, n_boot, seed,
                          fits, notes)
        rows += _cox_rows(d, terms, min_jobs, fits)
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table["p_holm"] = np.nan
    for fit in table["fit"].unique():
        sel = table["fit"] == fit
        table.loc[sel, "p_holm"] = holm(table.loc[sel, "p"].to_numpy(float))
    verdicts = [_verdict(r, alpha) for r in table.to_dict("records")]
    table["verdict"] = [v for v, _ in verdicts]
    table["reason"] = [r for _, r in verdicts]
    n_cens = int((~d["escaped"]).sum()) if len(d) else 0
    if len(d) and n_cens / len(d) > 0.5:
        notes.append(f"{n_cens} of {len(d)} continuations censored at max_steps: the primary "
                     "fit imputes max_steps for them; read the Cox row (which treats them as "
                     "censored) before trusting the slope")
    prim = table[(table["fit"] == "primary") & (table["term"] == "alignment")].iloc[0]
    verdict, reason = prim["verdict"], f"alignment coefficient: {prim['reason']}"
    return H3Result(table=table, verdict=verdict, reason=reason, alignment=alignment, data=d,
                    alpha=alpha, fits=fits, notes=notes)


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


def section(ctx) -> None:
    """The H3 report section (a :class:`landscope.analysis.report.ReportContext`)."""
    from landscope.io import atomic_write_text

    doc = ctx.doc
    frames = [load_escapes(p) for p in ctx.paths if has_escapes(p)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["notes"] = [n for f in frames for n in f.attrs.get("notes", [])]
    doc.heading("H3: noise–curvature alignment predicts faster escape from sharp minima")
    try:
        res = h3_test(df)
    except LandscopeError as exc:
        doc.para(f"Not tested: {exc}")
        return
    doc.para(
        f"Verdict: {res.verdict} ({res.reason}). {len(res.data)} SGD continuations from "
        f"{res.n_jobs} minima ({res.n_censored} censored at max_steps). Model: log escape step "
        f"= b0 + b1·z({res.alignment}) + b2·log(η/B), OLS with cluster-robust (CV3) standard "
        f"errors by source job (t with G−1 df); two-sided p-values, Holm-corrected across the "
        f"two coefficients of each fit; 95% CI: percentile bootstrap over source jobs (Wald for "
        f"Cox). H3 (Zhu et al. 2019) predicts b1 < 0 and b2 < 0. Primary fit: censored runs "
        f"count at max_steps; sensitivity fits: escaped runs only, and a Cox model with "
        f"censoring (log hazard ratios, predicted positive). Escape: first evaluated step "
        f"where the train loss on a fixed subset exceeds L(θ0) + Δ (landscope.escape); "
        f"effect: exp(coef) is the escape-time factor per sd of alignment (per unit "
        f"log(η/B)), the hazard ratio for Cox.")
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
