"""The parallel launcher's speedup on the default sweep (issue #6 item 4; goal >= 1.7x on 2 cores).

Runs ``python -m runner -m <sweep>`` twice in fresh temporary directories, once with the basic
launcher (jobs one after another in one process) and once with ``hydra/launcher=parallel``
(landscope's own worker processes with joblib's settings, ``--jobs`` of them, each with
cores // jobs torch threads), on the same data
(MNIST-1D generated once beforehand), and prints both wall times and their ratio. The order is
alternated over ``--repeats`` rounds and the median ratio reported with the per-round values.
The job results of the two launchers are compared (metrics.jsonl minus wall-clock fields):
exit code 1 when they differ. The machine may be shared: the load average is printed before
and after.

    python scripts/bench_launchers.py [--sweep "optimizer=sgd,adam,momentum seed=0,1,2,3,4"]
                                      [--extra "train.epochs=20"] [--jobs 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SWEEP = "optimizer=sgd,adam,momentum seed=0,1,2,3,4"


def metrics(job: Path) -> list[dict]:
    from landscope.io import read_jsonl

    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in read_jsonl(job / "metrics.jsonl")]


def run(args: list[str], cwd: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    tic = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "runner", "-m", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        sys.exit(f"runner failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", default=DEFAULT_SWEEP)
    ap.add_argument("--extra", default="", help="more overrides for every job")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    opts = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from landscope.config import DatasetConfig
    from landscope.data import load_data

    print(f"load average before: {os.getloadavg()}; cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        load_data(DatasetConfig(data_dir=str(tmp / "data")))
        common = [*opts.sweep.split(), *opts.extra.split(), f"dataset.data_dir={tmp / 'data'}",
                  "landscape.figures=false", "name=bench"]
        ratios, rows = [], []
        for r in range(opts.repeats):
            times = {}
            order = ("basic", "parallel") if r % 2 == 0 else ("parallel", "basic")
            for kind in order:
                out = tmp / f"{kind}{r}"
                launcher = [] if kind == "basic" else ["hydra/launcher=parallel",
                                                       f"hydra.launcher.n_jobs={opts.jobs}"]
                times[kind] = run([*common, *launcher, f"hydra.sweep.dir={out}"], tmp)
            ratios.append(times["basic"] / times["parallel"])
            rows.append(times)
            jobs = sorted(p.name for p in (tmp / f"basic{r}").iterdir() if p.is_dir())
            same = all(metrics(tmp / f"basic{r}" / j) == metrics(tmp / f"parallel{r}" / j)
                       for j in jobs)
            print(f"round {r + 1}: {len(jobs)} jobs, basic {times['basic']:.1f} s, "
                  f"parallel ({opts.jobs} jobs) {times['parallel']:.1f} s, speedup "
                  f"{ratios[-1]:.2f}x, identical results: {same}")
            if not same:
                sys.exit(1)
    speedup = statistics.median(ratios)
    print(f"\n| launcher | wall time (s, median) |\n|---|---|\n"
          f"| basic | {statistics.median(t['basic'] for t in rows):.1f} |\n"
          f"| parallel x{opts.jobs} | {statistics.median(t['parallel'] for t in rows):.1f} |\n"
          f"| speedup | {speedup:.2f}x (goal >= 1.7x: {'met' if speedup >= 1.7 else 'MISSED'}) |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
