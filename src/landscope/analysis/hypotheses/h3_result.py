"""H3's names, table columns and result (:mod:`landscope.analysis.hypotheses.h3`): the verdict
words, the test names the report quotes, :class:`H3Result` and a fit's verdict."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from landscope.analysis.doc import short as _fmt

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
