"""Data-parallel Hessian probes over the ranks of ``torch.distributed``.

Each rank holds a contiguous shard of the fixed probe data (:meth:`ProbeData.shard`, weights
``|b| / n_total``) and :class:`~landscope.probes.hvp.HessianOperator` with ``group`` sums the
ranks' partial products, losses and gradients with ``all_reduce``: the operator equals the
one-process operator on the whole data up to rounding, and is the same on every rank.  The
estimators (Lanczos, Hutchinson, SLQ) draw their random vectors on the CPU from seeded
generators, so every rank draws the same ones, takes the same steps and ends with the same
result; only the products are split (and, in the probe suite, the sharpness measures' loss,
gradient and accuracy evaluations: :class:`~landscope.probes.objective.ModelObjective` with
``group``).

Usage (``torchrun --nproc_per_node=2 script.py``)::

    rank, world = init_from_env()                  # (0, 1) and nothing done without torchrun
    op = hessian_operator(model, data, mode="eval")  # sharded and all-reduced when world > 1
    top = lanczos_eigs(op, k=5, seed=0)            # identical on every rank

``mode="train"`` (BatchNorm batch statistics per micro-batch) shards whole micro-batches, so
the partition, and with it the loss, is the one-process one; fewer micro-batches than ranks is
refused (one error line).  ``mode="eval"`` splits the samples evenly (the partition does not
change the eval-mode loss).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from landscope.errors import LandscopeError
from landscope.probes.hvp import HessianOperator
from landscope.probes.probe_data import ProbeData


def active() -> bool:
    """Whether a process group is initialized (``torch.distributed`` available and set up)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world(group: Optional[Any] = None) -> tuple[int, int]:
    """``(rank, world size)`` in ``group`` (default: the default group); ``(0, 1)`` when
    ``torch.distributed`` is not initialized."""
    if not active():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def is_main() -> bool:
    """Rank 0, or no process group: the process that writes files and prints results."""
    return rank_and_world()[0] == 0


def init_from_env(device: Optional[torch.device | str] = None, *,
                  timeout_s: float = 1800.0) -> tuple[int, int]:
    """Initialize the default process group from torchrun's environment variables
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) when ``WORLD_SIZE > 1``.

    Backend: ``nccl`` when ``device`` is a CUDA device (each rank then uses GPU
    ``LOCAL_RANK``), ``gloo`` otherwise.  Does nothing when ``WORLD_SIZE`` is unset or 1, or
    when a group is already initialized.  Returns :func:`rank_and_world`.  A collective that
    waits longer than ``timeout_s`` (a rank that died or took another path) raises.
    """
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(raw)
    except ValueError:
        raise LandscopeError(f"WORLD_SIZE={raw!r} is not a whole number") from None
    if world <= 1 or active():
        return rank_and_world()
    if not dist.is_available():
        raise LandscopeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise LandscopeError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: start the "
                             "command with torchrun (python -m torch.distributed.run)")
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://",
                            timeout=timedelta(seconds=timeout_s))
    return rank_and_world()


def shutdown() -> None:
    """Destroy the default process group if one is initialized (end of a torchrun command)."""
    if active():
        dist.destroy_process_group()


def shard(data: ProbeData, mode: str = "eval", group: Optional[Any] = None) -> ProbeData:
    """The shard of ``data`` held by this rank (``data`` itself without a group of several ranks):
    whole micro-batches in train mode, an even split of the samples otherwise."""
    rank, world = rank_and_world(group)
    return data.shard(rank, world, keep_batches=mode == "train")


def hessian_operator(model: nn.Module, data: ProbeData, *, group: Optional[Any] = None,
                     **kw: Any) -> HessianOperator:
    """The Hessian operator of ``model`` on ``data``, data-parallel when it can be.

    With an initialized process group of more than one rank (``group``, default the default
    group): ``HessianOperator(model, shard(data, mode), group=group, **kw)``, every rank
    passing the same ``model`` and the same whole ``data``.  Otherwise exactly
    ``HessianOperator(model, data, **kw)``.  ``kw`` are HessianOperator's keywords
    (``params``, ``mode``, ``method``, ``check_determinism``, ``seed``, ...).  The returned
    operator's ``data`` is the shard; ``data.n_total`` is the whole set's size.
    """
    _, world = rank_and_world(group)
    if world == 1:
        return HessianOperator(model, data, **kw)
    if group is None:
        group = dist.group.WORLD
    return HessianOperator(model, shard(data, kw.get("mode", "eval"), group), group=group, **kw)


# ---------------------------------------------- commands run under torchrun (runner.probe)
@contextlib.contextmanager
def quiet_other_ranks(rank: int) -> Iterator[None]:
    """Rank 0 (or a single process) as usual; another rank prints nothing (rank 0 prints the
    same lines) except the traceback of an exception that escapes, marked with its rank."""
    if rank == 0:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
            contextlib.redirect_stderr(null):
        try:
            yield
        except BaseException as exc:
            if not isinstance(exc, SystemExit):
                sys.__stderr__.write(f"rank {rank}: {''.join(traceback.format_exc())}")
            raise


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank of the default group (every rank must call it)."""
    return agree_max(int(flag), rank_and_world()[1]) > 0


def agree_max(code: int, world: int) -> int:
    """The largest of the ranks' exit codes (every rank stops when one refused its input)."""
    if world == 1:
        return code
    t = torch.tensor([code], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def mirror_jobs(plans: list, root: Path) -> list:
    """``(job, checkpoint or None, config)`` plans on private copies of their jobs under
    ``root``, for a rank other than 0 to work on (one copy per job directory; checkpoint files
    are symbolic links, the lock file is left out)."""
    from landscope.joblock import LOCK_FILE

    copies: dict[Path, Path] = {}
    out: list = []
    for job, ckpt, cfg in plans:
        key = job.resolve()
        if key not in copies:
            copies[key] = copy = root / str(len(copies)) / job.name
            shutil.copytree(job, copy, symlinks=True, ignore=lambda d, names, top=job: [
                n for n in names if n == LOCK_FILE or (Path(d) == top and n == "checkpoints")])
            if (job / "checkpoints").is_dir():
                (copy / "checkpoints").mkdir()
                for f in (job / "checkpoints").iterdir():
                    os.symlink(f.resolve(), copy / "checkpoints" / f.name)
        copy = copies[key]
        out.append((copy, None if ckpt is None else copy / ckpt.relative_to(job), cfg))
    return out
