"""The founding-study figures (:mod:`landscope.analysis.studies`): one per study, from its
table (:mod:`landscope.analysis.studies_tables`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from landscope.analysis.studies_tables import (
    TARGET_TEST_ACC,
    _code,
    _num,
    _training_keys,
)
from landscope.plots import pyplot, save_png


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
