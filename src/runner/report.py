"""The statistical report of finished sweeps: ``python -m runner.report SWEEP... [--out DIR]``.

Collects every job below the given sweep (or job) directories from their saved results,
relates each curvature/sharpness/landscape measure to test error and the generalization
gap, and writes ``report.md`` and a self-contained ``report.html`` (figures embedded), plus
the tidy tables (``jobs.csv``, ``jobs.parquet``, ``excluded.csv``, ``measures.csv``,
``measures_gap.csv``), into ``--out`` (default ``SWEEP/report`` for one sweep,
``outputs/report`` for several). Failed, diverged and incomplete jobs are counted and listed,
never dropped silently. Regenerable at any time: nothing is retrained or re-probed.
Exit codes: 0 written, 2 bad input (one ``error:`` line).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from runner.cli import arguments, pop_out

    args = arguments(argv, __doc__)
    out = pop_out(args)
    paths = [Path(a) for a in args]
    missing = [p for p in paths if not p.is_dir()]
    if missing:
        print(f"error: {missing[0]} is not a sweep or job directory", file=sys.stderr)
        sys.exit(2)
    from landscope.analysis.report import build_report
    from landscope.errors import LandscopeError

    if out is None:
        out = paths[0] / "report" if len(paths) == 1 else Path("outputs") / "report"
    try:
        page = build_report(paths, out)
    except LandscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"report: {page}")


if __name__ == "__main__":
    main()
