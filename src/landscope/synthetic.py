"""Synthetic problems with known answers, run as dataset/model pairs through the same runner.

Every probe and scan can be checked against closed forms on these two problems
(``dataset=quadratic model=quadratic`` and ``dataset=two_basin model=two_basin``).  The
data are generated from ``dataset.seed`` (never downloaded), held in memory as **float64**
rows, and never normalized or subset: ``dataset.train_size`` / ``test_size`` are the numbers
of generated samples (default 256 each), and every identity below holds exactly (to
float64 rounding) for each split as a whole.  Keep ``probe.data_size`` and
``probe.noise.samples`` at least ``train_size`` for the probes to see the exact mean.

The two problems, their closed forms and the construction of their data are described in
:mod:`landscope.synthetic_forms` (re-exported here).  Both models output ``(n, 2)``: the
per-sample loss and a margin (correct iff margin < 0); their ``task_loss`` /
``task_correct`` (see :mod:`landscope.losses`) read those columns and work under
``torch.func.vmap`` / ``grad``.  Closed forms: :func:`quadratic_reference` and
:func:`two_basin_reference`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscope.config import SYNTHETIC  # each dataset pairs with the model of the same name
from landscope.errors import ConfigError
from landscope.synthetic_forms import (  # noqa: F401 (the closed forms, re-exported)
    _TEST,
    _TRAIN,
    DEFAULT_SIZE,
    QuadraticReference,
    QuadraticSpec,
    TwoBasinReference,
    _groups,
    _orthonormal,
    _quadratic_setup,
    _sizes,
    quadratic_min_samples,
    quadratic_reference,
    resolve_spectrum,
    two_basin_reference,
)

# the DatasetConfig fields only the synthetic datasets read
DATASET_FIELDS = ("noise", "test_shift", "spectrum", "dim", "condition", "outliers", "tolerance",
                  "sharp_curvature", "flat_curvature", "barrier", "tilt")



def is_synthetic(name: Any) -> bool:
    return str(name) in SYNTHETIC


# ------------------------------------------------------------------ quadratic
def _quadratic_rows(lam: np.ndarray, q: np.ndarray, star: np.ndarray, noise: float, n: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``n`` rows ``(x_i, t_i, eps_i, s_i)`` reproducing ``A`` exactly (the construction of
    :mod:`landscope.synthetic_forms`)."""
    d = len(lam)
    blocks = []
    for sign, idx, m in _groups(lam, n):
        r = rng.choice(np.array([-1.0, 1.0]), size=m)
        u = _orthonormal(m, len(idx), r, rng)
        x = math.sqrt(n) * (u * np.sqrt(np.abs(lam[idx]))) @ q[:, idx].T if len(idx) else \
            np.zeros((m, d))
        blocks.append(np.column_stack([x, x @ star, noise * r, np.full(m, sign)]))
    rows = np.concatenate(blocks)
    return rows[rng.permutation(n)]


class _SyntheticModel(nn.Module):
    """Outputs ``(n, 2)``: per-sample loss and margin; the task hooks read those columns."""

    def task_loss(self, out: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        loss = out[..., 0]
        if reduction == "mean":
            return loss.mean()
        if reduction == "sum":
            return loss.sum()
        if reduction == "none":
            return loss
        raise ValueError(f"reduction must be mean, sum or none (got {reduction!r})")

    def task_correct(self, out: Tensor, y: Tensor) -> Tensor:
        return out[..., 1] < 0


class QuadraticModel(_SyntheticModel):
    """``theta`` (D,), initialized ``init_scale * N(0, I)`` from the global torch RNG."""

    def __init__(self, spec: QuadraticSpec, init_scale: float = 1.0) -> None:
        super().__init__()
        self.dim, self.tolerance = spec.dim, spec.tolerance
        self.theta = nn.Parameter(init_scale * torch.randn(spec.dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.theta.dtype)
        d = self.dim
        residual = x[..., :d] @ self.theta - x[..., d]  # noise-free: x^T (theta - theta*)
        loss = 0.5 * x[..., d + 2] * (residual - x[..., d + 1]) ** 2
        return torch.stack([loss, residual.abs() - self.tolerance], -1)


# ------------------------------------------------------------------ two basins
def _two_basin_rows(ref: TwoBasinReference, n: int, shift: float,
                    rng: np.random.Generator) -> np.ndarray:
    """``n`` rows ``(d_u, d_v, xi_u, xi_v)``: centered noise with covariance noise^2 I."""
    xi = ref.noise * math.sqrt(n) * _orthonormal(n, 2, np.ones(n), rng)
    return np.column_stack([np.zeros(n), np.full(n, shift), xi])


class TwoBasinModel(_SyntheticModel):
    """``theta = (u, v)``, initialized ``init_scale * N(0, I)`` from the global torch RNG."""

    def __init__(self, spec: TwoBasinReference, init_scale: float = 1.0) -> None:
        super().__init__()
        self.spec = spec
        self.theta = nn.Parameter(init_scale * torch.randn(2))

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.theta.dtype)
        p = self.theta - x[..., :2]
        clean = self.spec.surface(p[..., 0], p[..., 1])
        loss = clean + x[..., 2:4] @ self.theta
        return torch.stack([loss, clean - self.spec.saddle_loss], -1)


# ------------------------------------------------------------------ data, models, checks
class _Key(NamedTuple):
    """Every field a synthetic dataset depends on (hashable: the cache key); the unused
    family's fields are None.  Reads like a dataset config."""

    name: str
    train_size: int
    test_size: int
    seed: int
    noise: float
    test_shift: float
    spectrum: Optional[tuple] = None
    dim: Optional[int] = None
    condition: Optional[float] = None
    outliers: Optional[tuple] = None
    tolerance: Optional[float] = None
    sharp_curvature: Optional[float] = None
    flat_curvature: Optional[float] = None
    barrier: Optional[float] = None
    tilt: Optional[float] = None


def load_synthetic(cfg: Any):
    """The :class:`~landscope.data.DataBundle` of a synthetic dataset config (cached per
    process; the float64 tensors are shared, never modify them in place)."""
    name = str(cfg.name)
    n, n_test = _sizes(cfg)
    common = dict(name=name, train_size=n, test_size=n_test, seed=int(cfg.seed),
                  noise=float(cfg.noise), test_shift=float(cfg.test_shift))
    if name == "quadratic":
        spectrum = None if cfg.spectrum is None else tuple(float(v) for v in cfg.spectrum)
        key = _Key(**common, spectrum=spectrum, dim=int(cfg.dim),
                   condition=float(cfg.condition),
                   outliers=tuple(float(v) for v in cfg.outliers), tolerance=float(cfg.tolerance))
    elif name == "two_basin":
        key = _Key(**common, sharp_curvature=float(cfg.sharp_curvature),
                   flat_curvature=float(cfg.flat_curvature), barrier=float(cfg.barrier),
                   tilt=float(cfg.tilt))
    else:
        raise ConfigError(f"{name!r} is not a synthetic dataset (choose {', '.join(SYNTHETIC)})")
    return _load_cached(key)


@functools.lru_cache(maxsize=8)
def _load_cached(key: _Key):
    from landscope.data import DataBundle, DatasetMeta, TensorSplit

    n, n_test, seed = key.train_size, key.test_size, key.seed
    if key.name == "quadratic":
        lam, q, star, star_test = _quadratic_setup(key)
        train = _quadratic_rows(lam, q, star, key.noise, n, np.random.default_rng([seed, _TRAIN]))
        test = _quadratic_rows(lam, q, star_test, key.noise, n_test,
                               np.random.default_rng([seed, _TEST]))
        problem: Any = QuadraticSpec(len(lam), float(key.tolerance))
    else:
        problem = two_basin_reference(key)
        train = _two_basin_rows(problem, n, 0.0, np.random.default_rng([seed, _TRAIN]))
        test = _two_basin_rows(problem, n_test, problem.test_shift,
                               np.random.default_rng([seed, _TEST]))

    def split(rows: np.ndarray) -> Any:
        return TensorSplit(torch.from_numpy(np.ascontiguousarray(rows)),
                           torch.zeros(len(rows), dtype=torch.int64))

    meta = DatasetMeta(key.name, (train.shape[1],), 1, n, n_test, problem)
    return DataBundle(split(train), split(test), meta)


def clear_cache() -> None:
    _load_cached.cache_clear()


def build_synthetic_model(name: str, meta: Any, init_scale: float) -> nn.Module:
    """The model ``name`` for a synthetic dataset's ``meta`` (refused for any other data)."""
    problem = getattr(meta, "problem", None)
    want = QuadraticSpec if name == "quadratic" else TwoBasinReference
    if not isinstance(problem, want):
        raise ConfigError(f"model={name} needs dataset={name} (got dataset="
                          f"{getattr(meta, 'name', '?')})")
    if isinstance(problem, QuadraticSpec):
        return QuadraticModel(problem, init_scale)
    return TwoBasinModel(problem, init_scale)


def _check(ok: bool, key: str, requirement: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {requirement} (got {value!r})")


def _finite(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def validate_synthetic(cfg: Any) -> None:
    """Checks of a composed config whose dataset or model is synthetic (ConfigError)."""
    d, m = cfg.dataset, cfg.model
    dname, mname = str(d.name), str(m.name)
    if is_synthetic(mname) and dname != mname:
        raise ConfigError(f"model={mname} runs only on dataset={mname} (got dataset={dname}); "
                          f"use dataset={mname} model={mname}")
    if is_synthetic(dname) and dname != mname:
        raise ConfigError(f"dataset={dname} runs only with model={dname} (got model={mname}); "
                          f"use dataset={dname} model={dname}")
    _check(d.label_noise == 0, "dataset.label_noise", f"0 for dataset={dname}", d.label_noise)
    _check(not d.normalize, "dataset.normalize", f"false for dataset={dname} (it would change "
           "the closed forms)", d.normalize)
    _check(_finite([d.noise]) and d.noise >= 0, "dataset.noise", "finite and >= 0", d.noise)
    _check(_finite([d.test_shift]), "dataset.test_shift", "finite", d.test_shift)
    n, n_test = _sizes(d)
    if dname == "quadratic":
        _check(d.tolerance > 0, "dataset.tolerance", "> 0", d.tolerance)
        if d.spectrum is not None:
            _check(len(d.spectrum) >= 1 and _finite(list(d.spectrum)), "dataset.spectrum",
                   "a non-empty list of finite numbers", list(d.spectrum))
        else:
            _check(d.dim >= 1, "dataset.dim", ">= 1", d.dim)
            _check(_finite([d.condition]) and d.condition >= 1, "dataset.condition", ">= 1",
                   d.condition)
            _check(len(d.outliers) <= d.dim and _finite(list(d.outliers)), "dataset.outliers",
                   f"at most dataset.dim={d.dim} finite numbers", list(d.outliers))
        need = quadratic_min_samples(resolve_spectrum(d))
        for key, size in (("train_size", n), ("test_size", n_test)):
            _check(size >= need, f"dataset.{key}", f">= {need} for this spectrum", size)
    else:
        _check(_finite([d.sharp_curvature, d.flat_curvature])
               and d.sharp_curvature >= d.flat_curvature > 0, "dataset.sharp_curvature/"
               "flat_curvature", "finite with sharp >= flat > 0",
               (d.sharp_curvature, d.flat_curvature))
        _check(_finite([d.barrier]) and d.barrier > 0, "dataset.barrier", "> 0", d.barrier)
        _check(_finite([d.tilt]) and -1 < d.tilt < 1, "dataset.tilt", "in (-1, 1)", d.tilt)
        for key, size in (("train_size", n), ("test_size", n_test)):
            _check(size >= 3, f"dataset.{key}", ">= 3 for dataset=two_basin", size)
