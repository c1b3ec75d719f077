"""Every figure landscope draws, each from saved data only (PNG, matplotlib's Agg backend).

A figure function takes plain arrays (as stored in a job's ``.npz`` files or read from
``metrics.jsonl``) and a path, and writes the PNG atomically; nothing here touches a model.
:func:`job_figures` (in :mod:`landscope.plot_jobs`, reachable from here) redraws every figure
a job directory has data for, which is what the runner calls at the end of a job and what
``python -m runner.figures JOB...`` does.

Figures and the data they come from:

==============================  ==========================================================
``training.png``                ``metrics.jsonl``: train/test loss and accuracy per epoch
``curvature.png``               ``metrics.jsonl`` ``curv_*`` columns (``probe.every_n_epochs``)
``density.png``                 ``probes/<pfp>.npz``: ``density_grid``, ``density``
``line.png``                    ``landscape/<lfp>.npz``: ``line_*`` (1-D slices with a band)
``line_eigen.png``              ``landscape/<lfp>.npz``: ``eigline_*`` (along eigenvectors)
``plane_contour.png``           ``landscape/<lfp>.npz``: ``plane_*`` (2-D slice, contours)
``plane_surface.png``           the same grid as a 3-D surface
``trajectory.png``              ``landscape/<lfp>.npz``: ``traj_*`` (path on its PCA plane)
``intrinsic_dim.png``           ``landscape/<lfp>.npz``: ``intrinsic_*``
``<pair>.png`` (connectivity)   ``connectivity/<group>/<pair>.npz``: linear and Bezier paths
==============================  ==========================================================
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from landscope.io import atomic_write_bytes

Arrays = Mapping[str, np.ndarray]
# the job-level figures live in landscope.plot_jobs (which draws with the functions below)
_JOB_LEVEL = ("job_figures", "connectivity_figures", "_lr", "_landscape_figures",
              "_metrics_rows", "_load_npz", "_newest")


def __getattr__(name: str) -> Any:
    """``landscope.plots.job_figures`` and the other job-level names of
    :mod:`landscope.plot_jobs`, imported on first use (that module imports this one)."""
    if name in _JOB_LEVEL:
        from landscope import plot_jobs

        return getattr(plot_jobs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed). In a Jupyter kernel whose
    backend is matplotlib-inline, that backend is kept: it draws off-screen as well, and a
    switch to Agg would stop the notebook's own figures from showing (the figures drawn here
    are closed once saved, so the notebook does not show them twice)."""
    import matplotlib

    chosen = dict.get(matplotlib.rcParams, "backend", "")  # read without resolving "auto"
    if "matplotlib_inline" not in str(chosen):
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically (parents created) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _sub(arrays: Arrays, prefix: str) -> dict[str, np.ndarray]:
    """Keys ``<prefix>_<name>`` as ``{name: array}``."""
    p = prefix + "_"
    return {k[len(p):]: np.asarray(v) for k, v in arrays.items() if k.startswith(p)}


# ----------------------------------------------------------------------------- training
def plot_training(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Train/test loss (left) and accuracy (right) per epoch."""
    plt = pyplot()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    ep = [r["epoch"] for r in rows]
    for split, style in (("train", "-"), ("test", "--")):
        ax_l.plot(ep, [r.get(f"{split}_loss", math.nan) for r in rows], style, label=split)
        ax_a.plot(ep, [r.get(f"{split}_acc", math.nan) for r in rows], style, label=split)
    ax_l.set(xlabel="epoch", ylabel="loss", yscale="log")
    ax_a.set(xlabel="epoch", ylabel="accuracy")
    ax_l.legend()
    fig.suptitle(title or "training curves")
    return save_png(fig, path)


def plot_history(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Per tracked step: train/test loss, accuracy, gradient norm and λmax (four panels)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), layout="constrained")
    rows = [r for r in rows if "train_loss" in r]
    step = [r["step"] for r in rows]
    for split, style in (("train", "-"), ("test", "--")):
        axes[0].plot(step, [r.get(f"{split}_loss", math.nan) for r in rows], style, label=split)
        axes[1].plot(step, [r.get(f"{split}_acc", math.nan) for r in rows], style, label=split)
    axes[2].plot(step, [r["grad_norm"] for r in rows], "-o", ms=3)
    axes[3].plot(step, [r["lambda_max"] for r in rows], "-o", ms=3)
    for ax, label in zip(axes, ("loss", "accuracy", "gradient norm", "λmax")):
        ax.set(xlabel="step", ylabel=label)
    axes[0].legend()
    fig.suptitle(title or "optimization trajectory")
    return save_png(fig, path)


def plot_curvature(rows: Sequence[Mapping[str, Any]], path: Path, lr: Optional[float] = None,
                   title: str = "") -> Path:
    """λmax and the Hutchinson trace through training; the edge-of-stability line 2/η."""
    plt = pyplot()
    got = [r for r in rows if r.get("curv_lambda_max") is not None]
    fig, (ax_l, ax_t) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    ep = [r["epoch"] for r in got]
    ax_l.plot(ep, [r["curv_lambda_max"] for r in got], "o-", label="λmax")
    if lr:
        ax_l.axhline(2.0 / lr, color="grey", ls=":", label="2/η")
    ax_l.set(xlabel="epoch", ylabel="λmax")
    ax_l.legend()
    tr = np.array([r.get("curv_trace", math.nan) for r in got], dtype=float)
    se = np.array([r.get("curv_trace_stderr", 0.0) or 0.0 for r in got], dtype=float)
    ax_t.errorbar(ep, tr, yerr=se, fmt="o-", capsize=2)
    ax_t.set(xlabel="epoch", ylabel="trace (± s.e.)")
    fig.suptitle(title or "curvature through training")
    return save_png(fig, path)


def plot_density(grid: np.ndarray, density: np.ndarray, path: Path,
                 eigenvalues: Optional[np.ndarray] = None, title: str = "") -> Path:
    """SLQ spectral density (log scale), with the Lanczos top eigenvalues marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.semilogy(grid, np.maximum(density, 1e-12))
    if eigenvalues is not None:
        for i, lam in enumerate(np.ravel(eigenvalues)):
            ax.axvline(float(lam), color="C3", lw=0.7, ls="--", label="top-k" if i == 0 else None)
        ax.legend()
    ax.set(xlabel="eigenvalue", ylabel="density", ylim=(1e-8, None))
    ax.set_title(title or "Hessian spectral density (SLQ)")
    return save_png(fig, path)


# ----------------------------------------------------------------------------- slices
def plot_line(a: Mapping[str, np.ndarray], path: Path, title: str = "",
              labels: Optional[Sequence[str]] = None) -> Path:
    """1-D slices: loss and accuracy against the coordinate.

    ``a`` holds ``coords (P,)`` and ``train_loss``/``train_acc`` (and optionally
    ``test_*``) of shape ``(K, P)``. With ``labels`` each direction is drawn on its own
    (e.g. eigenvectors); otherwise the mean over directions with a min-max band."""
    plt = pyplot()
    x = np.asarray(a["coords"])
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for j, split in enumerate(s for s in ("train", "test") if f"{s}_loss" in a):
        for ax, what in ((ax_l, "loss"), (ax_a, "acc")):
            v = np.atleast_2d(a[f"{split}_{what}"])
            if labels is not None:
                for i, lab in enumerate(labels[:len(v)]):
                    ax.plot(x, v[i], ls="-" if split == "train" else "--", color=f"C{i}",
                            label=f"{split} {lab}")
            else:
                ax.plot(x, v.mean(0), ls="-" if split == "train" else "--", color=f"C{j}",
                        label=f"{split} (mean of {len(v)})")
                ax.fill_between(x, v.min(0), v.max(0), color=f"C{j}", alpha=0.2)
    ax_l.set(xlabel="coordinate α", ylabel="loss")
    ax_a.set(xlabel="coordinate α", ylabel="accuracy")
    ax_l.legend(fontsize=7)
    fig.suptitle(title or "1-D loss slices")
    return save_png(fig, path)


def _xyz(a: Mapping[str, np.ndarray], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.asarray(a["x"]), np.asarray(a["y"]), np.asarray(a[key])


def _draw_contour(fig: Any, ax: Any, a: Mapping[str, np.ndarray], key: str) -> None:
    x, y, z = _xyz(a, key)
    cs = ax.contourf(x, y, z.T, levels=_levels(z, key), cmap="viridis")
    ax.contour(x, y, z.T, levels=cs.levels, colors="k", linewidths=0.3)
    fig.colorbar(cs, ax=ax, label=key.replace("_", " "))
    ax.plot([0], [0], "r*", ms=10, label="trained point")
    ax.set(xlabel="α (direction 1)", ylabel="β (direction 2)", aspect="equal")
    ax.legend(fontsize=7)


def _draw_surface(ax: Any, a: Mapping[str, np.ndarray], key: str) -> None:
    x, y, z = _xyz(a, key)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    ax.plot_surface(xx, yy, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set(xlabel="α", ylabel="β", zlabel=key.replace("_", " "))


def plot_plane_contour(a: Mapping[str, np.ndarray], path: Path, key: str = "train_loss",
                       title: str = "") -> Path:
    """2-D slice as filled contours of ``key`` (log-spaced levels for losses)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.3))
    _draw_contour(fig, ax, a, key)
    ax.set_title(title or f"2-D slice: {key.replace('_', ' ')}")
    return save_png(fig, path)


def plot_plane_surface(a: Mapping[str, np.ndarray], path: Path, key: str = "train_loss",
                       title: str = "") -> Path:
    """2-D slice as a 3-D surface."""
    plt = pyplot()
    fig = plt.figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot(projection="3d")
    _draw_surface(ax, a, key)
    ax.set_title(title or f"2-D slice: {key.replace('_', ' ')}")
    return save_png(fig, path)


def plot_plane(a: Mapping[str, np.ndarray], path: Path, key: str = "train_loss",
               title: str = "") -> Path:
    """2-D slice as contours (left) and a 3-D surface (right) in one figure."""
    plt = pyplot()
    fig = plt.figure(figsize=(11, 4.5))
    _draw_contour(fig, fig.add_subplot(1, 2, 1), a, key)
    _draw_surface(fig.add_subplot(1, 2, 2, projection="3d"), a, key)
    fig.suptitle(title or f"2-D slice: {key.replace('_', ' ')}")
    return save_png(fig, path)


def _levels(z: np.ndarray, key: str, n: int = 25) -> Any:
    finite = z[np.isfinite(z)]
    if finite.size == 0 or finite.min() == finite.max():
        return n
    lo, hi = float(finite.min()), float(finite.max())
    if "loss" in key and lo > 0:
        return np.geomspace(lo, hi, n)
    return np.linspace(lo, hi, n)


# ----------------------------------------------------------------------------- trajectory
def plot_trajectory(a: Mapping[str, np.ndarray], path: Path, title: str = "") -> Path:
    """The training path on the loss contour of its PCA plane, and the fidelity check:
    true loss along the path against the contour value at each projected point, with the
    relative off-plane residual."""
    plt = pyplot()
    fig, (ax_c, ax_f) = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    gx, gy, gz = (np.asarray(a[k]) for k in ("grid_x", "grid_y", "grid_loss"))
    # grid_loss[j, i] is the loss at (grid_x[i], grid_y[j]): contourf's own layout
    cs = ax_c.contourf(gx, gy, gz, levels=_levels(gz, "loss"), cmap="viridis")
    fig.colorbar(cs, ax=ax_c, label="train loss")
    pc = np.asarray(a["pc_coords"])
    ax_c.plot(pc[:, 0], pc[:, 1], "w.-", ms=4, lw=1)
    ax_c.plot(pc[:1, 0], pc[:1, 1], "wo", ms=6, label="start")
    ax_c.plot([0], [0], "r*", ms=10, label="final")
    evr = np.asarray(a.get("explained_variance_ratio", [math.nan, math.nan]))
    ax_c.set(xlabel=f"PC1 ({evr[0]:.1%})", ylabel=f"PC2 ({evr[1]:.1%})" if len(evr) > 1 else "PC2")
    ax_c.legend(fontsize=7)
    ax_c.set_title("path on the PCA-plane contour")
    steps = np.asarray(a["steps"])
    ax_f.plot(steps, a["path_loss"], "-", label="true loss at snapshot")
    ax_f.plot(steps, a["path_contour_loss"], "--", label="contour at projection")
    ax_f.set(xlabel="step", ylabel="train loss")
    ax_r = ax_f.twinx()
    ax_r.plot(steps, a["off_plane"], ":", color="C3", label="off-plane (relative)")
    ax_r.set_ylabel("relative off-plane residual", color="C3")
    ax_f.legend(fontsize=7, loc="upper center")
    ax_f.set_title("fidelity of the 2-D picture")
    fig.suptitle(title or "training trajectory")
    return save_png(fig, path)


def plot_intrinsic(a: Mapping[str, np.ndarray], path: Path, reference_acc: Optional[float] = None,
                   title: str = "") -> Path:
    """Test accuracy of subspace training against the subspace dimension d."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.semilogx(a["dims"], a["test_acc"], "o-", label="test accuracy")
    if "train_acc" in a:
        ax.semilogx(a["dims"], a["train_acc"], "s--", label="train accuracy")
    if reference_acc is not None and math.isfinite(reference_acc):
        ax.axhline(reference_acc, color="grey", ls="-", lw=0.8, label="full model")
        ax.axhline(0.9 * reference_acc, color="grey", ls=":", label="90% of full")
    ax.set(xlabel="subspace dimension d", ylabel="accuracy")
    ax.legend(fontsize=7)
    ax.set_title(title or "intrinsic dimension")
    return save_png(fig, path)


# ----------------------------------------------------------------------------- connectivity
def plot_path(paths: Mapping[str, Mapping[str, np.ndarray]], path: Path, title: str = "") -> Path:
    """Loss and error along connecting paths, e.g. ``{"linear": {...}, "bezier": {...}}``
    each with ``t`` and ``train_loss``/``train_acc`` (and optionally ``test_*``)."""
    plt = pyplot()
    fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(9, 3.4), layout="constrained")
    for i, (name, a) in enumerate(paths.items()):
        for split, style in (("train", "-"), ("test", "--")):
            if f"{split}_loss" not in a:
                continue
            ax_l.plot(a["t"], a[f"{split}_loss"], style, color=f"C{i}", label=f"{name} {split}")
            ax_e.plot(a["t"], 1 - np.asarray(a[f"{split}_acc"]), style, color=f"C{i}",
                      label=f"{name} {split}")
    ax_l.set(xlabel="t", ylabel="loss")
    ax_e.set(xlabel="t", ylabel="error")
    ax_l.legend(fontsize=7)
    fig.suptitle(title or "mode connectivity")
    return save_png(fig, path)


# ----------------------------------------------------------------------------- analysis
def plot_measure_scatter(x: np.ndarray, y: np.ndarray, path: Path, xlabel: str,
                         ylabel: str = "test error", groups: Optional[Sequence[str]] = None,
                         title: str = "") -> Path:
    """One point per job: a measure against a generalization target, coloured by group
    (e.g. the swept optimizer)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.8), layout="constrained")
    x, y = np.asarray(x, float), np.asarray(y, float)
    if groups is None:
        ax.plot(x, y, "o")
    else:
        labels = np.asarray(list(groups), dtype=object)
        for i, g in enumerate(sorted(set(labels))):
            sel = labels == g
            ax.plot(x[sel], y[sel], "o", color=f"C{i}", label=str(g))
        ax.legend(fontsize=7)
    finite = x[np.isfinite(x)]
    if len(finite) and finite.min() > 0 and finite.max() / finite.min() > 100:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title or f"{xlabel} vs {ylabel}", fontsize=9)
    return save_png(fig, path)


def plot_paired(before: np.ndarray, after: np.ndarray, path: Path, ylabel: str,
                labels: Sequence[str] = ("off", "on"), title: str = "") -> Path:
    """Paired values, one line per pair (e.g. one seed with a switch off and on)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 3.8), layout="constrained")
    for b, a in zip(np.asarray(before, float), np.asarray(after, float)):
        ax.plot([0, 1], [b, a], "o-", color="C0" if a < b else "C3", alpha=0.7)
    ax.set_xticks([0, 1], list(labels))
    ax.set_xlim(-0.3, 1.3)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel}: paired", fontsize=9)
    return save_png(fig, path)
