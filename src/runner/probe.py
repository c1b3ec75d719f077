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
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from landscope.errors import LandscopeError


def _job_dirs(paths: list[str]) -> list[tuple[Path, Path | None]]:
    """``(job directory, checkpoint file or None for the final one)`` per target."""
    dirs: list[tuple[Path, Path | None]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file():
            if not (p.parent.parent / "config.yaml").is_file():
                raise LandscopeError(f"{p} is not a checkpoint in a job directory "
                                     f"(expected JOB/checkpoints/<file> next to JOB/config.yaml)")
            dirs.append((p.parent.parent, p))
        elif (p / "result.json").is_file():
            dirs.append((p, None))
        elif p.is_dir():
            found = sorted(r.parent for r in p.glob("*/result.json"))
            if not found:
                raise LandscopeError(f"{p} holds no job directories (no */result.json)")
            dirs.extend((d, None) for d in found)
        else:
            raise LandscopeError(f"{p} is not a job directory, sweep directory or checkpoint file")
    return dirs


def _shown(probes: dict) -> dict:
    return {k: probes[k] for k in ("lambda_max", "trace", "hvps") if k in probes}


def _requested(result: dict, pfp: str | None) -> dict:
    """The scalars of the preset just run, fingerprint ``pfp`` (result.json's top-level
    ``probes`` is the richest preset the job has, which may be another one)."""
    by_fp = result.get("probes_by_fingerprint") or {}
    return _shown(by_fp.get(pfp) or result.get("probes", {}))


def main(argv: list[str] | None = None) -> None:
    from landscope.jobs import probe_checkpoint, probe_fingerprint
    from runner.app import one_line
    from runner.cli import (arguments, check_writable, finished_job_outputs, group_config,
                            input_errors, job_config, paths_and_overrides, update_finished_jobs)

    args = arguments(argv, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths, overrides = paths_and_overrides(args)
    if not any(o.startswith("probe=") for o in overrides):
        overrides.insert(0, "probe=standard")
    with input_errors(composing=True):
        jobs = _job_dirs(paths)
        probe_cfg = group_config("probe", overrides)
        if str(getattr(probe_cfg.name, "value", probe_cfg.name)) == "none":
            raise LandscopeError("probe=none switches every probe off; choose probe=basic, "
                                 "standard, full or pacbayes")
        plans = [(job, ckpt, job_config(job, "probe", probe_cfg)) for job, ckpt in jobs]
        pfp = probe_fingerprint(plans[0][2]) if plans else None
        check_writable(d for job, ckpt, cfg in plans
                       for d in (finished_job_outputs(job, cfg) if ckpt is None
                                 else [job / "probes"]))
    failed = update_finished_jobs([(job, cfg) for job, ckpt, cfg in plans if ckpt is None],
                                  "probed", "probe", lambda r: _requested(r, pfp))
    for job, ckpt, cfg in plans:
        if ckpt is None:
            continue
        try:
            result = probe_checkpoint(cfg, ckpt)
        except Exception as exc:
            failed += 1
            print(f"failed: {ckpt}: {one_line(exc)}", file=sys.stderr)
            continue
        print(f"probed: {ckpt} (epoch {result['epoch']}) {_shown(result['probes'])}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
