"""Closed forms of the synthetic problems of :mod:`landscope.synthetic` (re-exported there):
the quadratic with a chosen spectrum and the two-basin surface, with the construction of
their data that makes every identity below exact.

**Quadratic with a chosen spectrum.**  ``A = Q diag(lambda) Q^T`` with ``lambda`` from
``dataset.spectrum`` (any signs; zero is allowed) or generated as ``dataset.outliers``
followed by ``dim - len(outliers)`` values spaced geometrically from 1 down to
``1 / condition``; ``Q`` is a seeded random orthogonal matrix (Haar) and
``theta* ~ N(0, I)``.  A sample ``i`` is a row ``(x_i, t_i = x_i^T theta*, eps_i, s_i)`` with
per-sample loss ``l_i = 1/2 s_i (x_i^T theta - t_i - eps_i)^2``.  Construction (per sign group
``g in {+, -}`` of ``n_g`` samples, ``r`` a random +-1 vector)::

    X_g = sqrt(n) U_g diag(sqrt|lambda_g|) Q_g^T,  U_g^T U_g = I,  U_g^T r_g = 0,
    eps_g = noise * r_g,  s_i = +-1

so ``(1/n) sum_i s_i x_i x_i^T = A``, ``sum_i s_i eps_i x_i = 0`` and ``eps_i^2 = noise^2``.
Hence, exactly::

    L(theta) = 1/2 (theta - theta*)^T A (theta - theta*) + noise^2 (n_+ - n_-) / (2 n)
    Sigma(theta*) = (1/n) sum_i g_i g_i^T = noise^2 |A|,  |A| = Q diag|lambda| Q^T

(gradient-noise covariance, ``1/n`` convention of :mod:`landscope.probes.noise``).  The test
split has fresh rows with the same ``A`` and the optimum moved to ``theta*_test = theta* +
test_shift * w`` (``w`` a seeded unit vector), so the gap at ``theta*`` is
``1/2 test_shift^2 w^T A w`` plus the difference of the offsets.  A sample is *correct*
when its noise-free residual ``|x_i^T (theta - theta*)|`` is below ``dataset.tolerance``
(so accuracy 1 at the optimum, whatever the noise).  Each split needs ``D_g + 1`` samples
per non-empty sign group (``D_g`` eigenvalues of that sign; :func:`quadratic_min_samples`).

**Two basins.**  Two parameters ``theta = (u, v)`` and, with ``s = tilt`` and ``c`` set by
the barrier (below)::

    f(u) = c (u^4/4 - s u^3/3 - u^2/2 + s u + 1/4)    (f'(u) = c (u^2 - 1)(u - s))
    k(u) = flat + (sharp - flat) (1 - u)^2 / 4        (k(-1) = sharp, k(1) = flat)
    L(u, v) = f(u) + 1/2 k(u) v^2

Exactly three critical points: the sharp minimum ``(-1, 0)`` with Hessian
``diag(2c(1+s), sharp)`` and loss ``-2cs/3``, the flat minimum ``(1, 0)`` with Hessian
``diag(2c(1-s), flat)`` and loss ``2cs/3``, and the saddle ``(s, 0)`` with Hessian
``diag(c(s^2-1), k(s))`` and loss ``c(1/4 + s^2/2 - s^4/12)``.  Every path between the
minima crosses ``u = s`` where ``L >= f(s)``, so the straight segment (``v = 0``) is a
minimum-energy path; its barrier in GUIDE's convention (``max - mean of the endpoint
losses``) is ``dataset.barrier``, which fixes ``c = barrier / (1/4 + s^2/2 - s^4/12)``.
Per-sample losses ``l_i = L(theta - d_i) + xi_i^T theta`` with ``sum_i xi_i = 0`` and
``(1/n) sum_i xi_i xi_i^T = noise^2 I`` exactly: the mean is ``L`` and the gradient-noise
covariance is ``noise^2 I`` at every ``theta``.  Train rows have ``d_i = 0``; test rows
``d_i = (0, test_shift)``, so the test loss is ``L(u, v - test_shift)`` (the sharp minimum
pays ``sharp * test_shift^2 / 2``, the flat one ``flat * test_shift^2 / 2``).  A sample is
*correct* when ``L(theta - d_i)`` is below the saddle's loss, i.e. ``theta`` lies in one of
the two basins.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

DEFAULT_SIZE = 256  # train_size / test_size when null
# independent random streams under dataset.seed
_ROTATION, _OPTIMUM, _SHIFT, _TRAIN, _TEST = range(1, 6)


def _sizes(cfg: Any) -> tuple[int, int]:
    return tuple(DEFAULT_SIZE if v is None else int(v)  # type: ignore[return-value]
                 for v in (cfg.train_size, cfg.test_size))


# ------------------------------------------------------------------ quadratic
def resolve_spectrum(cfg: Any) -> np.ndarray:
    """The eigenvalues of ``A`` (float64, descending) that ``cfg`` (a dataset config) asks for."""
    if cfg.spectrum is not None:
        lam = np.asarray(list(cfg.spectrum), dtype=np.float64)
    else:
        bulk = np.geomspace(1.0, 1.0 / float(cfg.condition), int(cfg.dim) - len(cfg.outliers))
        lam = np.concatenate([np.asarray(list(cfg.outliers), dtype=np.float64), bulk])
    return np.sort(lam)[::-1].copy()


def _groups(lam: np.ndarray, n: int) -> list[tuple[float, np.ndarray, int]]:
    """``(sign, eigen-indices, samples)`` per sign group; sizes proportional to the number of
    directions, each at least ``directions + 1``."""
    pos, neg = np.flatnonzero(lam > 0), np.flatnonzero(lam < 0)
    if len(neg) == 0:
        return [(1.0, pos, n)]
    if len(pos) == 0:
        return [(-1.0, neg, n)]
    n_pos = int(round(n * len(pos) / (len(pos) + len(neg))))
    n_pos = min(max(n_pos, len(pos) + 1), n - len(neg) - 1)
    return [(1.0, pos, n_pos), (-1.0, neg, n - n_pos)]


def quadratic_min_samples(lam: Sequence[float]) -> int:
    """Smallest split size for which the construction is exact: ``D_g + 1`` samples per
    non-empty sign group (``D_g`` eigenvalues of that sign), at least 2."""
    lam = np.asarray(lam)
    pos, neg = int((lam > 0).sum()), int((lam < 0).sum())
    return max(2, (pos + 1 if pos else 0) + (neg + 1 if neg else 0))


def _orthonormal(m: int, k: int, avoid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``m x k`` with orthonormal columns, all orthogonal to the vector ``avoid``."""
    g = rng.standard_normal((m, k))
    g -= np.outer(avoid, avoid @ g) / (avoid @ avoid)
    return np.linalg.qr(g)[0]


def _haar(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@dataclass(frozen=True)
class QuadraticSpec:
    """What the quadratic model needs (kept in ``DatasetMeta.problem``)."""

    dim: int
    tolerance: float


@dataclass(frozen=True, eq=False)
class QuadraticReference:
    """Closed forms of the quadratic problem (float64 tensors).

    ``eigenvalues`` descending, ``rotation`` Q with the matching eigenvectors as columns,
    ``hessian`` A = Q diag(eigenvalues) Q^T, the optima of the two splits, the loss offsets
    (``loss = 1/2 d^T A d + offset``), ``noise`` sigma and the split sizes.
    """

    eigenvalues: Tensor
    rotation: Tensor
    hessian: Tensor
    theta_star: Tensor
    theta_star_test: Tensor
    noise: float
    loss_offset: float
    loss_offset_test: float
    tolerance: float
    train_size: int
    test_size: int

    @property
    def dim(self) -> int:
        return len(self.eigenvalues)

    @property
    def trace(self) -> float:
        return float(self.eigenvalues.sum())

    def _optimum(self, split: str) -> tuple[Tensor, float]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' (got {split!r})")
        return ((self.theta_star, self.loss_offset) if split == "train"
                else (self.theta_star_test, self.loss_offset_test))

    def loss(self, theta: Tensor, split: str = "train") -> float:
        """``1/2 (theta - theta*)^T A (theta - theta*) + offset`` of a split."""
        star, offset = self._optimum(split)
        d = theta.to(torch.float64) - star
        return float(0.5 * d @ self.hessian @ d) + offset

    def gradient(self, theta: Tensor, split: str = "train") -> Tensor:
        star, _ = self._optimum(split)
        return self.hessian @ (theta.to(torch.float64) - star)

    @property
    def noise_covariance_at_optimum(self) -> Tensor:
        """``Sigma(theta*) = noise^2 |A|`` (1/n convention; a batch of B has Sigma/B)."""
        return self.noise ** 2 * (self.rotation * self.eigenvalues.abs()) @ self.rotation.T

    @property
    def noise_trace_at_optimum(self) -> float:
        return self.noise ** 2 * float(self.eigenvalues.abs().sum())

    def worst_case_sharpness_at_optimum(self, rho: float) -> float:
        """``max_{||e|| <= rho} L(theta* + e) - L(theta*) = rho^2/2 max(lambda_max, 0)``."""
        return 0.5 * rho ** 2 * max(float(self.eigenvalues[0]), 0.0)

    def average_sharpness_at_optimum(self, rho: float) -> float:
        """``E_{e ~ N(0, rho^2 I)} L(theta* + e) - L(theta*) = rho^2/2 tr A``."""
        return 0.5 * rho ** 2 * self.trace


def _quadratic_setup(cfg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    lam = resolve_spectrum(cfg)
    d, seed = len(lam), int(cfg.seed)
    q = _haar(d, np.random.default_rng([seed, _ROTATION]))
    star = np.random.default_rng([seed, _OPTIMUM]).standard_normal(d)
    w = np.random.default_rng([seed, _SHIFT]).standard_normal(d)
    star_test = star + float(cfg.test_shift) * w / np.linalg.norm(w)
    return lam, q, star, star_test


def _offset(lam: np.ndarray, noise: float, n: int) -> float:
    return sum(sign * m for sign, _, m in _groups(lam, n)) * noise ** 2 / (2 * n)


def quadratic_reference(cfg: Any) -> QuadraticReference:
    """Closed forms of ``dataset=quadratic`` for the dataset config ``cfg``."""
    lam, q, star, star_test = _quadratic_setup(cfg)
    n, n_test = _sizes(cfg)
    noise = float(cfg.noise)
    t = functools.partial(torch.tensor, dtype=torch.float64)
    return QuadraticReference(
        eigenvalues=t(lam), rotation=t(q), hessian=t((q * lam) @ q.T), theta_star=t(star),
        theta_star_test=t(star_test), noise=noise, loss_offset=_offset(lam, noise, n),
        loss_offset_test=_offset(lam, noise, n_test), tolerance=float(cfg.tolerance),
        train_size=n, test_size=n_test)


# ------------------------------------------------------------------ two basins
@dataclass(frozen=True)
class TwoBasinReference:
    """The two-basin surface and its closed forms (module docstring); also the model's spec.

    ``sharp``/``flat``: ``d^2L/dv^2`` at the minima ``(-1, 0)`` / ``(1, 0)``; ``barrier``:
    saddle loss minus the mean of the two minima's losses; ``tilt`` = saddle position ``s``
    in (-1, 1) (positive: the sharp minimum is the deeper one); ``noise``: per-coordinate
    std of the per-sample gradient noise; ``test_shift``: the test surface is moved by
    ``(0, test_shift)``.
    """

    sharp: float = 10.0
    flat: float = 1.0
    barrier: float = 0.125
    tilt: float = 0.0
    noise: float = 0.5
    test_shift: float = 0.3

    @property
    def scale(self) -> float:
        """``c`` in ``f(u)``."""
        s = self.tilt
        return self.barrier / (0.25 + s ** 2 / 2 - s ** 4 / 12)

    # --- the surface (tensors or floats; the model evaluates these)
    def f(self, u: Tensor) -> Tensor:
        s = self.tilt
        return self.scale * (u ** 4 / 4 - s * u ** 3 / 3 - u ** 2 / 2 + s * u + 0.25)

    def k(self, u: Tensor) -> Tensor:
        return self.flat + (self.sharp - self.flat) * (1 - u) ** 2 / 4

    def surface(self, u: Tensor, v: Tensor) -> Tensor:
        return self.f(u) + 0.5 * self.k(u) * v ** 2

    # --- closed forms (hand-derived, float64)
    def loss(self, theta: Tensor, split: str = "train") -> float:
        t = torch.as_tensor(theta, dtype=torch.float64) - self._shift(split)
        return float(self.surface(t[0], t[1]))

    def gradient(self, theta: Tensor, split: str = "train") -> Tensor:
        u, v = (torch.as_tensor(theta, dtype=torch.float64) - self._shift(split)).tolist()
        c, s, dk = self.scale, self.tilt, self.sharp - self.flat
        return torch.tensor([c * (u * u - 1) * (u - s) - dk * (1 - u) * v * v / 4,
                             self.k(u) * v], dtype=torch.float64)

    def hessian(self, theta: Tensor, split: str = "train") -> Tensor:
        u, v = (torch.as_tensor(theta, dtype=torch.float64) - self._shift(split)).tolist()
        c, s, dk = self.scale, self.tilt, self.sharp - self.flat
        huu = c * (3 * u * u - 2 * s * u - 1) + dk * v * v / 4
        huv = -dk * (1 - u) * v / 2
        return torch.tensor([[huu, huv], [huv, self.k(u)]],
                            dtype=torch.float64)

    def _shift(self, split: str) -> Tensor:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' (got {split!r})")
        return torch.tensor([0.0, self.test_shift if split == "test" else 0.0],
                            dtype=torch.float64)

    @property
    def minima(self) -> Tensor:
        """``[[-1, 0], [1, 0]]``: sharp first, then flat (train split)."""
        return torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)

    @property
    def minimum_losses(self) -> tuple[float, float]:
        c, s = self.scale, self.tilt
        return -2 * c * s / 3, 2 * c * s / 3

    @property
    def minimum_hessians(self) -> tuple[Tensor, Tensor]:
        c, s = self.scale, self.tilt
        return (torch.diag(torch.tensor([2 * c * (1 + s), self.sharp], dtype=torch.float64)),
                torch.diag(torch.tensor([2 * c * (1 - s), self.flat], dtype=torch.float64)))

    @property
    def minimum_lambda_max(self) -> tuple[float, float]:
        return tuple(float(h.diagonal().max()) for h in self.minimum_hessians)  # type: ignore

    @property
    def saddle(self) -> Tensor:
        return torch.tensor([self.tilt, 0.0], dtype=torch.float64)

    @property
    def saddle_loss(self) -> float:
        s = self.tilt
        return self.scale * (0.25 + s ** 2 / 2 - s ** 4 / 12)

    @property
    def saddle_hessian(self) -> Tensor:
        c, s = self.scale, self.tilt
        return torch.diag(torch.tensor([c * (s * s - 1), self.k(s)], dtype=torch.float64))

    @property
    def barrier_heights(self) -> tuple[float, float]:
        """Saddle loss minus each minimum's loss: (from the sharp, from the flat minimum)."""
        return tuple(self.saddle_loss - m for m in self.minimum_losses)  # type: ignore

    @property
    def linear_barrier(self) -> float:
        """``max_a L((1-a) theta_sharp + a theta_flat) - (L_sharp + L_flat)/2`` (= barrier)."""
        return self.saddle_loss - sum(self.minimum_losses) / 2

    @property
    def noise_covariance(self) -> Tensor:
        """``noise^2 I`` at every theta (train split, 1/n convention)."""
        return self.noise ** 2 * torch.eye(2, dtype=torch.float64)

    def test_gap_at_minima(self) -> tuple[float, float]:
        """Test minus train loss at the (sharp, flat) minimum: ``k test_shift^2 / 2``."""
        return (self.sharp * self.test_shift ** 2 / 2, self.flat * self.test_shift ** 2 / 2)


def two_basin_reference(cfg: Any) -> TwoBasinReference:
    """Closed forms of ``dataset=two_basin`` for the dataset config ``cfg``."""
    return TwoBasinReference(sharp=float(cfg.sharp_curvature), flat=float(cfg.flat_curvature),
                             barrier=float(cfg.barrier), tilt=float(cfg.tilt),
                             noise=float(cfg.noise), test_shift=float(cfg.test_shift))
