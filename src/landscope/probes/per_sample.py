"""Per-sample gradients, as the ``n x D`` matrix ``G`` or as its parameters' column blocks.

``G``'s rows are the gradients ``g_i = grad_theta CE(f(x_i), y_i)`` of single samples, its
columns follow :class:`~landscope.probes.hvp.HessianOperator`'s flat order.  They come from
``torch.func.vmap(torch.func.grad(loss_i))`` over chunks of samples with ``functional_call``
(the model is never written); ``vectorize=False`` loops over the samples with autograd (for ops
without batching rules).

:class:`GradientRows` holds ``G`` as the blocks vmap returns, one ``n x D_p`` block per
parameter, and offers what :mod:`landscope.probes.noise` does with ``C`` (``C @ V``, ``C^T U``,
``C C^T``, its rows) without ever concatenating them: an ``n x D`` matrix of fresh memory costs
its page faults, which on the default MLP took longer than the per-sample gradients themselves
(docs/measurements.md#probes-noise).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from landscope.errors import LandscopeError
from landscope.losses import task_loss
from landscope.probes.hvp import Mode, fixed_tensors, forward_mode, resolve_params
from landscope.probes.probe_data import ProbeData

# samples vmapped at a time: 256 took 26-32 % less time than 64 on every CPU model of
# scripts/bench_probe_cost.py (docs/measurements.md#probes-noise)
DEFAULT_CHUNK = 256

#: the noise step's peak over its rows' own n x D bytes: 1.46 (MLP, D = 551k), 1.49 (ViT),
#: 1.86 (ResNet-18 width 16) with 256 samples, 2.04 with 64
#: (docs/measurements.md#probes-noise-memory)
ROWS_PEAK = 2.0


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory free for new tensors on ``device``: on CUDA the driver's free memory plus what
    the caching allocator holds unused; on the CPU Linux's ``MemAvailable``, at most what the
    process's cgroup (v2 or v1) still allows. None where it cannot be read."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("memory.max", "memory.current"),
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            cap = Path("/sys/fs/cgroup", limit).read_text().strip()
            if cap != "max" and int(cap) < 2 ** 60:
                found.append(int(cap) - int(Path("/sys/fs/cgroup", usage).read_text()))
                break
        except (OSError, ValueError):
            continue
    return max(min(found), 0) if found else None


def rows_memory_problem(n: int, n_params: int, dtype: torch.dtype, device: torch.device,
                        processes: int = 1) -> Optional[str]:
    """One line when ``n`` per-sample gradient rows of ``n_params`` (about :data:`ROWS_PEAK`
    times their own bytes at the noise step's peak, in each of ``processes`` sharing the
    memory) do not fit in :func:`available_bytes`; None when they fit or it is unknown."""
    avail, kind = available_bytes(device), str(dtype).replace("torch.", "")
    each = ROWS_PEAK * n_params * dtype.itemsize * processes
    if avail is None or n * each <= avail:
        return None
    most = int(avail // each)
    fix = (f"use probe.noise.samples <= {most}" if most >= 2 else "no 2 samples fit")
    return (f"probe.noise.samples={n} needs about {_size(n * each)} for the noise "
            f"step's per-sample gradients ({n} x {n_params:,} parameters in {kind}"
            + (f", {processes} processes" if processes > 1 else "")
            + f") but {_size(avail)} are available on {device}: {fix}, "
            "or probe.noise.enabled=false")


def _size(nbytes: float) -> str:
    """Bytes in GiB, or in MiB below one GiB (a nearly full device read "0.0 GiB")."""
    return f"{nbytes / 2 ** 30:.1f} GiB" if nbytes >= 2 ** 30 else f"{nbytes / 2 ** 20:.0f} MiB"


def local_processes(ranks: int) -> int:
    """How many probe processes share this host's memory: torchrun's ``LOCAL_WORLD_SIZE``,
    else ``ranks`` (``probe.ranks`` starts them all here)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", ranks))


class GradientRows:
    """An ``n x D`` matrix held as column blocks ``[B_1 | ... | B_P]`` (each ``n x D_p``)."""

    def __init__(self, blocks: list[Tensor]) -> None:
        if not blocks:
            raise LandscopeError("no parameter blocks")
        self.blocks = blocks
        self.widths = [b.shape[1] for b in blocks]
        self.shape = (blocks[0].shape[0], sum(self.widths))
        self.dtype, self.device = blocks[0].dtype, blocks[0].device

    def to(self, dtype: torch.dtype) -> GradientRows:
        return self if dtype == self.dtype else GradientRows([b.to(dtype) for b in self.blocks])

    def dense(self) -> Tensor:
        """The ``n x D`` matrix itself (a copy)."""
        return torch.cat(self.blocks, 1)

    def center_(self) -> Tensor:
        """Subtract the mean row from every row, in place; the mean row (D,)."""
        means = [b.mean(0) for b in self.blocks]
        for b, m in zip(self.blocks, means):
            b.sub_(m)
        return torch.cat(means)

    def gram(self) -> Tensor:
        """``M M^T / n`` (n x n), a sum over the blocks."""
        out = None
        for b in self.blocks:
            out = b @ b.T if out is None else out.addmm_(b, b.T)
        assert out is not None
        return out / self.shape[0]

    def __matmul__(self, v: Tensor) -> Tensor:
        """``M v`` for ``v`` of shape ``(D,)`` or ``(D, r)``."""
        out = None
        for b, part in zip(self.blocks, torch.split(v, self.widths)):
            out = b @ part if out is None else out + b @ part
        assert out is not None
        return out

    @property
    def T(self) -> _Transposed:  # noqa: N802 - as Tensor.T
        return _Transposed(self)

    def __iter__(self) -> Iterator[Tensor]:
        """The rows (each (D,), a copy)."""
        for i in range(self.shape[0]):
            yield torch.cat([b[i] for b in self.blocks])


class _Transposed:
    """``M^T`` of a :class:`GradientRows`, for products ``M^T u``."""

    def __init__(self, rows: GradientRows) -> None:
        self.rows = rows

    def __matmul__(self, u: Tensor) -> Tensor:
        """``M^T u`` for ``u`` of shape ``(n,)`` or ``(n, r)``. For ``(n, r)`` each block is
        ``(u^T B)^T``: a product with the transposed ``n x w`` block on the left ran 2-3x slower
        (11 ms against 3.7 for n = 256, r = 5, w = 39,562; bit for bit equal there)."""
        if u.dim() == 1:
            return torch.cat([b.T @ u for b in self.rows.blocks])
        return torch.cat([(u.T @ b).T for b in self.rows.blocks])


def per_sample_rows(model: nn.Module, data: ProbeData,
                    params: Optional[dict[str, Tensor]] = None, mode: Mode = "eval",
                    chunk: int = DEFAULT_CHUNK, vectorize: bool = True) -> GradientRows:
    """The per-sample gradients of :func:`per_sample_gradients` as :class:`GradientRows`."""
    if chunk < 1:
        raise LandscopeError(f"per-sample gradient chunk must be >= 1 (got {chunk})")
    if mode == "train" and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                               for m in model.modules()):
        raise LandscopeError("per-sample gradients of a BatchNorm model need mode='eval' "
                             "(train-mode batch statistics couple the samples)")
    names, values = resolve_params(model, params)
    dtype, device = values[0].dtype, values[0].device
    fixed = fixed_tensors(model, names, dtype, device)
    data = data.to(dtype, device) if (data.dtype, data.device) != (dtype, device) else data

    def sample_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, {**fixed, **p}, (x.unsqueeze(0),))
        return task_loss(model, logits, y.unsqueeze(0))

    primals = dict(zip(names, values))
    parts: list[list[Tensor]] = [[] for _ in names]  # per parameter, its rows chunk by chunk

    def put(gs: dict[str, Tensor], rows: int) -> None:
        for part, n in zip(parts, names):
            part.append(gs[n].detach().reshape(rows, -1))

    batched = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    with forward_mode(model, mode):
        for xb, yb in data.batches:
            for s in range(0, len(yb), chunk):
                x, y = xb[s:s + chunk], yb[s:s + chunk]
                if vectorize:
                    put(batched(primals, x, y), len(y))
                    continue
                for xi, yi in zip(x, y):
                    leaves = {n: v.clone().requires_grad_(True) for n, v in primals.items()}
                    with torch.enable_grad():
                        gs = torch.autograd.grad(sample_loss(leaves, xi, yi),
                                                 list(leaves.values()), allow_unused=True)
                    put({n: torch.zeros_like(v) if g is None else g
                         for (n, v), g in zip(leaves.items(), gs)}, 1)
    # one chunk: vmap's own blocks, no copy
    return GradientRows([p[0].contiguous() if len(p) == 1 else torch.cat(p) for p in parts])


def per_sample_gradients(model: nn.Module, data: ProbeData,
                         params: Optional[dict[str, Tensor]] = None, mode: Mode = "eval",
                         chunk: int = DEFAULT_CHUNK, vectorize: bool = True) -> Tensor:
    """The ``n x D`` matrix of per-sample gradients of ``CE(f(x_i), y_i)``.

    Columns follow :class:`HessianOperator`'s flat order (``params`` as there); rows follow
    the samples of ``data`` in order, so ``G.mean(0)`` is the probe-loss gradient.  ``chunk``
    samples are vmapped at a time (bounds activation memory; ``G`` itself is ``n x D``).
    ``mode="train"`` is refused for models with BatchNorm (a one-sample batch statistic makes
    the per-sample gradient ill-defined).  ``vectorize=False`` loops over samples with
    autograd instead of vmap.
    """
    return per_sample_rows(model, data, params, mode, chunk, vectorize).dense()
