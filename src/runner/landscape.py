"""Landscape geometry on finished jobs without retraining:
``python -m runner.landscape PATH... [overrides]``.

``PATH`` is a job directory (it holds ``result.json``) or a sweep directory (every job
below it). Overrides choose the landscape config exactly as for the runner (default
``landscape=basic``), e.g. ``landscape=full landscape.plane.points=41 landscape.bn=recompute``.
Each job's final checkpoint is scanned, ``result.json`` gets the ``landscape`` scalars,
``landscape/<fingerprint>.json/.npz`` the results and ``figures/`` the pictures. Results
are cached per landscape config, so asking again costs nothing, and an interrupted scan
resumes from its partial grid. Parts that need data recorded during training (the
trajectory) are skipped with a note for jobs trained without it. Lines along Hessian
eigenvectors use the eigenvectors the job's probes saved.
Every job directory is checked before anything is computed: that it can be written (exit 2
otherwise) and that its final checkpoint loads (otherwise one ``error:`` line, "no final
checkpoint to scan", saying whether it is missing or corrupt; the job is left alone).
Exit codes as for the runner: 0 all done, 1 a job failed, 2 bad input.
"""

from __future__ import annotations

import logging
import sys

from landscope.errors import LandscopeError


def _shown(scalars: dict) -> dict:
    keys = ("line_train_rise_mean", "plane_train_rise_border_mean",
            "trajectory_pc1_explained_variance", "intrinsic_d90_relative")
    return {k: round(scalars[k], 4) if isinstance(scalars[k], float) else scalars[k]
            for k in keys if k in scalars}


def main(argv: list[str] | None = None) -> None:
    from runner.cli import (
        arguments,
        check_writable,
        finished_job_outputs,
        group_config,
        input_errors,
        job_config,
        job_targets,
        paths_and_overrides,
        update_finished_jobs,
    )

    args = arguments(argv, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths, overrides = paths_and_overrides(args)
    if not any(o.startswith("landscape=") for o in overrides):
        overrides.insert(0, "landscape=basic")
    with input_errors(composing=True):
        bad = [o for o in overrides if not o.lstrip("+~").startswith("landscape")]
        if bad:
            raise LandscopeError(f"only landscape overrides are accepted here (got {bad[0]})")
        jobs = job_targets(paths)
        if any(ckpt is not None for _, ckpt in jobs):
            raise LandscopeError("give job or sweep directories (the landscape of a single "
                                 "checkpoint file is not supported)")
        land = group_config("landscape", overrides)
        if str(land.name) == "none":
            raise LandscopeError("landscape=none switches the landscape off; choose "
                                 "landscape=basic or full")
        plans = [(job, job_config(job, "landscape", land)) for job, _ in jobs]
        check_writable(d for job, cfg in plans for d in finished_job_outputs(job, cfg))
    failed = update_finished_jobs(plans, "landscape", "scan",
                                  lambda r: _shown(r.get("landscape", {})))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
