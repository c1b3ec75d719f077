"""A sweep over probe settings with and without taking a finished job's training.

``python -m runner -m probe.data_size=500,1000 seed=0,1`` puts each trained model in two
directories. With ``train.reuse_trained=true`` (the default, :mod:`landscope.jobreuse`) the
second directory of each model takes the first one's checkpoints instead of training; with
``false`` every directory trains. Both sweeps run through ``python -m runner`` in fresh
output directories, alternating, and the whole command is timed (process start, data,
training, probes and figures); the ratio off / on is printed per round and as the median.

    python scripts/bench_reuse.py [--rounds 2] [--settings 500,1000] [--seeds 0,1]
        [--set train.epochs=20 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sweep_seconds(reuse: bool, args: argparse.Namespace) -> tuple[float, int]:
    """Seconds of one sweep and how many of its jobs took their training."""
    with tempfile.TemporaryDirectory(prefix="bench-reuse-") as tmp:
        cmd = [sys.executable, "-m", "runner", "-m", "name=bench", "probe=basic",
               f"probe.data_size={args.settings}", f"seed={args.seeds}", "landscape=none",
               f"train.reuse_trained={str(reuse).lower()}", *args.set]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "LANDSCOPE_CONF": str(REPO / "conf")}
        tic = time.perf_counter()
        done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - tic
        if done.returncode != 0:
            sys.exit(f"error: the sweep failed:\n{done.stderr[-2000:]}")
        results = Path(tmp, "outputs", "sweeps", "bench").glob("*/result.json")
        taken = sum("trained_in" in json.loads(p.read_text()) for p in results)
    return seconds, taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", default="500,1000")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--set", nargs="*", default=[], help="more overrides for every job")
    args = parser.parse_args()
    ratios = []
    for k in range(args.rounds):
        off, _ = sweep_seconds(False, args)
        on, taken = sweep_seconds(True, args)
        ratios.append(off / on)
        print(f"round {k + 1}: reuse off {off:.1f} s, on {on:.1f} s ({taken} jobs took their "
              f"training); off / on = {off / on:.2f}", flush=True)
    print(f"median off / on over {args.rounds} rounds: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
