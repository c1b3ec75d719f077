"""The founding-study presets (issue #5, item 6): one table per study in the report.

Each study is a preset in ``conf/experiment`` whose ``name`` is also the study's name; a job's
``config.yaml`` stores ``name``, so the collected jobs table (:mod:`landscope.analysis.collect`)
tells the studies apart by its ``name`` column, whatever sweep directory they were run into.

- ``study_training`` (a): three training configurations on the default MLP (Adam at its
  default lr, SGD at a high lr, SGD at a low lr with high weight decay): test accuracy against
  λmax per configuration (mean ± sd over seeds) and Kendall τ between the two across jobs.
- ``study_width`` (b): MLP widths 32/64/128 and CNN widths 16/32/64, SGD lr 0.01 momentum 0.9:
  the epochs to reach :data:`TARGET_TEST_ACC` test accuracy (first epoch of ``metrics.jsonl``
  with ``test_acc >=`` the target; a job that never gets there is *not reached* and counted,
  its epochs left out of the mean), λmax and the 2-D slice scalars (``landscape.plane_*``).
- ``study_optimizers`` (c): SGD, momentum and Adam on the MLP and the CNN, 5 epochs each: λmax,
  the 1-D and 2-D slice scalars, and the linear-interpolation barrier between seeds read from
  ``python -m runner.connect`` (``SWEEP/connectivity``, through
  :func:`landscope.analysis.hypotheses.h2.load_barriers`).

Every value is a mean ± sample sd (ddof 1) over the seeds of a configuration (over the seed
pairs for barriers); ``n`` counts the included jobs. Each ``section_<study>(ctx)`` writes a
heading, a paragraph, the table, ``<study>.csv`` into ``ctx.out`` and one figure into
``ctx.out/figures``; ``applies_<study>(ctx)`` says whether the collected jobs hold the study.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from landscope.analysis.doc import fmt
from landscope.analysis.measures import kendall
from landscope.analysis.section import Section
from landscope.errors import LandscopeError
from landscope.io import atomic_write_text
from landscope.plots import pyplot, save_png

TRAINING, WIDTH, OPTIMIZERS = "study_training", "study_width", "study_optimizers"
#: study_width: the test accuracy every configuration reaches within the preset's 30 epochs
#: (measured: MLP width 32, the weakest, peaks at 0.48-0.51 test accuracy).
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
    """``(mean, sd, n)`` over the finite values; sd has ddof 1 (NaN below two values)."""
    x = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else math.nan, int(len(x))


def pm(mean: float, sd: float) -> str:
    """``"mean ± sd"`` for a table cell (``mean`` alone without an sd, '–' without a mean)."""
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
        plain_sgd = cfg.get("optimizer.name") == "sgd" and not float(cfg.get("optimizer.momentum") or 0)
        limit = 2.0 / float(cfg["optimizer.lr"]) if plain_sgd and cfg.get("optimizer.lr") else math.nan
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
        usable = barriers["reason"].isna() if "reason" in barriers else pd.Series(True, barriers.index)
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


# --------------------------------------------------------------------------- figures
def plot_training(jobs: pd.DataFrame, table: pd.DataFrame, path: Path) -> Path:
    """Test accuracy against λmax, one colour per configuration, mean ± sd crosses."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (_, r) in enumerate(table.iterrows()):
        sel = np.ones(len(jobs), bool)
        for k in _training_keys(jobs):
            if k in jobs and k in r:
                sel &= (jobs[k].map(_code) == _code(r[k])).to_numpy()
        c = f"C{i}"
        ax.scatter(_num(jobs[sel], "probe.lambda_max"), _num(jobs[sel], "final.test_acc"),
                   color=c, alpha=0.6, label=f"{r['configuration']} (n={r['n']})")
        ax.errorbar(r["lambda_max_mean"], r["test_acc_mean"],
                    xerr=np.nan_to_num(r["lambda_max_sd"]), yerr=np.nan_to_num(r["test_acc_sd"]),
                    color=c, marker="x", ms=9, capsize=3)
    lam = _num(jobs, "probe.lambda_max")
    if (lam > 0).any() and lam[lam > 0].max() / lam[lam > 0].min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel("λmax (top Hessian eigenvalue)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_width(table: pd.DataFrame, path: Path, target: float = TARGET_TEST_ACC) -> Path:
    """Epochs to the target, λmax and the plane's border rise against width, per architecture."""
    plt = pyplot()
    panels = [("epochs", f"epochs to test accuracy ≥ {target:g}"), ("lambda_max", "λmax"),
              ("plane_rise", "2-D slice: border rise of train loss")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for arch, g in table.groupby("model.name", sort=True):
        g = g.sort_values("model.width")
        for ax, (key, label) in zip(axes, panels):
            ax.errorbar(g["model.width"], g[f"{key}_mean"], yerr=np.nan_to_num(g[f"{key}_sd"]),
                        marker="o", capsize=3, label=str(arch))
            ax.set_xscale("log", base=2)
            ax.set_xlabel("width")
            ax.set_ylabel(label)
        for _, r in g.iterrows():  # not-reached counts next to the points
            if r["n_not_reached"]:
                axes[0].annotate(f"{r['n_not_reached']} not reached", (r["model.width"],
                                 r["epochs_mean"] if math.isfinite(r["epochs_mean"]) else 0),
                                 fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_png(fig, path)


def plot_optimizers(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars (architecture × optimizer, mean ± sd) of λmax, line and plane rise and the
    seed-to-seed barrier."""
    plt = pyplot()
    panels = [("lambda_max", "λmax"), ("line_rise", "1-D slice: rise of train loss"),
              ("plane_rise", "2-D slice: border rise"), ("barrier_loss", "barrier (train loss)")]
    archs = list(dict.fromkeys(table["architecture"]))
    opts = list(dict.fromkeys(table["optimizer"]))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    width = 0.8 / max(len(opts), 1)
    for ax, (key, label) in zip(axes, panels):
        for j, opt in enumerate(opts):
            sub = table[table["optimizer"] == opt].set_index("architecture").reindex(archs)
            ax.bar(np.arange(len(archs)) + (j - (len(opts) - 1) / 2) * width, sub[f"{key}_mean"],
                   width, yerr=np.nan_to_num(sub[f"{key}_sd"].to_numpy(float)), capsize=2,
                   label=opt, color=f"C{j}")
        ax.set_xticks(np.arange(len(archs)), archs)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    return save_png(fig, path)


# --------------------------------------------------------------------------- report sections
def _write(ctx: Any, study: str, table: pd.DataFrame) -> None:
    atomic_write_text(Path(ctx.out) / f"{study}.csv", table.to_csv(index=False))


def _image(ctx: Any, png: Path, alt: str) -> None:
    ctx.doc.image(png, f"figures/{png.name}", alt)


def _figure_path(ctx: Any, study: str) -> Path:
    d = Path(ctx.out) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{study}.png"


def _grid_step(jobs: pd.DataFrame) -> str:
    points, span = _num(jobs, "config.landscape.plane_points"), _num(jobs, "config.landscape.plane_range")
    if points.nunique() == 1 and span.nunique() == 1 and points.iloc[0] > 1:
        n, r = int(points.iloc[0]), float(span.iloc[0])
        return f": {2 * r / (n - 1):g} on these {n} × {n} grids over [−{r:g}, {r:g}]"
    return ""


def applies_study_training(ctx: Any) -> bool:
    return not study_jobs(ctx.coll.included, TRAINING).empty


def applies_study_width(ctx: Any) -> bool:
    return not study_jobs(ctx.coll.included, WIDTH).empty


def applies_study_optimizers(ctx: Any) -> bool:
    return not study_jobs(ctx.coll.included, OPTIMIZERS).empty


def section_study_training(ctx: Any) -> None:
    """(a) Test accuracy against λmax for three training configurations."""
    jobs = study_jobs(ctx.coll.included, TRAINING)
    table = training_table(jobs)
    k = training_kendall(jobs)
    ctx.doc.heading("Study (a): training configuration, test accuracy against λmax")
    ctx.doc.para(
        f"{len(jobs)} jobs of experiment=study_training in {len(table)} configurations; "
        "each cell is the mean ± sd over seeds. λmax is the top Hessian eigenvalue of the "
        "training loss at the final checkpoint (probe subset); 2/lr is plain SGD's "
        "edge-of-stability limit. Across all jobs, Kendall τ between λmax and test accuracy "
        f"is {fmt(k['tau'])} (two-sided p = {fmt(k['p'])}, n = {k['n']}); a negative τ means "
        "sharper solutions generalize worse. Across configurations that differ in optimizer, "
        "learning rate and weight decay at once, τ mixes their effects: read it per row.")
    ctx.doc.frame(table, [("configuration", "configuration"), ("n", "n"),
                          ("test_acc", "test accuracy"), ("lambda_max", "λmax"),
                          ("stability_limit", "2/lr"), ("train_loss", "train loss")])
    _write(ctx, TRAINING, table)
    if len(table):
        png = plot_training(jobs, table, _figure_path(ctx, TRAINING))
        _image(ctx, png, "study (a): test accuracy against λmax, one colour per configuration")


def section_study_width(ctx: Any, target: float = TARGET_TEST_ACC) -> None:
    """(b) Epochs to a target accuracy, λmax and the 2-D slice per architecture and width."""
    jobs = study_jobs(ctx.coll.included, WIDTH)
    table = width_table(jobs, target)
    not_reached = int(table["n_not_reached"].sum()) if len(table) else 0
    missing = int(table["n_no_metrics"].sum()) if len(table) else 0
    ctx.doc.heading("Study (b): architecture and width")
    ctx.doc.para(
        f"{len(jobs)} jobs of experiment=study_width (SGD lr 0.01, momentum 0.9). Epochs to "
        f"target: the first epoch whose test accuracy is at least {target:g} (metrics.jsonl); "
        f"the mean ± sd is over the seeds that reached it, and 'reached' counts them "
        f"({not_reached} jobs never reached it within their budget"
        + (f", {missing} without a readable metrics.jsonl" if missing else "") + "). λmax: top "
        "Hessian eigenvalue at the final checkpoint. 2-D slice (filter-normalized random "
        "plane): border rise = mean train loss on the grid's border minus the centre's, basin "
        "= share of the grid within L(0) + 0.1, radius = distance of the nearest grid point "
        "above it (it cannot resolve less than one grid step" + _grid_step(jobs) + ").")
    ctx.doc.frame(table, [("architecture", "architecture"), ("n_params", "parameters"),
                          ("n", "n"), ("reached", "reached"), ("epochs", "epochs to target"),
                          ("epochs_budget", "budget"), ("test_acc", "final test acc."),
                          ("lambda_max", "λmax"), ("plane_rise", "plane border rise"),
                          ("plane_basin", "plane basin"), ("plane_radius", "plane radius")])
    _write(ctx, WIDTH, table)
    if len(table):
        png = plot_width(table, _figure_path(ctx, WIDTH), target)
        _image(ctx, png, f"study (b): epochs to {target:g} test accuracy, λmax and 2-D slice "
                         "rise against width")


def section_study_optimizers(ctx: Any) -> None:
    """(c) λmax, slices and seed-to-seed barriers per optimizer × architecture."""
    jobs = study_jobs(ctx.coll.included, OPTIMIZERS)
    barriers = load_study_barriers(ctx.paths)
    table = optimizers_table(jobs, barriers)
    ctx.doc.heading("Study (c): optimizers across architectures at a fixed budget")
    note = ("" if barriers is not None and len(table) and table["n_pairs"].sum() else
            " No connectivity results for these jobs: run python -m runner.connect "
            "<sweep dir> landscape.bezier=false for the barrier columns.")
    ctx.doc.para(
        f"{len(jobs)} jobs of experiment=study_optimizers; mean ± sd over seeds. Line rise: "
        "mean over filter-normalized random directions of the train-loss rise at ±1; plane "
        "border rise and basin as in study (b). Barrier: linear interpolation between two "
        "seeds of the same configuration, max along the path minus the mean of the endpoints, "
        "of train loss and of test error; mean ± sd over the pairs (n pairs)." + note)
    ctx.doc.frame(table, [("optimizer", "optimizer"), ("architecture", "architecture"),
                          ("n", "n"), ("test_acc", "test accuracy"), ("lambda_max", "λmax"),
                          ("line_rise", "line rise"), ("line_radius", "line radius"),
                          ("plane_rise", "plane border rise"), ("plane_basin", "plane basin"),
                          ("n_pairs", "pairs"), ("barrier_loss", "barrier (train loss)"),
                          ("barrier_test_error", "barrier (test error)")])
    _write(ctx, OPTIMIZERS, table)
    if len(table):
        png = plot_optimizers(table, _figure_path(ctx, OPTIMIZERS))
        _image(ctx, png, "study (c): λmax, slices and barriers per optimizer and architecture")


#: The founding studies' report sections, in report order.
SECTIONS = [
    Section("study (a): training dynamics", applies_study_training, section_study_training),
    Section("study (b): width", applies_study_width, section_study_width),
    Section("study (c): optimizers and architectures", applies_study_optimizers,
            section_study_optimizers),
]
