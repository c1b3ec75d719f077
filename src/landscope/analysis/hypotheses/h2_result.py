"""H2's result and table columns (:mod:`landscope.analysis.hypotheses.h2`): the test names,
:class:`H2Result` and :func:`row_evidence`, a table row as a verdict with its evidence."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from landscope.analysis.doc import short as _fmt
from landscope.analysis.hypotheses.paired import INCONCLUSIVE
from landscope.analysis.hypotheses.pairing import side_names

MEASURES = ("probe.lambda_max", "probe.trace", "probe.density_n_outliers",
            "probe.density_outlier_mass")
BARRIER = "linear_train_loss_barrier_mean"
PRIMARY = "probe.lambda_max"

# The names of the tests in the calibration suite (landscope.analysis.calibration.h2) and in
# the report's calibration phrases.
TEST_PRIMARY = "H2 primary λmax: Wilcoxon signed-rank over seeds (gate)"
TEST_SECONDARY = "H2 secondary per-job rows: Wilcoxon signed-rank, Holm after the gate"
TEST_BARRIER = "H2 barrier: seed jackknife t, Holm after the gate"
TEST_BARRIER_RAW = "H2 barrier: seed jackknife t at alpha (ungated)"
TEST_SIGN_FLIP_RAW = "H2 barrier: seed sign-flip at alpha (ungated, reported)"

COLUMNS = ["measure", "role", "test", "unit", "n", "n_on", "n_off", "estimator", "estimate",
           "ci_low", "ci_high", "ci_level", "median_diff", "mean_diff", "statistic", "p", "p_adj",
           "t_test", "t", "t_p", "cohens_d", "rank_biserial", "verdict", "reason"]


def _empty(measure: str, test: str, t_test: str, unit: str, estimator: str) -> dict[str, Any]:
    row = {c: math.nan for c in COLUMNS}
    row.update(measure=measure, role="", test=test, t_test=t_test, unit=unit, n=0, n_on=0,
               n_off=0, estimator=estimator, verdict=INCONCLUSIVE, reason="", ci_note="",
               _min_p=1.0)
    return row


@dataclass
class H2Result:
    """The outcome of :func:`h2_test` (one comparison)."""

    table: pd.DataFrame  # one row per measure (COLUMNS)
    verdict: str  # the primary measure's verdict
    reason: str
    factor: str
    primary: str
    keys: list[str]  # the config keys pairs agree on (besides the seed)
    pairs: pd.DataFrame  # keys, seed, job_on, job_off (one row per pair)
    unpaired: pd.DataFrame  # job, seed, factor value, reason (included jobs left out)
    alpha: float = 0.05
    notes: list[str] = field(default_factory=list)
    level: str | None = None  # the "on" level of a factor with levels (model.norm), else None
    off: str | None = None  # its "off" level ("none"), else None (a true/false factor)
    n_comparisons: int = 1  # k: each comparison is tested at alpha / k
    gate_open: bool = False  # the primary rejected, so the secondary rows were tested

    @property
    def comparison(self) -> str:
        """``model.skip: true vs false`` or ``model.norm: batch vs none``."""
        on, off = side_names(self.level, self.off)
        return f"{self.factor}: {on} vs {off}"

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def n_unpaired(self) -> int:
        return len(self.unpaired)

    def row(self, measure: str) -> pd.Series | None:
        hit = self.table[self.table["measure"] == measure]
        return None if hit.empty else hit.iloc[0]

    def evidence(self, measure: str | None = None, calibration: str = "") -> str:
        """A row's verdict with its evidence: ``"supported: Hodges–Lehmann on − off −2.1
        [96.1% CI −3.0, −1.2], n = 8 seeds (paired), Wilcoxon signed-rank p = 0.0078,
        p_adj = 0.0078 (primary, alpha 0.05)"`` plus ``calibration`` when given."""
        row = self.row(self.primary if measure is None else measure)
        if row is None:
            return f"{INCONCLUSIVE}: {measure or self.primary} was not tested"
        return row_evidence(row, self.alpha, calibration)

    def summary(self) -> str:
        """A few lines of text: the verdict, the pairing, then one line per measure."""
        what = f"{self.factor} on vs off" if self.level is None \
            else f"{self.factor}={self.level} vs {self.off}"
        lines = [f"H2 ({what} flattens the landscape): {self.verdict.upper()} "
                 f"- {self.reason}",
                 f"{self.n_pairs} pairs matched on seed"
                 + (f" and {', '.join(self.keys)}" if self.keys else "")
                 + f"; {self.n_unpaired} included jobs unpaired; primary {self.primary} at "
                 f"alpha/k = {self.alpha:g}/{self.n_comparisons}, secondary rows Holm after "
                 f"the gate ({'open' if self.gate_open else 'closed'})"]
        for row in self.table.itertuples(index=False):
            lines.append(f"  {row.measure} ({row.role}): " + row_evidence(pd.Series(
                row._asdict()), self.alpha) + (f" ({row.reason})" if row.reason else ""))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if math.isfinite(x) else "n/a"


def row_evidence(row: pd.Series, alpha: float = 0.05, calibration: str = "") -> str:
    """One table row as a verdict word plus its evidence (see :meth:`H2Result.evidence`)."""
    level = float(row["ci_level"]) if pd.notna(row["ci_level"]) else math.nan
    ci = (f"[{_pct(level)} CI {_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
          if pd.notna(row["ci_low"]) else "[no interval]")
    test = {"wilcoxon": "Wilcoxon signed-rank",
            "seed jackknife t": f"seed jackknife t ({max(int(row['n']) - 1, 0)} df)"}.get(
        row["test"], row["test"])
    unit = f"{int(row['n'])} {row['unit']}"
    if row["test"] == "seed jackknife t":
        unit += f" ({int(row['n_on'])} + {int(row['n_off'])} pairs of seeds)"
    adj = (f"p_adj = {_fmt(row['p_adj'])}" if pd.notna(row["p_adj"]) or row["role"] == "primary"
           else "not tested: gate closed")
    text = (f"{row['verdict']}: {row['estimator']} {_fmt(row['estimate'])} {ci}, n = {unit}, "
            f"{test} p = {_fmt(row['p'])}, {adj} ({row['role']}, alpha {alpha:g})")
    return text + (f"; {calibration}" if calibration else "")

