"""The statistical report of finished sweeps: ``python -m runner.report SWEEP... [--out DIR]``.

Collects every job below the given sweep (or job) directories from their saved results,
relates each curvature/sharpness/landscape measure to test error and the generalization
gap, and writes ``report.md`` and a self-contained ``report.html`` (figures embedded), plus
the tidy tables (``jobs.csv``, ``jobs.parquet``, ``excluded.csv``, ``measures.csv``,
``measures_gap.csv``), into ``--out`` (default ``SWEEP/report`` for one sweep,
``outputs/report`` for several). Failed, diverged and incomplete jobs are counted and listed,
never dropped silently. Regenerable at any time: nothing is retrained or re-probed.
When the sweep's jobs were tracked with ``logger=wandb``, the report (HTML, Markdown, tables,
figures) is also stored as a W&B artifact of type ``report`` in the sweep's group, with the
jobs' project, entity and mode (``--no-wandb``: don't; ``--wandb``: also for untracked sweeps,
with the default ``conf/logger/wandb.yaml`` settings).
Exit codes: 0 written, 2 bad input (one ``error:`` line).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from runner.cli import arguments, input_errors, pop_out

    args = arguments(argv, __doc__)
    out = pop_out(args)
    wandb_flag = None
    for flag, value in (("--wandb", True), ("--no-wandb", False)):
        if flag in args:
            args.remove(flag)
            wandb_flag = value
    paths = [Path(a) for a in args]
    missing = [p for p in paths if not p.is_dir()]
    if missing:
        print(f"error: {missing[0]} is not a sweep or job directory", file=sys.stderr)
        sys.exit(2)
    from landscope.analysis.report import build_report

    if out is None:
        out = paths[0] / "report" if len(paths) == 1 else Path("outputs") / "report"
    with input_errors():
        page = build_report(paths, out)
    logger = _tracked_logger(paths, wandb_flag)
    if logger is not None:
        from landscope.tracking import log_report

        group = paths[0].resolve().name if len(paths) == 1 else "report"
        if log_report(page.parent, group, logger, [str(p) for p in paths]):
            print(f"report logged to W&B ({logger.project}, group {group})")
    print(f"report: {page}")


def _tracked_logger(paths: list[Path], flag):
    """The logger settings the report is logged with: those of the first job that used
    ``logger=wandb`` (None when none did), unless ``--wandb``/``--no-wandb`` say otherwise."""
    if flag is False:
        return None
    from omegaconf import OmegaConf

    from landscope.analysis.collect import find_jobs
    from landscope.config import LoggerConfig

    for path in paths:
        for job in find_jobs(path):
            try:
                logger = OmegaConf.load(job / "config.yaml").get("logger")
            except Exception:  # noqa: BLE001 - an unreadable config is the report's business
                continue
            if logger is not None and str(logger.get("name")) == "wandb":
                merged = OmegaConf.merge(OmegaConf.structured(LoggerConfig), logger)
                merged.dir = None  # W&B files of the report go next to the report
                return merged
    if flag:
        return OmegaConf.structured(LoggerConfig(name="wandb"))
    return None


if __name__ == "__main__":
    main()
