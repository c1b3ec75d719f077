"""The calibration suite: ``python -m runner.calibrate [--R 200] [--only measures,h1,...]
[--seed 0] [--jobs N] [--out FILE.csv] [--write]``.

Simulates sweeps (job directories in the results contract) under every named null and planted
scenario of :mod:`landscope.analysis.calibration`, runs each report test on them as the report
does, and prints every test's rejection rate with a Clopper–Pearson 95 % interval: under a
null scenario it is the false-positive rate (goal ≤ 5 % within binomial error: ≤ 6.5 % at
R = 200), under a planted one the power at the stated effect.

``--only``: a comma-separated subset of hypotheses (measures, h1, h2, h3, h4, optimizers,
init_scale) or scenario names. ``--jobs``: scenarios run in parallel processes (default 1).
``--out``: also write the table as CSV. ``--write``: store the rates as the installation's
calibration (``landscope/analysis/calibration/rates.csv``), which the report quotes; with
``--only`` the rows of the scenarios run replace their stored rows and every other scenario's
rows are kept (:func:`~landscope.analysis.calibration.merge_rates`), so a scenario can be re-run
at a larger R. Rows of kind ``stress`` (a null beyond the goal, see
:mod:`landscope.analysis.calibration.core`) are printed but do not set the exit code.

Exit codes: 0 every null rate within the goal, 1 some null rate above it (listed), 2 bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from landscope.analysis.calibration import MODULES, all_scenarios

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # one line, exit 2
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    p = Parser(prog="python -m runner.calibrate", description=__doc__.split("\n\n")[0],
               add_help=True)
    p.add_argument("--R", type=int, default=200, help="datasets per scenario (default 200)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(MODULES)} "
                   "or scenario names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="scenarios run in parallel processes")
    p.add_argument("--out", type=Path, default=None, help="also write the table as CSV here")
    p.add_argument("--write", action="store_true", help="store the rates for the report")
    args = p.parse_args(argv)
    only = [h.strip().lower() for h in args.only.split(",") if h.strip()]
    scenarios = [s.name for s in all_scenarios()]
    unknown = [h for h in only if h not in MODULES and h not in scenarios]
    if unknown:
        p.error(f"unknown hypothesis {unknown[0]!r} in --only (choose from {', '.join(MODULES)} "
                "or a scenario name)")
    if args.R < 1:
        p.error(f"--R must be at least 1, got {args.R}")
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    args.only = tuple(only) or None
    return args


def _selected(only: tuple[str, ...] | None) -> list[str]:
    from landscope.analysis.calibration import MODULES, all_scenarios

    if only is None:
        return [s.name for s in all_scenarios()]
    modules = tuple(h for h in only if h in MODULES)
    names = [s.name for s in all_scenarios(modules)] if modules else []
    return names + [s.name for s in all_scenarios() if s.name in only and s.name not in names]


def _run_one(name: str, R: int, seed: int):
    from landscope.analysis.calibration import all_scenarios, calibrate

    scenario = next(s for s in all_scenarios() if s.name == name)
    return calibrate([scenario], R, seed)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    import pandas as pd

    from landscope.analysis.calibration import NULL_LIMIT, RATES_FILE, merge_rates, shipped_rates
    from landscope.io import atomic_write_text

    names = _selected(args.only)
    print(f"calibrating {len(names)} scenarios, R = {args.R} datasets each", flush=True)
    if args.jobs > 1:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=args.jobs)(delayed(_run_one)(n, args.R, args.seed) for n in names)
    else:
        parts = []
        for n in names:
            parts.append(_run_one(n, args.R, args.seed))
            print(f"  {n}: {parts[-1]['seconds'].iloc[0]:.0f} s", flush=True)
    table = pd.concat(parts, ignore_index=True)
    width = max(len(t) for t in table["test"])
    for scenario, rows in table.groupby("scenario", sort=False):
        print(f"\n{scenario} ({rows['hypothesis'].iloc[0]}): {rows['description'].iloc[0]}")
        for r in rows.itertuples():
            flag = {"null": "  ok" if r.ok else "  ABOVE GOAL",
                    "stress": "  (stress: beyond the goal)"}.get(r.kind, "")
            print(f"  {r.test:<{width}}  {r.kind:<6}  {100 * r.rate:5.1f} % "
                  f"[{100 * r.low:4.1f}, {100 * r.high:5.1f}]  n={r.runs}"
                  + (f" ({r.failed} not run)" if r.failed else "") + flag)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, table.to_csv(index=False))
        print(f"\ntable: {args.out}")
    if args.write:
        stored = table if args.only is None else merge_rates(shipped_rates(), table)
        atomic_write_text(RATES_FILE, stored.to_csv(index=False))
        print(f"stored: {RATES_FILE}" + ("" if args.only is None else
                                         f" ({len(names)} scenario(s) replaced)"))
    bad = table[(table["kind"] == "null") & (table["rate"] > NULL_LIMIT)]
    if len(bad):
        print(f"\n{len(bad)} null rate(s) above {100 * NULL_LIMIT:.1f} %: "
              + "; ".join(f"{r.scenario} / {r.test} {100 * r.rate:.1f} %"
                          for r in bad.itertuples()))
        sys.exit(1)


if __name__ == "__main__":
    main()
