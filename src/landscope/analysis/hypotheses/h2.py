"""H2 (issue #5): skip connections (and normalization) flatten the loss landscape.

Design: jobs that agree on every other swept config key and on the seed, and differ only in
the factor (``model.skip`` by default, ``True`` vs ``False``), form a pair. For each curvature
measure (λmax, Hessian trace, number and mass of the spectral outliers by default) the paired
difference is ``d = on − off``; a lower value is flatter, so a **negative** difference
supports H2.

Normalization is the factor ``model.norm``, which has levels rather than true/false: ``off``
is ``none`` (:data:`~landscope.analysis.hypotheses.pairing.OFF_LEVELS`) and ``on`` is one
normalization level (``batch`` or ``layer``), given as ``level=``. Each level is its own
comparison against ``none`` (jobs at the other levels are not part of it, and are not counted
as unpaired), paired exactly as for skip: by seed and every other swept setting
(``model.skip`` included when it is swept too). :func:`h2_comparisons` lists the comparisons
a jobs table supports and :func:`h2_tests` runs several at once (what the report shows);
:func:`h2_table` stacks their tables with a ``comparison`` column.

The sweeps are :file:`conf/experiment/h2_skip.yaml` (16 jobs: ``model.skip`` × 8 seeds,
6-layer MLP of width 64 on mnist1d, ``probe=standard``, 20 epochs; about 2.5 min with
``hydra/launcher=parallel`` on 2 CPU cores) and :file:`conf/experiment/h2_norm.yaml`
(``model.norm`` = none, batch, layer × 10 seeds, skip off). Caveat: with SGD at lr 0.1 both
variants may end near the stability limit 2/lr = 20, and the plain network trains much worse in
20 epochs, so λmax compares edge-of-stability dynamics and unequal train losses as much as
architecture.

**Units.** The unit of replication is the seed. A per-job row has one paired difference per
seed (n = pairs = seeds: the paired tests below are right there). A barrier row has one value
per *pair of seeds* within an arm (8 seeds → 28 pairs per arm), and each model enters n − 1 of
them, so the pairs are **not** independent: a model that sits in an odd basin raises every
barrier it is part of. The barrier row is therefore tested at the seed level (below) and
reports n = seeds, never n = pairs. (Measured with the calibration suite,
:mod:`landscope.analysis.calibration.h2`: the former Wilcoxon over the 28 matched pairs of
seeds rejected about half of the null datasets whose models carry their own basin effect.)

**Per-job rows** (one row of :attr:`H2Result.table` per measure,
:func:`~landscope.analysis.hypotheses.paired.paired_rank_stats`):

- ``test`` = ``wilcoxon``: :func:`scipy.stats.wilcoxon` on ``d``, two-sided, zero differences
  dropped, exact for small n without ties; ``statistic`` = min(T+, T−), ``p`` its p-value;
- ``estimate`` = the Hodges–Lehmann estimate of the shift (median of the Walsh averages of
  ``d``), ``ci_low``/``ci_high`` = the interval that inverts the same test (sorted Walsh
  averages at the exact critical value; Hollander & Wolfe §3.3), ``ci_level`` its exact
  coverage (≥ 95 %, e.g. 96.1 % for 8 pairs). With 5 pairs no 95 % interval exists (the
  smallest two-sided p is 2/2^5 = 0.0625): the row gives [min d, max d] with its 93.75 %
  coverage and says so in ``ci_note``. This replaces the percentile bootstrap of the median,
  which undercovers with a handful of pairs (it cannot reach outside the observed values);
- ``median_diff``, ``mean_diff`` of ``d``; ``t_test`` = ``paired t``
  (:func:`scipy.stats.ttest_rel`, ``t``, ``t_p``) reported, not used; effect sizes
  ``cohens_d`` (d_z = mean/sd of d) and ``rank_biserial`` ((T+ − T−)/(T+ + T−), Kerby 2014).

**Barrier row** ``connectivity.<barrier column>`` (:func:`barrier_row`, :func:`seed_jackknife`):
the estimate is θ = mean barrier with the factor on − mean barrier with it off (each mean over
the pairs of seeds of its arm); the test is a **delete-one-seed jackknife** t: θ₍₋ₛ₎ drops
every pair that contains seed s (in both arms), SE² = (n−1)/n · Σₛ (θ₍₋ₛ₎ − θ̄₍₋₎)², t = θ/SE
on n − 1 degrees of freedom for n seeds; ``ci_low``/``ci_high`` = θ ± t₀.₉₇₅,ₙ₋₁·SE. Why
this one: θ is a U-statistic of degree 2 in the seeds; for barriers that are additive in
model effects, B(i, j) = μ + uᵢ + uⱼ + eᵢⱼ, the jackknife pseudo-values nθ − (n−1)θ₍₋ₛ₎ are
θ + 2(u_s,on − u_s,off) + a centred noise term, i.e. one value per seed, so the test is a
one-sample t-test on n seed-level values (exact for normal model effects without pair noise,
and conservative for the pair noise eᵢⱼ, whose variance the jackknife overstates; Efron &
Stein 1981). It needs no model fit (a crossed random-effects model (model_a, model_b) with 8
seeds estimates its variance components poorly and needs Satterthwaite df), works when the
arms have different seeds or missing pairs, and gives a continuous p-value (a sign-flip test
over 8 seeds cannot go below 2/256). The exact sign-flip permutation p of the pseudo-values
(:func:`~landscope.analysis.hypotheses.paired.sign_flip_p`, all 2^n patterns) is reported
beside it (``t_test`` = ``seed sign-flip``, ``t_p``), not used. ``n`` = seeds, ``n_on`` /
``n_off`` = pairs of seeds per arm. Barrier frames need ``seed_a`` and ``seed_b``
(:func:`load_barriers` has them); fewer than 3 seeds → inconclusive. Calibration (R = 200,
8 seeds, every model adding its own Exponential basin to each of its 7 barriers): 4.0 %
ungated under the null, where the Wilcoxon over the 28 pairs rejected 47 %. Known limit: when
the seed-level differences are strongly skewed (equal mean barrier, but exponential basins in
one arm and normal in the other) the t on 7 df is anti-conservative (7-11 % ungated; 2.5-5.8 %
behind the gate); no test of a mean from 8 skewed values is exact.

**Gatekeeping** (one declared primary measure, λmax by default; ``primary=``): with k
comparisons (1 for ``h2_skip``; one per normalization level for ``h2_norm``) each comparison
gets alpha/k (Bonferroni), and within it the primary is tested first at alpha/k; only when it
rejects (either direction) is the gate open and the secondary rows (the other measures and the
barrier) are tested, Holm among them at alpha/k. ``p_adj`` is the adjusted p-value on the
alpha scale (primary: k·p; secondary: k·Holm p, NaN when the gate is closed); ``role`` says
``primary`` or ``secondary``. This serial gatekeeping holds the family-wise error rate at
alpha over every row of the section (Dmitrienko & Tamhane 2007). With k = 1, Wilcoxon needs 6
pairs for the primary (2/2^6 < 0.05) and 8 for a secondary (4 · 2/2^8 < 0.05), hence 8 seeds in
``h2_skip``; with k = 2, 7 and 9, hence 10 seeds in ``h2_norm``.

``verdict`` and ``reason`` per row:

* ``inconclusive`` when the test cannot reach p < alpha/k at all (too few pairs: the reason
  gives the smallest possible p), when the gate is closed (secondary rows: "not tested"), or
  when ``p_adj`` ≥ alpha (absence of evidence, not evidence of no effect);
* ``supported`` when ``p_adj`` < alpha and the estimate is negative (flatter with the factor);
* ``not supported`` when ``p_adj`` < alpha and the estimate is positive (sharper with it).

The overall :attr:`H2Result.verdict` is the primary's; the rows are not combined.
:meth:`H2Result.evidence` writes a row's verdict with its evidence (estimate, interval, n of
units, test, p) and the report adds the calibration phrase of the test
(:func:`landscope.analysis.calibration.calibration_note` with :data:`TEST_PRIMARY`,
:data:`TEST_SECONDARY` or :data:`TEST_BARRIER`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from landscope.analysis.collect import _NOT_SWEPT, _NOT_SWEPT_PREFIXES, config_columns
from landscope.analysis.doc import short as _fmt
from landscope.analysis.hypotheses.paired import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED,
                                                  holm, paired_rank_stats, sign_flip_p)
from landscope.analysis.hypotheses.pairing import (as_number, check_columns, factor_side,
                                                   h2_comparisons, other_level, pair_jobs,
                                                   resolve_level, side_names)
from landscope.analysis.section import Section
from landscope.errors import LandscopeError
from landscope.jobdir import JobDir

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


# --------------------------------------------------------------------------- the statistics
def seed_jackknife(seed_a: Sequence[Any], seed_b: Sequence[Any], on: Sequence[bool],
                   value: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Delete-one-seed jackknife of θ = mean(value | on) − mean(value | off) over pairwise
    measurements (one per pair of seeds ``seed_a``–``seed_b`` within an arm, ``on`` the arm).

    Returns ``theta``, ``se`` (jackknife: sqrt((n−1)/n Σₛ (θ₍₋ₛ₎ − mean θ₍₋₎)²)), ``t`` = θ/se,
    ``df`` = n − 1, ``p`` (two-sided, t on n − 1 df), ``ci_low``/``ci_high`` (θ ± t·se),
    ``pseudo`` (the n pseudo-values nθ − (n−1)θ₍₋ₛ₎, mean θ for complete designs), ``seeds``,
    ``n`` (seeds), ``n_on``/``n_off`` (pairs per arm) and ``reason`` (non-empty when it cannot
    be computed: fewer than 3 seeds, an arm emptied by deleting a seed, or SE = 0)."""
    a = np.array([str(as_number(x)) for x in seed_a], dtype=object)
    b = np.array([str(as_number(x)) for x in seed_b], dtype=object)
    on = np.asarray(on, dtype=bool)
    v = np.asarray(value, dtype=float)
    seeds = sorted(set(a) | set(b))
    n = len(seeds)
    out: dict[str, Any] = {"theta": math.nan, "se": math.nan, "t": math.nan, "df": n - 1,
                           "p": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                           "pseudo": np.array([]), "seeds": seeds, "n": n,
                           "n_on": int(on.sum()), "n_off": int((~on).sum()), "reason": ""}
    if not on.any() or on.all():
        out["reason"] = f"no barriers with the factor {'off' if on.all() else 'on'}"
        return out
    out["theta"] = theta = float(v[on].mean() - v[~on].mean())
    if n < 3:
        out["reason"] = f"too few: {n} seeds (a seed-level jackknife needs at least 3)"
        return out
    loo = np.empty(n)
    for i, s in enumerate(seeds):
        keep = (a != s) & (b != s)
        if not (keep & on).any() or not (keep & ~on).any():
            out["reason"] = f"deleting seed {s} leaves an arm without barriers"
            return out
        loo[i] = v[keep & on].mean() - v[keep & ~on].mean()
    pseudo = n * theta - (n - 1) * loo
    se = math.sqrt((n - 1) / n * float(np.sum((loo - loo.mean()) ** 2)))
    out["pseudo"] = pseudo
    if not se > 0:
        out["reason"] = "the jackknife standard error is 0"
        return out
    t = theta / se
    crit = float(stats.t.ppf(0.5 + level / 2, n - 1))
    out.update(se=se, t=t, p=float(2 * stats.t.sf(abs(t), n - 1)), ci_low=theta - crit * se,
               ci_high=theta + crit * se)
    return out


def _per_job_row(measure: str, on: np.ndarray, off: np.ndarray) -> dict[str, Any]:
    base = paired_rank_stats(on, off, measure)
    row = _empty(measure, "wilcoxon", "paired t", "seeds (paired)", "Hodges–Lehmann on − off")
    row.update({k: base[k] for k in ("n", "n_on", "n_off", "estimate", "ci_low", "ci_high",
                                     "ci_level", "median_diff", "mean_diff", "statistic", "p",
                                     "t", "t_p", "cohens_d", "rank_biserial", "reason",
                                     "ci_note")})
    row["_min_p"] = base.get("_min_p", 1.0)
    return row


def barrier_row(barriers: pd.DataFrame, factor: str, barrier: str = BARRIER,
                notes: list[str] | None = None, level: str | None = None,
                off: str | None = None) -> dict[str, Any]:
    """The barrier row of one comparison (see the module docstring): :func:`seed_jackknife`
    of the barriers between seeds, on − off, with the sign-flip p of its pseudo-values."""
    notes = [] if notes is None else notes
    name = f"connectivity.{barrier}"
    row = _empty(name, "seed jackknife t", "seed sign-flip", "seeds", "mean on − mean off")
    for col in (factor, barrier, "seed_a", "seed_b"):
        if col not in barriers.columns:
            row["reason"] = f"no column {col!r} in the barriers table" + (
                " (the seeds of each pair are needed: the seed is the unit)"
                if col.startswith("seed_") else "")
            return row
    if off is not None:  # barriers at another "on" level are not part of this comparison
        barriers = barriers[~barriers[factor].map(lambda v: other_level(v, level, off))
                            .astype(bool)]
    side = barriers[factor].map(lambda v: factor_side(v, level, off))
    value = pd.to_numeric(barriers[barrier], errors="coerce")
    usable = side.notna() & np.isfinite(value) & barriers["seed_a"].notna() \
        & barriers["seed_b"].notna()
    if (~usable).any():
        what = "true/false" if off is None else f"{off}/{level}"
        notes.append(f"{name}: {int((~usable).sum())} barriers without a {what} {factor}, "
                     "seeds or a finite value left out")
    b = barriers[usable]
    on = side[usable].astype(bool).to_numpy()
    v = value[usable].to_numpy(dtype=float)
    jk = seed_jackknife(b["seed_a"].tolist(), b["seed_b"].tolist(), on, v)
    row.update(n=jk["n"], n_on=jk["n_on"], n_off=jk["n_off"], reason=jk["reason"])
    if jk["n_on"] and jk["n_off"]:
        row.update(estimate=jk["theta"], mean_diff=jk["theta"],
                   median_diff=float(np.median(v[on]) - np.median(v[~on])))
    if not jk["reason"]:
        row.update(statistic=jk["t"], p=jk["p"], ci_low=jk["ci_low"], ci_high=jk["ci_high"],
                   ci_level=0.95, t_p=sign_flip_p(jk["pseudo"]), _min_p=0.0,
                   cohens_d=float(np.mean(jk["pseudo"]) / np.std(jk["pseudo"], ddof=1)))
    return row


# --------------------------------------------------------------------------- verdicts
def _verdict(row: pd.Series, alpha: float, k: int, gate: bool, primary: str) -> tuple[str, str]:
    if row["reason"]:
        return INCONCLUSIVE, row["reason"]
    level = alpha / k
    if row["_min_p"] >= level:
        n_text = f"{int(row['n'])} " + ("pairs" if row["test"] == "wilcoxon" else row["unit"])
        nonzero = row.get("_n_nonzero", row["n"])
        if row["test"] == "wilcoxon" and pd.notna(nonzero) and nonzero != row["n"]:
            n_text = f"{int(row['_n_nonzero'])} non-zero differences in {int(row['n'])} pairs"
        at = f"alpha={alpha:g}" if k == 1 else f"alpha/k={alpha:g}/{k}"
        return INCONCLUSIVE, (f"too few: {n_text}; the smallest possible two-sided {row['test']} "
                              f"p is {row['_min_p']:.3g} >= {at}")
    if row["role"] == "secondary" and not gate:
        return INCONCLUSIVE, (f"not tested: the primary measure {primary} did not reject, so "
                              "the gate to the secondary rows is closed")
    p, est = row["p_adj"], row["estimate"]
    if not math.isfinite(p):
        return INCONCLUSIVE, f"{row['test']} undefined"
    what = "p_adj" if row["role"] == "secondary" or k > 1 else "p"
    if p < alpha and est < 0:
        return SUPPORTED, f"lower with the factor on ({what}={p:.3g} < {alpha:g})"
    if p < alpha and est > 0:
        return NOT_SUPPORTED, f"higher with the factor on ({what}={p:.3g} < {alpha:g})"
    if p < alpha:
        return INCONCLUSIVE, f"significant ({what}={p:.3g}) but the estimate is 0"
    return INCONCLUSIVE, f"not significant ({what}={p:.3g} >= {alpha:g})"


def _decide(rows: list[dict[str, Any]], primary: str, alpha: float, k: int
            ) -> tuple[pd.DataFrame, bool]:
    """One comparison's rows: the primary at alpha/k, then (gate open) Holm among the
    secondary rows at alpha/k; ``p_adj`` on the alpha scale. Returns (table, gate open)."""
    table = pd.DataFrame(rows)
    for col, default in (("_min_p", 1.0), ("_n_nonzero", math.nan), ("ci_note", "")):
        if col not in table:
            table[col] = default
    table["_min_p"] = table["_min_p"].fillna(1.0)
    is_primary = table["measure"] == primary
    table["role"] = np.where(is_primary, "primary", "secondary")
    table["p_adj"] = math.nan
    gate = False
    if is_primary.any():
        i = table.index[is_primary][0]
        p = float(table.at[i, "p"])
        if math.isfinite(p):
            table.at[i, "p_adj"] = min(1.0, k * p)
            gate = (not table.at[i, "reason"]) and table.at[i, "_min_p"] < alpha / k \
                and k * p < alpha
    secondary = ~is_primary
    if gate and secondary.any():
        table.loc[secondary, "p_adj"] = np.minimum(
            1.0, k * holm(table.loc[secondary, "p"].to_numpy(dtype=float)))
    verdicts = [_verdict(r, alpha, k, gate, primary) for _, r in table.iterrows()]
    table["verdict"] = [v for v, _ in verdicts]
    table["reason"] = [r for _, r in verdicts]
    return table, gate


# --------------------------------------------------------------------------- the test
@dataclass
class _Raw:
    """One comparison before the multiplicity step."""

    factor: str
    level: str | None
    off: str | None
    rows: list[dict[str, Any]]
    pairs: pd.DataFrame
    unpaired: pd.DataFrame
    keys: list[str]
    notes: list[str]


def _compare(jobs: pd.DataFrame, factor: str, level: Any, off: Any, measures: Sequence[str],
             barriers: pd.DataFrame | None, keys: Sequence[str] | None, barrier: str) -> _Raw:
    """Pair, then the statistics of every measure (and the barrier) of one comparison."""
    check_columns(jobs, factor)
    level, off = resolve_level(jobs, factor, level, off)
    pairs, unpaired, keys = pair_jobs(jobs, factor, keys, level=level, off=off)
    notes: list[str] = []
    if len(unpaired):
        notes.append(f"{len(unpaired)} included jobs unpaired: "
                     + "; ".join(sorted(set(unpaired["reason"]))))
    rows = []
    for measure in measures:
        if measure not in jobs.columns:
            row = _empty(measure, "wilcoxon", "paired t", "seeds (paired)",
                         "Hodges–Lehmann on − off")
            row["reason"] = f"no column {measure!r}"
            rows.append(row)
            continue
        values = pd.to_numeric(jobs[measure], errors="coerce")
        on = values.reindex(pairs["on"]).to_numpy(dtype=float)
        off_values = values.reindex(pairs["off"]).to_numpy(dtype=float)
        ok = np.isfinite(on) & np.isfinite(off_values)
        row = _per_job_row(measure, on[ok], off_values[ok])
        if (~ok).any() and not row["reason"]:
            notes.append(f"{measure}: {int((~ok).sum())} pairs without finite values left out")
        if row.get("ci_note"):
            notes.append(f"{measure}: {row['ci_note']}")
        rows.append(row)
    if barriers is not None:
        rows.append(barrier_row(barriers, factor, barrier, notes, level, off))
    return _Raw(factor, level, off, rows, pairs, unpaired, keys, notes)


def _primary(primary: str | None, measures: Sequence[str]) -> str:
    if primary is not None:
        return primary
    return PRIMARY if PRIMARY in measures or not measures else measures[0]


def _result(raw: _Raw, table: pd.DataFrame, gate: bool, primary: str, alpha: float, k: int
            ) -> H2Result:
    table = table[COLUMNS].reset_index(drop=True)
    hit = table[table["measure"] == primary]
    if hit.empty:
        verdict, reason = INCONCLUSIVE, f"primary measure {primary!r} was not tested"
    else:
        verdict, reason = hit["verdict"].iloc[0], f"{primary}: {hit['reason'].iloc[0]}"
    return H2Result(table=table, verdict=verdict, reason=reason, factor=raw.factor,
                    primary=primary, keys=raw.keys, pairs=raw.pairs, unpaired=raw.unpaired,
                    alpha=alpha, notes=raw.notes, level=raw.level, off=raw.off,
                    n_comparisons=k, gate_open=gate)


def h2_test(jobs: pd.DataFrame, factor: str = "model.skip", measures: Sequence[str] = MEASURES,
            barriers: pd.DataFrame | None = None, alpha: float = 0.05, n_boot: int = 0,
            seed: int = 0, *, keys: Sequence[str] | None = None, barrier: str = BARRIER,
            primary: str | None = None, level: Any = None, off: Any = None) -> H2Result:
    """Test H2 on a collected jobs table (see the module docstring for every rule).

    ``keys``: the config keys pairs must agree on (default: every swept config key except
    ``factor``, seeds and bookkeeping). ``barriers``: one row per connected pair of seeds with
    columns ``factor``, ``barrier``, ``seed_a`` and ``seed_b`` (:func:`load_barriers`).
    ``primary``: the declared primary measure, tested first; the other rows are tested only
    when it rejects (default λmax if tested, else the first measure). ``level``, ``off``: for
    a factor with levels (``model.norm``), the level compared (default: the only one besides
    ``off``) and the level that means off (default ``"none"``). ``n_boot`` and ``seed`` are
    kept for compatibility and unused (no bootstrap any more). Raises :class:`LandscopeError`
    when ``factor`` or ``seed`` is not a column, or when ``level`` is needed and ambiguous."""
    measures = list(measures)
    primary = _primary(primary, measures)
    raw = _compare(jobs, factor, level, off, measures, barriers, keys, barrier)
    table, gate = _decide(raw.rows, primary, alpha, 1)
    return _result(raw, table, gate, primary, alpha, 1)


def h2_tests(jobs: pd.DataFrame, comparisons: Sequence[tuple[str, Any]] | None = None,
             measures: Sequence[str] = MEASURES,
             barriers: pd.DataFrame | Mapping[str, pd.DataFrame] | None = None,
             alpha: float = 0.05, n_boot: int = 0, seed: int = 0, *,
             keys: Sequence[str] | None = None, barrier: str = BARRIER,
             primary: str | None = None) -> list[H2Result]:
    """Several H2 comparisons at once, one :class:`H2Result` each; with k comparisons each is
    gatekept at alpha/k (Bonferroni across comparisons, so the family-wise error over every
    row of the section stays at alpha).

    ``comparisons``: ``(factor, level)`` pairs, ``level`` None for a true/false factor
    (default :func:`h2_comparisons`: ``model.skip`` if swept, then every ``model.norm`` level
    against ``none``). ``barriers``: one frame for every comparison, or a mapping from the
    factor to its frame (:func:`load_barriers` reads one per factor). The other arguments are
    those of :func:`h2_test`; with one comparison the result equals :func:`h2_test`'s."""
    measures = list(measures)
    primary = _primary(primary, measures)
    comparisons = list(h2_comparisons(jobs) if comparisons is None else comparisons)
    if not comparisons:
        raise LandscopeError("H2: nothing to compare (neither model.skip nor model.norm with "
                             "'none' and another level is swept)")
    k = len(comparisons)
    results = []
    for factor, level in comparisons:
        b = barriers.get(factor) if isinstance(barriers, Mapping) else barriers
        raw = _compare(jobs, factor, level, None, measures, b, keys, barrier)
        if k > 1:
            raw.notes.append(f"{k} comparisons: each is tested at alpha/{k} (Bonferroni), "
                             "primary first, then Holm among its secondary rows")
        table, gate = _decide(raw.rows, primary, alpha, k)
        results.append(_result(raw, table, gate, primary, alpha, k))
    return results


def h2_table(results: Sequence[H2Result]) -> pd.DataFrame:
    """The tables of several results stacked, with a first column ``comparison``
    (:attr:`H2Result.comparison`); what the report saves as ``h2.csv``."""
    frames = [r.table.assign(comparison=r.comparison) for r in results]
    if not frames:
        return pd.DataFrame(columns=["comparison", *COLUMNS])
    return pd.concat(frames, ignore_index=True)[["comparison", *COLUMNS]]


# --------------------------------------------------------------------------- barriers
def _cached_config(sweep_dir: Path, job: str, cache: dict[str, dict[str, Any] | None]
                   ) -> dict[str, Any] | None:
    """The job's config columns (None when its config.yaml is missing, unreadable or empty)."""
    if job not in cache:
        cache[job] = config_columns(JobDir(sweep_dir / job))[0]
    return cache[job]


def load_barriers(sweep_dir: str | Path, factor: str = "model.skip") -> pd.DataFrame:
    """Read ``SWEEP/connectivity/*/*.json`` (from ``python -m runner.connect SWEEP``) into one
    row per connected pair: ``group``, ``pair``, ``job_a``, ``job_b``, ``seed_a``, ``seed_b``,
    ``factor`` (the value in both jobs' ``config.yaml``; None when it is missing or differs),
    ``match`` (the two jobs' config without ``factor``, the seed and bookkeeping, plus the
    pair of seeds: equal for the pairs to compare), ``reason`` (why a row is unusable, else
    None), ``path``, and every scalar of the file (``linear_train_loss_barrier_mean``, ...).
    File names are ``<jobA>__<jobB>.json``; the job directories are siblings in SWEEP."""
    sweep_dir = Path(sweep_dir)
    root = sweep_dir / "connectivity"
    if not root.is_dir():
        raise LandscopeError(f"no connectivity results in {sweep_dir}: run "
                             f"python -m runner.connect {sweep_dir} first")
    rows = []
    cache: dict[str, dict[str, Any] | None] = {}  # each job's config is read once
    for path in sorted(root.glob("*/*.json")):
        job_a, sep, job_b = path.stem.partition("__")
        row: dict[str, Any] = {"group": path.parent.name, "pair": path.stem, "job_a": job_a,
                               "job_b": job_b, "seed_a": None, "seed_b": None, factor: None,
                               "match": None, "reason": None, "path": str(path)}
        reasons = []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            scalars = data.get("scalars") if isinstance(data, dict) else None
            if not isinstance(scalars, dict):
                raise ValueError("no scalars")
            for k, v in scalars.items():
                row[k] = v
        except Exception as exc:  # noqa: BLE001 - a bad file is a row with a reason
            reasons.append(f"unreadable: {type(exc).__name__}: {exc}")
        if not sep:
            reasons.append("file name is not <jobA>__<jobB>.json")
        configs = [_cached_config(sweep_dir, job, cache) if job else None
                   for job in (job_a, job_b)]
        if any(c is None for c in configs):
            reasons.append("missing or unreadable config.yaml of "
                           + " and ".join(j for j, c in zip((job_a, job_b), configs) if c is None))
        else:
            ca, cb = configs
            row["seed_a"], row["seed_b"] = ca.get("seed"), cb.get("seed")
            if factor not in ca or factor not in cb:
                reasons.append(f"{factor} not in the jobs' config")
            elif ca[factor] != cb[factor]:
                reasons.append(f"{factor} differs between the two jobs")
            else:
                row[factor] = ca[factor]
            rest = {k: v for k, v in ca.items()
                    if k not in (factor, "seed", *_NOT_SWEPT) and not k.startswith(_NOT_SWEPT_PREFIXES)}
            seeds = sorted(str(as_number(s)) for s in (row["seed_a"], row["seed_b"]))
            row["match"] = json.dumps({"config": rest, "seeds": seeds}, sort_keys=True, default=str)
        row["reason"] = "; ".join(reasons) or None
        rows.append(row)
    if not rows:
        raise LandscopeError(f"no connectivity results in {root} (no */*.json files)")
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the report section
def report_tests(jobs: pd.DataFrame, swept: Sequence[str] | None, paths: Sequence[str | Path],
                 alpha: float = 0.05) -> tuple[list[H2Result], dict[str, pd.DataFrame]]:
    """What the report's H2 section computes (and the calibration suite re-runs): every
    comparison :func:`h2_comparisons` finds in the included ``jobs``, with the barriers of
    every sweep in ``paths`` that has ``connectivity/`` results. Returns (results, barriers by
    factor)."""
    comparisons = h2_comparisons(jobs, swept)
    barriers: dict[str, pd.DataFrame] = {}
    for factor in dict.fromkeys(f for f, _ in comparisons):
        frames = [load_barriers(p, factor) for p in paths if (Path(p) / "connectivity").is_dir()]
        if frames:
            barriers[factor] = pd.concat(frames, ignore_index=True)
    return h2_tests(jobs, comparisons, barriers=barriers, alpha=alpha), barriers


def test_name(row: Mapping[str, Any] | pd.Series) -> str:
    """The calibration-suite name of the test behind a table row."""
    if row["role"] == "primary":
        return TEST_PRIMARY
    return TEST_BARRIER if str(row["measure"]).startswith("connectivity.") else TEST_SECONDARY


def applies(ctx) -> bool:
    """The section is written when ``model.skip`` is swept, or ``model.norm`` with ``none``
    and another level."""
    return bool(h2_comparisons(ctx.coll.included, ctx.coll.swept))


_SHOWN = [("measure", "measure"), ("role", "role"), ("n", "n"), ("unit", "unit"),
          ("estimate", "estimate"), ("ci_low", "CI low"), ("ci_high", "CI high"),
          ("ci_level", "CI level"), ("test", "test"), ("p", "p"), ("p_adj", "p adj"),
          ("t_test", "alongside"), ("t_p", "p alongside"), ("cohens_d", "d"),
          ("verdict", "verdict")]


def section(ctx) -> None:
    """H2 section of the report: skip connections and normalization flatten the landscape
    (paired by seed; the primary measure gatekeeps the secondary rows; barriers tested at the
    seed level). Writes ``h2.csv`` and one paired figure per comparison."""
    from landscope.analysis.calibration import calibration_note
    from landscope.analysis.doc import safe_name, table
    from landscope.io import atomic_write_text
    from landscope.plots import plot_paired

    doc, inc, out = ctx.doc, ctx.coll.included, Path(ctx.out)
    results, barriers = report_tests(inc, ctx.coll.swept, ctx.paths)
    factors = {r.factor for r in results}
    title = ("H2: skip connections and normalization flatten the landscape"
             if factors == {"model.skip", "model.norm"}
             else "H2: normalization flattens the landscape" if factors == {"model.norm"}
             else "H2: skip connections flatten the landscape")
    doc.heading(title)
    diff = {frozenset({"model.skip"}): "skip on − off, so a negative difference means flatter "
                                       "with skip",
            frozenset({"model.norm"}): "the normalization level − none, so a negative "
                                       "difference means flatter with normalization"}.get(
        frozenset(factors), "skip on − off, or a normalization level − none, so a negative "
                            "difference means flatter with the factor on")
    k = len(results)
    primary = results[0].primary if results else PRIMARY
    doc.para(
        f"Jobs are paired by seed (and every other swept setting); the difference is {diff}. "
        f"The unit is the seed. Declared primary measure: {primary}, tested first"
        + (f" at alpha/{k} per comparison (Bonferroni over the {k} comparisons)" if k > 1
           else " at alpha 0.05")
        + "; only if it rejects (the gate opens) are the secondary rows tested, Holm among "
        "them" + (f" at alpha/{k}" if k > 1 else "") + " ('p adj' is on the alpha scale). "
        "Per-job rows: Wilcoxon signed-rank over the seed pairs (exact), Hodges–Lehmann "
        "estimate with the interval that inverts the same test (its exact coverage in 'CI "
        "level'; with 5 pairs no 95% interval exists), paired t alongside. Barrier row: "
        "mean barrier on − off over the pairs of seeds of each arm, tested with a "
        "delete-one-seed jackknife t on seeds − 1 df (pairs of seeds share models, so n is "
        "the number of seeds, not of pairs), 95% t interval, the exact sign-flip p of the "
        "seed pseudo-values alongside."
        + ("" if barriers else " No connectivity results: run python -m runner.connect on "
           "the sweep for the barrier row."))
    for res in results:
        skip = res.level is None
        on_name, off_name = ("skip on", "skip off") if skip else \
            (f"norm {res.level}", f"norm {res.off}")
        if len(results) > 1:
            doc.heading("Skip connections: on vs off" if skip
                        else f"Normalization: {res.level} vs {res.off}", 3)
        prim = res.row(res.primary)
        evidence = res.evidence(calibration=calibration_note(TEST_PRIMARY)) \
            if prim is not None else res.reason
        doc.para(f"Verdict: {res.verdict} ({res.reason}). Evidence: {evidence}. "
                 f"{res.n_pairs} pairs ({on_name} − {off_name}), {res.n_unpaired} included "
                 f"jobs unpaired. Gate {'open' if res.gate_open else 'closed'}: the secondary "
                 f"rows were {'tested' if res.gate_open else 'not tested'}.")
        doc.table(*table(res.table, _SHOWN))
        lines = [f"{row['measure']}: {row_evidence(row, res.alpha, calibration_note(test_name(row)))}"
                 for _, row in res.table.iterrows() if row["measure"] != res.primary]
        if lines:
            doc.para("Secondary rows: " + "; ".join(lines) + ".")
        if res.notes:
            doc.para("Notes: " + "; ".join(res.notes) + ".")
        if res.n_pairs and res.primary in inc.columns:
            val = inc[res.primary]
            on = pd.to_numeric(val.loc[res.pairs["on"]], errors="coerce").to_numpy(float)
            off = pd.to_numeric(val.loc[res.pairs["off"]], errors="coerce").to_numpy(float)
            stem = "h2_paired" if res.factor == "model.skip" else \
                safe_name(f"h2_paired_{res.factor.split('.')[-1]}_{res.level}")
            png = out / "figures" / f"{stem}.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            plot_paired(off, on, png, res.primary, (off_name, on_name))
            doc.image(png, f"figures/{png.name}",
                      f"{res.primary}, {off_name} vs {on_name}, one line per seed")
    atomic_write_text(out / "h2.csv", h2_table(results).to_csv(index=False))


SECTION = Section("H2: skip connections and normalization flatten the landscape", applies,
                  section, "H2")
