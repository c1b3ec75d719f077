"""Redraw figures from saved results: ``python -m runner.figures PATH... [--out DIR]``.

``PATH`` is a job directory (it holds ``result.json``) or a sweep directory (every job
below it, plus the sweep's ``connectivity/`` results). Figures are drawn from the files
the jobs saved (``metrics.jsonl``, ``probes/*.npz``, ``landscape/*.npz``,
``connectivity/*/*.npz``) without loading a model, into each job's ``figures/``
directory (or ``--out DIR/<job name>``). The directories drawn into are checked to be
writable before anything is drawn. Exit codes: 0 drawn, 1 a figure failed (a damaged
``metrics.jsonl`` is named with its line), 2 bad input (one ``error:`` line).
"""

from __future__ import annotations

import sys
from pathlib import Path


def _targets(paths: list[str]) -> tuple[list[Path], list[Path]]:
    """``(job directories, sweep directories)``."""
    from landscope.errors import LandscopeError
    from landscope.jobdir import JobDir, Sweep

    jobs: list[Path] = []
    sweeps: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if JobDir(p).has_result():
            jobs.append(p)
        elif (found := Sweep(p).job_dirs()) or (p / "connectivity").is_dir():
            jobs.extend(job.path for job in found)
            sweeps.append(p)
        else:
            raise LandscopeError(f"{p} is not a job directory or a sweep directory")
    return jobs, sweeps


def _outputs(jobs: list[Path], sweeps: list[Path], out: Path | None) -> list[Path]:
    """The directories the figures go to: each job's ``figures/`` (or ``OUT/<job name>``) and
    each connected group's directory (or ``OUT/connectivity/<group>``)."""
    dirs = [job / "figures" if out is None else out / job.name for job in jobs]
    for sweep in sweeps:
        groups = sorted({npz.parent.name for npz in (sweep / "connectivity").glob("*/*.npz")})
        dirs += [sweep / "connectivity" / g if out is None else out / "connectivity" / g
                 for g in groups]
    return dirs


def main(argv: list[str] | None = None) -> None:
    from landscope.errors import LandscopeError, one_line
    from landscope.plots import connectivity_figures, job_figures
    from runner.cli import arguments, check_writable, input_errors, pop_out

    args = arguments(argv, __doc__, options=("--out",))
    out = pop_out(args)
    with input_errors():
        if not args:
            raise LandscopeError("expected at least one job or sweep directory")
        jobs, sweeps = _targets(args)
        check_writable(_outputs(jobs, sweeps, out))
    failed = 0
    for job in jobs:
        try:
            written = job_figures(job, None if out is None else out / job.name)
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            failed += 1
            print(f"failed: {job}: {one_line(exc, typed=True)}", file=sys.stderr)
            continue
        print(f"drew: {job} ({len(written)} figures)")
    for sweep in sweeps:
        try:
            written = connectivity_figures(sweep, None if out is None else out / "connectivity")
        except Exception as exc:  # noqa: BLE001
            failed += 1
            print(f"failed: {sweep}/connectivity: {one_line(exc, typed=True)}", file=sys.stderr)
            continue
        if written:
            print(f"drew: {sweep}/connectivity ({len(written)} figures)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
