"""What a landscape run will evaluate, said before it starts (the landscape's plan line).

The slices (``line``, ``line.eigen``, ``plane``) evaluate each grid point on the train and the
test samples, the trajectory's contour each grid point and snapshot on the train samples; the
intrinsic dimension trains instead of evaluating. :func:`planned_points` counts the points of
the parts a config switches on (those the suite will skip are left out), :func:`slice_seconds`
and :func:`train_seconds` time a point the way each part evaluates it, and :func:`plan_line`
turns both into the line the job logs: how many points, and about how long they take.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import Tensor

from landscope.geometry.scan import Scan, evaluate_points
from landscope.geometry.space import BNMode, ParamSpace
from landscope.probes.probe_data import ProbeData
from landscope.wording import figure

SLICES = ("line", "eigline", "plane")  # evaluated on train and test, by ``workers`` processes
STORES = {part: f"{part}.partial.npz" for part in SLICES}  # each slice's resume store


def planned_points(cfg: Any, n_eig: int, snapshots: Optional[int]) -> dict[str, int]:
    """Grid points per part that ``cfg`` (a ``LandscapeConfig``) switches on and the suite will
    run: ``n_eig`` saved eigenvectors, ``snapshots`` recorded (None: no trajectory file)."""
    line, plan = cfg.line, {}
    if line.enabled and line.directions > 0:
        plan["line"] = line.directions * (line.points - 1) + 1
    if line.enabled and 0 < line.eigen <= n_eig:
        plan["eigline"] = line.eigen * (line.points - 1) + 1
    if cfg.plane.enabled:
        plan["plane"] = cfg.plane.points ** 2
    if cfg.trajectory.enabled and snapshots is not None:
        plan["trajectory"] = cfg.trajectory.points ** 2 + snapshots
    return plan


def slice_seconds(space: ParamSpace, direction: Tensor, sets: list[ProbeData], bn: BNMode,
                  bn_data: Optional[ProbeData], workers: int = 1) -> float:
    """One slice point's seconds: three points along ``direction`` (one row) evaluated by the
    slices' own engine on ``sets``, the time between the first and the last (warm) ones; with
    ``workers > 1`` on one torch thread, as each of the scan's processes evaluates them."""
    terms = np.array([[-1.0, 0.0, 0.0, c] for c in (0.1, 0.2, 0.3)])
    scan = Scan("line", direction.reshape(1, -1), terms, [terms[:, 3]], sets, bn,
                bn_data if bn == "recompute" else None)
    stamps: list[float] = []
    threads = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(1)
    try:
        evaluate_points(space, scan, [0, 1, 2],
                        lambda i, vals: stamps.append(time.perf_counter()))
    finally:
        torch.set_num_threads(threads)
        space.set_point(space.theta0)
    return (stamps[-1] - stamps[0]) / 2


def stored_points(store_dir: Optional[Path], plan: dict[str, int]) -> dict[str, int]:
    """The points of each planned slice that an interrupted run left in its store in
    ``store_dir``: read back, not evaluated, when the store's key matches the scan (checked
    only when the scan runs; an unreadable store or one of another size counts none)."""
    out = {}
    for part, name in STORES.items():
        if store_dir is None or part not in plan:
            continue
        try:
            with np.load(Path(store_dir) / name, allow_pickle=False) as z:
                done = np.asarray(z["done"], dtype=bool)
        except Exception:  # noqa: BLE001 - no store, or one the scan will not reuse
            continue
        if done.shape == (plan[part],) and done.any():
            out[part] = int(done.sum())
    return out


def warm_seconds(work: Callable[[], Any], warm: bool = True) -> float:
    """Seconds of ``work()`` run a second time (the first call warms the caches up; with
    ``warm=False``, the only call)."""
    if warm:
        work()
    tic = time.perf_counter()
    work()
    return time.perf_counter() - tic


def train_seconds(space: ParamSpace, train: ProbeData, bn: BNMode,
                  bn_data: Optional[ProbeData]) -> float:
    """One trajectory point's seconds: the model's point evaluated on ``train`` as the
    trajectory evaluates it, twice, the second (warm) one timed."""
    return warm_seconds(lambda: space.evaluate(space.theta0, train, bn, bn_data))


def intrinsic_seconds(model: Any, dims: list[int], cfg: Any, train: Any, batch_size: int,
                      seed: int) -> float:
    """The intrinsic dimension's training steps, timed: ``cfg.epochs`` epochs of
    ``len(train) / batch_size`` steps in each subspace of ``dims``, a step timed by
    :func:`~landscope.geometry.intrinsic_dim.step_seconds` at the smallest and the largest
    ``d`` and interpolated linearly in ``d`` between them (the projection's cost grows with
    ``d``). The final evaluations are left out."""
    from landscope.geometry.intrinsic_dim import step_seconds

    lo, hi = min(dims), max(dims)
    at = {d: step_seconds(model, d, str(cfg.projection), train, batch_size, seed, cfg.lr)
          for d in {lo, hi}}
    per_d = [at[lo] + (at[hi] - at[lo]) * ((d - lo) / (hi - lo) if hi > lo else 0.0)
             for d in dims]
    return sum(per_d) * cfg.epochs * math.ceil(len(train) / batch_size)


def plan_line(plan: dict[str, int], seconds: tuple[float, float], samples: tuple[int, int],
              workers: int, intrinsic: Optional[tuple[int, int, float]] = None,
              stored: Optional[dict[str, int]] = None) -> str:
    """The line logged before the landscape runs. ``seconds``: one slice point (train and test)
    and one trajectory point (train); ``samples``: the train and test samples; ``workers``:
    the processes of the slices; ``intrinsic``: (subspaces, epochs, seconds) of the intrinsic
    dimension's trainings, when it runs (:func:`intrinsic_seconds`);
    ``stored``: the slices' points an interrupted run stored (:func:`stored_points`),
    counted in the plan but not in its time."""
    slice_s, train_s = seconds
    kept = sum((stored or {}).values())
    slices = sum(v for k, v in plan.items() if k in SLICES) - kept
    rest = plan.get("trajectory", 0) * train_s
    est = slices * slice_s / max(1, workers) + rest
    parts = ", ".join(f"{k} {v}" for k, v in plan.items())
    only = " (the trajectory's on train only)" if "trajectory" in plan else ""
    each = [f"~{figure(slice_s * 1e3)} ms a slice point" if slices else "",
            f"~{figure(train_s * 1e3)} ms a trajectory point" if "trajectory" in plan else ""]
    line = (f"landscape plan: {sum(plan.values())} points ({parts or 'none'}) on "
            f"{samples[0]} train + {samples[1]} test samples{only}; "
            f"{', '.join(e for e in each if e) or 'nothing to evaluate'}, so ~{figure(est)} s")
    if workers > 1 and slices:  # perfect scaling is a floor: processes that share cores or
        # memory bandwidth gain less (1.28x from 2 on a 2-vCPU host, docs/measurements.md)
        serial = figure(slices * slice_s + rest)
        line += f" with the slices over {workers} processes, up to ~{serial} s if they gain nothing"
    if kept:
        line += f" ({kept} slice points stored by an interrupted run are read back)"
    if intrinsic is not None:
        line += (f"; then the intrinsic dimension: {intrinsic[0]} subspace trainings of "
                 f"{intrinsic[1]} epochs, ~{figure(intrinsic[2])} s of training steps")
    return line
