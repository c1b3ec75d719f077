"""H1's names and result (:mod:`landscope.analysis.hypotheses.h1`): the verdict words, the
calibration suite's test names, the table columns and :class:`H1Result`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from landscope.analysis.doc import short as _fmt
from landscope.analysis.fixed_effects import seed_codes
from landscope.analysis.hypotheses.mediation import Effect, Mediation

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
DESIGN = ("optimizer.lr", "optimizer.rho")
# the calibration suite's test names (landscope.analysis.calibration.h1)
TESTS = {"verdict": "H1 supported", "a": "H1 step a", "indirect": "H1 indirect",
         "direct": "H1 direct", "b": "H1 b′"}
TABLE_COLUMNS = ["step", "relation", "effect", "effect_unit", "se", "df", "p", "ci_low",
                 "ci_high", "interval", "n", "n_seeds", "test", "calibration"]

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


def _ci(e: Effect) -> str:
    return f"{_fmt(e.estimate)} [{_fmt(e.ci_low)}, {_fmt(e.ci_high)}]"
