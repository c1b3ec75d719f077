"""What :class:`landscope.analyzer.Analyzer`'s methods return (re-exported by
:mod:`landscope.analyzer`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

__all__ = ["Connectivity", "CurvatureSummary", "TrajectoryHistory"]


@dataclass(frozen=True)
class CurvatureSummary:
    """What :meth:`Analyzer.full_analysis` measured at the model's weights.

    ``lambda_max`` and ``top_eigenvalues`` (Lanczos, descending); ``lambda_min`` (the most
    negative or smallest eigenvalue, Lanczos); ``spectral_gap`` = λ1 − λ2;
    ``condition_number``: λ1 over the smallest positive converged eigenvalue found (the true
    condition number when the Hessian is positive definite, otherwise λ1/λk of the
    positive eigenvalues found, a lower bound for its positive part); ``negative_ratio`` =
    |λmin/λmax|; ``trace`` ± ``trace_stderr`` (Hutchinson deflated by the top-k pairs);
    ``n_negative_eigenvalues``: the estimated number of eigenvalues below
    −``negative_tol``·|λmax| (D × that spectral mass from stochastic Lanczos quadrature,
    ± ``n_negative_stderr`` over its probes; a tolerance, because in floating point the
    near-zero bulk of a network's Hessian has no reliable sign);
    ``sharpness``: worst-case loss rise within an l2 ball of radius ``sharpness_rho``
    (SAM's definition, maximized by projected gradient ascent); ``flatness``: PAC-Bayes
    flatness σ' (the largest isotropic Gaussian perturbation that changes accuracy by at
    most 0.1; larger is flatter) and ``flatness_measure`` = 1/σ'²."""

    lambda_max: float
    top_eigenvalues: tuple[float, ...]
    lambda_min: float
    spectral_gap: float
    condition_number: float
    negative_ratio: float
    trace: float
    trace_stderr: float
    n_negative_eigenvalues: float
    n_negative_stderr: float
    negative_tol: float
    sharpness: float
    sharpness_rho: float
    flatness: float
    flatness_measure: float
    train_loss: float
    train_acc: float
    n_params: int
    n_samples: int
    all_converged: bool
    hessian_products: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrajectoryHistory:
    """What :meth:`Analyzer.analyze_optimization_trajectory` recorded: one row per tracked
    step (``step``, ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``,
    ``grad_norm`` (the full gradient's l2 norm on the train sample set), ``lambda_max``
    (sharpness), ``batch_loss`` (the mini-batch loss of the step just taken; NaN at step 0),
    ``grad_evals``, ``seconds``)."""

    rows: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False

    def frame(self) -> Any:
        """The rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def plot(self, path: Union[str, Path]) -> Path:
        """Losses, accuracies, gradient norm and sharpness against the step, as one PNG."""
        from landscope.plots import plot_history

        return plot_history(self.rows, Path(path))


@dataclass(frozen=True)
class Connectivity:
    """What :meth:`Analyzer.compute_mode_connectivity` measured on the straight line from
    this model (t = 0) to the other (t = 1).

    ``barrier_height``: max_t L(t) − (L(0) + L(1))/2 of the train loss (Frankle et al.
    2020); ``barrier_height_interp``: against the linear interpolation of the endpoint
    losses (Entezari et al. 2022); ``error_barrier``: the same as ``barrier_height`` for
    the error, on the test set when there is one (else train); ``connectivity_score`` =
    1 − ``error_barrier`` (1: no barrier at all; 0: the path passes through 100% extra
    error); ``linearly_connected``: ``error_barrier`` ≤ 2%; ``path_length``: the path's
    Euclidean length ‖θ_b − θ_a‖. ``path`` holds every value along the path and
    ``scalars`` the engine's full summary (max, mean, integral, both conventions, per split).
    """

    barrier_height: float
    barrier_height_interp: float
    error_barrier: float
    error_split: str
    connectivity_score: float
    linearly_connected: bool
    path_length: float
    t: np.ndarray
    train_loss: np.ndarray
    train_error: np.ndarray
    test_loss: Optional[np.ndarray]
    test_error: Optional[np.ndarray]
    bn: str
    scalars: dict[str, float]
