"""The report section "Edge of stability": λmax against the stability threshold of gradient
descent, step by step (Cohen et al., "Gradient descent on neural networks typically occurs at
the edge of stability", ICLR 2021).

It applies to the included jobs that measured λmax during training (``probe.every_n_steps``
> 0: the ``curv_step*`` lists of ``metrics.jsonl``, :mod:`landscope.probes.step_curvature`)
with plain or heavy-ball SGD (``optimizer=sgd`` or ``momentum``, not Nesterov), e.g. the
``eos`` preset (``conf/experiment/eos.yaml``). Everything is read from the saved files.

Threshold. Gradient descent with step size η, heavy-ball momentum β and (coupled) weight decay
``wd`` on a quadratic with Hessian H is stable iff every eigenvalue λ of H satisfies
``λ + wd < (2 + 2β)/η``; the threshold of λmax is therefore

    ``T = (2 + 2β)/η − wd``   (``2/η`` for plain gradient descent),

with η the learning rate of the epoch the step belongs to (a schedule moves T). The ratio
``r_t = λmax(t) / T`` is measured after every ``k``-th step ``t``.

Per job (``eos.csv``):

- ``reach_step``: the first measured step t with ``r_t ≥ 1`` (λmax at or above the threshold:
  "reaches"); empty when it never does;
- ``fraction_within``: among the measured steps *after* the reach step (``t > reach_step``;
  their count is ``n_after``), the fraction with ``|r_t − 1| ≤ 0.1`` (λmax within ±10 % of the
  threshold); NaN without such steps. ``goal_met``: ``fraction_within ≥ 0.8`` (issue #20);
- the non-monotone loss, from the probe loss at the measured steps (``curv_step_loss``: the
  full-batch training loss for ``train.full_batch`` with ``probe.data_size=null``):
  ``rose_before`` / ``rose_after`` are the fractions of the intervals between consecutive
  measurements, before the reach step and from it on, in which the loss rose; ``largest_rise``
  is the largest relative rise ``(L_{i+1} − L_i) / L_i`` over all intervals (0 when it never
  rose). A stable (sub-threshold) phase descends monotonically; at the edge of stability the
  loss goes on decreasing over long horizons but not monotonically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from landscope.analysis.doc import fmt
from landscope.analysis.section import Section
from landscope.io import atomic_write_text, read_jsonl

BAND = 0.1  # "within" the threshold: |lambda_max / T - 1| <= BAND
GOAL = 0.8  # goal_met: fraction_within >= GOAL
_OPTIMIZERS = ("sgd", "momentum")  # torch.optim.SGD (heavy ball), the threshold's optimizers
_COLUMNS = [("optimizer.lr", "η"), ("seed", "seed"), ("threshold", "(2+2β)/η − wd"),
            ("reach_step", "reach step"), ("lambda_at_reach", "λmax there"),
            ("n_after", "steps after"), ("fraction_within", "within ±10 %"),
            ("goal_met", f"≥ {GOAL:.0%}"), ("rose_before", "loss rose before"),
            ("rose_after", "loss rose after"), ("largest_rise", "largest rise"),
            ("final_loss", "last loss")]


def threshold(lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> float:
    """``(2 + 2β)/η − wd``: the largest stable Hessian eigenvalue of (heavy-ball) gradient
    descent (module docstring).

    >>> threshold(0.5), threshold(0.25, 0.5), threshold(0.5, 0.0, 1.0)
    (4.0, 12.0, 3.0)
    """
    return (2.0 + 2.0 * momentum) / lr - weight_decay


def _rose(loss: np.ndarray) -> float:
    """The fraction of consecutive pairs in which ``loss`` rose (NaN without a pair)."""
    if len(loss) < 2:
        return math.nan
    return float(np.mean(np.diff(loss) > 0))


def eos_stats(steps: Any, ratio: Any, loss: Any, band: float = BAND) -> dict[str, Any]:
    """The section's statistics of one job's series (module docstring): measured ``steps``
    (ascending), ``ratio`` = λmax / threshold and the probe ``loss`` at those steps.

    >>> s = eos_stats([1, 2, 3, 4], [0.5, 1.0, 1.05, 1.3], [3.0, 2.0, 2.5, 2.4])
    >>> s["reach_step"], s["n_after"], s["fraction_within"], s["rose_after"]
    (2, 2, 0.5, 0.5)
    """
    steps, ratio, loss = (np.asarray(a, dtype=float) for a in (steps, ratio, loss))
    hit = np.flatnonzero(ratio >= 1.0)
    out: dict[str, Any] = {"reach_step": None, "ratio_at_reach": math.nan, "n_after": 0,
                           "fraction_within": math.nan}
    if len(hit):
        i = int(hit[0])
        after = ratio[i + 1:]
        out.update(reach_step=int(steps[i]), ratio_at_reach=float(ratio[i]), n_after=len(after),
                   fraction_within=float(np.mean(np.abs(after - 1.0) <= band)) if len(after)
                   else math.nan)
        out["rose_before"], out["rose_after"] = _rose(loss[:i + 1]), _rose(loss[i:])
    else:
        out["rose_before"], out["rose_after"] = _rose(loss), math.nan
    rel = np.diff(loss) / np.abs(loss[:-1]) if len(loss) > 1 else np.zeros(0)
    out["largest_rise"] = float(max(0.0, np.nanmax(rel))) if len(rel) else math.nan
    fraction = out["fraction_within"]
    out["goal_met"] = None if math.isnan(fraction) else bool(fraction >= GOAL)
    return out


def job_series(path: Path, momentum: float = 0.0, weight_decay: float = 0.0) -> pd.DataFrame:
    """One job's measured steps from its ``metrics.jsonl``: ``step``, ``lambda_max``, ``loss``,
    ``lr`` (the step's epoch's) and ``ratio`` = λmax / threshold; empty without any."""
    rows = []
    for r in read_jsonl(Path(path) / "metrics.jsonl"):
        for t, lam, loss in zip(r.get("curv_step", []), r.get("curv_step_lambda_max", []),
                                r.get("curv_step_loss", [])):
            rows.append({"step": int(t), "lambda_max": lam, "loss": loss, "lr": r["lr"]})
    df = pd.DataFrame(rows, columns=["step", "lambda_max", "loss", "lr"])
    thresholds = [threshold(float(lr), momentum, weight_decay) for lr in df["lr"]]
    return df.assign(ratio=df["lambda_max"].astype(float) / np.asarray(thresholds, float))


def _value(job: pd.Series, key: str, default: Any) -> Any:
    v = job.get(key, default)
    return default if v is None or (isinstance(v, float) and math.isnan(v)) else v


def eos_jobs(jobs: pd.DataFrame) -> pd.DataFrame:
    """The included jobs with ``probe.every_n_steps`` > 0 and a threshold (sgd or momentum,
    not Nesterov), index reset."""
    if jobs.empty or "config.probe.every_n_steps" not in jobs.columns:
        return jobs.iloc[0:0]
    keep = pd.to_numeric(jobs["config.probe.every_n_steps"], errors="coerce").fillna(0) > 0
    keep &= jobs.get("optimizer.name", pd.Series("sgd", index=jobs.index)).astype(str).isin(
        _OPTIMIZERS)
    if "optimizer.nesterov" in jobs.columns:
        keep &= ~jobs["optimizer.nesterov"].fillna(False).astype(bool)
    return jobs[keep].reset_index(drop=True)


def eos_table(jobs: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """``(table, series)``: one row of :func:`eos_stats` per job of :func:`eos_jobs` that
    measured at least one step (sorted by η, then seed), and each job's series by its path."""
    rows, series = [], {}
    for _, job in eos_jobs(jobs).iterrows():
        beta = float(_value(job, "optimizer.momentum", 0.0))
        wd = float(_value(job, "optimizer.weight_decay", 0.0))
        s = job_series(Path(job["path"]), beta, wd)
        if s.empty:
            continue
        series[str(job["path"])] = s
        stats = eos_stats(s["step"], s["ratio"], s["loss"])
        at = s["step"] == stats["reach_step"]
        rows.append({"sweep": job.get("sweep"), "job": job.get("job"), "path": job["path"],
                     "optimizer.lr": float(job["optimizer.lr"]), "seed": job.get("seed"),
                     "threshold": threshold(float(s["lr"].iloc[-1]), beta, wd),
                     "every_n_steps": int(job["config.probe.every_n_steps"]),
                     "n_measured": len(s), **stats,
                     "lambda_at_reach": float(s.loc[at, "lambda_max"].iloc[0]) if at.any()
                     else math.nan, "final_loss": float(s["loss"].iloc[-1])})
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values(["optimizer.lr", "seed"], kind="stable").reset_index(drop=True)
    return table, series


def plot_eos(table: pd.DataFrame, series: dict[str, pd.DataFrame], path: Path) -> Path:
    """λmax / threshold (left, the ±10 % band shaded) and the probe loss (right, log scale)
    against steps, one colour per η, one line style per seed."""
    from landscope.plots import pyplot, save_png

    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4))
    fig.subplots_adjust(wspace=0.3)
    lrs = sorted(set(table["optimizer.lr"]))
    seeds = sorted(set(table["seed"]), key=str)
    styles = ["-", "--", ":", "-."]
    for _, r in table.iterrows():
        s = series[str(r["path"])]
        c = f"C{lrs.index(r['optimizer.lr'])}"
        ls = styles[seeds.index(r["seed"]) % len(styles)]
        label = f"η={r['optimizer.lr']:g}, seed {r['seed']}"
        ax.plot(s["step"], s["ratio"], color=c, ls=ls, lw=1, label=label)
        bx.plot(s["step"], s["loss"], color=c, ls=ls, lw=1, label=label)
        if r["reach_step"] is not None and not pd.isna(r["reach_step"]):
            ax.axvline(r["reach_step"], color=c, ls=ls, lw=0.6, alpha=0.5)
    ax.axhspan(1 - BAND, 1 + BAND, color="0.85", zorder=0)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("λmax / ((2 + 2β)/η − wd)")
    bx.set_xlabel("optimizer step")
    bx.set_ylabel("probe loss")
    bx.set_yscale("log")
    for a in (ax, bx):
        a.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def applies(ctx: Any) -> bool:
    return not eos_jobs(ctx.coll.included).empty


def write(ctx: Any) -> None:
    """The section (module docstring): a paragraph, the table, ``eos.csv``, one figure."""
    table, series = eos_table(ctx.coll.included)
    ctx.doc.heading("Edge of stability")
    if table.empty:
        ctx.doc.para("The jobs with probe.every_n_steps > 0 measured no step.")
        return
    out = Path(ctx.out)
    atomic_write_text(out / "eos.csv", table.to_csv(index=False))
    met = int(table["goal_met"].fillna(False).astype(bool).sum())
    reached = int(table["reach_step"].notna().sum())
    ctx.doc.para(
        f"{len(table)} jobs measured λmax every {_steps_text(table)} optimizer steps "
        "(Lanczos to a relative residual of 1e-3 on the probe data). Gradient descent with step "
        "size η (heavy-ball momentum β, weight decay wd) is stable on a quadratic only while "
        "λmax < (2+2β)/η − wd, the threshold (2/η for plain gradient descent). A job reaches "
        "it at the first measured step with λmax ≥ threshold; 'within ±10 %' is the fraction "
        "of the measured steps after that one with |λmax/threshold − 1| ≤ 0.1 (the edge of "
        f"stability of Cohen et al. 2021); the goal is ≥ {GOAL:.0%}. {reached} of "
        f"{len(table)} jobs reached the threshold, {met} met the goal. 'Loss rose' is the "
        "fraction of the intervals between consecutive measurements in which the probe loss "
        "rose, before the reach step and from it on; 'largest rise' the largest relative rise "
        "of one interval. Table: eos.csv.")
    ctx.doc.frame(table, _COLUMNS)
    ctx.figure("eos", lambda png: plot_eos(table, series, png),
               "λmax over the threshold (2/η for plain gradient descent; band ±10 %) and the "
                  "probe loss against optimizer steps; vertical lines: the reach steps")


def _steps_text(table: pd.DataFrame) -> str:
    ks = sorted(set(int(k) for k in table["every_n_steps"]))
    return fmt(ks[0]) if len(ks) == 1 else "/".join(map(str, ks))


SECTION = Section("Edge of stability", applies, write)

__all__ = ["BAND", "GOAL", "SECTION", "eos_jobs", "eos_stats", "eos_table", "job_series",
           "plot_eos", "threshold"]

