"""The landscape suite: one call maps a ``landscape`` config onto the geometry measures.

:func:`run_landscape` is what a job runs on its final checkpoint (and what
``python -m runner.landscape`` runs on finished jobs). It evaluates on seeded subsets of
the train and test splits (``landscape.data_size`` samples each, ``landscape.seed``; the
whole splits with ``data_size=null``) and returns scalars for ``result.json`` and arrays
for the job's ``landscape/<fingerprint>.npz``:

==================  ============================================================  ==========
part                what                                                          arrays
==================  ============================================================  ==========
``line``            1-D slices along ``line.directions`` seeded random directions   ``line_*``
                    (``normalization``, default filter-normalized), coordinates
                    in ``[-line.range, line.range]``
``line.eigen``      1-D slices along the top ``line.eigen`` Hessian eigenvectors   ``eigline_*``
                    saved by the probes (unit norm: the coordinate is the
                    Euclidean distance); skipped with a note without them
``plane``           2-D slice on the first two random directions (or the top two  ``plane_*``
                    eigenvectors with ``plane.eigen``)
``trajectory``      PCA of the snapshots recorded during training, the loss        ``traj_*``
                    contour of the PC plane and the fidelity diagnostic
``intrinsic``       subspace training from the job's initialization at each of     ``intrinsic_*``
                    ``intrinsic.dims``; d_int90 against the job's test accuracy
==================  ============================================================  ==========

Scalar names come from each measure (``line_*``, ``eigline_*``, ``plane_*``,
``trajectory_*``, ``intrinsic_*``; see :mod:`~landscope.geometry.slices`,
:mod:`~landscope.geometry.trajectory`, :mod:`~landscope.geometry.intrinsic_dim`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from torch import nn

from landscope.geometry.directions import eigen_directions, random_directions
from landscope.geometry.intrinsic_dim import intrinsic_dimension
from landscope.geometry.plan import (
    SLICES,
    STORES,
    intrinsic_seconds,
    plan_line,
    planned_points,
    slice_seconds,
    stored_points,
    train_seconds,
)
from landscope.geometry.slices import line_slice, plane_slice, symmetric_grid
from landscope.geometry.snapshots import load as load_trajectory
from landscope.geometry.space import ParamSpace
from landscope.geometry.trajectory import trajectory_landscape
from landscope.probes.probe_data import ProbeData


@dataclass
class LandscapeReport:
    scalars: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # parts skipped, and why



def _prefixed(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def _renamed(scalars: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    return {(new + k[len(old):] if k.startswith(old) else k): v for k, v in scalars.items()}


def run_landscape(model: nn.Module, data: Any, cfg: Any, *,
                  eigenvectors: Optional[np.ndarray] = None,
                  trajectory_path: Optional[Path] = None,
                  init_model: Optional[nn.Module] = None,
                  reference_acc: Optional[float] = None,
                  batch_size: int = 128,
                  store_dir: Optional[Path] = None,
                  progress: bool = False,
                  log: Optional[Callable[[str], None]] = None) -> LandscapeReport:
    """Run the parts of the landscape suite that ``cfg`` (a ``LandscapeConfig``) switches on.

    ``data`` has ``.train``/``.test`` splits; ``eigenvectors`` is the probes'
    ``eigenvectors_top`` (D, k) array; ``trajectory_path`` the job's recorded snapshots;
    ``init_model`` the job's model at initialization and ``reference_acc`` its final test
    accuracy (both for the intrinsic dimension, trained with ``batch_size``);
    ``store_dir`` keeps partial grids so an interrupted scan resumes. ``progress``: a tqdm
    bar per part; ``log``: where the plan line goes (:mod:`~landscope.geometry.plan`; ``None``:
    no plan, and no evaluation timed for it). The model is left untouched.
    """
    suite = _Suite(model, data, cfg, progress)
    eig = None if eigenvectors is None else np.asarray(eigenvectors)
    traj = None
    if cfg.trajectory.enabled and trajectory_path is not None and Path(trajectory_path).is_file():
        traj = load_trajectory(trajectory_path)
    if log is not None:
        intrinsic = None
        if cfg.intrinsic.enabled and init_model is not None and reference_acc is not None:
            dims = _grid(cfg.intrinsic.dims, init_model)[0]
            intrinsic = (len(dims), cfg.intrinsic.epochs, intrinsic_seconds(
                init_model, dims, cfg.intrinsic, data.train, batch_size, cfg.seed))
        suite.plan(eig, traj, intrinsic, store_dir, log)
    suite.lines(store_dir, eig)
    if cfg.plane.enabled:
        suite.plane(store_dir, eig)
    if cfg.trajectory.enabled:
        suite.trajectory(traj)
    if cfg.intrinsic.enabled:
        suite.intrinsic(init_model, reference_acc, batch_size)
    return suite.rep


class _Suite:
    """The parts of one :func:`run_landscape` call, each adding its scalars, arrays and notes
    to ``rep`` (in the order the parts run)."""

    def __init__(self, model: nn.Module, data: Any, cfg: Any, progress: bool = False) -> None:
        self.rep, self.data, self.cfg, self.progress = LandscapeReport(), data, cfg, progress
        self.space = space = ParamSpace(model)
        self.train = train = ProbeData.from_split(data.train, cfg.data_size, cfg.seed,
                                                  cfg.batch_size)
        self.test = ProbeData.from_split(data.test, cfg.data_size, cfg.seed, cfg.batch_size)
        self.bn, norm = str(cfg.bn), str(cfg.normalization)
        self.common = dict(bn=self.bn, bn_data=train if self.bn == "recompute" else None,
                           workers=cfg.workers)
        self.rep.scalars["landscape_train_samples"] = train.n
        self.rep.scalars["landscape_test_samples"] = self.test.n
        k_rand = max(cfg.line.directions if cfg.line.enabled else 0, 2 if cfg.plane.enabled else 0)
        self.dirs = random_directions(space, k_rand, cfg.seed, norm, cfg.include_bias_norm) \
            if k_rand else None

    def bar(self, part: str) -> Optional[str]:
        """The label of ``part``'s bar (None: no bar)."""
        return f"landscape {part}" if self.progress else None

    def plan(self, eig: Optional[np.ndarray], traj: Any, intrinsic: Optional[tuple[int, int]],
             store_dir: Optional[Path], log: Callable[[str], None]) -> None:
        """Log the plan line: the points of the parts that will run and their time, from a few
        points timed the way each part evaluates them (:mod:`~landscope.geometry.plan`)."""
        plan = planned_points(self.cfg, self.n_eig(eig), None if traj is None else len(traj))
        if not plan and intrinsic is None:
            return
        bn, bn_data, space = self.bn, self.common["bn_data"], self.space
        workers = int(self.cfg.workers) if space.device.type == "cpu" else 1  # as run_scan
        slice_s = train_s = 0.0
        if any(k in SLICES for k in plan):
            d = self.dirs[0] if self.dirs is not None else random_directions(
                space, 1, self.cfg.seed, str(self.cfg.normalization))[0]
            slice_s = slice_seconds(space, d, [self.train, self.test], bn, bn_data, workers)
        if "trajectory" in plan:
            train_s = train_seconds(space, self.train, bn, bn_data)
        log(plan_line(plan, (slice_s, train_s), (self.train.n, self.test.n), workers,
                      intrinsic, stored_points(store_dir, plan)))

    def timed(self, part: str, tic: float) -> None:
        self.rep.scalars[f"landscape_{part}_seconds"] = time.perf_counter() - tic

    def n_eig(self, eig: Optional[np.ndarray]) -> int:
        """How many usable saved eigenvectors ``eig`` holds."""
        ok = eig is not None and eig.ndim == 2 and eig.shape[0] == self.space.dim
        return eig.shape[1] if ok else 0  # type: ignore[union-attr]

    def lines(self, store_dir: Optional[Path], eig: Optional[np.ndarray]) -> None:
        """``line`` (random directions) and ``line.eigen`` (saved eigenvectors)."""
        cfg, rep, space = self.cfg.line, self.rep, self.space
        if cfg.enabled and cfg.directions > 0:
            tic = time.perf_counter()
            res = line_slice(space, self.dirs[:cfg.directions],  # type: ignore[index]
                             symmetric_grid(cfg.range, cfg.points), self.train,
                             self.test, store=_store(store_dir, "line"),
                             progress=self.bar("line"), **self.common)
            rep.arrays.update(_prefixed("line", res.arrays()))
            rep.scalars.update(res.scalars())
            self.timed("line", tic)
        n_eig = self.n_eig(eig)
        if not (cfg.enabled and cfg.eigen > 0):
            return
        if n_eig < cfg.eigen:
            rep.notes.append(f"line.eigen={cfg.eigen} skipped: the probes saved {n_eig} "
                             f"eigenvectors (run probes with probe.top_k >= {cfg.eigen})")
            return
        tic = time.perf_counter()
        res = line_slice(space, eigen_directions(eig, space, cfg.eigen),
                         symmetric_grid(cfg.range, cfg.points), self.train, self.test,
                         store=_store(store_dir, "eigline"),
                         progress=self.bar("eigline"), **self.common)
        rep.arrays.update(_prefixed("eigline", res.arrays()))
        rep.scalars.update(_renamed(res.scalars(), "line_", "eigline_"))
        self.timed("eigline", tic)

    def plane(self, store_dir: Optional[Path], eig: Optional[np.ndarray]) -> None:
        cfg, rep = self.cfg.plane, self.rep
        tic = time.perf_counter()
        use_eig = bool(cfg.eigen) and self.n_eig(eig) >= 2
        if cfg.eigen and not use_eig:
            rep.notes.append("plane.eigen skipped: fewer than 2 saved eigenvectors; the plane "
                             "uses random directions")
        d = eigen_directions(eig, self.space, 2) if use_eig else self.dirs[:2]  # type: ignore
        grid = symmetric_grid(cfg.range, cfg.points)
        res = plane_slice(self.space, d[0], d[1], grid, grid, self.train, self.test,
                          store=_store(store_dir, "plane"),
                          progress=self.bar("plane"), **self.common)
        rep.arrays.update(_prefixed("plane", res.arrays()))
        rep.scalars.update(res.scalars())
        rep.scalars["plane_directions_eigen"] = use_eig
        self.timed("plane", tic)

    def trajectory(self, snapshots: Any) -> None:
        """The trajectory's plane from the job's recorded ``snapshots`` (None: none)."""
        if snapshots is None:
            self.rep.notes.append("trajectory skipped: no snapshots were recorded (train the "
                                  "job with landscape.trajectory.enabled=true)")
            return
        tic = time.perf_counter()
        train, bn = self.train, self.bn
        traj = trajectory_landscape(self.space, snapshots, train, self.cfg.trajectory.points,
                                    bn=bn, bn_data=train if bn == "recompute" else None,
                                    progress=self.bar("trajectory"))
        self.rep.arrays.update(_prefixed("traj", traj.arrays()))
        self.rep.scalars.update(traj.scalars())
        self.timed("trajectory", tic)

    def intrinsic(self, init_model: Optional[nn.Module], reference_acc: Optional[float],
                  batch_size: int) -> None:
        cfg, rep = self.cfg.intrinsic, self.rep
        if init_model is None or reference_acc is None:
            rep.notes.append("intrinsic_dim skipped: needs the job's initial model and its "
                             "final test accuracy")
            return
        tic = time.perf_counter()
        dims, note = _grid(cfg.dims, init_model)
        if note:
            rep.notes.append(note)
        res = intrinsic_dimension(init_model, dims, float(reference_acc),
                                  self.data.train, self.data.test,
                                  str(cfg.projection), epochs=cfg.epochs, lr=cfg.lr,
                                  batch_size=batch_size, seed=self.cfg.seed,
                                  progress=self.bar("intrinsic"))
        rep.arrays.update(_prefixed("intrinsic", res.arrays()))
        rep.scalars.update(res.scalars())
        self.timed("intrinsic_dim", tic)


def _grid(dims: Any, model: nn.Module) -> tuple[list[int], str]:
    """The intrinsic dimension's subspace dimensions for ``model``, and a note when those
    above its parameter count were replaced by it (a subspace cannot be larger)."""
    dims, n_params = list(dims), sum(p.numel() for p in model.parameters())
    if max(dims) <= n_params:
        return dims, ""
    dims = sorted({d for d in dims if d < n_params} | {n_params})
    return dims, (f"intrinsic_dim: dims above the model's {n_params} parameters replaced by "
                  f"{n_params} (grid {dims})")


def _store(store_dir: Optional[Path], part: str) -> Optional[Path]:
    """Where the slice ``part`` keeps its partial grid (None: nowhere)."""
    return None if store_dir is None else Path(store_dir) / STORES[part]
