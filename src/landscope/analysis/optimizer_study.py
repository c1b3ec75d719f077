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
  with the name); the difference is LLP − baseline. Per measure (test accuracy, λmax, trace)
  :func:`landscope.analysis.hypotheses.paired.paired_stats` gives the Wilcoxon signed-rank test,
  the paired t-test, Cohen's d_z, the rank-biserial correlation and a 95% bootstrap CI of the
  median difference; Holm corrections (:func:`~landscope.analysis.hypotheses.paired.holm`) run
  across the baselines, one family per measure and test; written to
  ``optimizer_study_tests.csv``;
- the verdict per baseline and measure: the **paired t-test** (Holm) decides, because with
  n pairs the exact two-sided Wilcoxon p-value cannot go below 2/2^n (0.0625 for the 5 seeds
  of the preset, so the Wilcoxon test alone could never reject at α = 0.05); the Wilcoxon
  p-value is reported alongside. ``higher``/``lower`` when p_t(Holm) < α (LLP's value is
  higher/lower than the baseline's), ``no significant difference`` otherwise (absence of
  evidence, not equivalence: no margin is tested), ``too few pairs`` below 3 pairs;
- one figure, ``figures/optimizer_study.png``: test accuracy, λmax and trace per optimizer,
  one dot per seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from landscope.io import atomic_write_text

FACTOR = "optimizer.name"
CHALLENGER = "llp"
ORDER = ("sgd", "momentum", "adam", "adamw", "sam", "llp")
MEASURES = (("final.test_acc", "test accuracy"), ("probe.lambda_max", "λmax"),
            ("probe.trace", "trace"))
ALPHA = 0.05
MIN_PAIRS = 3


def applies(ctx: Any) -> bool:
    """True when the sweep varies ``optimizer.name`` and one of the included jobs is LLP."""
    inc = ctx.coll.included
    return FACTOR in ctx.coll.swept and FACTOR in inc.columns and \
        (inc[FACTOR].astype(str) == CHALLENGER).any()


def _job_metrics(path: Any) -> dict[str, float]:
    """LLP's epoch averages from a job's metrics.jsonl (NaN when absent)."""
    from landscope.io import read_jsonl

    out = {"llp_curvature": math.nan, "llp_lr": math.nan, "llp_curv_mean": math.nan}
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


def job_table(inc: pd.DataFrame) -> pd.DataFrame:
    """One row per included job: optimizer, seed, the measures, grad_evals and LLP's averages."""
    df = pd.DataFrame({"optimizer": inc[FACTOR].astype(str), "seed": inc["seed"]})
    for col, _ in MEASURES:
        df[col] = pd.to_numeric(inc[col], errors="coerce") if col in inc else math.nan
    df["final.grad_evals"] = pd.to_numeric(inc["final.grad_evals"], errors="coerce") \
        if "final.grad_evals" in inc else math.nan
    extra = [_job_metrics(p) if "path" in inc else _job_metrics(None)
             for p in (inc["path"] if "path" in inc else [None] * len(inc))]
    for key in ("llp_curvature", "llp_lr", "llp_curv_mean"):
        df[key] = [e[key] for e in extra]
    return df


def summary_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over seeds per optimizer (baselines in ORDER, LLP last)."""
    names = sorted(jobs["optimizer"].unique(),
                   key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    rows = []
    for name in names:
        g = jobs[jobs["optimizer"] == name]
        row: dict[str, Any] = {"optimizer": name, "n": len(g)}
        for col in ("final.test_acc", "probe.lambda_max", "probe.trace", "final.grad_evals",
                    "llp_curvature", "llp_lr"):
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


def paired_tests(inc: pd.DataFrame, swept: list[str], jobs: pd.DataFrame | None = None,
                 n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """LLP − baseline per baseline and measure (see the module docstring)."""
    from landscope.analysis.hypotheses.paired import holm, paired_stats

    jobs = job_table(inc) if jobs is None else jobs
    keys = _pair_keys(inc, swept)
    match = jobs["seed"].astype(str)
    for k in keys:
        match = match + "|" + inc[k].astype(str).to_numpy()
    jobs = jobs.assign(_match=match.to_numpy())
    challenger = jobs[jobs["optimizer"] == CHALLENGER].drop_duplicates("_match").set_index("_match")
    baselines = [n for n in summary_table(jobs)["optimizer"] if n != CHALLENGER]
    rows = []
    for measure, label in MEASURES:
        block = []
        for base in baselines:
            b = jobs[jobs["optimizer"] == base].drop_duplicates("_match").set_index("_match")
            common = challenger.index.intersection(b.index)
            on = challenger.loc[common, measure].to_numpy(float)
            off = b.loc[common, measure].to_numpy(float)
            ok = np.isfinite(on) & np.isfinite(off)
            row = paired_stats(on[ok], off[ok], measure, n_boot=n_boot, seed=seed)
            row.update(baseline=base, label=label, llp_mean=float(np.mean(on[ok])) if ok.any()
                       else math.nan, baseline_mean=float(np.mean(off[ok])) if ok.any()
                       else math.nan)
            block.append(row)
        if block:
            p_holm = holm([r["p"] for r in block])
            t_holm = holm([r["t_p"] for r in block])
            for r, ph, th in zip(block, p_holm, t_holm):
                r["p_holm"], r["t_p_holm"] = float(ph), float(th)
                r["verdict"] = _verdict(r)
        rows.extend(block)
    cols = ["baseline", "measure", "label", "n", "llp_mean", "baseline_mean", "median_diff",
            "mean_diff", "ci_low", "ci_high", "statistic", "p", "p_holm", "t", "t_p", "t_p_holm",
            "cohens_d", "rank_biserial", "verdict"]
    return pd.DataFrame(rows).reindex(columns=cols)


def verdict_text(tests: pd.DataFrame) -> str:
    """One paragraph: how LLP compares on test accuracy, then on λmax."""
    if tests.empty:
        return "No LLP job could be paired with a baseline."
    parts = []
    for measure, word_hi, word_lo in (("final.test_acc", "more accurate", "less accurate"),
                                      ("probe.lambda_max", "sharper (higher λmax)",
                                       "flatter (lower λmax)")):
        t = tests[tests["measure"] == measure]
        if t.empty:
            continue
        hi = list(t.loc[t["verdict"] == "higher", "baseline"])
        lo = list(t.loc[t["verdict"] == "lower", "baseline"])
        ns = list(t.loc[~t["verdict"].isin(["higher", "lower"]), "baseline"])
        bits = []
        if hi:
            bits.append(f"significantly {word_hi} than {', '.join(hi)}")
        if lo:
            bits.append(f"significantly {word_lo} than {', '.join(lo)}")
        if ns:
            bits.append(f"not significantly different from {', '.join(ns)}")
        parts.append(f"{'On test accuracy' if measure == 'final.test_acc' else 'On λmax'}, "
                     f"LLP is {'; '.join(bits)}.")
    n = int(tests["n"].max()) if len(tests) else 0
    parts.append(f"Paired t-tests (Holm across the {tests['baseline'].nunique()} baselines, "
                 f"α = {ALPHA:g}) on up to {n} seed pairs; with {n} pairs the exact Wilcoxon "
                 f"p-value cannot go below {min(1.0, 2.0 / 2 ** n):.3g}, so it is reported, not "
                 "used. Absence of a significant difference is not evidence of equivalence.")
    return " ".join(parts)


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
            color = "C3" if name == CHALLENGER else "C0"
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
                   ("llp_curvature_mean", "LLP curvature κ"), ("llp_lr_mean", "LLP step")]
TEST_COLUMNS = [("baseline", "baseline"), ("label", "measure"), ("n", "n"),
                ("llp_mean", "LLP mean"), ("baseline_mean", "baseline mean"),
                ("median_diff", "median diff"), ("ci_low", "CI low"), ("ci_high", "CI high"),
                ("p_holm", "p Wilcoxon (Holm)"), ("t", "t"), ("t_p_holm", "p t (Holm)"),
                ("cohens_d", "d_z"), ("rank_biserial", "r_rb"), ("verdict", "LLP is")]


def section(ctx: Any) -> None:
    """Write the optimizer-study section into ``ctx.doc`` (tables, verdict, figure, CSVs)."""
    doc, inc, out = ctx.doc, ctx.coll.included, Path(ctx.out)
    jobs = job_table(inc)
    summary = summary_table(jobs)
    tests = paired_tests(inc, list(ctx.coll.swept), jobs)
    doc.heading("Optimizer study: LLP against SGD, momentum, Adam and SAM")
    doc.para("Per optimizer, mean and standard deviation over seeds of the final test accuracy, "
             "λmax and Hessian trace (probes on the final checkpoint), the gradient "
             "evaluations used (SAM's and LLP's extra ones included) and, for LLP, its "
             "curvature scale κ and step size averaged over epochs (metrics.jsonl). "
             "Every column is in optimizer_study.csv.")
    doc.frame(summary, SUMMARY_COLUMNS)
    doc.heading("LLP against each baseline (paired by seed)", 3)
    doc.para("Differences are LLP − baseline. " + verdict_text(tests) + " Effect sizes: "
             "Cohen's d_z and the rank-biserial correlation; 95% bootstrap CI of the median "
             "difference. Every column is in optimizer_study_tests.csv.")
    doc.frame(tests, TEST_COLUMNS)
    atomic_write_text(out / "optimizer_study.csv", summary.to_csv(index=False))
    atomic_write_text(out / "optimizer_study_tests.csv", tests.to_csv(index=False))
    png = out / "figures" / "optimizer_study.png"
    plot(jobs, png)
    doc.image(png, "figures/optimizer_study.png",
              "test accuracy, λmax and trace per optimizer, one dot per seed (LLP in red)")
