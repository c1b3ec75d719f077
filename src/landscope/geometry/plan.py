"""What a landscape run will evaluate, said before it starts (the landscape's plan line).

The slices (``line``, ``line.eigen``, ``plane``) evaluate each grid point on the train and the
test samples, the trajectory's contour each grid point and snapshot on the train samples; the
intrinsic dimension trains instead of evaluating. :func:`planned_points` counts the points of
the parts a config switches on (those the suite will skip are left out), :func:`slice_seconds`
and :func:`train_seconds` time a point the way each part evaluates it, and :func:`plan_line`
turns both into the line the job logs: how many points, and about how long they take.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
from torch import Tensor

from landscope.geometry.scan import Scan, evaluate_points
from landscope.geometry.space import BNMode, ParamSpace
from landscope.probes.probe_data import ProbeData

SLICES = ("line", "eigline", "plane")  # evaluated on train and test, by ``workers`` processes


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
                  bn_data: Optional[ProbeData]) -> float:
    """One slice point's seconds: three points along ``direction`` (one row) evaluated by the
    slices' own engine on ``sets``, the time between the first and the last (warm) ones."""
    terms = np.array([[-1.0, 0.0, 0.0, c] for c in (0.1, 0.2, 0.3)])
    scan = Scan("line", direction.reshape(1, -1), terms, [terms[:, 3]], sets, bn,
                bn_data if bn == "recompute" else None)
    stamps: list[float] = []
    evaluate_points(space, scan, [0, 1, 2], lambda i, vals: stamps.append(time.perf_counter()))
    space.set_point(space.theta0)
    return (stamps[-1] - stamps[0]) / 2


def train_seconds(space: ParamSpace, train: ProbeData, bn: BNMode,
                  bn_data: Optional[ProbeData]) -> float:
    """One trajectory point's seconds: the model's point evaluated on ``train`` as the
    trajectory evaluates it, twice, the second (warm) one timed."""
    for _ in range(2):
        tic = time.perf_counter()
        space.evaluate(space.theta0, train, bn, bn_data)
        seconds = time.perf_counter() - tic
    return seconds


def plan_line(plan: dict[str, int], seconds: tuple[float, float], samples: tuple[int, int],
              workers: int, intrinsic: Optional[tuple[int, int]] = None) -> str:
    """The line logged before the landscape runs. ``seconds``: one slice point (train and test)
    and one trajectory point (train); ``samples``: the train and test samples; ``workers``:
    the processes of the slices; ``intrinsic``: (subspaces, epochs) of the intrinsic
    dimension's trainings, when it runs."""
    slice_s, train_s = seconds
    slices = sum(v for k, v in plan.items() if k in SLICES)
    est = slices * slice_s / max(1, workers) + plan.get("trajectory", 0) * train_s
    parts = ", ".join(f"{k} {v}" for k, v in plan.items())
    only = " (the trajectory's on train only)" if "trajectory" in plan else ""
    each = [f"~{figure(slice_s * 1e3)} ms a slice point" if slices else "",
            f"~{figure(train_s * 1e3)} ms a trajectory point" if "trajectory" in plan else ""]
    line = (f"landscape plan: {sum(plan.values())} points ({parts or 'none'}) on "
            f"{samples[0]} train + {samples[1]} test samples{only}; "
            f"{', '.join(e for e in each if e) or 'nothing to evaluate'}, so ~{figure(est)} s")
    if workers > 1 and slices:
        line += f" with the slices over {workers} processes"
    if intrinsic is not None:
        line += (f"; then the intrinsic dimension: {intrinsic[0]} subspace trainings of "
                 f"{intrinsic[1]} epochs")
    return line


def figure(x: float) -> str:
    """``x`` with two significant digits under 0.1 and one decimal under 10 (a plan of 0.4 s
    or 0.04 s does not read as 0 s), else none."""
    return f"{x:.2g}" if x < 0.1 else f"{x:.1f}" if x < 10 else f"{x:.0f}"
