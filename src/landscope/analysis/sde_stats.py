"""The statistics of the SDE check (:mod:`landscope.analysis.sde`): one row per (sampling,
eta, B) cell of ``runner.sde`` results, its interval, the tests of the predictions, the
mixing diagnostics, the verdict, and the calibration of the test.

Units: every run is an independent unit (its own batch draws, a common start), so a cell's
count of runs ending on the sharp side is ``Binomial(n, p)`` exactly; cells are independent
of each other (different jobs, separate generators).

- Interval: Wilson's 95 % score interval for ``p_sharp``.
- Test of agreement: the exact two-sided binomial test of ``H0: p = p_pred`` (p-value: the
  total probability of the counts no more likely than the observed one, as
  :func:`scipy.stats.binomtest`), with Holm's step-down correction over the cells of the
  table (family-wise 5 %).  Once for the plan's Laplace prediction (the verdict), once for the
  exact Gibbs mass (the diagnosis).
- Mixing: ``steps / tau`` with ``tau`` the Eyring-Kramers relaxation time, and McNemar's exact
  test on the runs that changed side between half the steps and the end (they balance once
  the fraction has stopped changing).
- Verdict: ``holds`` when the Laplace test does not reject, the cell equilibrated and the
  exact Gibbs mass is not rejected either; ``holds by cancellation`` when the Laplace test
  does not reject but the exact Gibbs mass (the SDE's own law) is rejected: the step-size and
  Laplace errors cancel; otherwise ``breaks`` with the first reason that applies: ``runs
  diverged`` (some runs left every basin for good: non-finite parameters), ``not
  equilibrated`` (``steps < 3 tau`` or McNemar p < 0.05),
  ``step size`` (the exact Gibbs mass is rejected too: the discrete SGD is not the SDE at
  this ``eta lambda_max``; ``epoch sampling`` instead for reshuffled epochs, whose batch noise
  is not the SDE's independent noise), ``Laplace approximation`` (the exact Gibbs mass is not
  rejected: the SDE holds, its Laplace approximation does not, ``T`` is too large for the
  barrier).
  A ``holds`` cell that is not equilibrated is marked ``holds (not equilibrated)``: an
  agreement the theory does not explain.
- Calibration (:func:`calibrate`): counts drawn from ``Binomial(n_i, p_pred_i)`` (the
  prediction true by construction) with the table's own ``n_i`` and predictions; the Holm
  family's rejection rate should be <= 5 % within its binomial error, and the power is the
  rejection rate of one cell when its true fraction is moved by a stated amount.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

ALPHA = 0.05
MIN_RELAXATIONS = 3.0  # steps / tau below this: not equilibrated
Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a binomial proportion ``k / n``."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def binom_pvalues(n: int, p: float) -> np.ndarray:
    """The exact two-sided binomial p-value of every count ``0..n`` under ``p`` (the
    minimum-likelihood convention of :func:`scipy.stats.binomtest`, relative tolerance
    ``1 + 1e-7``)."""
    from scipy.stats import binom

    pmf = binom.pmf(np.arange(n + 1), n, p)
    order = np.argsort(pmf, kind="stable")
    cum = np.cumsum(pmf[order])
    # p(k) = sum of pmf[j] with pmf[j] <= pmf[k] (1 + 1e-7)
    pos = np.searchsorted(pmf[order], pmf * (1 + 1e-7), side="right")
    return np.minimum(1.0, np.where(pos > 0, cum[np.maximum(pos - 1, 0)], 0.0))


def holm(pvalues: Iterable[float], alpha: float = ALPHA) -> np.ndarray:
    """Holm's step-down rejections (bool) at family-wise level ``alpha`` (NaN: not tested)."""
    p = np.asarray(list(pvalues), dtype=float)
    reject = np.zeros(len(p), dtype=bool)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        if p[i] > alpha / (m - rank):
            break
        reject[i] = True
    return reject


def _mcnemar(switched: Any) -> float:
    a, b = (int(v) for v in switched)
    if a + b == 0:
        return 1.0
    return float(binom_pvalues(a + b, 0.5)[a])


def cell_rows(records: list[dict]) -> pd.DataFrame:
    """One row per cell of the ``runner.sde`` records, with interval and unadjusted tests."""
    rows = []
    for rec in records:
        steps = int(rec["settings"]["steps"])
        for c in rec["cells"]:
            n, k = int(c["runs"]) - int(c["diverged"]), int(c["sharp"])
            lo, hi = wilson(k, n)
            tau = float(c["relaxation_steps"])
            rows.append({
                "job": rec["job"], "sampling": c["sampling"], "eta": float(c["eta"]),
                "batch_size": int(c["batch_size"]), "t_eff": float(c["t_eff"]),
                "runs": n, "diverged": int(c["diverged"]), "steps": steps, "sharp": k,
                "observed": k / n if n else math.nan, "ci_low": lo, "ci_high": hi,
                "laplace": float(c["laplace"]), "gibbs": float(c["gibbs"]),
                "discrete": float(c["discrete"]), "barrier_over_t": float(c["barrier_over_t"]),
                "eta_lambda_max": float(c["eta_lambda_max"]),
                "steps_over_tau": steps / tau if tau > 0 else math.nan,
                "half_observed": c["sharp_at"][-2] / n if len(c["sharp_at"]) > 1 and n else
                math.nan, "mcnemar_p": _mcnemar(c["switched"]),
                "p_laplace": float(binom_pvalues(n, c["laplace"])[k]) if n else math.nan,
                "p_gibbs": float(binom_pvalues(n, c["gibbs"])[k]) if n else math.nan})
    cols = ["sampling", "eta", "batch_size"]
    return pd.DataFrame(rows).sort_values(cols, kind="stable").reset_index(drop=True) \
        if rows else pd.DataFrame()


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Add Holm rejections, the equilibration flag and the verdict (module docstring)."""
    t = table.copy()
    t["reject_laplace"] = holm(t["p_laplace"])
    t["reject_gibbs"] = holm(t["p_gibbs"])
    t["equilibrated"] = (t["steps_over_tau"] >= MIN_RELAXATIONS) & (t["mcnemar_p"] >= ALPHA)
    t["verdict"] = [_verdict(r) for r in t.itertuples()]
    return t


def _verdict(r: Any) -> str:
    if getattr(r, "diverged", 0) > 0:
        return "breaks: runs diverged"
    if not r.reject_laplace:
        if not r.equilibrated:
            return "holds (not equilibrated)"
        return "holds by cancellation" if r.reject_gibbs else "holds"
    if not r.equilibrated:
        return "breaks: not equilibrated"
    if r.reject_gibbs:
        return "breaks: epoch sampling" if r.sampling == "epoch" else "breaks: step size"
    return "breaks: Laplace approximation"


def calibrate(table: pd.DataFrame, reps: int = 4000, shift: float = 0.03,
              seed: int = 0) -> dict:
    """Rejection rates of the Holm-corrected Laplace test on counts simulated from the
    prediction (null: family-wise and per cell), and its power at one cell whose fraction is
    moved by ``shift`` (the others null), with the table's ``n`` and predictions."""
    rng = np.random.default_rng(seed)
    n = table["runs"].to_numpy(int)
    p = table["laplace"].to_numpy(float)
    pv = [binom_pvalues(int(ni), float(pi)) for ni, pi in zip(n, p)]
    null_any = null_cells = power = 0
    target = int(np.argmin(np.abs(p - 0.5)))
    moved = p.copy()
    moved[target] = min(max(p[target] + shift, 0.0), 1.0)
    for _ in range(reps):
        k = rng.binomial(n, p)
        rej = holm([pv[i][k[i]] for i in range(len(n))])
        null_any += bool(rej.any())
        null_cells += int(rej.sum())
        k = rng.binomial(n, moved)
        power += bool(holm([pv[i][k[i]] for i in range(len(n))])[target])
    se = math.sqrt(ALPHA * (1 - ALPHA) / reps)
    return {"reps": reps, "familywise": null_any / reps, "per_cell": null_cells / (reps * len(n)),
            "bound": ALPHA + 2 * se, "power": power / reps, "shift": shift,
            "power_cell_p": float(p[target]), "power_cell_n": int(n[target])}
