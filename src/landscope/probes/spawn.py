"""A job's probes spread over local processes (``probe.ranks``), from any launcher.

``torchrun -m runner.probe`` spreads the probes of finished jobs over the processes torchrun
starts. Inside a sweep the launcher (basic, parallel, SLURM via submitit, Ray) starts one
process per job; with ``probe.ranks=N`` that process starts N local workers for its probes
(``torch.multiprocessing`` with the ``spawn`` method), joins them in a process group (gloo on
the CPU; NCCL with one GPU per worker, ``cuda:0`` … ``cuda:N-1``, when the model is on a GPU)
and runs :func:`~landscope.probes.suite.run_probes` on every worker: each holds a shard of the
probe data and the Hessian products are all-reduced (:mod:`landscope.probes.distributed`), so
the results are the one-process ones up to rounding. Worker 0's report comes back to the job
process, which alone writes files; its log lines are replayed there after the run. Ask the
launcher for the cores or GPUs the workers need (e.g. ``hydra.launcher.gpus_per_node=N``).
"""

from __future__ import annotations

import copy
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from landscope.errors import LandscopeError
from landscope.probes.suite import ProbeReport, run_probes


def run_probes_on_ranks(model: nn.Module, train_split: Any, cfg: Any, ranks: int = 1, *,
                        w0: Optional[nn.Module | torch.Tensor] = None,
                        log: Optional[Callable[[str], None]] = None) -> ProbeReport:
    """:func:`run_probes` on ``ranks`` local worker processes (``ranks=1``: in this process).

    Raises :class:`LandscopeError` when the model is on a GPU and fewer than ``ranks`` GPUs
    are visible; a worker's exception is raised here with its traceback."""
    if ranks <= 1:
        return run_probes(model, train_split, cfg, w0=w0, log=log)
    device = next(model.parameters()).device
    if device.type == "cuda" and torch.cuda.device_count() < ranks:
        raise LandscopeError(f"probe.ranks={ranks} needs {ranks} GPUs, "
                             f"{torch.cuda.device_count()} visible")
    if device.type not in ("cpu", "cuda"):
        raise LandscopeError(f"probe.ranks > 1 runs on the CPU or CUDA GPUs, not {device.type}")
    cpu_model = copy.deepcopy(model).cpu()
    cpu_w0 = w0 if w0 is None else copy.deepcopy(w0).cpu()
    threads = max(1, torch.get_num_threads() // ranks)
    with tempfile.TemporaryDirectory(prefix="landscope-ranks-") as tmp:
        out = Path(tmp) / "report.pt"
        torch.multiprocessing.spawn(
            _worker, nprocs=ranks, join=True,
            args=(ranks, _free_port(), device.type, threads, cpu_model, train_split, cfg,
                  cpu_w0, str(out)))
        payload = torch.load(out, weights_only=False)
    for line in payload["log"]:
        if log is not None:
            log(line)
    return ProbeReport(scalars=payload["scalars"], arrays=payload["arrays"])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, device_type: str, threads: int, model: nn.Module,
            train_split: Any, cfg: Any, w0: Any, out: str) -> None:
    """One worker: join the group, probe this rank's shard, worker 0 saves the report."""
    import torch.distributed as dist

    torch.set_num_threads(threads)
    device = torch.device(f"cuda:{rank}" if device_type == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank,
                            world_size=world)
    try:
        model = model.to(device)
        w0 = w0.to(device) if w0 is not None else None
        lines: list[str] = []
        if rank > 0:  # one progress bar per estimator: worker 0's
            cfg = copy.deepcopy(cfg)
            cfg.progress = False
        report = run_probes(model, train_split, cfg, w0=w0, log=lines.append)
        if rank == 0:
            torch.save({"scalars": report.scalars, "arrays": report.arrays, "log": lines}, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
