"""H2 (issue #5): skip connections (and normalization) flatten the loss landscape.

Design: jobs that agree on every other swept config key and on the seed, and differ only in
the factor (``model.skip`` by default, ``True`` vs ``False``), form a pair. For each curvature
measure (λmax, Hessian trace, number and mass of the spectral outliers by default) the paired
difference is ``d = on − off``; a lower value is flatter, so a **negative** difference
supports H2.

Normalization is the factor ``model.norm``, which has levels rather than true/false: ``off``
is ``none`` (:data:`OFF_LEVELS`) and ``on`` is one normalization level (``batch`` or
``layer``), given as ``level=``. Each level is its own comparison against ``none`` (jobs at
the other levels are not part of it, and are not counted as unpaired), paired exactly as for
skip: by seed and every other swept setting (``model.skip`` included when it is swept too).
:func:`h2_comparisons` lists the comparisons a jobs table supports (``model.skip`` when it
is swept; ``model.norm`` = each level against ``none`` when ``none`` and another level are
swept) and :func:`h2_tests` runs several at once with **one** Holm family across the rows of
all their tables (what the report shows); :func:`h2_table` stacks their tables with a
``comparison`` column (``model.skip: true vs false``, ``model.norm: batch vs none``). The
norm sweep is :file:`conf/experiment/h2_norm.yaml` (``model.norm`` = none, batch, layer × 10
seeds, skip off; two comparisons of 5 rows each share one Holm family of 10 rows, so
2 / 2^n · 10 < 0.05 needs n ≥ 9 pairs: 10 seeds leave one spare). The sweep is :file:`conf/experiment/h2_skip.yaml` (16 jobs: ``model.skip`` ×
8 seeds (8 pairs: see the minimum-pairs rule below), 6-layer MLP of width 64 on mnist1d, ``probe=standard``, 20 epochs). One job took
14-16 s of wall time on a 2-core CPU here (process start included; training 1.4-3.9 s, probes
4-6 s, 1-D slices the rest), so the sweep takes about 4 min in-process and about 2.5 min with
``hydra/launcher=parallel``. Caveat: with SGD at lr 0.1 both variants may end near the
stability limit 2/lr = 20 (seed 0: λmax 18.1 with skip, 13.5 without, and the plain network
trains much worse in 20 epochs: train loss 1.59 vs 0.57), so λmax compares edge-of-stability
dynamics as much as architecture.

Per measure, :func:`h2_test` reports (one row of :attr:`H2Result.table`):

- ``n`` pairs with both values finite, ``median_diff`` and ``mean_diff`` of ``d``;
- ``test`` = ``wilcoxon``: :func:`scipy.stats.wilcoxon` on ``d``, two-sided, zero differences
  dropped (``zero_method="wilcox"``, scipy's default, exact for small n without ties);
  ``statistic`` is scipy's (min(T+, T−)), ``p`` its p-value;
- ``t_test`` = ``paired t``: :func:`scipy.stats.ttest_rel` (on, off), ``t`` and ``t_p``;
- effect sizes: ``cohens_d`` = Cohen's d_z = mean(d) / sd(d) (ddof 1), and ``rank_biserial``
  = the matched-pairs rank-biserial correlation (T+ − T−) / (T+ + T−) over the non-zero
  differences (Kerby 2014), in [−1, 1], negative when ``on`` is lower;
- ``ci_low``, ``ci_high``: percentile bootstrap 95% CI of the median difference (``n_boot``
  resamples of the pairs, ``numpy.random.default_rng(seed)``);
- ``p_holm`` and ``t_p_holm``: Holm corrections (:func:`holm`, equal to statsmodels'
  ``multipletests(method="holm")``) across the
  rows of the table, one family per test column (the barrier row included);
- ``verdict`` and ``reason``:

  * ``inconclusive`` when the test cannot reach ``p < alpha`` at all: the exact two-sided
    Wilcoxon p-value is at least 2 / 2^n for n non-zero differences, which is 0.0625 ≥ 0.05
    for n = 5, so at ``alpha = 0.05`` at least 6 pairs are needed (fewer → inconclusive,
    whatever the data); likewise 2 / C(n_on + n_off, n_on) for Mann–Whitney. Holm then
    multiplies the smallest p of the table by the number of rows m, so a table of m = 5 rows
    (4 measures and the barrier) needs 2 / 2^n · 5 < 0.05, i.e. n ≥ 8 pairs, for any row to be
    supported; hence 8 seeds in the preset;
  * ``supported`` when the Holm-corrected primary p (``p_holm``) < ``alpha`` and the median
    difference is negative (flatter with the factor on);
  * ``not supported`` when ``p_holm`` < ``alpha`` and the median difference is positive
    (significantly *sharper* with the factor on: evidence against H2);
  * ``inconclusive`` otherwise (not significant: absence of evidence, not evidence of no
    effect; no equivalence margin is tested).

  The decision uses the Wilcoxon test (robust to outliers in λmax); the paired t-test, the
  effect sizes and the CI are reported alongside, not used in the verdict.

The barrier between seeds (optional ``barriers`` frame, e.g. from :func:`load_barriers`) is
one more row, ``connectivity.<barrier column>``. Each barrier belongs to a pair of seeds that
share a factor value. When the frame has a ``match`` column (what the two seed pairs have in
common apart from the factor: the other config keys and the two seeds) and at least one
``match`` value has one barrier with the factor on and one with it off, those are paired and
tested as above (barriers without a partner are counted in ``reason``). Otherwise the two
groups are compared unpaired: ``test`` = ``mannwhitneyu`` (:func:`scipy.stats.mannwhitneyu`,
two-sided), ``median_diff`` = median(on) − median(off), ``t_test`` = ``welch t``
(:func:`scipy.stats.ttest_ind`, ``equal_var=False``), ``cohens_d`` with the pooled sd,
``rank_biserial`` = 2U/(n_on·n_off) − 1 (negative when on is lower), and a bootstrap CI that
resamples each group separately.

The overall :attr:`H2Result.verdict` is the verdict of the ``primary`` measure (λmax by
default): H2 is supported when λmax is significantly lower with skip connections (or with
the normalization level, for ``model.norm``); the other rows are secondary evidence and are
reported, not combined. With :func:`h2_tests` each comparison keeps its own verdict; they are
not combined either.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from landscope.analysis.collect import _NOT_SWEPT, _NOT_SWEPT_PREFIXES, flatten
from landscope.analysis.doc import short as _fmt
from landscope.analysis.hypotheses.paired import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED,
                                                  TABLE_COLUMNS, empty_row, holm, paired_stats,
                                                  unpaired_stats)
from landscope.analysis.hypotheses.pairing import (as_number, check_columns, config_code,
                                                   factor_side, h2_comparisons, other_level,
                                                   pair_jobs, resolve_level, side_names)
from landscope.errors import LandscopeError

MEASURES = ("probe.lambda_max", "probe.trace", "probe.density_n_outliers",
            "probe.density_outlier_mass")
BARRIER = "linear_train_loss_barrier_mean"


@dataclass
class H2Result:
    """The outcome of :func:`h2_test`."""

    table: pd.DataFrame  # one row per measure (TABLE_COLUMNS)
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

    def summary(self) -> str:
        """A few lines of text: the verdict, the pairing, then one line per measure."""
        what = f"{self.factor} on vs off" if self.level is None \
            else f"{self.factor}={self.level} vs {self.off}"
        lines = [f"H2 ({what} flattens the landscape): {self.verdict.upper()} "
                 f"- {self.reason}",
                 f"{self.n_pairs} pairs matched on seed"
                 + (f" and {', '.join(self.keys)}" if self.keys else "")
                 + f"; {self.n_unpaired} included jobs unpaired; Holm-corrected, alpha={self.alpha:g}"]
        for row in self.table.itertuples(index=False):
            lines.append(
                f"  {row.measure}: n={row.n}, median diff (on-off)={_fmt(row.median_diff)} "
                f"[95% CI {_fmt(row.ci_low)}, {_fmt(row.ci_high)}], {row.test} "
                f"stat={_fmt(row.statistic)} p={_fmt(row.p)} p_holm={_fmt(row.p_holm)}; "
                f"{row.t_test} t={_fmt(row.t)} p_holm={_fmt(row.t_p_holm)}; "
                f"d={_fmt(row.cohens_d)} r_rb={_fmt(row.rank_biserial)} -> {row.verdict}"
                + (f" ({row.reason})" if row.reason else ""))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------- verdicts
def _holm(p: pd.Series, alpha: float) -> pd.Series:
    return pd.Series(holm(p.to_numpy(dtype=float)), index=p.index)


def _verdict(row: pd.Series, alpha: float) -> tuple[str, str]:
    if row["reason"]:
        return INCONCLUSIVE, row["reason"]
    if row["test"] != "wilcoxon":
        n_text = f"{row['n_on']} on and {row['n_off']} off"
    elif row.get("_n_nonzero", row["n"]) != row["n"]:
        n_text = f"{int(row['_n_nonzero'])} non-zero differences in {row['n']} pairs"
    else:
        n_text = f"{row['n']} pairs"
    if row["_min_p"] >= alpha:
        return INCONCLUSIVE, (f"too few: {n_text}; the smallest possible two-sided {row['test']} "
                              f"p is {row['_min_p']:.3g} >= alpha={alpha:g}")
    p, med = row["p_holm"], row["median_diff"]
    if not math.isfinite(p):
        return INCONCLUSIVE, f"{row['test']} undefined"
    if p < alpha and med < 0:
        return SUPPORTED, f"lower with the factor on (Holm p={p:.3g} < {alpha:g})"
    if p < alpha and med > 0:
        return NOT_SUPPORTED, f"higher with the factor on (Holm p={p:.3g} < {alpha:g})"
    if p < alpha:
        return INCONCLUSIVE, f"significant (Holm p={p:.3g}) but the median difference is 0"
    return INCONCLUSIVE, f"not significant (Holm p={p:.3g} >= {alpha:g})"


# --------------------------------------------------------------------------- the test
@dataclass
class _Raw:
    """One comparison before the Holm correction: its rows still carry ``_min_p``."""

    factor: str
    level: str | None
    off: str | None
    rows: list[dict[str, Any]]
    pairs: pd.DataFrame
    unpaired: pd.DataFrame
    keys: list[str]
    notes: list[str]


def _compare(jobs: pd.DataFrame, factor: str, level: Any, off: Any, measures: Sequence[str],
             barriers: pd.DataFrame | None, n_boot: int, seed: int, keys: Sequence[str] | None,
             barrier: str) -> _Raw:
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
            row = empty_row(measure, "wilcoxon", "paired t")
            row["reason"] = f"no column {measure!r}"
            rows.append(row)
            continue
        values = pd.to_numeric(jobs[measure], errors="coerce")
        on = values.reindex(pairs["on"]).to_numpy(dtype=float)
        off_values = values.reindex(pairs["off"]).to_numpy(dtype=float)
        ok = np.isfinite(on) & np.isfinite(off_values)
        row = paired_stats(on[ok], off_values[ok], measure, n_boot=n_boot, seed=seed)
        if (~ok).any() and not row["reason"]:
            notes.append(f"{measure}: {int((~ok).sum())} pairs without finite values left out")
        rows.append(row)
    if barriers is not None:
        rows.append(_barrier_row(barriers, factor, barrier, n_boot, seed, notes, level, off))
    return _Raw(factor, level, off, rows, pairs, unpaired, keys, notes)


def _decide(rows: list[dict[str, Any]], alpha: float) -> pd.DataFrame:
    """Holm across ``rows`` (one family per test column), then each row's verdict."""
    table = pd.DataFrame(rows)
    if "_min_p" not in table:
        table["_min_p"] = math.nan
    table["_min_p"] = table["_min_p"].fillna(1.0)
    table["p_holm"] = _holm(table["p"], alpha)
    table["t_p_holm"] = _holm(table["t_p"], alpha)
    verdicts = [_verdict(r, alpha) for _, r in table.iterrows()]
    table["verdict"] = [v for v, _ in verdicts]
    table["reason"] = [r for _, r in verdicts]
    return table


def _result(raw: _Raw, table: pd.DataFrame, measures: Sequence[str], primary: str | None,
            alpha: float) -> H2Result:
    table = table[TABLE_COLUMNS].reset_index(drop=True)
    if primary is None:
        primary = "probe.lambda_max" if "probe.lambda_max" in measures else table["measure"].iloc[0] \
            if len(table) else ""
    hit = table[table["measure"] == primary]
    if hit.empty:
        verdict, reason = INCONCLUSIVE, f"primary measure {primary!r} was not tested"
    else:
        verdict, reason = hit["verdict"].iloc[0], f"{primary}: {hit['reason'].iloc[0]}"
    return H2Result(table=table, verdict=verdict, reason=reason, factor=raw.factor,
                    primary=primary, keys=raw.keys, pairs=raw.pairs, unpaired=raw.unpaired,
                    alpha=alpha, notes=raw.notes, level=raw.level, off=raw.off)


def h2_test(jobs: pd.DataFrame, factor: str = "model.skip", measures: Sequence[str] = MEASURES,
            barriers: pd.DataFrame | None = None, alpha: float = 0.05, n_boot: int = 2000,
            seed: int = 0, *, keys: Sequence[str] | None = None, barrier: str = BARRIER,
            primary: str | None = None, level: Any = None, off: Any = None) -> H2Result:
    """Test H2 on a collected jobs table (see the module docstring for every rule).

    ``keys``: the config keys pairs must agree on (default: every swept config key except
    ``factor``, seeds and bookkeeping). ``barriers``: one row per connected pair of seeds with
    columns ``factor``, ``barrier`` and optionally ``match`` (:func:`load_barriers`).
    ``primary``: the measure whose verdict is the overall verdict (default λmax if tested,
    else the first measure). ``level``, ``off``: for a factor with levels (``model.norm``),
    the level compared (e.g. ``"batch"``; default: the only one besides ``off``) and the
    level that means off (default :data:`OFF_LEVELS`, ``"none"``). Holm runs across the rows
    of this one table (:func:`h2_tests` for one family across several comparisons). Raises
    :class:`LandscopeError` when ``factor`` or ``seed`` is not a column, or when ``level`` is
    needed and ambiguous."""
    measures = list(measures)
    raw = _compare(jobs, factor, level, off, measures, barriers, n_boot, seed, keys, barrier)
    return _result(raw, _decide(raw.rows, alpha), measures, primary, alpha)


def h2_tests(jobs: pd.DataFrame, comparisons: Sequence[tuple[str, Any]] | None = None,
             measures: Sequence[str] = MEASURES,
             barriers: pd.DataFrame | Mapping[str, pd.DataFrame] | None = None,
             alpha: float = 0.05, n_boot: int = 2000, seed: int = 0, *,
             keys: Sequence[str] | None = None, barrier: str = BARRIER,
             primary: str | None = None) -> list[H2Result]:
    """Several H2 comparisons at once, one :class:`H2Result` each, with **one** Holm family
    (per test column) across the rows of all their tables.

    ``comparisons``: ``(factor, level)`` pairs, ``level`` None for a true/false factor
    (default :func:`h2_comparisons`: ``model.skip`` if swept, then every ``model.norm`` level
    against ``none``). ``barriers``: one frame for every comparison, or a mapping from the
    factor to its frame (:func:`load_barriers` reads one per factor). The other arguments are
    those of :func:`h2_test`; with one comparison the result equals :func:`h2_test`'s."""
    measures = list(measures)
    comparisons = list(h2_comparisons(jobs) if comparisons is None else comparisons)
    if not comparisons:
        raise LandscopeError("H2: nothing to compare (neither model.skip nor model.norm with "
                             "'none' and another level is swept)")
    raws = []
    for factor, level in comparisons:
        b = barriers.get(factor) if isinstance(barriers, Mapping) else barriers
        raws.append(_compare(jobs, factor, level, None, measures, b, n_boot, seed, keys,
                             barrier))
    rows = [row for raw in raws for row in raw.rows]
    table = _decide(rows, alpha)
    if len(raws) > 1:
        names = ", ".join(_label(r.factor, r.level, r.off) for r in raws)
        for raw in raws:
            raw.notes.append(f"Holm across the {len(rows)} rows of {len(raws)} comparisons "
                             f"({names})")
    results, start = [], 0
    for raw in raws:
        part = table.iloc[start:start + len(raw.rows)]
        start += len(raw.rows)
        results.append(_result(raw, part, measures, primary, alpha))
    return results


def _label(factor: str, level: str | None, off: str | None) -> str:
    on_name, off_name = side_names(level, off)
    return f"{factor}: {on_name} vs {off_name}"


def h2_table(results: Sequence[H2Result]) -> pd.DataFrame:
    """The tables of several results stacked, with a first column ``comparison``
    (:attr:`H2Result.comparison`); what the report saves as ``h2.csv``."""
    frames = [r.table.assign(comparison=r.comparison) for r in results]
    if not frames:
        return pd.DataFrame(columns=["comparison", *TABLE_COLUMNS])
    return pd.concat(frames, ignore_index=True)[["comparison", *TABLE_COLUMNS]]


def _barrier_row(barriers: pd.DataFrame, factor: str, barrier: str, n_boot: int, seed: int,
                 notes: list[str], level: str | None = None, off: str | None = None
                 ) -> dict[str, Any]:
    name = f"connectivity.{barrier}"
    for col in (factor, barrier):
        if col not in barriers.columns:
            row = empty_row(name, "mannwhitneyu", "welch t")
            row["reason"] = f"no column {col!r} in the barriers table"
            return row
    if off is not None:  # barriers at another "on" level are not part of this comparison
        barriers = barriers[~barriers[factor].map(lambda v: other_level(v, level, off))
                            .astype(bool)]
    side = barriers[factor].map(lambda v: factor_side(v, level, off))
    value = pd.to_numeric(barriers[barrier], errors="coerce")
    usable = side.notna() & np.isfinite(value)
    if (~usable).any():
        what = "true/false" if off is None else f"{off}/{level}"
        notes.append(f"{name}: {int((~usable).sum())} barriers without a {what} {factor} "
                     "or a finite value left out")
    b = pd.DataFrame({"level": side[usable].astype(bool), "value": value[usable]})
    if "match" in barriers.columns:
        b["match"] = barriers.loc[usable, "match"].map(config_code)
        counts = b.groupby(["match", "level"]).size().unstack(fill_value=0)
        good = counts.index[(counts.get(True, 0) == 1) & (counts.get(False, 0) == 1)] \
            if {True, False} <= set(counts.columns) else []
        if len(good):
            sel = b[b["match"].isin(good)].set_index(["match", "level"])["value"]
            on_values = np.array([sel[(m, True)] for m in good])
            off_values = np.array([sel[(m, False)] for m in good])
            row = paired_stats(on_values, off_values, name, n_boot=n_boot, seed=seed)
            left = len(b) - 2 * len(good)
            if left:
                notes.append(f"{name}: paired by match; {left} barriers without a partner left out")
            return row
        notes.append(f"{name}: no barrier has a partner with the other {factor}; Mann-Whitney U")
    return unpaired_stats(b.loc[b["level"], "value"].to_numpy(), b.loc[~b["level"], "value"].to_numpy(),
                          name, n_boot=n_boot, seed=seed)


# --------------------------------------------------------------------------- barriers
def _config(job_dir: Path) -> dict[str, Any] | None:
    try:
        cfg = yaml.safe_load((job_dir / "config.yaml").read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - reported as a reason
        return None
    if not isinstance(cfg, dict):
        return None
    flat = flatten(cfg)
    return {(f"config.{k}" if k.split(".")[0] in ("probe", "landscape") else k): v
            for k, v in flat.items()}


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
        configs = [_config(sweep_dir / job) if job else None for job in (job_a, job_b)]
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
