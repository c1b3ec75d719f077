"""Probe finished jobs without retraining: ``python -m runner.probe PATH... [overrides]``.

``PATH`` is a job directory (it holds ``result.json``), a sweep directory (every
job below it) or one checkpoint file of a job (``JOB/checkpoints/epoch_NNNNNN.pt``).
Overrides choose the probe config exactly as for the runner (default
``probe=standard``), e.g. ``probe=full probe.top_k=10 probe.verify=true``.
A job's final checkpoint is probed and its ``result.json`` updated; a checkpoint
file is probed on its own and ``result.json`` is left alone. Results are cached
per (checkpoint, probe config) in the job's ``probes/`` directory, so asking again
costs nothing. Every job directory is checked before anything is computed: that it can be
written (exit 2 otherwise) and that its final checkpoint loads (otherwise one ``error:`` line
saying whether it is missing or corrupt, and the job is left alone).
Exit codes as for the runner: 0 all probed, 1 a job failed, 2 bad input.

Data-parallel: ``torchrun --nproc_per_node=N -m runner.probe PATH... [overrides]`` (or
``python -m torch.distributed.run ...``) runs the command on N processes (gloo backend: the
probes of finished jobs run on the CPU). The Hessian products are split over the ranks'
shards of the probe data and summed (:mod:`landscope.probes.distributed`), so the results are
the one-process ones up to rounding. Every rank computes; only rank 0 prints and writes into
the job directories. The other ranks work on private copies of the jobs (checkpoints linked,
not copied) in a temporary directory, removed at the end, so that they take the same path
as rank 0 (cache hits and misses included); their output is discarded except a traceback.
Do not run a second command on the same jobs meanwhile: a job locked by it would be skipped
by rank 0 alone and the ranks' collectives would wait on each other until they time out.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

from landscope.errors import LandscopeError


def _shown(probes: dict) -> dict:
    return {k: probes[k] for k in ("lambda_max", "trace", "hvps") if k in probes}


def _requested(result: dict, pfp: str | None) -> dict:
    """The scalars of the preset just run, fingerprint ``pfp`` (result.json's top-level
    ``probes`` is the richest preset the job has, which may be another one)."""
    by_fp = result.get("probes_by_fingerprint") or {}
    return _shown(by_fp.get(pfp) or result.get("probes", {}))


Plan = tuple[Path, "Path | None", Any]


def main(argv: list[str] | None = None) -> None:
    from landscope.probes.distributed import init_from_env, quiet_other_ranks, shutdown
    from runner.cli import arguments, input_errors

    args = arguments(argv, __doc__)
    with input_errors():
        rank, world = init_from_env()
    try:
        with quiet_other_ranks(rank):
            code = _run(args, rank, world)
    finally:
        shutdown()
    sys.exit(code)


def _run(args: list[str], rank: int, world: int) -> int:
    from landscope.probes.distributed import agree_max, mirror_jobs

    try:
        plans, pfp = _plans(args, rank)
        code = 0
    except SystemExit as exc:
        plans, pfp, code = [], None, int(exc.code or 0)
    code = agree_max(code, world)
    if code:
        return code
    if rank == 0:
        # waits until every other rank has copied the jobs: rank 0 writes nothing before
        if agree_max(0, world):
            print("error: another rank could not copy the jobs (see its traceback)",
                  file=sys.stderr)
            return 1
        return _probe(plans, pfp)
    with tempfile.TemporaryDirectory(prefix=f"landscope-rank{rank}-") as root:
        try:
            mirrored = mirror_jobs(plans, Path(root))
        except BaseException:
            sys.__stderr__.write(f"rank {rank}: {traceback.format_exc()}")
            agree_max(1, world)
            return 1
        if agree_max(0, world):
            return 1
        return _probe(mirrored, pfp)


def _plans(args: list[str], rank: int) -> tuple[list[Plan], str | None]:
    """The checked ``(job, checkpoint or None, config)`` per target and the probe
    fingerprint; exits 2 on bad input (rank 0 alone checks that the jobs can be written)."""
    from landscope.jobs import probe_fingerprint
    from runner.cli import (
        check_writable,
        finished_job_outputs,
        group_config,
        input_errors,
        job_config,
        job_targets,
        paths_and_overrides,
    )

    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(message)s")
    paths, overrides = paths_and_overrides(args)
    if not any(o.startswith("probe=") for o in overrides):
        overrides.insert(0, "probe=standard")
    with input_errors(composing=True):
        jobs = job_targets(paths)
        probe_cfg = group_config("probe", overrides)
        if str(probe_cfg.name) == "none":
            raise LandscopeError("probe=none switches every probe off; choose probe=basic, "
                                 "standard, full or pacbayes")
        plans = [(job, ckpt, job_config(job, "probe", probe_cfg)) for job, ckpt in jobs]
        pfp = probe_fingerprint(plans[0][2]) if plans else None
        if rank == 0:
            check_writable(d for job, ckpt, cfg in plans
                           for d in (finished_job_outputs(job, cfg) if ckpt is None
                                     else [job / "probes"]))
    return plans, pfp


def _probe(plans: list[Plan], pfp: str | None) -> int:
    """Probe every plan (finished jobs first, then checkpoint files); the exit code."""
    from landscope.errors import one_line
    from landscope.jobs import probe_checkpoint
    from runner.cli import update_finished_jobs

    failed = update_finished_jobs([(job, cfg) for job, ckpt, cfg in plans if ckpt is None],
                                  "probed", "probe", lambda r: _requested(r, pfp))
    for _job, ckpt, cfg in plans:
        if ckpt is None:
            continue
        try:
            result = probe_checkpoint(cfg, ckpt)
        except Exception as exc:
            failed += 1
            print(f"failed: {ckpt}: {one_line(exc)}", file=sys.stderr)
            continue
        print(f"probed: {ckpt} (epoch {result['epoch']}) {_shown(result['probes'])}")
    return 1 if failed else 0


if __name__ == "__main__":
    main()
