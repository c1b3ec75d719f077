"""Parameter snapshots of an optimization trajectory, recorded during training and read
back for :mod:`landscope.geometry.trajectory` (PCA and the path on a loss contour).

Recording (:class:`SnapshotRecorder`)
    Flat float32 (optionally float16) copies of the model's parameters (``named_parameters``
    order, as :class:`~landscope.geometry.space.ParamSpace`), every ``every_steps`` optimizer
    steps or once per epoch (``every_steps=None``), plus the initial point (step 0). Each
    snapshot carries its step (optimizer steps taken) and its epoch: 0 for the initial point,
    otherwise the 1-based epoch during (or at the end of) which it was taken, so the
    snapshots of a run stopped after ``e`` completed epochs are exactly those with
    ``epoch <= e``. Everything lives in one ``.npz`` rewritten atomically (temp file +
    ``os.replace``) at every epoch end, so a killed job loses at most the current epoch.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from landscope.errors import LandscopeError
from landscope.io import atomic_write_bytes

SNAPSHOT_DTYPES = ("float32", "float16")
_FORMAT = 1


@dataclass(frozen=True)
class Trajectory:
    """A recorded trajectory (see :func:`load`).

    ``steps`` (S,) int64: optimizer steps taken at each snapshot; ``epochs`` (S,) int64:
    0 for the initial point, else the 1-based epoch the snapshot belongs to; ``snapshots``
    (S, D) float32 or float16; ``epoch_end_steps`` (E+1,) int64: steps taken after
    ``e`` completed epochs (entry 0 is 0); ``every_steps``: the recording interval (None =
    once per epoch).
    """

    steps: np.ndarray
    epochs: np.ndarray
    snapshots: np.ndarray
    epoch_end_steps: np.ndarray
    every_steps: Optional[int] = None

    def __len__(self) -> int:
        return len(self.steps)


def load(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory written by :class:`SnapshotRecorder`."""
    try:
        with np.load(path, allow_pickle=False) as f:
            every = int(f["every_steps"])
            traj = Trajectory(steps=f["steps"].astype(np.int64),
                              epochs=f["epochs"].astype(np.int64),
                              snapshots=f["snapshots"],
                              epoch_end_steps=f["epoch_end_steps"].astype(np.int64),
                              every_steps=every if every > 0 else None)
    except FileNotFoundError:
        raise LandscopeError(f"no trajectory file at {path}") from None
    except (OSError, KeyError, ValueError) as exc:
        raise LandscopeError(f"unreadable trajectory file {path}: {exc}") from None
    return traj


load_trajectory = load


def flat_parameters(model: nn.Module) -> Tensor:
    """The model's parameters as one detached flat vector (``named_parameters`` order)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class SnapshotRecorder:
    """Records parameter snapshots during :func:`landscope.train.fit` into one ``.npz``.

    Use (the job layer wires it)::

        rec = SnapshotRecorder(job_dir / "trajectory.npz", every_steps=None)
        rec.begin(state)                      # fresh run or after restoring a checkpoint
        fit(state, ..., on_step=rec.on_step,
            on_epoch_end=lambda st, row: (rec.on_epoch_end(st), save_checkpoint(...)))

    ``on_epoch_end`` must run *before* the epoch's checkpoint is saved: a job resumed from
    the checkpoint of epoch ``e`` then finds every snapshot up to ``e`` on disk, and
    :meth:`begin` drops the ones recorded after it (:meth:`truncate`), so the stored
    trajectory equals an uninterrupted run's (training itself being deterministic).

    Storage: ``S x D`` values of ``dtype`` (``"float32"``, or ``"float16"`` for half the
    size at ~1e-3 relative precision); the whole file is rewritten at every epoch end.
    """

    def __init__(self, path: str | os.PathLike, every_steps: Optional[int] = None,
                 dtype: str = "float32") -> None:
        if every_steps is not None and int(every_steps) < 1:
            raise LandscopeError(f"snapshot every_steps must be >= 1 or None (got {every_steps})")
        if dtype not in SNAPSHOT_DTYPES:
            raise LandscopeError(f"snapshot dtype must be one of {', '.join(SNAPSHOT_DTYPES)} "
                                 f"(got {dtype!r})")
        self.path = os.fspath(path)
        self.every_steps = None if every_steps is None else int(every_steps)
        self.dtype = np.dtype(dtype)
        self._steps: list[int] = []
        self._epochs: list[int] = []
        self._snaps: list[np.ndarray] = []
        self._epoch_end_steps: list[int] = [0]

    # -------------------------------------------------------------- training hooks
    def begin(self, state: Any) -> None:
        """Start (``state.epoch == 0``: any old file is discarded and the initial point
        recorded) or continue after a resume at epoch ``e = state.epoch`` (the file is read
        and cut back to epoch ``e``). On resume ``state.step`` is checked against the steps
        of ``state.history`` (and set from them when it is still 0).
        Raises :class:`LandscopeError` when the file cannot continue the run (missing,
        recorded with other settings, or not reaching epoch ``e``)."""
        if state.epoch == 0:
            self._steps, self._epochs, self._snaps, self._epoch_end_steps = [], [], [], [0]
            state_step = int(getattr(state, "step", 0))
            if state_step != 0:
                raise LandscopeError(f"recording starts at epoch 0 but state.step={state_step}")
            self.record(state.model, 0, 0)
            self.flush()
            return
        traj = load(self.path)
        if traj.every_steps != self.every_steps or traj.snapshots.dtype != self.dtype:
            raise LandscopeError(
                f"{self.path} was recorded with every_steps={traj.every_steps}, "
                f"dtype={traj.snapshots.dtype}; this run uses every_steps={self.every_steps}, "
                f"dtype={self.dtype}")
        dim = sum(p.numel() for p in state.model.parameters())
        if traj.snapshots.shape[1] != dim:
            raise LandscopeError(f"{self.path} holds {traj.snapshots.shape[1]} parameters, "
                                 f"the model has {dim}")
        self._steps, self._epochs = traj.steps.tolist(), traj.epochs.tolist()
        self._snaps = list(traj.snapshots)
        self._epoch_end_steps = traj.epoch_end_steps.tolist()
        self.truncate(state.epoch)
        expected = self._epoch_end_steps[state.epoch]
        history_steps = sum(int(r.get("steps", 0)) for r in getattr(state, "history", []))
        if history_steps and history_steps != expected:
            raise LandscopeError(f"{self.path}: epoch {state.epoch} ended at step {expected} "
                                 f"but the training history says {history_steps}")
        if getattr(state, "step", 0) == 0:
            state.step = expected
        elif state.step != expected:
            raise LandscopeError(f"state.step={state.step} but {self.path} says epoch "
                                 f"{state.epoch} ended at step {expected}")

    def on_step(self, state: Any) -> None:
        """Hook for ``fit(on_step=...)``: records every ``every_steps`` optimizer steps."""
        if self.every_steps is not None and state.step % self.every_steps == 0:
            self.record(state.model, state.step, state.epoch + 1)

    def on_epoch_end(self, state: Any, row: Optional[dict] = None) -> None:
        """Hook for the end of an epoch (``state.epoch`` already counts it): records the
        per-epoch snapshot (``every_steps=None``), notes the epoch's last step, flushes."""
        if state.epoch != len(self._epoch_end_steps):
            raise LandscopeError(f"epoch {state.epoch} ended but the recording is at epoch "
                                 f"{len(self._epoch_end_steps) - 1} (call begin() first)")
        if self.every_steps is None:
            self.record(state.model, state.step, state.epoch)
        self._epoch_end_steps.append(int(state.step))
        self.flush()

    # -------------------------------------------------------------- storage
    def record(self, model: nn.Module, step: int, epoch: int) -> None:
        """Append the model's current parameters as a snapshot (not yet flushed)."""
        vec = flat_parameters(model).to("cpu", torch.float32).numpy().astype(self.dtype)
        if self._snaps and vec.shape != self._snaps[0].shape:
            raise LandscopeError(f"snapshot of {vec.size} parameters, earlier ones had "
                                 f"{self._snaps[0].size}")
        self._steps.append(int(step))
        self._epochs.append(int(epoch))
        self._snaps.append(vec)

    def truncate(self, epoch: int) -> None:
        """Drop everything recorded after ``epoch`` completed epochs and rewrite the file."""
        if epoch < 0 or epoch >= len(self._epoch_end_steps):
            raise LandscopeError(f"{self.path} reaches epoch {len(self._epoch_end_steps) - 1}, "
                                 f"cannot continue from epoch {epoch} (flush it before the "
                                 "checkpoint, or restart the job with resume=false)")
        keep = [i for i, e in enumerate(self._epochs) if e <= epoch]
        self._steps = [self._steps[i] for i in keep]
        self._epochs = [self._epochs[i] for i in keep]
        self._snaps = [self._snaps[i] for i in keep]
        self._epoch_end_steps = self._epoch_end_steps[:epoch + 1]
        self.flush()

    def flush(self) -> None:
        """Write the whole recording atomically to :attr:`path`."""
        t = self.trajectory
        buf = io.BytesIO()
        np.savez(buf, steps=t.steps, epochs=t.epochs, snapshots=t.snapshots,
                 epoch_end_steps=t.epoch_end_steps,
                 every_steps=np.int64(self.every_steps or 0), format=np.int64(_FORMAT))
        atomic_write_bytes(self.path, buf.getvalue())

    @property
    def trajectory(self) -> Trajectory:
        """The recording so far, in memory."""
        snaps = (np.stack(self._snaps) if self._snaps else np.zeros((0, 0), self.dtype))
        return Trajectory(np.asarray(self._steps, np.int64), np.asarray(self._epochs, np.int64),
                          snaps, np.asarray(self._epoch_end_steps, np.int64), self.every_steps)

    def __len__(self) -> int:
        return len(self._steps)
