"""H1's jobs table (:mod:`landscope.analysis.hypotheses.h1`): the included jobs with normalized
column names, which of them reached the target train loss, and the list of those that did not.
See :func:`landscope.analysis.hypotheses.h1.h1_test` for the rules."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from landscope.errors import LandscopeError

STOP_TARGET = "target_train_loss"  # landscope.train.STOP_TARGET_LOSS (not imported: torch)


def _numeric(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)


def _require(jobs: pd.DataFrame, columns: dict[str, str]) -> None:
    missing = [f"{col!r} ({why})" for col, why in columns.items() if col not in jobs.columns]
    if missing:
        raise LandscopeError("H1: the jobs table has no column " + ", ".join(missing))


def _batch_sizes(rows: pd.DataFrame, batch: str) -> np.ndarray:
    """The batch sizes of ``rows``; raises :class:`LandscopeError` when one is not positive or
    fewer than two differ."""
    b = _numeric(rows[batch])
    bad = np.isfinite(b) & (b <= 0)
    if bad.any():
        raise LandscopeError(f"H1: {batch} must be a positive number; got "
                             f"{sorted(set(b[bad].tolist()))}")
    distinct = np.unique(b[np.isfinite(b)])
    if len(distinct) < 2:
        raise LandscopeError(f"H1: {batch} does not vary across the included jobs "
                             f"({', '.join(f'{v:g}' for v in distinct) or 'no value'}); "
                             f"H1 needs at least two batch sizes")
    return b


def _targets(rows: pd.DataFrame, stop: np.ndarray, train_loss: np.ndarray,
             target_loss: Optional[float], notes: list[str]
             ) -> tuple[np.ndarray, Optional[float], np.ndarray]:
    """Each job's target train loss, the common one (None: none or several) and whether the
    job reached it (stopped at it, or below it without a stop reason; no target counts)."""
    n = len(rows)
    # the target train loss: the argument, else each job's train.target_train_loss
    if target_loss is not None:
        goal = np.full(n, float(target_loss))
    elif "train.target_train_loss" in rows.columns:
        goal = _numeric(rows["train.target_train_loss"])
    else:
        goal = np.full(n, np.nan)
    targets = np.unique(goal[np.isfinite(goal)])
    common = float(targets[0]) if len(targets) == 1 else None
    if len(targets) == 0:
        notes.append("no target train loss set (train.target_train_loss is null or absent): "
                     "every job counts as at target; equal train loss rests on the train-loss "
                     "control of step (b) alone")
        reached = np.ones(n, dtype=bool)
    else:
        if len(targets) > 1:
            notes.append(f"{len(targets)} different target train losses "
                         f"({', '.join(f'{t:g}' for t in targets)}): each job is judged against "
                         "its own; the train losses are not equal across targets")
        stopped = np.array([s == STOP_TARGET for s in stop], dtype=bool)
        no_reason = np.array([s is None or (isinstance(s, float) and math.isnan(s))
                              for s in stop], dtype=bool)
        no_target = ~np.isfinite(goal)
        with np.errstate(invalid="ignore"):
            below = train_loss <= goal
        reached = stopped | (no_reason & below) | no_target
        if no_target.any():
            notes.append(f"{int(no_target.sum())} jobs without a target train loss count as at "
                         "target")
    return goal, common, reached


def read_jobs(jobs: pd.DataFrame, batch: str, measure: str, target: str, control: str,
           cluster: str, target_loss: Optional[float], extra: Sequence[str] = ()
           ) -> tuple[pd.DataFrame, Optional[float], list[str]]:
    """The analysed rows with normalized column names, the common target and notes."""
    if not isinstance(jobs, pd.DataFrame) or jobs.empty:
        raise LandscopeError("H1: the jobs table is empty")
    needs = {batch: "batch size", measure: "the curvature measure", control: "train loss",
             cluster: "clusters"}
    _require(jobs, needs)
    if target not in jobs.columns and not (target == "test_error" and "final.test_acc" in jobs):
        raise LandscopeError(f"H1: the jobs table has no column {target!r} (test error)")
    notes: list[str] = []
    rows = jobs
    if "included" in jobs.columns:
        inc = jobs["included"].fillna(False).astype(bool)
        if (~inc).any():
            notes.append(f"{int((~inc).sum())} jobs not included (not completed) are not analysed")
        rows = jobs[inc]
    if rows.empty:
        raise LandscopeError("H1: no included (completed) job in the jobs table")
    y = (_numeric(rows[target]) if target in rows.columns
         else 1.0 - _numeric(rows["final.test_acc"]))
    b = _batch_sizes(rows, batch)
    n = len(rows)
    names = np.array([str(v) for v in (rows["job"] if "job" in rows.columns else rows.index)],
                     dtype=object)
    stop = rows["stop_reason"].to_numpy(dtype=object) if "stop_reason" in rows.columns \
        else np.full(n, None, dtype=object)
    train_loss = _numeric(rows[control])
    goal, common, reached = _targets(rows, stop, train_loss, target_loss, notes)
    data = pd.DataFrame({
        "job": pd.Series(names, dtype=object), "seed": rows[cluster].to_numpy(),
        "batch_size": b, "log2_batch": np.log2(np.where(np.isfinite(b), b, np.nan)),
        "lambda_max": _numeric(rows[measure]), "test_error": y, "train_loss": train_loss,
        "stop_reason": pd.Series(stop, dtype=object),
        "epochs": _numeric(rows["epochs_completed"]) if "epochs_completed" in rows.columns
        else np.full(n, np.nan), "target": goal, "reached": reached})
    for col in extra:
        data[col] = _numeric(rows[col]) if col in rows.columns else np.full(n, np.nan)
    return data, common, notes


def off_target(data: pd.DataFrame) -> pd.DataFrame:
    columns = ["job", "seed", "batch_size", "stop_reason", "train_loss", "target", "reason"]
    if data["reached"].all():
        return pd.DataFrame(columns=columns)
    off = data[~data["reached"]]
    reasons = []
    for r in off.itertuples(index=False):
        loss = "nan" if not math.isfinite(r.train_loss) else f"{r.train_loss:.4g}"
        where = f" after {int(r.epochs)} epochs" if math.isfinite(r.epochs) else ""
        reasons.append(f"stopped ({r.stop_reason or 'no stop reason'}){where} at train loss "
                       f"{loss} > target {r.target:g}")
    return pd.DataFrame({"job": off["job"].to_numpy(), "seed": off["seed"].to_numpy(),
                         "batch_size": off["batch_size"].to_numpy(),
                         "stop_reason": off["stop_reason"].to_numpy(),
                         "train_loss": off["train_loss"].to_numpy(),
                         "target": off["target"].to_numpy(), "reason": reasons},
                        columns=columns)
