"""The founding-study tables (:mod:`landscope.analysis.studies`, whose docstring describes
the studies): the jobs of a study, mean ± sd per configuration, Kendall τ, the epochs to the
target accuracy and the barriers between seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from landscope.analysis.doc import fmt
from landscope.analysis.measures import kendall
from landscope.errors import LandscopeError

TRAINING, WIDTH, OPTIMIZERS = "study_training", "study_width", "study_optimizers"
#: study_width: the test accuracy every configuration reaches within the preset's 30 epochs
#: (below the weakest configuration's peak: docs/measurements.md#analysis-studies-tables).
TARGET_TEST_ACC = 0.4

_OPT_KEYS = ("optimizer.name", "optimizer.lr", "optimizer.momentum", "optimizer.weight_decay")
_ARCH_KEYS = ("model.name", "model.width")
TRAINING_MEASURES = {"final.test_acc": "test_acc", "probe.lambda_max": "lambda_max",
                     "final.train_loss": "train_loss"}
WIDTH_MEASURES = {"final.test_acc": "test_acc", "probe.lambda_max": "lambda_max",
                  "landscape.plane_train_rise_border_mean": "plane_rise",
                  "landscape.plane_train_basin_fraction": "plane_basin",
                  "landscape.plane_train_radius": "plane_radius"}
OPTIMIZER_MEASURES = {"final.test_acc": "test_acc", "probe.lambda_max": "lambda_max",
                      "landscape.line_train_rise_mean": "line_rise",
                      "landscape.line_train_radius_min": "line_radius",
                      "landscape.plane_train_rise_border_mean": "plane_rise",
                      "landscape.plane_train_basin_fraction": "plane_basin"}
BARRIERS = {"linear_train_loss_barrier_mean": "barrier_loss",
            "linear_test_error_barrier_mean": "barrier_test_error"}


# --------------------------------------------------------------------------- helpers
def study_jobs(jobs: pd.DataFrame, study: str) -> pd.DataFrame:
    """The included jobs of ``study`` (rows whose ``name`` is the study's), index reset."""
    if "name" not in jobs.columns or jobs.empty:
        return jobs.iloc[0:0].reset_index(drop=True)
    keep = jobs["name"].astype(str) == study
    if "included" in jobs.columns:
        keep &= jobs["included"].astype(bool)
    return jobs[keep].reset_index(drop=True)


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce").astype(float)


def mean_sd(values: Iterable[Any]) -> tuple[float, float, int]:
    """``(mean, sd, n)`` over the finite values; sd has ddof 1 (NaN below two values).

    >>> mean_sd([1, 2, 3, None, "x"])
    (2.0, 1.0, 3)
    >>> mean_sd([5])
    (5.0, nan, 1)
    """
    x = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan, int(len(x))


def pm(mean: float, sd: float) -> str:
    """``"mean ± sd"`` for a table cell (``mean`` alone without an sd, '–' without a mean).

    >>> pm(0.5, 0.1), pm(0.5, float("nan")), pm(float("nan"), 0.1)
    ('0.5 ± 0.1', '0.5', '–')
    """
    if not (isinstance(mean, (int, float)) and math.isfinite(mean)):
        return "–"
    if not math.isfinite(sd):
        return fmt(float(mean))
    if abs(sd) <= 1e-9 * max(1.0, abs(float(mean))):  # equal values: rounding noise, not spread
        sd = 0.0
    return f"{fmt(float(mean))} ± {fmt(float(sd))}"


def _code(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)  # 0 and 0.0 are one configuration
    return json.dumps(value.item() if hasattr(value, "item") else value, default=str)


def _groups(df: pd.DataFrame, keys: Sequence[str]) -> list[tuple[dict, pd.DataFrame]]:
    """``[(config values, rows)]`` per distinct combination of ``keys`` (present ones), sorted."""
    keys = [k for k in keys if k in df.columns]
    if df.empty:
        return []
    if not keys:
        return [({}, df)]
    codes = df[keys].apply(lambda r: tuple(_code(v) for v in r), axis=1)
    out = []
    for code in sorted(set(codes), key=lambda c: tuple(_sortable(json.loads(v)) for v in c)):
        rows = df[codes == code]
        out.append(({k: rows[k].iloc[0] for k in keys}, rows))
    return out


def _sortable(v: Any) -> tuple:
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) \
        else (1, 0.0, str(v))


def _summaries(rows: pd.DataFrame, measures: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col, short in measures.items():
        m, s, _ = mean_sd(_num(rows, col))
        out[f"{short}_mean"], out[f"{short}_sd"], out[short] = m, s, pm(m, s)
    return out


def training_label(cfg: dict) -> str:
    """A configuration's name from its optimizer settings, e.g. ``sgd lr=0.01 wd=0.01``."""
    parts = [str(cfg.get("optimizer.name", "?"))]
    lr, wd, mom = (cfg.get(k) for k in ("optimizer.lr", "optimizer.weight_decay",
                                        "optimizer.momentum"))
    if lr is not None and not _isnan(lr):
        parts.append(f"lr={float(lr):g}")
    if wd is not None and not _isnan(wd) and float(wd) > 0:
        parts.append(f"wd={float(wd):g}")
    if mom is not None and not _isnan(mom) and float(mom) > 0 and parts[0] == "sgd":
        parts.append(f"momentum={float(mom):g}")
    return " ".join(parts)


def arch_label(cfg: dict) -> str:
    """``mlp-128`` from ``model.name`` and ``model.width``."""
    w = cfg.get("model.width")
    return f"{cfg.get('model.name', '?')}" + ("" if w is None or _isnan(w) else f"-{int(w)}")


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def training_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per training configuration (optimizer name, lr, momentum, weight decay; model
    if several): ``configuration``, the keys, ``n``, ``test_acc``/``lambda_max``/``train_loss``
    as ``*_mean``, ``*_sd`` and a ``mean ± sd`` string, and ``stability_limit`` 2/lr for plain
    SGD (where λmax settles at the edge of stability; NaN otherwise)."""
    rows = []
    for cfg, g in _groups(jobs, _training_keys(jobs)):
        label = training_label(cfg)
        if any(k in cfg for k in _ARCH_KEYS):
            label += f" ({arch_label(cfg)})"
        plain_sgd = (cfg.get("optimizer.name") == "sgd"
                     and not float(cfg.get("optimizer.momentum") or 0))
        limit = (2.0 / float(cfg["optimizer.lr"]) if plain_sgd and cfg.get("optimizer.lr")
                 else math.nan)
        rows.append({"configuration": label, **cfg, "n": len(g),
                     **_summaries(g, TRAINING_MEASURES), "stability_limit": limit})
    return pd.DataFrame(rows)


def _training_keys(jobs: pd.DataFrame) -> list[str]:
    """The optimizer keys, and the model's when the jobs hold more than one architecture."""
    several = any(k in jobs and jobs[k].nunique() > 1 for k in _ARCH_KEYS)
    return list(_OPT_KEYS) + ([k for k in _ARCH_KEYS if k in jobs] if several else [])


def training_kendall(jobs: pd.DataFrame) -> dict[str, float]:
    """Kendall τ-b (and p) between λmax and test accuracy across jobs with both finite."""
    x, y = _num(jobs, "probe.lambda_max").to_numpy(), _num(jobs, "final.test_acc").to_numpy()
    ok = np.isfinite(x) & np.isfinite(y)
    tau, p = kendall(x[ok], y[ok])
    return {"tau": tau, "p": p, "n": int(ok.sum())}


# --------------------------------------------------------------------------- (b) width
def epochs_to_target(metrics_path: str | Path, target: float = TARGET_TEST_ACC) -> Optional[int]:
    """The first epoch whose ``test_acc`` in ``metrics.jsonl`` is ``>= target`` (None: never).
    Raises :class:`LandscopeError` when the file is missing or not JSON lines."""
    path = Path(metrics_path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise LandscopeError(f"cannot read {path}: {exc.strerror or exc}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise LandscopeError(f"{path}: line {i} is not JSON") from None
        acc = row.get("test_acc") if isinstance(row, dict) else None
        if isinstance(acc, (int, float)) and math.isfinite(acc) and acc >= target:
            return int(row.get("epoch", i))
    return None


def width_epochs(jobs: pd.DataFrame, target: float = TARGET_TEST_ACC) -> pd.DataFrame:
    """Per job (same index): ``epochs_to_target`` (NaN unless reached) and ``target_status``
    (``reached``, ``not reached``, or ``no metrics`` when ``metrics.jsonl`` cannot be read)."""
    epochs, status = [], []
    for path in (jobs["path"] if "path" in jobs else [None] * len(jobs)):
        try:
            if path is None or (isinstance(path, float) and math.isnan(path)):
                raise LandscopeError("no path")
            e = epochs_to_target(Path(path) / "metrics.jsonl", target)
        except LandscopeError:
            epochs.append(math.nan)
            status.append("no metrics")
            continue
        epochs.append(math.nan if e is None else float(e))
        status.append("not reached" if e is None else "reached")
    return pd.DataFrame({"epochs_to_target": epochs, "target_status": status}, index=jobs.index)


def width_table(jobs: pd.DataFrame, target: float = TARGET_TEST_ACC) -> pd.DataFrame:
    """One row per architecture and width: ``n``, ``n_reached``, ``n_not_reached``,
    ``n_no_metrics``, ``reached`` ("k/n"), ``epochs`` (mean ± sd over the jobs that reached
    ``target``), ``epochs_budget`` (``train.epochs``), ``n_params``, and test accuracy, λmax and
    the plane scalars (``plane_rise`` = border rise of train loss, ``plane_basin`` = basin
    fraction, ``plane_radius``) as ``*_mean``, ``*_sd`` and ``mean ± sd``."""
    df = jobs.join(width_epochs(jobs, target)) if len(jobs) else jobs
    rows = []
    for cfg, g in _groups(df, _ARCH_KEYS):
        m, s, _ = mean_sd(g["epochs_to_target"])
        counts = g["target_status"].value_counts()
        budget = _num(g, "train.epochs")
        rows.append({"architecture": arch_label(cfg), **cfg, "n": len(g),
                     "n_params": _num(g, "n_params").median(),
                     "n_reached": int(counts.get("reached", 0)),
                     "n_not_reached": int(counts.get("not reached", 0)),
                     "n_no_metrics": int(counts.get("no metrics", 0)),
                     "reached": f"{int(counts.get('reached', 0))}/{len(g)}",
                     "epochs_mean": m, "epochs_sd": s, "epochs": pm(m, s),
                     "epochs_budget": budget.max() if budget.notna().any() else math.nan,
                     "target_test_acc": target, **_summaries(g, WIDTH_MEASURES)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- (c) optimizers
def load_study_barriers(sweep_dirs: Iterable[str | Path]) -> Optional[pd.DataFrame]:
    """The ``runner.connect`` results of every sweep directory that has them (one row per pair
    of seeds, :func:`~landscope.analysis.hypotheses.h2.load_barriers`), with ``path_a`` (the
    resolved directory of the pair's first job, to join with the jobs' ``path``). None when no
    directory has a ``connectivity`` folder."""
    from landscope.analysis.hypotheses.h2 import load_barriers

    frames = []
    for d in sweep_dirs:
        d = Path(d)
        if (d / "connectivity").is_dir():
            try:
                b = load_barriers(d, "optimizer.name")
            except LandscopeError:
                continue  # a connectivity folder without results
            b["path_a"] = [str((d / j).resolve()) for j in b["job_a"]]
            frames.append(b)
    return pd.concat(frames, ignore_index=True) if frames else None


def optimizers_table(jobs: pd.DataFrame, barriers: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One row per optimizer × architecture: ``n``, test accuracy, λmax, the line scalars
    (``line_rise``: mean rise of train loss at ±1, ``line_radius``) and plane scalars, and with
    ``barriers`` (rows with ``path_a`` and ``linear_*`` scalars, e.g. :func:`load_study_barriers`)
    the seed-to-seed barriers ``barrier_loss`` (train loss, against the endpoint mean) and
    ``barrier_test_error``, each over the pairs whose first job is in the configuration
    (``n_pairs``); rows of ``barriers`` with a ``reason`` are left out."""
    if barriers is not None and len(barriers):
        usable = (barriers["reason"].isna() if "reason" in barriers
                  else pd.Series(True, barriers.index))
        barriers = barriers[usable]
    rows = []
    keys = ["optimizer.name", "optimizer.lr", "optimizer.momentum", *_ARCH_KEYS]
    for cfg, g in _groups(jobs, keys):
        row = {"optimizer": training_label(cfg), "architecture": arch_label(cfg), **cfg,
               "n": len(g), **_summaries(g, OPTIMIZER_MEASURES)}
        pairs = (barriers[barriers["path_a"].isin(set(g["path"]))]
                 if barriers is not None and len(barriers) and "path" in g else pd.DataFrame())
        row["n_pairs"] = len(pairs)
        row.update(_summaries(pairs, BARRIERS))
        rows.append(row)
    return pd.DataFrame(rows)
