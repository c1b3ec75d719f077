"""A job's figures: every figure of :mod:`landscope.plots` that a job directory (or a sweep's
connectivity results) has saved data for, drawn from those files only.  Reachable as
``landscope.plots.job_figures`` / ``connectivity_figures`` too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from landscope.errors import LandscopeError
from landscope.io import read_json
from landscope.plots import (
    Arrays,
    _sub,
    plot_curvature,
    plot_density,
    plot_intrinsic,
    plot_line,
    plot_path,
    plot_plane_contour,
    plot_plane_surface,
    plot_training,
    plot_trajectory,
)

__all__ = ["connectivity_figures", "job_figures"]


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _metrics_rows(path: Path) -> list[dict]:
    """The rows of a job's ``metrics.jsonl`` ([] when there is none); a line that is not a
    JSON object raises a one-line :class:`~landscope.errors.LandscopeError` naming the file
    and the line."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise LandscopeError(f"{path} line {number} is not valid JSON (column "
                                 f"{getattr(exc, 'colno', '?')}): the file is damaged") from None
        if not isinstance(row, dict):
            raise LandscopeError(f"{path} line {number} is not a JSON object")
        rows.append(row)
    return rows


def _newest(paths: Sequence[Path]) -> Optional[Path]:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def job_figures(job_dir: Path, out_dir: Optional[Path] = None) -> list[Path]:
    """Draw every figure ``job_dir`` has saved data for into ``out_dir`` (default
    ``job_dir/figures``); returns the written paths. Uses the newest probe and landscape
    result files when several configs were run."""
    job_dir = Path(job_dir)
    out = Path(out_dir) if out_dir is not None else job_dir / "figures"
    name = job_dir.name
    written: list[Path] = []
    rows = _metrics_rows(job_dir / "metrics.jsonl")
    if rows:
        written.append(plot_training(rows, out / "training.png", f"training: {name}"))
        if any(r.get("curv_lambda_max") is not None for r in rows):
            written.append(plot_curvature(rows, out / "curvature.png", _lr(job_dir),
                                          f"curvature: {name}"))
    probes = _newest([p for p in (job_dir / "probes").glob("*.npz") if "_" not in p.stem]) \
        if (job_dir / "probes").is_dir() else None
    if probes is not None:
        a = _load_npz(probes)
        if "density" in a and "density_grid" in a:
            written.append(plot_density(a["density_grid"], a["density"], out / "density.png",
                                        a.get("eigenvalues_top"), f"spectral density: {name}"))
    land = _newest(list((job_dir / "landscape").glob("*.npz"))) \
        if (job_dir / "landscape").is_dir() else None
    if land is not None:
        written.extend(_landscape_figures(_load_npz(land), out, name, land.with_suffix(".json")))
    return written


def _landscape_figures(a: Arrays, out: Path, name: str, meta_path: Path) -> list[Path]:
    written = []
    line = _sub(a, "line")
    if "coords" in line:
        written.append(plot_line(line, out / "line.png", f"1-D slices: {name}"))
    eig = _sub(a, "eigline")
    if "coords" in eig:
        k = np.atleast_2d(eig["train_loss"]).shape[0]
        written.append(plot_line(eig, out / "line_eigen.png", f"slices along Hessian "
                                 f"eigenvectors: {name}", labels=[f"v{i + 1}" for i in range(k)]))
    plane = _sub(a, "plane")
    if "x" in plane:
        written.append(plot_plane_contour(plane, out / "plane_contour.png",
                                          title=f"2-D slice: {name}"))
        written.append(plot_plane_surface(plane, out / "plane_surface.png",
                                          title=f"2-D slice: {name}"))
    traj = _sub(a, "traj")
    if "grid_loss" in traj:
        written.append(plot_trajectory(traj, out / "trajectory.png", f"trajectory: {name}"))
    intr = _sub(a, "intrinsic")
    if "dims" in intr:
        ref = None
        try:
            ref = read_json(meta_path).get("scalars", {}).get("intrinsic_reference_acc")
        except (OSError, ValueError):
            pass
        written.append(plot_intrinsic(intr, out / "intrinsic_dim.png", ref,
                                      f"intrinsic dimension: {name}"))
    return written


def _lr(job_dir: Path) -> Optional[float]:
    """The step size η whose 2/η is the edge of stability (Cohen et al. 2021) for a job trained
    with SGD or heavy-ball momentum β at a constant rate: η = lr / (1 + β), i.e. the
    threshold 2(1 + β)/lr; None otherwise."""
    try:
        from landscope.jobdir import JobDir

        cfg = JobDir(job_dir).config(typed=False)  # renamed options under their current names
        o = cfg.optimizer
        if str(o.name) in ("sgd", "momentum") and str(o.get("schedule", "constant")) == "constant":
            return float(o.lr) / (1 + float(o.get("momentum", 0.0) or 0.0))
    except Exception:  # noqa: BLE001 - a figure decoration, never an error
        return None
    return None


def connectivity_figures(sweep_dir: Path, out_dir: Optional[Path] = None) -> list[Path]:
    """One path figure per connected pair saved under ``sweep_dir/connectivity/<group>/``
    (arrays ``linear_*`` and, when a Bezier curve was trained, ``bezier_*``), written
    next to its data (or into ``out_dir/<group>/``)."""
    written = []
    root = Path(sweep_dir) / "connectivity"
    for npz in sorted(root.glob("*/*.npz")):
        a = _load_npz(npz)
        paths = {name: sub for name in ("linear", "bezier") if "t" in (sub := _sub(a, name))}
        if not paths:
            continue
        target = (npz.with_suffix(".png") if out_dir is None
                  else Path(out_dir) / npz.parent.name / (npz.stem + ".png"))
        written.append(plot_path(paths, target, f"connectivity: {npz.stem}"))
    return written
