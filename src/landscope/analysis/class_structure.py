"""The report section "Class structure of the outliers": how many Hessian eigenvalues split off
the bulk against C − 1 and C, and how much of the class-mean gradients the top eigenvectors
span (Sagun et al. 2017/2018; Papyan 2019, 2020; the measurement and its definitions:
:mod:`landscope.probes.class_structure`).

It applies to the included jobs with ``probe.classes=true`` results (``probe.classes_*``).
Configurations are the combinations of the swept config keys (seed excluded); the seeds of a
configuration are its units. Per configuration (``class_structure.csv``):

- the outlier count by the gap rule (and by the edge rule where a density ran; ``≥k`` when all
  k top eigenvalues are above the threshold, a lower bound): its values over the seeds and how
  many jobs count exactly C − 1, exactly C, or another number (the gap rule);
- the mean over seeds of the capture ``mean_c ‖V_rᵀ g_c‖² / ‖g_c‖²`` and of the subspace
  overlap (mean squared principal cosine between span V_r and span{g_c}) for r = C − 1 and C,
  and of the same two for the class means around the loss gradient (``g_c − ∇L``, at most
  C − 1 dimensions) against V_{C−1} ("centered"),
  each with its t interval over the seeds (95 %; none with one seed), and the mean relation
  ``‖Σ_c (n_c/n) g_c‖ / mean_c ‖g_c‖`` (0: the class means span C − 1 dimensions).

Every statement is descriptive: no test, hence no p-value and no calibration entry; the
intervals describe the spread over seeds of each configuration, and no claim compares
configurations. The figure shows the top eigenvalues of every job (the gap rule's outliers
filled, C − 1 and C marked) and, per eigenvector, the fraction of it inside span{g_c}.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from landscope.analysis.doc import fmt
from landscope.analysis.report_measures import mean_ci
from landscope.analysis.section import Section
from landscope.io import atomic_write_text
from landscope.jobdir import JobDir

KEY = "probe.classes_n_outliers"
_MEANS = ("capture_top_c_minus_1", "capture_top_c", "overlap_top_c_minus_1", "overlap_top_c",
          "capture_centered_top_c_minus_1", "overlap_centered_top_c_minus_1")
_COLUMNS = [("config", "configuration"), ("n_seeds", "seeds"), ("C", "C"),
            ("top_k", "k"), ("outliers", "outliers (gap rule)"), ("match_c_minus_1", "= C − 1"),
            ("match_c", "= C"), ("match_other", "other"), ("outliers_edge", "edge rule"),
            ("capture_top_c_minus_1_text", "capture top C − 1"),
            ("capture_top_c_text", "capture top C"),
            ("overlap_top_c_minus_1_text", "overlap top C − 1"),
            ("overlap_top_c_text", "overlap top C"),
            ("capture_centered_top_c_minus_1_text", "centered: capture top C − 1"),
            ("overlap_centered_top_c_minus_1_text", "centered: overlap top C − 1"),
            ("relation", "relation")]


def class_jobs(jobs: pd.DataFrame) -> pd.DataFrame:
    """The included jobs with class-structure results, index reset."""
    if jobs.empty or KEY not in jobs.columns:
        return jobs.iloc[0:0]
    return jobs[pd.to_numeric(jobs[KEY], errors="coerce").notna()].reset_index(drop=True)


def _label(job: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{k}={job.get(k)}" for k in keys) if keys else "all jobs"


def _counts(values: pd.Series) -> str:
    """``"9 (2), 10 (1)"``: each value with its number of jobs."""
    vc = values.dropna().astype(int).value_counts().sort_index()
    return ", ".join(f"{v} ({n})" for v, n in vc.items()) if len(vc) else ""


def _edge_counts(grp: pd.DataFrame) -> str:
    """The edge rule's counts as :func:`_counts`, a censored count (every one of the top k above
    the threshold: a lower bound) written ``≥k``."""
    if "probe.classes_n_outliers_edge" not in grp.columns:
        return ""
    edge = pd.to_numeric(grp["probe.classes_n_outliers_edge"])
    cens = grp.get("probe.classes_n_outliers_edge_censored", pd.Series(False, index=grp.index))
    text = [f"≥{int(v)}" if bool(c) is True else str(int(v))
            for v, c in zip(edge, cens.fillna(False)) if pd.notna(v)]
    return ", ".join(f"{v} ({text.count(v)})" for v in sorted(set(text)))


def class_table(jobs: pd.DataFrame, swept: list[str]) -> pd.DataFrame:
    """One row per configuration of :func:`class_jobs` (module docstring)."""
    sel = class_jobs(jobs)
    keys = [k for k in swept if k in sel.columns]
    rows = []
    for label, grp in sel.groupby(sel.apply(lambda j: _label(j, keys), axis=1), sort=True):
        C = pd.to_numeric(grp["probe.classes_n_classes"]).astype(int)
        n_out = pd.to_numeric(grp[KEY]).astype(int)
        row: dict[str, Any] = {
            "config": label, "n_seeds": len(grp), "C": _counts(C),
            "top_k": _counts(grp["probe.classes_top_k"]), "outliers": _counts(n_out),
            "match_c_minus_1": int((n_out == C - 1).sum()), "match_c": int((n_out == C).sum())}
        row["match_other"] = len(grp) - row["match_c_minus_1"] - row["match_c"]
        row["outliers_edge"] = _edge_counts(grp)
        for name in _MEANS:
            col = f"probe.classes_{name}"  # absent from results written before it existed
            mean, half, n = mean_ci(pd.to_numeric(grp[col]).tolist() if col in grp else [])
            row.update({name: mean, f"{name}_half": half,
                        f"{name}_text": fmt(mean) if not math.isfinite(half)
                        else f"{fmt(mean)} ± {fmt(half)}"})
        row["relation"] = float(pd.to_numeric(grp["probe.classes_relation"]).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _arrays(path: str) -> dict[str, np.ndarray]:
    """The job's saved ``classes_eigenvalues`` and ``classes_eigvec_share`` ({} if absent)."""
    job = JobDir(path)
    pfp = job.result().get("probe_fingerprint")
    if not pfp:
        return {}
    got = job.cache("probes", pfp).arrays(["classes_eigenvalues", "classes_eigvec_share"])
    return got or {}


def plot_class_structure(sel: pd.DataFrame, labels: list[str], path: Path) -> Path:
    """Left: each job's top eigenvalues against their index (log scale; the gap rule's outliers
    filled; dotted lines after the (C − 1)-th and the C-th). Right: per eigenvector, the
    fraction inside span{g_c}. One colour per configuration."""
    from landscope.plots import pyplot, save_png

    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4))
    fig.subplots_adjust(wspace=0.3)
    order = sorted(set(labels))
    seen: set[str] = set()
    for (_, job), label in zip(sel.iterrows(), labels):
        a = _arrays(job["path"])
        if "classes_eigenvalues" not in a:
            continue
        lam, idx = a["classes_eigenvalues"], np.arange(1, len(a["classes_eigenvalues"]) + 1)
        c, n = f"C{order.index(label) % 10}", int(job[KEY])
        name = None if label in seen else label
        seen.add(label)
        ax.plot(idx, np.where(lam > 0, lam, np.nan), color=c, lw=0.8, label=name)
        ax.scatter(idx[:n], lam[:n], color=c, s=14)
        ax.scatter(idx[n:], np.where(lam[n:] > 0, lam[n:], np.nan), facecolors="none",
                   edgecolors=c, s=14)
        bx.plot(idx, a["classes_eigvec_share"], color=c, lw=0.8, marker="o", ms=3)
    C = int(pd.to_numeric(sel["probe.classes_n_classes"]).max())
    for a_ in (ax, bx):
        for x in (C - 1, C):
            a_.axvline(x + 0.5, color="k", ls=":", lw=0.8)
        a_.set_xlabel("eigenvalue index j")
        a_.grid(alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("λ_j (filled: outliers by the gap rule)")
    bx.set_ylabel("‖Q_gᵀ v_j‖² (share of v_j in span{g_c})")
    bx.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def applies(ctx: Any) -> bool:
    return not class_jobs(ctx.coll.included).empty


def write(ctx: Any) -> None:
    """The section (module docstring): a paragraph, the table, ``class_structure.csv``, one
    figure."""
    sel = class_jobs(ctx.coll.included)
    keys = [k for k in ctx.coll.swept if k in sel.columns]
    table = class_table(sel, keys)
    out = Path(ctx.out)
    atomic_write_text(out / "class_structure.csv", table.to_csv(index=False))
    ctx.doc.heading("Class structure of the outliers")
    matched = int(table["match_c_minus_1"].sum() + table["match_c"].sum())
    ctx.doc.para(
        f"{len(sel)} jobs in {len(table)} configuration(s) measured the class structure of the "
        "Hessian's outliers (probe.classes): the class-mean gradients g_c of the probe data "
        "against the top-k Hessian eigenvectors V. Outliers (gap rule): the position n of the "
        "largest ratio λ_n/λ_{n+1} among the top k (edge rule: top-k eigenvalues above the SLQ "
        "outlier threshold, where a density ran). C − 1 or C outliers is Papyan's prediction "
        f"for C classes; {matched} of {len(sel)} jobs counted one of the two. Capture: mean "
        "over classes of ‖V_rᵀ g_c‖²/‖g_c‖² for r = C − 1 and C (1: the class means lie in the "
        "top eigenspace); overlap: mean squared cosine of the principal angles between span "
        "V_r and span{g_c}; centered: the same for g_c − ∇L (C − 1 dimensions) against the "
        "top C − 1; relation: ‖Σ (n_c/n) g_c‖ / mean ‖g_c‖ (0: the class means span "
        "C − 1 dimensions). Means over seeds with 95 % t intervals; seeds are the units. "
        "Descriptive only: no test is made, so no p-value and no calibration. Table: "
        "class_structure.csv.")
    ctx.doc.frame(table, _COLUMNS)
    labels = list(sel.apply(lambda j: _label(j, keys), axis=1))
    ctx.figure("class_structure", lambda png: plot_class_structure(sel, labels, png),
               "top Hessian eigenvalues per job (filled: outliers by the gap rule; dotted: "
                  "after the (C − 1)-th and the C-th) and the share of each eigenvector inside "
                  "span{g_c}")


SECTION = Section("Class structure of the outliers", applies, write)

__all__ = ["KEY", "SECTION", "class_jobs", "class_table", "plot_class_structure"]
