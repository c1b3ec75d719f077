"""The ``landscape`` group: slices, trajectory, intrinsic dimension and mode-connectivity
settings; each field with its default and meaning, :meth:`check` refusing impossible values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from landscope.config.check import LAYOUT, need, positive
from landscope.config.choices import BNStats, DirectionNorm, LandscapeName, Projection


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
    workers: int = 1  # processes evaluating grid points (joblib)
    # 1-D slices: theta0 + a d, a in [-line_range, line_range]
    line: bool = False
    line_directions: int = 3  # random directions (a band over them)
    line_eigen: int = 0  # also along the top Hessian eigenvectors (needs probe.top_k >= this)
    line_points: int = 51
    line_range: float = 1.0
    # 2-D slice: theta0 + a d1 + b d2 on a plane_points x plane_points grid
    plane: bool = False
    plane_points: int = 21
    plane_range: float = 1.0
    plane_eigen: bool = False  # d1, d2 = top two Hessian eigenvectors instead of random
    # trajectory: parameter snapshots during training, PCA, path on the PC-plane contour
    trajectory: bool = False
    snapshot_every_steps: Optional[int] = None  # null: one snapshot per epoch
    snapshot_dtype: str = "float32"  # or float16: half the file, ~3 significant digits
    trajectory_points: int = 21  # contour grid per side
    # intrinsic dimension: training in random subspaces of these dimensions
    intrinsic_dim: bool = False
    intrinsic_dims: List[int] = field(default_factory=lambda: [100, 1000, 3000, 10000, 30000])
    intrinsic_projection: Projection = Projection.sparse
    intrinsic_epochs: int = 20
    intrinsic_lr: float = 0.01  # Adam on theta_d
    # mode connectivity (python -m runner.connect): linear path and a trained Bezier curve
    path_points: int = 21
    bezier: bool = True
    bezier_epochs: int = 10
    bezier_lr: float = 0.01
    # PNG figures into the job's figures/ directory
    figures: bool = field(default=True, metadata=LAYOUT)

    def check(self) -> None:
        """Refuse impossible values (:class:`ConfigError` naming the key)."""
        need(self.data_size is None or self.data_size >= 1, "landscape.data_size", ">= 1 or null",
             self.data_size)
        for key in ("seed", "line_directions", "line_eigen"):
            need(getattr(self, key) >= 0, f"landscape.{key}", ">= 0", getattr(self, key))
        for key in ("batch_size", "workers", "intrinsic_epochs", "bezier_epochs"):
            need(getattr(self, key) >= 1, f"landscape.{key}", ">= 1", getattr(self, key))
        for key in ("line_points", "plane_points", "trajectory_points"):
            v = getattr(self, key)
            need(v >= 3 and v % 2 == 1, f"landscape.{key}", "odd and >= 3 (the centre is a point)",
                 v)
        for key in ("line_range", "plane_range", "intrinsic_lr", "bezier_lr"):
            need(positive(getattr(self, key)), f"landscape.{key}", "> 0", getattr(self, key))
        need(self.snapshot_every_steps is None or self.snapshot_every_steps >= 1,
             "landscape.snapshot_every_steps", ">= 1 or null", self.snapshot_every_steps)
        need(self.snapshot_dtype in ("float32", "float16"), "landscape.snapshot_dtype",
             "float32 or float16", self.snapshot_dtype)
        dims = list(self.intrinsic_dims)
        need(len(dims) >= 1 and all(d >= 1 for d in dims), "landscape.intrinsic_dims",
             "a non-empty list of values >= 1", dims)
        need(self.path_points >= 3, "landscape.path_points", ">= 3", self.path_points)
