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
6-layer MLP of width 64 on mnist1d, ``probe=standard``, 20 epochs; its run time:
docs/measurements.md#analysis-h2) and :file:`conf/experiment/h2_norm.yaml`
(``model.norm`` = none, batch, layer × 10 seeds, skip off). Caveat: with SGD at lr 0.1 both
variants may end near the stability limit 2/lr = 20, and the plain network trains much worse in
20 epochs, so λmax compares edge-of-stability dynamics and unequal train losses as much as
architecture.

**Units.** The unit of replication is the seed. A per-job row has one paired difference per
seed (n = pairs = seeds: the paired tests below are right there). A barrier row has one value
per *pair of seeds* within an arm (8 seeds → 28 pairs per arm), and each model enters n − 1 of
them, so the pairs are **not** independent: a model that sits in an odd basin raises every
barrier it is part of. The barrier row is therefore tested at the seed level (below) and
reports n = seeds, never n = pairs. (In the calibration suite,
:mod:`landscope.analysis.calibration.h2`, the former Wilcoxon over the 28 matched pairs of
seeds rejected far too many of the null datasets whose models carry their own basin effect:
docs/measurements.md#analysis-h2.)

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
(:func:`load_barriers` has them); fewer than 3 seeds → inconclusive. Calibration (8 seeds,
every model adding its own Exponential basin to each of its 7 barriers): near its level
ungated under the null, where the Wilcoxon over the 28 pairs rejected far above it. Known
limit: when the seed-level differences are strongly skewed (equal mean barrier, but
exponential basins in one arm and normal in the other) the t on 7 df is anti-conservative
(ungated; less so behind the gate); no test of a mean from 8 skewed values is exact. The
rates: docs/measurements.md#analysis-h2.

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

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from landscope.analysis.hypotheses.h2_barriers import load_barriers
from landscope.analysis.hypotheses.h2_result import (  # noqa: F401 - the public names of H2
    BARRIER,
    COLUMNS,
    MEASURES,
    PRIMARY,
    TEST_BARRIER,
    TEST_BARRIER_RAW,
    TEST_PRIMARY,
    TEST_SECONDARY,
    TEST_SIGN_FLIP_RAW,
    H2Result,
    row_evidence,
)
from landscope.analysis.hypotheses.h2_stats import (  # noqa: F401
    barrier_row,
    h2_table,
    h2_test,
    h2_tests,
    seed_jackknife,
)
from landscope.analysis.hypotheses.paired import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED  # noqa: F401
from landscope.analysis.hypotheses.pairing import h2_comparisons
from landscope.analysis.section import Section


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


def _intro(doc, results: Sequence[H2Result], barriers: Mapping[str, pd.DataFrame]) -> None:
    """The section's heading (which factors) and the paragraph on the design and the tests."""
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


def _comparison(doc, res: H2Result, several: bool, inc: pd.DataFrame, out: Path) -> None:
    """One comparison of the section: its verdict, table, secondary rows, notes and figure."""
    from landscope.analysis.calibration import calibration_note
    from landscope.analysis.doc import table

    skip = res.level is None
    on_name, off_name = ("skip on", "skip off") if skip else \
        (f"norm {res.level}", f"norm {res.off}")
    if several:
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
        _paired_figure(doc, res, inc, out, off_name, on_name)


def _paired_figure(doc, res: H2Result, inc: pd.DataFrame, out: Path, off_name: str,
                   on_name: str) -> None:
    """The primary measure off vs on, one line per seed (``figures/h2_paired*.png``)."""
    from landscope.analysis.doc import safe_name
    from landscope.plots import plot_paired

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


def section(ctx) -> None:
    """H2 section of the report: skip connections and normalization flatten the landscape
    (paired by seed; the primary measure gatekeeps the secondary rows; barriers tested at the
    seed level). Writes ``h2.csv`` and one paired figure per comparison."""
    from landscope.io import atomic_write_text

    doc, inc, out = ctx.doc, ctx.coll.included, Path(ctx.out)
    results, barriers = report_tests(inc, ctx.coll.swept, ctx.paths)
    _intro(doc, results, barriers)
    for res in results:
        _comparison(doc, res, len(results) > 1, inc, out)
    atomic_write_text(out / "h2.csv", h2_table(results).to_csv(index=False))

SECTION = Section("H2: skip connections and normalization flatten the landscape", applies,
                  section, "H2")
