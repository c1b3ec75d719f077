"""The ``landscape`` group: slices, trajectory, intrinsic dimension and mode-connectivity
settings; each part a nested group (``landscape.line.*``, ``landscape.plane.*``,
``landscape.trajectory.*``, ``landscape.intrinsic.*``, ``landscape.bezier.*``) with its switch
``enabled``, each field with its default and meaning, :meth:`check` refusing impossible
values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from landscope.config.check import LAYOUT, need, positive
from landscope.config.choices import BNStats, DirectionNorm, LandscapeName, Projection


def _odd_points(key: str, v: int) -> None:
    need(v >= 3 and v % 2 == 1, key, "odd and >= 3 (the centre is a point)", v)


@dataclass
class LineConfig:
    """1-D slices (``landscape.line.*``): theta0 + a d, a in [-range, range]."""

    enabled: bool = False  # compute the slices
    directions: int = 3  # random directions (a band over them)
    eigen: int = 0  # also along the top Hessian eigenvectors (needs probe.top_k >= this)
    points: int = 51
    range: float = 1.0

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        for key in ("directions", "eigen"):
            need(getattr(self, key) >= 0, f"landscape.line.{key}", ">= 0", getattr(self, key))
        _odd_points("landscape.line.points", self.points)
        need(positive(self.range), "landscape.line.range", "> 0", self.range)


@dataclass
class PlaneConfig:
    """2-D slice (``landscape.plane.*``): theta0 + a d1 + b d2 on a points x points grid."""

    enabled: bool = False  # compute the slice
    points: int = 21
    range: float = 1.0
    eigen: bool = False  # d1, d2 = top two Hessian eigenvectors instead of random

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        _odd_points("landscape.plane.points", self.points)
        need(positive(self.range), "landscape.plane.range", "> 0", self.range)


@dataclass
class TrajectoryConfig:
    """Trajectory (``landscape.trajectory.*``): parameter snapshots during training, PCA, path
    on the PC-plane contour."""

    enabled: bool = False  # record the snapshots and draw the path
    snapshot_every_steps: Optional[int] = None  # null: one snapshot per epoch
    snapshot_dtype: str = "float32"  # or float16: half the file, ~3 significant digits
    points: int = 21  # contour grid per side

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(self.snapshot_every_steps is None or self.snapshot_every_steps >= 1,
             "landscape.trajectory.snapshot_every_steps", ">= 1 or null",
             self.snapshot_every_steps)
        need(self.snapshot_dtype in ("float32", "float16"), "landscape.trajectory.snapshot_dtype",
             "float32 or float16", self.snapshot_dtype)
        _odd_points("landscape.trajectory.points", self.points)


@dataclass
class IntrinsicConfig:
    """Intrinsic dimension (``landscape.intrinsic.*``): training in random subspaces of these
    dimensions."""

    enabled: bool = False  # train in the subspaces
    dims: List[int] = field(default_factory=lambda: [100, 1000, 3000, 10000, 30000])
    projection: Projection = Projection.sparse
    epochs: int = 20
    lr: float = 0.01  # Adam on theta_d

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(self.epochs >= 1, "landscape.intrinsic.epochs", ">= 1", self.epochs)
        need(positive(self.lr), "landscape.intrinsic.lr", "> 0", self.lr)
        dims = list(self.dims)
        need(len(dims) >= 1 and all(d >= 1 for d in dims), "landscape.intrinsic.dims",
             "a non-empty list of values >= 1", dims)


@dataclass
class BezierConfig:
    """Mode connectivity's Bezier curve (``landscape.bezier.*``, ``python -m runner.connect``):
    its bend trained with Adam; the linear path is always evaluated."""

    enabled: bool = True  # train and evaluate the curve
    epochs: int = 10
    lr: float = 0.01

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(self.epochs >= 1, "landscape.bezier.epochs", ">= 1", self.epochs)
        need(positive(self.lr), "landscape.bezier.lr", "> 0", self.lr)


@dataclass
class LandscapeConfig:
    """Loss-landscape geometry on the final checkpoint (slices, trajectory, intrinsic dim).

    The presets in ``conf/landscape`` switch parts on; every field can be overridden.
    Pairwise mode connectivity runs over a finished sweep (``python -m runner.connect``).
    """

    name: LandscapeName = LandscapeName.none
    data_size: Optional[int] = 1000  # seeded subset of train and of test; null = whole sets
    seed: int = 0  # directions and data subsets
    batch_size: int = 2048  # samples per forward pass
    normalization: DirectionNorm = DirectionNorm.filter
    include_bias_norm: bool = False  # give biases and norm parameters direction components
    bn: BNStats = BNStats.keep
    # processes evaluating grid points (joblib); the values do not depend on it
    workers: int = field(default=1, metadata=LAYOUT)
    # 1-D slices, switched on and set up by landscape.line.enabled / landscape.line.*
    line: LineConfig = field(default_factory=LineConfig)
    # 2-D slice, landscape.plane.enabled / landscape.plane.*
    plane: PlaneConfig = field(default_factory=PlaneConfig)
    # trajectory, landscape.trajectory.enabled / landscape.trajectory.*
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    # intrinsic dimension, landscape.intrinsic.enabled / landscape.intrinsic.*
    intrinsic: IntrinsicConfig = field(default_factory=IntrinsicConfig)
    # mode connectivity (python -m runner.connect): the linear path and the Bezier curve are
    # evaluated at path_points values of t; the curve set up by landscape.bezier.*
    path_points: int = 21
    bezier: BezierConfig = field(default_factory=BezierConfig)
    # PNG figures into the job's figures/ directory
    figures: bool = field(default=True, metadata=LAYOUT)
    # a tqdm bar per part (line, eigline, plane, trajectory, intrinsic); null = on a terminal
    progress: Optional[bool] = field(default=None, metadata=LAYOUT)

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(self.data_size is None or self.data_size >= 1, "landscape.data_size", ">= 1 or null",
             self.data_size)
        need(self.seed >= 0, "landscape.seed", ">= 0", self.seed)
        for key in ("batch_size", "workers"):
            need(getattr(self, key) >= 1, f"landscape.{key}", ">= 1", getattr(self, key))
        for group in (self.line, self.plane, self.trajectory, self.intrinsic, self.bezier):
            group.check()
        need(self.path_points >= 3, "landscape.path_points", ">= 3", self.path_points)
