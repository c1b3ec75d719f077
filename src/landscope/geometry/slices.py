"""1-D and 2-D slices of the loss landscape through a model's point.

``line_slice`` evaluates ``theta0 + a d_k`` for K directions ``d_k`` (a band of random
directions, eigenvectors, or the way to another checkpoint) and coordinates ``a``;
``plane_slice`` evaluates ``theta0 + x d1 + y d2`` on a grid (Li et al. 2018, "Visualizing
the Loss Landscape of Neural Nets"; use filter-normalized directions from
:mod:`landscope.geometry.directions` to compare models). Each point gets the exact mean loss
and accuracy on the train data and, optionally, the test data.

Grids are symmetric with an odd number of points, so the centre is a grid point, and it is
evaluated *exactly*: the working copy is set to ``theta0`` itself (no ``theta0 + 0 * d``), so
its values equal ``space.evaluate(space.theta0, ...)`` bit for bit. :func:`symmetric_grid`
builds such coordinates. A line's centre is shared by all its directions and evaluated once.

Data. The caller builds the :class:`~landscope.probes.probe_data.ProbeData`: a seeded subset
(``ProbeData.from_split(split, size, seed, batch_size)``) or the whole split (``size=None``);
values are exact means over all its samples, independent of the micro-batch size.

BatchNorm. ``bn="keep"`` evaluates every point with the trained running statistics;
``bn="recompute"`` re-estimates them at every point on ``bn_data`` (default: the train data),
see :meth:`ParamSpace.recompute_batchnorm`. The mode is recorded in the result's metadata.

Speed. One working copy of the model (the :class:`ParamSpace`'s) is moved from point to point
by writing ``theta0 + a d1 (+ b d2)`` into its flat parameter buffer in place (``torch.add(...,
out=)``; a plane row's ``theta0 + a d1`` is computed once per row); no model copies, no
allocation of parameter vectors per point; loss and accuracy take a few cheap ops (see
:meth:`ParamSpace.evaluate_current`). On the default MLP with 1000 samples a point costs about
1.2 bare forward passes (``scripts/bench_geometry.py``).

Workers. With ``workers > 1`` the points are evaluated by ``joblib`` (loky) worker processes,
each with one torch thread. The scan (the space, directions, coordinates, data) is pickled once
into a temporary file that every worker reads once per scan (the space is rebuilt only when it
differs from the worker's previous one); tasks carry only point indices, in guided chunks
(large first, at most 32 points, small at the end so the workers finish together), all queued
at once. Every point is computed by the same code from the same inputs whatever process runs
it, so the values do not depend on ``workers`` or on how a scan was interrupted and resumed
(the serial path runs with the caller's torch thread setting; with one thread, as in the
worker processes, the results are bit-identical). The speedup needs free cores: on a machine
whose other processes hold a core, two workers are no faster than one. CUDA models are
evaluated in the calling process (with a warning).

Resume. With ``store=Path`` the completed points are written atomically (temp file +
``os.replace``) to that ``.npz`` every ``save_every`` seconds, when the scan ends and when it is
interrupted by an exception, together with a key: a hash of the model (architecture, its
outputs on a few samples, ``theta0``, buffers), the directions, the coordinates, the data (every
input and label), the BatchNorm mode and its data. Calling again with the same arguments
evaluates only the missing points and gives the same arrays as an uninterrupted scan; a store
whose key differs (another scan) is never reused: the scan starts afresh with a
``RuntimeWarning`` and overwrites it. A completed store makes a repeated call free.

Scalars (``scalars()``; ``{s}`` is ``train`` and, when test data is given, ``test``;
``delta`` = :data:`RISE_DELTA` = 0.1 nats):

line_ (K directions, coordinates ``a`` in ``[-r, r]``):
    ``line_{s}_loss_centre``, ``line_{s}_acc_centre``: values at ``a = 0``;
    ``line_{s}_rise_mean`` / ``line_{s}_rise_std``: mean / sample std (ddof 1; NaN for K = 1)
    over directions of ``(L(-r) + L(r)) / 2 - L(0)``;
    ``line_{s}_loss_max``: largest loss anywhere on the band;
    ``line_{s}_acc_drop_mean``: mean over directions of ``A(0) - (A(-r) + A(r)) / 2``;
    ``line_train_radius_min``: over the 2K half-lines (each direction, each sign), the smallest
    ``|a|`` at which the train loss, linearly interpolated between grid points, first reaches
    ``L(0) + delta`` (NaN if no half-line reaches it inside the range);
    ``line_train_radius_mean``: mean of those first-crossing ``|a|`` over the half-lines that
    reach it (NaN if none); ``line_train_radius_reached``: fraction of half-lines that reach it.
plane_ (grid ``x`` by ``y``):
    ``plane_{s}_loss_centre``, ``plane_{s}_acc_centre``: values at ``(0, 0)``;
    ``plane_{s}_loss_min``, ``plane_{s}_loss_max``: extremes over the grid;
    ``plane_{s}_rise_border_mean``: mean loss over the grid's border points minus the centre's;
    ``plane_train_radius``: smallest ``sqrt(x^2 + y^2)`` of a grid point whose train loss is
    ``>= L(0) + delta`` (NaN if none); ``plane_train_basin_fraction``: fraction of grid points
    with train loss ``< L(0) + delta``; ``plane_train_centre_is_min``: 1.0 when no grid point
    has a lower train loss than the centre, else 0.0.
A non-finite loss (a diverged point) counts as above every threshold.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from landscope.errors import LandscopeError
from landscope.geometry.space import BN_MODES, ParamSpace
from landscope.io import atomic_write_bytes
from landscope.probes.probe_data import ProbeData

RISE_DELTA = 0.1  # loss rise (nats) that defines the radius / basin scalars
SAVE_EVERY_S = 5.0  # default seconds between store writes
_STORE_VERSION = "landscope-slices-1"

__all__ = ["LineSlice", "PlaneSlice", "line_slice", "plane_slice", "symmetric_grid",
           "RISE_DELTA"]


# ----------------------------------------------------------------------------- results
@dataclass
class LineSlice:
    """Losses/accuracies along K lines ``theta0 + a d_k``: arrays ``(K, P)`` over ``coords``."""

    coords: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: Optional[np.ndarray] = None
    test_acc: Optional[np.ndarray] = None
    metadata: dict = field(default_factory=dict)
    n_points: int = 0  # distinct points of the scan (the centre counted once)
    n_evaluated: int = 0  # points evaluated by this call (the others came from the store)

    def arrays(self) -> dict[str, np.ndarray]:
        """``coords (P,)``, ``train_loss``/``train_acc`` ``(K, P)`` and, with test data,
        ``test_loss``/``test_acc``."""
        out = {"coords": self.coords, "train_loss": self.train_loss, "train_acc": self.train_acc}
        if self.test_loss is not None and self.test_acc is not None:
            out["test_loss"], out["test_acc"] = self.test_loss, self.test_acc
        return out

    def scalars(self) -> dict[str, float]:
        """Summary numbers prefixed ``line_`` (defined in the module docstring)."""
        c = len(self.coords) // 2
        out: dict[str, float] = {}
        for s, loss, acc in _splits(self):
            rise = (loss[:, 0] + loss[:, -1]) / 2 - loss[:, c]
            out[f"line_{s}_loss_centre"] = float(loss[0, c])
            out[f"line_{s}_acc_centre"] = float(acc[0, c])
            out[f"line_{s}_rise_mean"] = float(np.mean(rise))
            out[f"line_{s}_rise_std"] = float(np.std(rise, ddof=1)) if len(rise) > 1 else math.nan
            out[f"line_{s}_loss_max"] = _nanmax(loss)
            drop = acc[:, c] - (acc[:, 0] + acc[:, -1]) / 2
            out[f"line_{s}_acc_drop_mean"] = float(np.mean(drop))
        radii = []
        for row in self.train_loss:
            for side in (row[c:], row[c::-1]):
                radii.append(_first_crossing(self.coords[c:], side, side[0] + RISE_DELTA))
        r = np.asarray(radii)
        reached = r[np.isfinite(r)]
        out["line_train_radius_min"] = float(reached.min()) if len(reached) else math.nan
        out["line_train_radius_mean"] = float(reached.mean()) if len(reached) else math.nan
        out["line_train_radius_reached"] = float(len(reached) / len(r))
        return out


@dataclass
class PlaneSlice:
    """Losses/accuracies on the grid ``theta0 + x[i] d1 + y[j] d2``: arrays ``(P, Q)``
    indexed ``[i, j]`` (``x`` along the first axis)."""

    x: np.ndarray
    y: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: Optional[np.ndarray] = None
    test_acc: Optional[np.ndarray] = None
    metadata: dict = field(default_factory=dict)
    n_points: int = 0
    n_evaluated: int = 0

    def arrays(self) -> dict[str, np.ndarray]:
        """``x (P,)``, ``y (Q,)``, ``train_loss``/``train_acc`` ``(P, Q)`` and, with test
        data, ``test_loss``/``test_acc``."""
        out = {"x": self.x, "y": self.y, "train_loss": self.train_loss,
               "train_acc": self.train_acc}
        if self.test_loss is not None and self.test_acc is not None:
            out["test_loss"], out["test_acc"] = self.test_loss, self.test_acc
        return out

    def scalars(self) -> dict[str, float]:
        """Summary numbers prefixed ``plane_`` (defined in the module docstring)."""
        ci, cj = len(self.x) // 2, len(self.y) // 2
        border = np.ones(self.train_loss.shape, bool)
        border[1:-1, 1:-1] = False
        out: dict[str, float] = {}
        for s, loss, acc in _splits(self):
            out[f"plane_{s}_loss_centre"] = float(loss[ci, cj])
            out[f"plane_{s}_acc_centre"] = float(acc[ci, cj])
            out[f"plane_{s}_loss_min"] = _nanmin(loss)
            out[f"plane_{s}_loss_max"] = _nanmax(loss)
            out[f"plane_{s}_rise_border_mean"] = float(np.mean(loss[border]) - loss[ci, cj])
        loss = self.train_loss
        centre = loss[ci, cj]
        above = ~(loss < centre + RISE_DELTA)  # NaN counts as above
        radius = np.hypot(self.x[:, None], self.y[None, :])
        out["plane_train_radius"] = float(radius[above].min()) if above.any() else math.nan
        out["plane_train_basin_fraction"] = float(1.0 - above.mean())
        out["plane_train_centre_is_min"] = float(not bool((loss < centre).any()))
        return out


def _splits(res: Union[LineSlice, PlaneSlice]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = [("train", res.train_loss, res.train_acc)]
    if res.test_loss is not None and res.test_acc is not None:
        out.append(("test", res.test_loss, res.test_acc))
    return out


def _nanmax(a: np.ndarray) -> float:
    return math.inf if not np.all(np.isfinite(a)) else float(a.max())


def _nanmin(a: np.ndarray) -> float:
    finite = a[np.isfinite(a)]
    return float(finite.min()) if len(finite) else math.nan


def _first_crossing(a: np.ndarray, loss: np.ndarray, target: float) -> float:
    """Smallest ``|a|`` where the piecewise-linear ``loss(a)`` (``a`` increasing in ``|a|``,
    ``a[0] = 0``) reaches ``target``; NaN if it never does. Non-finite losses count as
    above the target (the crossing is then placed at that grid point)."""
    a = np.abs(a)
    for j in range(1, len(loss)):
        lj = loss[j]
        if not math.isfinite(lj):
            return float(a[j])
        if lj >= target:
            lo = loss[j - 1]
            return float(a[j - 1] + (target - lo) / (lj - lo) * (a[j] - a[j - 1]))
    return math.nan


# ----------------------------------------------------------------------------- inputs
def symmetric_grid(radius: float, points: int) -> np.ndarray:
    """``points`` (odd, >= 3) coordinates from ``-radius`` to ``radius``, evenly spaced and
    exactly symmetric (``g[i] == -g[-1 - i]``), with an exact 0 in the middle."""
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 3 \
            or points % 2 == 0:
        raise LandscopeError(f"slice grids need an odd number of points >= 3 so that the "
                             f"centre is a grid point (got {points!r})")
    if not (isinstance(radius, (int, float, np.floating)) and math.isfinite(radius)
            and radius > 0):
        raise LandscopeError(f"slice range must be finite and > 0 (got {radius!r})")
    m = (int(points) - 1) // 2
    half = float(radius) * np.arange(1, m + 1, dtype=np.float64) / m
    return np.concatenate([-half[::-1], [0.0], half])


def _check_axis(coords: Any, what: str) -> np.ndarray:
    try:
        a = np.array(coords, dtype=np.float64)
    except (TypeError, ValueError):
        raise LandscopeError(f"{what} must be a 1-D array of numbers") from None
    if a.ndim != 1 or len(a) < 3 or len(a) % 2 == 0:
        raise LandscopeError(f"{what} must be a 1-D grid with an odd number (>= 3) of points "
                             f"so that the centre is a grid point (got shape {a.shape})")
    if not np.all(np.isfinite(a)) or not np.all(np.diff(a) > 0):
        raise LandscopeError(f"{what} must be finite and strictly increasing")
    if not np.array_equal(a, -a[::-1]):
        raise LandscopeError(f"{what} must be symmetric about 0 (c[i] == -c[-1-i]); build it "
                             "with landscope.geometry.slices.symmetric_grid(range, points)")
    a[len(a) // 2] = 0.0  # -0.0 -> 0.0
    return a


def _check_directions(space: ParamSpace, directions: Any, what: str) -> Tensor:
    try:
        if isinstance(directions, Tensor):
            d = directions
        elif isinstance(directions, (list, tuple)) and directions \
                and all(isinstance(v, Tensor) for v in directions):
            d = torch.stack([v.reshape(-1) for v in directions])
        else:
            d = torch.as_tensor(np.asarray(directions))
    except (TypeError, ValueError, RuntimeError):
        raise LandscopeError(f"{what} must be a tensor or array of shape "
                             f"(K, {space.dim})") from None
    if d.dim() == 1:
        d = d.unsqueeze(0)
    if d.dim() != 2 or d.shape[0] < 1 or d.shape[1] != space.dim:
        raise LandscopeError(f"{what} must have length {space.dim} (the model's parameter "
                             f"count), got shape {tuple(d.shape)}")
    if not d.is_floating_point() or not bool(torch.isfinite(d).all()):
        raise LandscopeError(f"{what} must be finite floating-point vectors")
    return d.detach().to(space.device, space.dtype).contiguous()


def _check_common(space: Any, train: Any, test: Any, bn: Any, bn_data: Any, workers: Any,
                  save_every: Any) -> str:
    if not isinstance(space, ParamSpace):
        raise LandscopeError(f"slices need a ParamSpace (got {type(space).__name__})")
    if not isinstance(train, ProbeData):
        raise LandscopeError(f"train data must be a ProbeData (got {type(train).__name__})")
    if test is not None and not isinstance(test, ProbeData):
        raise LandscopeError(f"test data must be a ProbeData or None "
                             f"(got {type(test).__name__})")
    if bn_data is not None and not isinstance(bn_data, ProbeData):
        raise LandscopeError(f"bn_data must be a ProbeData or None "
                             f"(got {type(bn_data).__name__})")
    mode = getattr(bn, "value", bn)
    if mode not in BN_MODES:
        raise LandscopeError(f"bn must be one of {', '.join(BN_MODES)} (got {bn!r})")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise LandscopeError(f"workers must be an integer >= 1 (got {workers!r})")
    if not (isinstance(save_every, (int, float)) and save_every >= 0):
        raise LandscopeError(f"save_every must be a number of seconds >= 0 (got {save_every!r})")
    return str(mode)


# ----------------------------------------------------------------------------- the scan
@dataclass
class _Scan:
    """Points ``base + c * dirs[d]`` with ``base = theta0 + rc * dirs[rd]`` (``rd < 0``: none):
    one row ``[rd, rc, d, c]`` of ``terms`` per point."""

    kind: str
    dirs: Tensor
    terms: np.ndarray
    axes: list[np.ndarray]
    sets: list[ProbeData]
    bn: str
    bn_data: Optional[ProbeData]

    @property
    def width(self) -> int:
        return 2 * len(self.sets)


def _evaluate_points(space: ParamSpace, scan: _Scan, idx: Sequence[int],
                     on_point: Optional[Callable[[int, list[float]], None]] = None
                     ) -> np.ndarray:
    """Values ``[loss, acc] * len(sets)`` of the points ``idx``, in that order."""
    terms = scan.terms.tolist()
    dirs = [scan.dirs[k] for k in range(scan.dirs.shape[0])]
    recompute = scan.bn == "recompute" and space.has_batchnorm
    bn_data = scan.bn_data if scan.bn_data is not None else scan.sets[0]
    theta0 = space.theta0
    row = torch.empty_like(theta0)
    row_key: Optional[tuple[float, float]] = None
    out = np.empty((len(idx), scan.width))
    space.set_point(theta0)  # buffers back to the model's own
    for n, i in enumerate(idx):
        rd, rc, d, c = terms[i]
        if rd < 0 or rc == 0:
            base = theta0
        else:
            if row_key != (rd, rc):
                with torch.no_grad():
                    torch.add(theta0, dirs[int(rd)], alpha=rc, out=row)
                row_key = (rd, rc)
            base = row
        space.set_affine(base, None if d < 0 else dirs[int(d)], c)
        if recompute:
            space.recompute_batchnorm(bn_data)
        vals: list[float] = []
        for data in scan.sets:
            ev = space.evaluate_current(data)
            vals += [ev.loss, ev.acc]
        out[n] = vals
        if on_point is not None:
            on_point(i, vals)
    return out


# worker side: the current scan and the last ParamSpace (rebuilt only for another space)
_WORKER: dict[str, Any] = {}


def _cloudpickle() -> Any:
    """cloudpickle (a joblib dependency; older joblib versions vendor it): pickles models whose
    classes live in ``__main__`` by value."""
    try:
        import cloudpickle
    except ImportError:  # pragma: no cover - joblib < 1.3
        from joblib.externals import cloudpickle  # type: ignore[no-redef]
    return cloudpickle


def _portable(data: Optional[ProbeData]) -> Any:
    """ProbeData as numpy arrays: a numpy view pickles only the samples its batch holds (a
    tensor slice would pickle its whole storage). Dtypes numpy lacks stay tensors (copied)."""
    if data is None:
        return None

    def one(t: Tensor) -> Any:
        t = t.detach().cpu()
        try:
            return t.numpy()
        except TypeError:  # e.g. bfloat16
            return t.clone()
    return [(one(x), one(y)) for x, y in data.batches]


def _unportable(batches: Any) -> Optional[ProbeData]:
    if batches is None:
        return None

    def one(a: Any) -> Tensor:
        return torch.from_numpy(a).clone() if isinstance(a, np.ndarray) else a
    return ProbeData([(one(x), one(y)) for x, y in batches])


def _worker_chunk(token: str, payload: str, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the points ``idx`` of the scan stored in the file ``payload`` (read once per
    scan and process; the ParamSpace inside is unpickled only when it differs from the
    previous scan's, by the hash of its pickle)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    if _WORKER.get("token") != token:
        pickler = _cloudpickle()
        p = pickler.loads(Path(payload).read_bytes())
        if _WORKER.get("space_key") != p["space_key"]:
            _WORKER["space"] = pickler.loads(p["space"])
            _WORKER["space_key"] = p["space_key"]
        _WORKER["scan"] = _Scan(p["kind"], p["dirs"], p["terms"], p["axes"],
                                [_unportable(s) for s in p["sets"]], p["bn"],
                                _unportable(p["bn_data"]))
        _WORKER["token"] = token
    return idx, _evaluate_points(_WORKER["space"], _WORKER["scan"], idx.tolist())


def _chunks(todo: np.ndarray, workers: int, cap: int = 32) -> list[np.ndarray]:
    """Guided scheduling: chunks of ``ceil(remaining / (3 workers))`` points, between 2 and
    ``cap`` (large first for little dispatch overhead, small last so the workers finish
    together; the cap bounds the work lost to an interruption)."""
    out, start = [], 0
    while start < len(todo):
        size = min(cap, max(2, -(-(len(todo) - start) // (3 * workers))))
        out.append(todo[start:start + size])
        start += size
    return out


def _run_parallel(space: ParamSpace, scan: _Scan, todo: np.ndarray, workers: int,
                  on_chunk: Callable[[np.ndarray, np.ndarray], None]) -> None:
    """Evaluate ``todo`` in joblib/loky worker processes. The scan (model, directions, data)
    is pickled once into a temporary file that each worker reads once; tasks carry only the
    file name and point indices."""
    from joblib import Parallel, delayed
    pickler = _cloudpickle()
    space_blob = pickler.dumps(space)
    payload = pickler.dumps({
        "space": space_blob, "space_key": hashlib.blake2b(space_blob, digest_size=16).digest(),
        "kind": scan.kind, "dirs": scan.dirs.cpu(), "terms": scan.terms,
        "axes": scan.axes, "sets": [_portable(s) for s in scan.sets], "bn": scan.bn,
        "bn_data": _portable(scan.bn_data)})
    fd, path = tempfile.mkstemp(prefix="landscope-slice-", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        token = uuid.uuid4().hex
        # every chunk queued at once, one per task: workers never wait for this process to
        # hand out the next batch (it may be descheduled on a busy machine)
        with Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered",
                      batch_size=1, pre_dispatch="all") as par:
            for idx, vals in par(delayed(_worker_chunk)(token, path, c)
                                 for c in _chunks(todo, workers)):
                on_chunk(idx, vals)
    finally:
        os.unlink(path)


def _run(space: ParamSpace, scan: _Scan, workers: int, store: Optional[Path],
         save_every: float) -> tuple[np.ndarray, int]:
    """Values ``(n_points, width)`` of every point (from the store or evaluated) and the
    number of points evaluated now."""
    n = len(scan.terms)
    values = np.full((n, scan.width), np.nan)
    done = np.zeros(n, bool)
    key = ""
    if store is not None:
        key = _scan_key(space, scan)
        loaded = _load_store(store, key, n, scan.width)
        if loaded is not None:
            done, values = loaded
    todo = np.flatnonzero(~done)
    state = {"last": time.monotonic(), "dirty": False}

    def save(force: bool) -> None:
        if store is None or not state["dirty"]:
            return
        if force or time.monotonic() - state["last"] >= save_every:
            _save_store(store, key, done, values)
            state["last"], state["dirty"] = time.monotonic(), False

    def on_point(i: int, vals: list[float]) -> None:
        values[i] = vals
        done[i] = True
        state["dirty"] = True
        save(False)

    def on_chunk(idx: np.ndarray, vals: np.ndarray) -> None:
        values[idx] = vals
        done[idx] = True
        state["dirty"] = True
        save(False)

    parallel = workers > 1 and len(todo) > 1
    if parallel and space.device.type != "cpu":
        warnings.warn(f"slice workers > 1 run on CPU only; evaluating on {space.device} in "
                      "this process", RuntimeWarning, stacklevel=3)
        parallel = False
    try:
        if parallel:
            _run_parallel(space, scan, todo, int(workers), on_chunk)
        elif len(todo):
            _evaluate_points(space, scan, todo.tolist(), on_point)
    except BaseException:
        try:
            save(True)
        except Exception as err:  # keep the original error
            warnings.warn(f"could not save the partial slice to {store}: {err}", RuntimeWarning)
        raise
    else:
        save(True)
    finally:
        space.set_point(space.theta0)
    return values, len(todo)


# ----------------------------------------------------------------------------- store
def _hash_tensor(h: Any, t: Tensor) -> None:
    t = t.detach().cpu().contiguous().reshape(-1)
    h.update(f"{t.dtype}:{t.numel()}|".encode())
    if t.numel():
        h.update(t.view(torch.uint8).numpy().data)


def _hash_data(h: Any, data: Optional[ProbeData]) -> None:
    if data is None:
        h.update(b"none|")
        return
    h.update(f"probe:{len(data.batches)}|".encode())
    for x, y in data.batches:
        _hash_tensor(h, x)
        _hash_tensor(h, y)


def _scan_key(space: ParamSpace, scan: _Scan) -> str:
    """Hash of everything that determines the scan's values (see the module docstring)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{_STORE_VERSION}|{scan.kind}|{space.dtype}|{space.dim}|".encode())
    model = space.model
    h.update(f"{type(model).__module__}.{type(model).__qualname__}|{model!r}|".encode())
    for name, shape in zip(space.names, space.shapes):
        h.update(f"{name}:{shape}|".encode())
    _hash_tensor(h, space.theta0)
    for name in sorted(space.buffers0):
        h.update(f"{name}|".encode())
        _hash_tensor(h, space.buffers0[name])
    # the forward itself (models with equal parameters may compute differently, e.g. skips)
    space.set_point(space.theta0)
    x = scan.sets[0].batches[0][0][:4]
    with torch.inference_mode():
        _hash_tensor(h, space.working_model(x.to(space.device, space.dtype)))
    _hash_tensor(h, scan.dirs)
    for axis in scan.axes:
        _hash_tensor(h, torch.from_numpy(axis))
    h.update(f"sets:{len(scan.sets)}|bn:{scan.bn}|".encode())
    for data in scan.sets:
        _hash_data(h, data)
    if scan.bn == "recompute" and space.has_batchnorm:
        _hash_data(h, scan.bn_data)
    return h.hexdigest()


def _load_store(path: Path, key: str, n: int, width: int
                ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            stored_key = str(z["key"])
            done = np.array(z["done"], dtype=bool)
            values = np.array(z["values"], dtype=np.float64)
    except Exception as err:
        warnings.warn(f"slice store {path} is unreadable ({type(err).__name__}); "
                      "recomputing every point", RuntimeWarning, stacklevel=4)
        return None
    if stored_key != key or done.shape != (n,) or values.shape != (n, width):
        warnings.warn(f"slice store {path} belongs to a different scan (its key does not "
                      "match); recomputing every point", RuntimeWarning, stacklevel=4)
        return None
    return done, values


def _save_store(path: Path, key: str, done: np.ndarray, values: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), done=done, values=values)
    atomic_write_bytes(path, buf.getvalue())


def _store_path(store: Any) -> Optional[Path]:
    if store is None:
        return None
    if not isinstance(store, (str, os.PathLike)):
        raise LandscopeError(f"store must be a path or None (got {type(store).__name__})")
    return Path(store)


# ----------------------------------------------------------------------------- public
def line_slice(space: ParamSpace, directions: Any, coords: Any, train: ProbeData,
               test: Optional[ProbeData] = None, bn: str = "keep",
               bn_data: Optional[ProbeData] = None, workers: int = 1,
               store: Optional[Union[str, os.PathLike]] = None, *,
               save_every: float = SAVE_EVERY_S,
               meta: Optional[Mapping[str, Any]] = None) -> LineSlice:
    """Loss and accuracy at ``theta0 + a d_k`` for every direction ``d_k`` (rows of
    ``directions``, shape ``(K, D)`` or ``(D,)``) and coordinate ``a`` in ``coords``
    (symmetric, odd count, see :func:`symmetric_grid`).

    Evaluates ``K (P - 1) + 1`` points (the centre once). ``meta`` (e.g. normalization, seed,
    direction source) is copied into the result's metadata. See the module docstring for
    ``bn``, ``workers``, ``store`` (resume) and ``save_every`` (seconds between store writes).
    """
    mode = _check_common(space, train, test, bn, bn_data, workers, save_every)
    dirs = _check_directions(space, directions, "line directions")
    a = _check_axis(coords, "line coordinates")
    k, p, c = dirs.shape[0], len(a), len(a) // 2
    rows = [[-1.0, 0.0, -1.0, 0.0]]  # the centre, shared by every direction
    index = np.zeros((k, p), np.int64)
    for kk in range(k):
        for j in range(p):
            if j != c:
                index[kk, j] = len(rows)
                rows.append([-1.0, 0.0, float(kk), float(a[j])])
    sets = [train] if test is None else [train, test]
    scan = _Scan("line", dirs, np.asarray(rows, np.float64), [a], sets, mode,
                 bn_data if mode == "recompute" else None)
    values, n_new = _run(space, scan, int(workers), _store_path(store), float(save_every))
    grid = values[index]  # (K, P, width)
    md = _metadata(space, scan, train, test, n_new, directions=k, points=p,
                   range=float(a[-1]), meta=meta)
    return LineSlice(coords=a, train_loss=grid[..., 0].copy(), train_acc=grid[..., 1].copy(),
                     test_loss=None if test is None else grid[..., 2].copy(),
                     test_acc=None if test is None else grid[..., 3].copy(),
                     metadata=md, n_points=len(rows), n_evaluated=n_new)


def plane_slice(space: ParamSpace, d1: Any, d2: Any, xs: Any, ys: Any, train: ProbeData,
                test: Optional[ProbeData] = None, bn: str = "keep",
                bn_data: Optional[ProbeData] = None, workers: int = 1,
                store: Optional[Union[str, os.PathLike]] = None, *,
                save_every: float = SAVE_EVERY_S,
                meta: Optional[Mapping[str, Any]] = None) -> PlaneSlice:
    """Loss and accuracy at ``theta0 + xs[i] d1 + ys[j] d2`` on the full grid (``P x Q``
    points, arrays indexed ``[i, j]``). ``xs``/``ys`` are symmetric with odd counts (see
    :func:`symmetric_grid`), so ``(0, 0)`` is evaluated exactly. Other arguments as in
    :func:`line_slice`.
    """
    mode = _check_common(space, train, test, bn, bn_data, workers, save_every)
    v1 = _check_directions(space, d1, "plane direction d1")
    v2 = _check_directions(space, d2, "plane direction d2")
    if v1.shape[0] != 1 or v2.shape[0] != 1:
        raise LandscopeError("plane directions d1 and d2 must each be one flat vector")
    x = _check_axis(xs, "plane x coordinates")
    y = _check_axis(ys, "plane y coordinates")
    ii, jj = np.meshgrid(x, y, indexing="ij")
    terms = np.stack([np.zeros(ii.size), ii.ravel(), np.ones(ii.size), jj.ravel()], axis=1)
    sets = [train] if test is None else [train, test]
    scan = _Scan("plane", torch.cat([v1, v2]), terms, [x, y], sets, mode,
                 bn_data if mode == "recompute" else None)
    values, n_new = _run(space, scan, int(workers), _store_path(store), float(save_every))
    grid = values.reshape(len(x), len(y), scan.width)
    md = _metadata(space, scan, train, test, n_new, points=(len(x), len(y)),
                   range=(float(x[-1]), float(y[-1])), meta=meta)
    return PlaneSlice(x=x, y=y, train_loss=grid[..., 0].copy(), train_acc=grid[..., 1].copy(),
                      test_loss=None if test is None else grid[..., 2].copy(),
                      test_acc=None if test is None else grid[..., 3].copy(),
                      metadata=md, n_points=len(terms), n_evaluated=n_new)


def _metadata(space: ParamSpace, scan: _Scan, train: ProbeData, test: Optional[ProbeData],
              n_new: int, meta: Optional[Mapping[str, Any]], **extra: Any) -> dict:
    md: dict[str, Any] = {
        "kind": scan.kind, "bn": scan.bn, "has_batchnorm": space.has_batchnorm,
        "bn_data": ("train" if scan.bn_data is None else f"{scan.bn_data.n} samples")
        if scan.bn == "recompute" else None,
        "n_train": train.n, "n_test": None if test is None else test.n, "dim": space.dim,
        "dtype": str(space.dtype).replace("torch.", ""), "n_points": len(scan.terms),
        "n_from_store": len(scan.terms) - n_new, "rise_delta": RISE_DELTA, **extra}
    if meta:
        md.update(dict(meta))
    return md
