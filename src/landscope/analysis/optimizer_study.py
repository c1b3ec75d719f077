"""The optimizer study's report section (issue #7): LLP against SGD, momentum, Adam and SAM.

Written when the sweep varies ``optimizer.name`` and includes ``llp``
(``experiment=optimizer_study`` at equal epochs, ``experiment=optimizer_study_budget`` at an
equal gradient-evaluation budget). From the collected jobs (``result.json``) and each job's
``metrics.jsonl`` (the ``path`` column):

- per optimizer: jobs, test accuracy, λmax and Hessian trace of the final checkpoint
  (``probe=standard``), gradient evaluations used, and for LLP the average over epochs of its
  per-epoch curvature scale ``llp_curvature`` and step size ``llp_lr`` (mean ± sd over seeds);
  written to ``optimizer_study.csv``;
- paired tests of LLP against each baseline: jobs are paired by seed and by every swept
  config key outside ``optimizer.*`` (the optimizer group changes lr, momentum, ... together
  with the name); the difference is LLP − baseline and the unit of replication is the seed (a
  seed's jobs share its data order and initialisation). Per measure (test accuracy, λmax,
  trace) :func:`landscope.analysis.hypotheses.paired.paired_rank_stats` gives the paired
  t-test, the Wilcoxon signed-rank test, Cohen's d_z and the rank-biserial correlation; the
  estimate is the mean difference with its 95 % paired-t interval (``ci_low``/``ci_high``,
  mean ± t_{n−1, 0.975}·sd/√n: the interval of the test that decides), and beside it the
  Hodges–Lehmann estimate with the interval that inverts the Wilcoxon test (``hl``,
  ``hl_low``/``hl_high``, ``hl_level`` its exact coverage: 93.75 % at 5 pairs, where no 95 %
  Wilcoxon interval exists). Holm corrections
  (:func:`~landscope.analysis.hypotheses.paired.holm`) run across the baselines, one family
  per measure and test; written to ``optimizer_study_tests.csv``;
- the verdict per baseline and measure: the **paired t-test** (Holm) decides, because with
  n pairs the exact two-sided Wilcoxon p-value cannot go below 2/2^n (0.0625 for the 5 seeds
  of the preset, so the Wilcoxon test alone could never reject at α = 0.05); the Wilcoxon
  p-value is reported alongside. ``higher``/``lower`` when p_t(Holm) < α (LLP's value is
  higher/lower than the baseline's), ``no significant difference`` otherwise (absence of
  evidence, not equivalence: no margin is tested), ``too few pairs`` below 3 pairs. The 95 %
  interval is not adjusted for the baselines (the Holm p is), so an interval that excludes 0
  can stand beside ``no significant difference``. The verdict text gives every claim with its
  evidence (issue #16 item 8): the estimate, its interval, n of seeds, the test and its
  calibration (:func:`landscope.analysis.calibration.calibration_note` of :data:`TESTS`,
  scenarios in :mod:`landscope.analysis.calibration.optimizers`);
- LLP with its meta-model (:mod:`landscope.optim.llp_meta`, the preset's ``optimizer=llp_meta``
  arm: ``optimizer.name = llp`` with ``optimizer.llp.meta`` true) is the arm ``llp+meta``, a
  second challenger: the same paired tests against each baseline (its own Holm family), and
  **LLP + meta − LLP** (paired t over seeds, one test per measure, no Holm; calibrated under
  :data:`META_TESTS`); the summary adds its mean step factor ``llp_meta_scale``;
- one figure, ``figures/optimizer_study.png``: test accuracy, λmax and trace per optimizer,
  one dot per seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from landscope.analysis.section import Section
from landscope.io import atomic_write_text

FACTOR = "optimizer.name"
CHALLENGER = "llp"
META = "llp+meta"  # LLP with its meta-model: optimizer.name = llp, optimizer.llp.meta = true
META_COL = "optimizer.llp.meta"
CHALLENGERS = (CHALLENGER, META)
ORDER = ("sgd", "momentum", "adam", "adamw", "sam", "llp", META)
LLP_KEYS = ("llp_curvature", "llp_lr", "llp_curv_mean", "llp_meta_scale")
MEASURES = (("final.test_acc", "test accuracy"), ("probe.lambda_max", "λmax"),
            ("probe.trace", "trace"))
ALPHA = 0.05
MIN_PAIRS = 3
LEVEL = 0.95
# the calibration suite's name of each measure's verdict test (rates.csv, calibration_note)
TESTS = {col: f"optimizer study, {label}: paired t over seeds, Holm across baselines"
         for col, label in MEASURES}
META_TESTS = {col: f"optimizer study, {label}: LLP + meta − LLP, paired t over seeds"
              for col, label in MEASURES}


def applies(ctx: Any) -> bool:
    """True when the sweep varies ``optimizer.name`` and one of the included jobs is LLP."""
    inc = ctx.coll.included
    return FACTOR in ctx.coll.swept and FACTOR in inc.columns and \
        (inc[FACTOR].astype(str) == CHALLENGER).any()


def _job_metrics(path: Any) -> dict[str, float]:
    """LLP's epoch averages from a job's metrics.jsonl (NaN when absent)."""
    from landscope.io import read_jsonl

    out = {key: math.nan for key in LLP_KEYS}
    try:
        rows = read_jsonl(Path(str(path)) / "metrics.jsonl")
    except (OSError, ValueError, TypeError):
        return out
    for key in out:
        vals = [float(r[key]) for r in rows
                if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
        if vals:
            out[key] = float(np.mean(vals))
    return out


def arms(inc: pd.DataFrame) -> pd.Series:
    """The arm of each job: ``optimizer.name``, and :data:`META` for LLP with its meta-model."""
    names = inc[FACTOR].astype(str)
    if META_COL not in inc:
        return names
    meta = inc[META_COL].map(lambda v: str(v).lower() in ("true", "1", "1.0"))
    return names.where(~((names == CHALLENGER) & meta), META)


def job_table(inc: pd.DataFrame) -> pd.DataFrame:
    """One row per included job: arm, seed, the measures, grad_evals and LLP's averages."""
    df = pd.DataFrame({"optimizer": arms(inc), "seed": inc["seed"]})
    for col, _ in MEASURES:
        df[col] = pd.to_numeric(inc[col], errors="coerce") if col in inc else math.nan
    df["final.grad_evals"] = pd.to_numeric(inc["final.grad_evals"], errors="coerce") \
        if "final.grad_evals" in inc else math.nan
    extra = [_job_metrics(p) if "path" in inc else _job_metrics(None)
             for p in (inc["path"] if "path" in inc else [None] * len(inc))]
    for key in LLP_KEYS:
        df[key] = [e[key] for e in extra]
    return df


def summary_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds per arm (baselines in ORDER, then LLP, then LLP + meta)."""
    names = sorted(jobs["optimizer"].unique(),
                   key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    rows = []
    for name in names:
        g = jobs[jobs["optimizer"] == name]
        row: dict[str, Any] = {"optimizer": name, "n": len(g)}
        for col in ("final.test_acc", "probe.lambda_max", "probe.trace", "final.grad_evals",
                    "llp_curvature", "llp_lr", "llp_meta_scale"):
            v = pd.to_numeric(g[col], errors="coerce").to_numpy(float)
            v = v[np.isfinite(v)]
            row[f"{col}_mean"] = float(v.mean()) if len(v) else math.nan
            row[f"{col}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _pair_keys(inc: pd.DataFrame, swept: list[str]) -> list[str]:
    return [k for k in swept if k != FACTOR and not k.startswith("optimizer.") and k in inc]


def _verdict(row: dict[str, Any]) -> str:
    if row["n"] < MIN_PAIRS:
        return "too few pairs"
    p, t = row.get("t_p_holm", math.nan), row.get("t", math.nan)
    if not math.isfinite(p):
        return "undefined (zero variance)"
    if p < ALPHA:
        return "higher" if t > 0 else "lower"
    return "no significant difference"


def _row(on: np.ndarray, off: np.ndarray, measure: str) -> dict[str, Any]:
    """One baseline's paired statistics: :func:`~landscope.analysis.hypotheses.paired.
    paired_rank_stats` (paired t, Wilcoxon, Hodges–Lehmann with the Wilcoxon-inverted interval)
    with the 95 % paired-t interval of the mean difference as ``ci_low``/``ci_high``."""
    from scipy import stats

    from landscope.analysis.hypotheses.paired import paired_rank_stats

    row = paired_rank_stats(on, off, measure, level=LEVEL)
    row.update(hl=row.pop("estimate"), hl_low=row.pop("ci_low"), hl_high=row.pop("ci_high"),
               hl_level=row.pop("ci_level"), ci_low=math.nan, ci_high=math.nan,
               test=TESTS.get(measure, "paired t"))
    d = np.asarray(on, dtype=float) - np.asarray(off, dtype=float)
    if len(d) >= 2:
        half = float(stats.t.ppf(0.5 + LEVEL / 2, len(d) - 1)) * float(np.std(d, ddof=1)) \
            / math.sqrt(len(d))
        row.update(ci_low=float(np.mean(d)) - half, ci_high=float(np.mean(d)) + half)
    return row


def _family(jobs: pd.DataFrame, challenger: str, baselines: list[str], measure: str,
            label: str, test: str) -> list[dict[str, Any]]:
    """One Holm family: ``challenger`` − each of ``baselines`` on ``measure``, paired by the
    ``_match`` key (seed and the swept non-optimizer keys)."""
    from landscope.analysis.hypotheses.paired import holm

    on_jobs = jobs[jobs["optimizer"] == challenger].drop_duplicates("_match").set_index("_match")
    block = []
    for base in baselines:
        b = jobs[jobs["optimizer"] == base].drop_duplicates("_match").set_index("_match")
        common = on_jobs.index.intersection(b.index)
        on = on_jobs.loc[common, measure].to_numpy(float)
        off = b.loc[common, measure].to_numpy(float)
        ok = np.isfinite(on) & np.isfinite(off)
        row = _row(on[ok], off[ok], measure)
        row.update(challenger=challenger, baseline=base, label=label, test=test,
                   challenger_mean=float(np.mean(on[ok])) if ok.any() else math.nan,
                   baseline_mean=float(np.mean(off[ok])) if ok.any() else math.nan)
        block.append(row)
    if block:
        for r, ph, th in zip(block, holm([r["p"] for r in block]),
                             holm([r["t_p"] for r in block])):
            r["p_holm"], r["t_p_holm"] = float(ph), float(th)
            r["verdict"] = _verdict(r)
    return block


def paired_tests(inc: pd.DataFrame, swept: list[str], jobs: pd.DataFrame | None = None,
                 n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Challenger − baseline per challenger (LLP, LLP + meta where present), baseline and
    measure, then LLP + meta − LLP (see the module docstring). ``n_boot`` and ``seed`` are
    kept for callers; the intervals need no resampling."""
    jobs = job_table(inc) if jobs is None else jobs
    match = jobs["seed"].astype(str)
    for k in _pair_keys(inc, swept):
        match = match + "|" + inc[k].astype(str).to_numpy()
    jobs = jobs.assign(_match=match.to_numpy())
    present = set(jobs["optimizer"])
    baselines = [n for n in summary_table(jobs)["optimizer"] if n not in CHALLENGERS]
    rows = []
    for challenger in (c for c in CHALLENGERS if c in present):
        for measure, label in MEASURES:
            rows.extend(_family(jobs, challenger, baselines, measure, label, TESTS[measure]))
    if CHALLENGER in present and META in present:
        for measure, label in MEASURES:
            rows.extend(_family(jobs, META, [CHALLENGER], measure, label, META_TESTS[measure]))
    cols = ["challenger", "baseline", "measure", "label", "n", "challenger_mean",
            "baseline_mean", "mean_diff", "ci_low", "ci_high", "median_diff", "hl", "hl_low",
            "hl_high", "hl_level", "statistic", "p", "p_holm", "t", "t_p", "t_p_holm",
            "cohens_d", "rank_biserial", "verdict", "test"]
    return pd.DataFrame(rows).reindex(columns=cols)


def _g(x: float) -> str:
    return "n/a" if not math.isfinite(float(x)) else f"{float(x):+.3g}"


def _evidence(row: Any) -> str:
    """One claim's evidence: the mean difference, its 95 % paired-t interval, n of seeds and
    the Holm p of the paired t-test (the plain p for LLP + meta − LLP: a family of one)."""
    if int(row["n"]) < MIN_PAIRS:
        return f"{row['n']} seed pair{'s' if int(row['n']) != 1 else ''}"
    p = float(row["t_p_holm"])
    return (f"mean difference {_g(row['mean_diff'])}, 95 % CI [{_g(row['ci_low'])}, "
            f"{_g(row['ci_high'])}], n = {int(row['n'])} seeds, "
            f"p = {f'{p:.2g}' if math.isfinite(p) else 'n/a'}"
            + (" (Holm)" if row["test"] in TESTS.values() else ""))


NAMES = {CHALLENGER: "LLP", META: "LLP + meta"}


def _claims(t: pd.DataFrame, word_hi: str, word_lo: str) -> list[str]:
    """The verdicts of one measure's rows grouped into phrases, each claim with its evidence."""
    bits = []
    for verdict, words in (("higher", f"significantly {word_hi} than"),
                           ("lower", f"significantly {word_lo} than"),
                           (None, "not significantly different from")):
        rows = t[t["verdict"] == verdict] if verdict else \
            t[~t["verdict"].isin(["higher", "lower"])]
        if len(rows):
            bits.append(f"{words} " + ", ".join(f"{r['baseline']} ({_evidence(r)})"
                                                for _, r in rows.iterrows()))
    return bits


WORDS = (("final.test_acc", "On test accuracy", "more accurate", "less accurate"),
         ("probe.lambda_max", "On λmax", "sharper (higher λmax)", "flatter (lower λmax)"),
         ("probe.trace", "On the trace", "higher in trace", "lower in trace"))


def verdict_text(tests: pd.DataFrame, challenger: str = CHALLENGER) -> str:
    """How ``challenger`` (LLP, or LLP + meta) compares with each baseline on test accuracy,
    then on λmax: every claim with its evidence (the mean challenger − baseline difference, its
    95 % paired-t interval, n of seeds, the Holm p), each measure's test and its calibration
    from the suite (:func:`landscope.analysis.calibration.calibration_note`)."""
    from landscope.analysis.calibration import calibration_note

    name = NAMES.get(challenger, challenger)
    if "challenger" in tests:
        tests = tests[(tests["challenger"] == challenger) & (tests["test"].isin(TESTS.values()))]
    if tests.empty:
        return f"No {name} job could be paired with a baseline."
    n_base = tests["baseline"].nunique()
    parts = []
    for measure, lead, word_hi, word_lo in WORDS[:2]:  # the trace: in the table
        t = tests[tests["measure"] == measure]
        if t.empty:
            continue
        parts.append(f"{lead} ({name} − baseline), {name} is "
                     f"{'; '.join(_claims(t, word_hi, word_lo))}. Test: paired t over seeds, "
                     f"Holm across the {n_base} baselines, α = {ALPHA:g}; "
                     f"{calibration_note(TESTS[measure])}.")
    n = int(tests["n"].max()) if len(tests) else 0
    parts.append(f"The unit is the seed (up to {n} pairs); the 95 % intervals are paired-t "
                 "intervals of the mean difference, not adjusted for the baselines (the Holm p "
                 f"is). With {n} pairs the exact Wilcoxon p-value cannot go below "
                 f"{min(1.0, 2.0 / 2 ** n):.3g}, so it is reported, not used; the Hodges–Lehmann "
                 "estimate with its Wilcoxon-inverted interval (and that interval's exact "
                 "coverage) stands beside the mean in the table. Absence of a significant "
                 "difference is not evidence of equivalence.")
    return " ".join(parts)


def meta_text(tests: pd.DataFrame) -> str:
    """LLP + meta against LLP on each measure: the claim, its evidence and calibration."""
    from landscope.analysis.calibration import calibration_note

    t = tests[tests["test"].isin(META_TESTS.values())] if "test" in tests else tests.iloc[:0]
    if t.empty:
        return "No LLP + meta job could be paired with an LLP job."
    parts = []
    for measure, lead, word_hi, word_lo in WORDS:
        rows = t[t["measure"] == measure]
        if len(rows):
            parts.append(f"{lead} (LLP + meta − LLP), LLP + meta is "
                         f"{'; '.join(_claims(rows, word_hi, word_lo))}; "
                         f"{calibration_note(META_TESTS[measure])}.")
    return " ".join(parts) + (" Test: paired t over seeds (one comparison per measure, no "
                              f"multiplicity correction), α = {ALPHA:g}.")


def plot(jobs: pd.DataFrame, path: Path) -> None:
    """Test accuracy, λmax and trace per optimizer, one dot per seed, mean as a bar."""
    from landscope.plots import pyplot, save_png

    plt = pyplot()
    names = list(summary_table(jobs)["optimizer"])
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.6))
    rng = np.random.default_rng(0)
    for ax, (col, label) in zip(np.atleast_1d(axes), MEASURES):
        for i, name in enumerate(names):
            v = pd.to_numeric(jobs.loc[jobs["optimizer"] == name, col],
                              errors="coerce").to_numpy(float)
            v = v[np.isfinite(v)]
            color = {CHALLENGER: "C3", META: "C1"}.get(name, "C0")
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=18, color=color, alpha=0.8)
            if len(v):
                ax.hlines(v.mean(), i - 0.3, i + 0.3, color="k", lw=1.5)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30)
        ax.set_title(label)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_png(fig, path)


SUMMARY_COLUMNS = [("optimizer", "optimizer"), ("n", "n"),
                   ("final.test_acc_mean", "test acc"), ("final.test_acc_sd", "sd"),
                   ("probe.lambda_max_mean", "λmax"), ("probe.lambda_max_sd", "sd"),
                   ("probe.trace_mean", "trace"), ("probe.trace_sd", "sd"),
                   ("final.grad_evals_mean", "grad evals"),
                   ("llp_curvature_mean", "LLP curvature κ"), ("llp_lr_mean", "LLP step"),
                   ("llp_meta_scale_mean", "meta factor")]
TEST_COLUMNS = [("baseline", "baseline"), ("label", "measure"), ("n", "n"),
                ("challenger_mean", "challenger mean"), ("baseline_mean", "baseline mean"),
                ("mean_diff", "mean diff"), ("ci_low", "95 % CI low (t)"),
                ("ci_high", "95 % CI high (t)"), ("hl", "HL estimate"),
                ("hl_low", "HL CI low"), ("hl_high", "HL CI high"), ("hl_level", "HL coverage"),
                ("p_holm", "p Wilcoxon (Holm)"), ("t", "t"), ("t_p_holm", "p t (Holm)"),
                ("cohens_d", "d_z"), ("rank_biserial", "r_rb"), ("verdict", "challenger is")]


def section(ctx: Any) -> None:
    """Write the optimizer-study section into ``ctx.doc`` (tables, verdicts, figure, CSVs):
    LLP against the baselines, and where the sweep has the ``llp+meta`` arm, LLP + meta against
    the baselines and against LLP, side by side."""
    doc, inc, out = ctx.doc, ctx.coll.included, Path(ctx.out)
    jobs = job_table(inc)
    summary = summary_table(jobs)
    tests = paired_tests(inc, list(ctx.coll.swept), jobs)
    with_meta = META in set(jobs["optimizer"])
    doc.heading("Optimizer study: LLP against SGD, momentum, Adam and SAM")
    doc.para("Per optimizer, mean and standard deviation over seeds of the final test accuracy, "
             "λmax and Hessian trace (probes on the final checkpoint), the gradient "
             "evaluations used (SAM's and LLP's extra ones included) and, for LLP, its "
             "curvature scale κ and step size averaged over epochs (metrics.jsonl)"
             + ("; llp+meta is LLP with its meta-model (optimizer.llp.meta=true), whose mean "
                "step factor is the meta factor column" if with_meta else "")
             + ". Every column is in optimizer_study.csv.")
    doc.frame(summary, SUMMARY_COLUMNS)
    for challenger in (c for c in CHALLENGERS if c in set(jobs["optimizer"])):
        name = NAMES[challenger]
        rows = tests[(tests["challenger"] == challenger) & tests["test"].isin(TESTS.values())]
        doc.heading(f"{name} against each baseline (paired by seed)", 3)
        doc.para(f"Differences are {name} − baseline. " + verdict_text(tests, challenger)
                 + " Effect sizes: Cohen's d_z and the rank-biserial correlation. Every column "
                 "is in optimizer_study_tests.csv (median difference included).")
        doc.frame(rows, TEST_COLUMNS)
    if with_meta:
        doc.heading("LLP + meta against LLP (paired by seed)", 3)
        doc.para("Does the meta-model help? Differences are LLP + meta − LLP. " + meta_text(tests))
        doc.frame(tests[tests["test"].isin(META_TESTS.values())], TEST_COLUMNS)
    atomic_write_text(out / "optimizer_study.csv", summary.to_csv(index=False))
    atomic_write_text(out / "optimizer_study_tests.csv", tests.to_csv(index=False))
    ctx.figure("optimizer_study", lambda png: plot(jobs, png),
               "test accuracy, λmax and trace per optimizer, one dot per seed (LLP in red"
              + (", LLP + meta in orange)" if with_meta else ")"))


SECTION = Section("the optimizer study (LLP against the baselines)", applies, section,
                  "optimizers")
