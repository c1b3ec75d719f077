"""Many SGD runs on the two-basin problem at once: ``R`` runs as one ``(R, 2)`` tensor.

Every run starts from the same point, uses the problem's own per-sample noise rows ``xi_i``
(:mod:`landscope.synthetic_forms`; the train split, ``d_i = 0``) and takes the plain SGD step
``theta <- theta - eta (grad L(theta) + mean_{i in batch} xi_i)`` -- exactly what
``torch.optim.SGD`` (no momentum, no weight decay) does on :class:`~landscope.synthetic.
TwoBasinModel` with that batch (``tests/test_sde.py`` checks it against such a loop).  Batches
are drawn per run from one seeded generator: ``replacement`` draws ``B`` indices uniformly
with replacement at every step (the SDE's noise model: covariance ``sigma^2 / B I``);
``epoch`` shuffles the ``n`` samples of each run at the start of every epoch and takes
consecutive batches of ``B`` (the last one short when ``B`` does not divide ``n``), as the
runner's training loop does.  A run's basin is the side of the saddle: sharp when
``u < tilt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from landscope.progress import bar
from landscope.synthetic_forms import TwoBasinReference

_CHUNK = 64  # steps of replacement indices drawn at once


def batched_gradient(ref: TwoBasinReference, theta: Tensor) -> Tensor:
    """``grad L`` at each row of ``theta`` ``(R, 2)`` (closed form)."""
    u, v = theta[:, 0], theta[:, 1]
    c, s, dk = ref.scale, ref.tilt, ref.sharp - ref.flat
    gu = c * (u * u - 1) * (u - s) - dk * (1 - u) * v * v / 4
    return torch.stack([gu, ref.k(u) * v], 1)


@dataclass
class Trajectories:
    """``checkpoints``: the steps at which the basins were counted; ``sharp``: (len, ) counts
    of runs on the sharp side at each; ``final``: the ``(R, 2)`` end points; ``diverged``: runs
    whose parameters became non-finite (counted on neither side); ``switched``: runs on the
    sharp side at half the steps and on the flat side at the end, and the reverse (McNemar's
    discordant pairs: equal in expectation once the fraction has stopped changing)."""

    checkpoints: list[int]
    sharp: list[int]
    final: Tensor
    diverged: int
    runs: int
    switched: tuple[int, int]


def cost_period(sampling: str, n: int, b: int) -> int:
    """Steps after which the batch draws repeat their pattern of cost: a chunk of replacement
    draws, or an epoch (its shuffle is drawn at the epoch's first step)."""
    return _CHUNK if sampling == "replacement" else -(-n // b)


def _indices(sampling: str, n: int, b: int, runs: int, step: int, state: dict,
             gen: torch.Generator) -> Tensor:
    """The step's ``(B, R)`` batch indices (column ``r``: run ``r``'s batch); replacement
    indices are drawn 64 steps at a time from ``gen`` (the same stream whatever the chunk)."""
    if sampling == "replacement":
        chunk = state.get("chunk")
        if chunk is None or state["at"] == len(chunk):
            chunk = state["chunk"] = torch.randint(n, (_CHUNK, b, runs), generator=gen)
            state["at"] = 0
        state["at"] += 1
        return chunk[state["at"] - 1]
    per_epoch = -(-n // b)
    j = step % per_epoch
    if j == 0:
        state["perm"] = torch.rand(runs, n, generator=gen, dtype=torch.float64).argsort(1)
    return state["perm"][:, j * b:(j + 1) * b].T


def batch_noise(xi: Tensor, idx: Tensor) -> Tensor:
    """``mean_{i in batch} xi_i`` per run for ``(B, R)`` indices: ``(R, 2)``."""
    b, runs = idx.shape
    return xi.index_select(0, idx.reshape(-1)).view(b, runs, -1).sum(0) / b


def _sharp(ref: TwoBasinReference, theta: Tensor) -> Tensor:
    """Runs on the sharp side ``u < tilt`` (a diverged run, non-finite, on neither side)."""
    return (theta[:, 0] < ref.tilt) & torch.isfinite(theta).all(1)


def simulate(ref: TwoBasinReference, xi: Tensor, *, eta: float, batch_size: int, runs: int,
             steps: int, seed: int, start: Sequence[float], sampling: str = "replacement",
             checkpoints: Optional[Sequence[int]] = None,
             indices_out: Optional[list] = None, progress: Optional[str] = None
             ) -> Trajectories:
    """``runs`` SGD runs of ``steps`` steps from ``start`` (float64).  ``xi``: the ``(n, 2)``
    noise rows; ``checkpoints``: steps (<= ``steps``) at which to count the sharp side (the
    last step always); ``indices_out``: when a list, each step's ``(B, R)`` batch indices are
    appended (for tests); ``progress``: the label of a tqdm bar of the steps (None: none)."""
    xi = xi.to(torch.float64)
    n, b = len(xi), min(int(batch_size), len(xi))
    gen = torch.Generator().manual_seed(int(seed))
    theta = torch.tensor([list(start)], dtype=torch.float64).repeat(runs, 1)
    marks = sorted({int(c) for c in (checkpoints or []) if 0 < c <= steps} | {int(steps)})
    counts: list[int] = []
    state: dict = {}
    half = torch.zeros(runs, dtype=torch.bool)
    shown = bar(progress, steps, unit="step")
    for step in range(steps):
        idx = _indices(sampling, n, b, runs, step, state, gen).contiguous()
        if indices_out is not None:
            indices_out.append(idx.clone())
        theta = theta - eta * (batched_gradient(ref, theta) + batch_noise(xi, idx))
        if step + 1 in marks:
            counts.append(int(_sharp(ref, theta).sum()))
        if step + 1 == steps // 2:
            half = _sharp(ref, theta)
        shown.update()
    shown.close()
    finite = torch.isfinite(theta).all(1)
    end = _sharp(ref, theta)
    switched = (int((half & ~end & finite).sum()), int((~half & end).sum()))
    return Trajectories(marks, counts, theta, int((~finite).sum()), runs, switched)
