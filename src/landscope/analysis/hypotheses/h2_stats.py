"""H2's statistics (:mod:`landscope.analysis.hypotheses.h2`, whose docstring gives every
rule): the per-job Wilcoxon rows, the seed-jackknife barrier row, the gatekeeping and
:func:`h2_test` / :func:`h2_tests` / :func:`h2_table`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from landscope.analysis.hypotheses.h2_result import (
    BARRIER,
    COLUMNS,
    MEASURES,
    PRIMARY,
    H2Result,
    _empty,
)
from landscope.analysis.hypotheses.paired import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    holm,
    paired_rank_stats,
    sign_flip_p,
)
from landscope.analysis.hypotheses.pairing import (
    as_number,
    check_columns,
    factor_side,
    h2_comparisons,
    other_level,
    pair_jobs,
    resolve_level,
)
from landscope.errors import LandscopeError
from landscope.wording import counted


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
            notes.append(f"{measure}: {counted(int((~ok).sum()), 'pair')} without finite values "
                         "left out")
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
