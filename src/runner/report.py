"""The statistical report of finished sweeps: ``python -m runner.report SWEEP... [--out DIR]``.

Collects every job below the given sweep (or job) directories from their saved results,
relates each curvature/sharpness/landscape measure to test error and the generalization
gap, and writes ``report.md`` and a self-contained ``report.html`` (figures embedded), plus
the tidy tables (``jobs.csv``, ``jobs.parquet``, ``excluded.csv``, ``measures.csv``,
``measures_gap.csv``), into ``--out`` (default ``SWEEP/report`` for one sweep,
``outputs/report`` for several). Failed, diverged and incomplete jobs are counted and listed,
never dropped silently. Regenerable at any time: nothing is retrained or re-probed.
A model trained in several directories and probed or scanned with other settings in each
(``probe.data_size=500,1000``) is analysed once, at the setting most models were measured
with (a job measured again by ``runner.probe`` is read with the probe results it keeps at that
setting); the others are listed with status ``other_setting``. ``--setting KEY=VALUE`` (a
``probe.*`` or ``landscape.*`` option; repeatable) chooses the setting instead.
When the sweep's jobs were tracked with ``logger=wandb``, the report (HTML, Markdown, tables,
figures) is also stored as a W&B artifact of type ``report`` in the sweep's group, with the
jobs' project, entity and mode (``--no-wandb``: don't; ``--wandb``: also for untracked sweeps,
with the default ``conf/logger/wandb.yaml`` settings).
The line about W&B says what happened: uploaded (online), saved offline in a directory
to upload later with ``wandb sync DIR``, or not logged (``logger.mode=disabled``).
Before anything is read or written, the arguments (unknown options are refused by name),
the inputs (each path a directory holding jobs) and the output directory (created and
written to as a test) are checked.
Exit codes: 0 written, 1 the report could not be written after all (e.g. the disk filled),
2 bad input (one ``error:`` line, nothing written).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from runner.cli import arguments, check_writable, input_errors, pop_out, pop_values

    args = arguments(argv, __doc__, options=("--out", "--setting"),
                     flags=("--wandb", "--no-wandb"))
    out = pop_out(args)
    chosen = pop_values(args, "--setting", "a probe or landscape option, KEY=VALUE")
    given = [f for f in ("--wandb", "--no-wandb") if f in args]
    if len(given) > 1:
        print("error: --wandb and --no-wandb contradict each other; give one", file=sys.stderr)
        sys.exit(2)
    wandb_flag = None if not given else given[0] == "--wandb"
    args = [a for a in args if a not in given]
    with input_errors():
        from landscope.analysis.stage_settings import parse_settings

        setting = parse_settings(chosen)
        paths = _sources(args)
        if out is None:
            out = paths[0] / "report" if len(paths) == 1 else Path("outputs") / "report"
        check_writable([out, out / "figures"])
    from landscope.analysis.report import build_report

    with input_errors():
        try:
            page = build_report(paths, out, setting=setting)
        except OSError as exc:  # the disk filled, or permissions changed meanwhile
            print(f"error: report not written to {out}: {exc.strerror or exc}", file=sys.stderr)
            sys.exit(1)
    logger = _tracked_logger(paths, wandb_flag)
    if logger is not None:
        from landscope.tracking import log_report

        group = paths[0].resolve().name if len(paths) == 1 else "report"
        logged = log_report(page.parent, group, logger, [str(p) for p in paths])
        if logged is not None:
            print(_logged_line(logged, logger.project, group))
    print(f"report: {page}")


def _sources(args: list[str]) -> list[Path]:
    """The sweep or job directories to report on, each checked to hold at least one job."""
    from landscope.analysis.collect import job_dirs
    from landscope.errors import LandscopeError

    if not args:
        raise LandscopeError("expected at least one sweep or job directory")
    paths = [Path(a) for a in args]
    for p in paths:
        if not p.is_dir():
            raise LandscopeError(f"{p} is not a sweep or job directory")
        if not job_dirs(p):
            raise LandscopeError(f"{p} holds no jobs (no directory below it has result.json "
                                 "or config.yaml)")
    return paths


def _logged_line(logged, project: str, group: str) -> str:
    """What happened to the report on W&B, truthfully: uploaded, saved offline (and how to
    upload it) or not logged."""
    if logged.mode == "online":
        where = f", {logged.url}" if logged.url else ""
        return f"report uploaded to W&B ({project}, group {group}{where})"
    if logged.mode == "offline":
        return (f"report saved for W&B offline in {logged.sync_dir} (not uploaded; upload it "
                f"with: wandb sync {logged.sync_dir})")
    return "report not logged to W&B (logger.mode is disabled)"


def _tracked_logger(paths: list[Path], flag):
    """The logger settings the report is logged with: those of the first job that used
    ``logger=wandb`` (None when none did), unless ``--wandb``/``--no-wandb`` say otherwise."""
    if flag is False:
        return None
    from omegaconf import OmegaConf

    from landscope.analysis.collect import job_dirs
    from landscope.config import LoggerConfig

    for path in paths:
        for job in job_dirs(path):
            try:
                logger = job.config(typed=False).get("logger")
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
