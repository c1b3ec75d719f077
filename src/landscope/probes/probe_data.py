"""A fixed, seeded subset of a split, materialized as micro-batches, for curvature probes.

Every probe evaluates the same loss many times (one Hessian-vector product per Lanczos or
Hutchinson step), so the data it sees must not change between evaluations: no
shuffling, no re-drawing.  :class:`ProbeData` draws its samples once
(``torch.randperm(len(split), generator=seed)[:size]``, so a smaller size is a prefix of
a larger one's selection), keeps them in that order and cuts them into micro-batches of
``micro_batch`` samples (the last one may be short).

The probe loss is the mean over *all* samples, not the mean of batch means: micro-batch
``b`` enters with weight ``weights[b] = len(batch_b) / n`` (curvlinops' exact loader
weighting), so the result does not depend on ``micro_batch`` (in eval mode; in train mode
BatchNorm's batch statistics make the partition part of the definition of the loss).

For data-parallel probes (:mod:`landscope.probes.distributed`) :meth:`ProbeData.shard` gives
each rank a contiguous part of the samples that keeps the whole set's count in ``total``,
so a shard's weights are ``len(batch_b) / total`` and the ranks' weighted partial sums add
up to the one-process loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from landscope.data import Split
from landscope.errors import LandscopeError

Batch = tuple[Tensor, Tensor]
_CHUNK = 4096  # samples read per step while gathering from a split


@dataclass(frozen=True, eq=False)
class ProbeData:
    """Micro-batches ``(x, y)`` of a fixed sample set; ``n`` samples here.

    ``total`` (``None``: ``n``) is the size of the whole sample set this is a shard of
    (:meth:`shard`); the weights divide by it.  Treat it as read-only: the tensors may be
    shared with the split they came from.
    """

    batches: list[Batch]
    total: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.batches:
            raise LandscopeError("probe data needs at least one sample")
        for x, y in self.batches:
            if len(x) != len(y) or len(y) == 0:
                raise LandscopeError(f"probe micro-batch with {len(x)} inputs and {len(y)} "
                                     "labels (need equal, non-zero sizes)")
        # counted once: slices read it at every grid point
        object.__setattr__(self, "_n", sum(len(y) for _, y in self.batches))
        if self.total is not None and self.total < self._n:  # type: ignore[attr-defined]
            raise LandscopeError(f"probe data shard of {self.n} samples cannot belong to a set "
                                 f"of {self.total}")

    @property
    def n(self) -> int:
        """Total number of samples."""
        return self._n  # type: ignore[attr-defined]

    @property
    def n_total(self) -> int:
        """Samples in the whole set: ``total`` for a shard, else ``n``."""
        return self.n if self.total is None else self.total

    @property
    def weights(self) -> list[float]:
        """``len(batch_b) / n_total`` per micro-batch: ``sum_b w_b * mean_b(loss)`` = mean loss
        (for a shard: its share of the whole set's mean loss)."""
        n = self.n_total
        return [len(y) / n for _, y in self.batches]

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the inputs ``x``."""
        return self.batches[0][0].dtype

    @property
    def device(self) -> torch.device:
        return self.batches[0][0].device

    def __len__(self) -> int:
        return self.n

    @classmethod
    def from_tensors(cls, x: Tensor, y: Tensor, micro_batch: int) -> "ProbeData":
        """Cut ``(x, y)`` in their given order into micro-batches of ``micro_batch``."""
        if micro_batch < 1:
            raise LandscopeError(f"probe micro_batch must be >= 1 (got {micro_batch})")
        if len(x) != len(y):
            raise LandscopeError(f"probe data has {len(x)} inputs but {len(y)} labels")
        return cls([(x[i:i + micro_batch], y[i:i + micro_batch])
                    for i in range(0, len(y), micro_batch)])

    @classmethod
    def from_split(cls, split: Split, size: Optional[int], seed: int,
                   micro_batch: int) -> "ProbeData":
        """``size`` samples of ``split`` drawn with ``torch.randperm`` seeded by ``seed``.

        ``size=None`` (or ``>= len(split)``) takes every sample, still in the seeded order
        (which only matters for train-mode BatchNorm, whose statistics follow the
        partition).  Works for in-memory and streamed splits alike (streamed ones are read
        once in order and the selected rows kept).
        """
        total = len(split)
        if size is not None and size < 1:
            raise LandscopeError(f"probe size must be >= 1 or None (got {size})")
        k = total if size is None else min(int(size), total)
        order = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))[:k]
        x_all = getattr(split, "x", None)
        y_all = getattr(split, "y", None)
        if isinstance(x_all, Tensor) and isinstance(y_all, Tensor):
            x, y = x_all[order], y_all[order]
        else:
            x, y = _gather(split, order)
        return cls.from_tensors(x, y, micro_batch)

    def to(self, dtype: Optional[torch.dtype] = None,
           device: Optional[torch.device | str] = None) -> "ProbeData":
        """A converted copy: inputs to ``dtype`` (labels stay int64), both to ``device``."""
        return ProbeData([(x.to(device=device, dtype=dtype), y.to(device=device))
                          for x, y in self.batches], total=self.total)

    def shard(self, rank: int, world: int, *, keep_batches: bool = False) -> "ProbeData":
        """Rank ``rank``'s contiguous part of the samples out of ``world`` ranks, with
        ``total = n_total`` so the ranks' weighted sums add up to this set's.

        ``keep_batches=False``: samples ``[rank*n//world, (rank+1)*n//world)``, cut into
        micro-batches no larger than this set's first one (the loss, its gradient and its
        Hessian in eval mode do not depend on the partition).  ``keep_batches=True``: whole
        micro-batches ``[rank*B//world, (rank+1)*B//world)`` of the ``B`` there are, so the
        partition is unchanged (train-mode BatchNorm: batch statistics per micro-batch).
        ``world == 1`` returns this object.  Every rank needs at least one sample (one
        micro-batch with ``keep_batches``), otherwise one error line says so.
        """
        if world < 1 or not 0 <= rank < world:
            raise LandscopeError(f"shard rank {rank} of world size {world} (need 0 <= rank < "
                                 "world)")
        if world == 1:
            return self
        if keep_batches:
            count = len(self.batches)
            if count < world:
                raise LandscopeError(
                    f"probe data has {count} micro-batch{'es' * (count != 1)} for {world} ranks; "
                    "train-mode probes shard whole micro-batches (BatchNorm's batch statistics "
                    "follow the partition): lower probe.micro_batch or use fewer ranks")
            return ProbeData(self.batches[rank * count // world:(rank + 1) * count // world],
                             total=self.n_total)
        if self.n < world:
            raise LandscopeError(f"probe data has {self.n} sample{'s' * (self.n != 1)} for "
                                 f"{world} ranks; each rank needs at least one (raise "
                                 "probe.data_size or use fewer ranks)")
        lo, hi = rank * self.n // world, (rank + 1) * self.n // world
        xs, ys, start = [], [], 0
        for xb, yb in self.batches:  # the batches overlapping [lo, hi); only the shard is copied
            a, b = max(lo - start, 0), min(hi - start, len(yb))
            if a < b:
                xs.append(xb[a:b])
                ys.append(yb[a:b])
            start += len(yb)
        x, y = torch.cat(xs), torch.cat(ys)
        micro = len(self.batches[0][1])
        return ProbeData([(x[i:i + micro], y[i:i + micro]) for i in range(0, len(y), micro)],
                         total=self.n_total)


def _gather(split: Split, order: Tensor) -> Batch:
    """Rows ``order`` of ``split`` (in that order), reading it sequentially in chunks."""
    position = torch.full((len(split),), -1, dtype=torch.long)
    position[order] = torch.arange(len(order))
    x_out: Optional[Tensor] = None
    y_out: Optional[Tensor] = None
    start = 0
    for xb, yb in split.batches(_CHUNK, shuffle=False):
        pos = position[start:start + len(yb)]
        keep = pos >= 0
        if x_out is None or y_out is None:
            x_out = xb.new_empty((len(order), *xb.shape[1:]))
            y_out = yb.new_empty((len(order),))
        x_out[pos[keep]] = xb[keep]
        y_out[pos[keep]] = yb[keep]
        start += len(yb)
    assert x_out is not None and y_out is not None
    return x_out, y_out


def summed_over_ranks(t: Tensor, group: Optional[object]) -> Tensor:
    """``t`` summed over the ranks of ``group`` in place (each rank holding a shard, whose
    weighted sums add up to the whole set's); ``t`` itself without a group."""
    if group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def float_summed_over_ranks(x: float, group: Optional[object], device: torch.device) -> float:
    """:func:`summed_over_ranks` of a float (in float64)."""
    if group is None:
        return x
    return float(summed_over_ranks(torch.tensor([x], dtype=torch.float64, device=device), group))
