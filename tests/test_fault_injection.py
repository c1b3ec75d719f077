"""Fault injection (issue #17's goals): SIGKILL at every write of a job and of its report,
two runners on one sweep at once, and a disk that fills up. Each interrupted run is rerun
to completion and compared with an uninterrupted reference, file by file.

The faults come from a ``sitecustomize`` shim (tests/faults.py) that numbers every atomic
write (``os.replace`` of a ``.<name>.*.tmp`` file) and SIGKILLs the process at, or fails
with ENOSPC from, the N-th one. A kill just before write N leaves exactly what a kill at
any moment of the computation leading up to it leaves (the files of writes 1..N-1), plus
the finished temporary file of write N; so killing before every write covers every stage:
training, checkpoints, probes, slices, result.json, figures and the report's tables.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import faults

pytestmark = pytest.mark.slow

# the tiniest job that still runs every stage: 2 epochs (2 checkpoints), basic probes,
# 1-D slices (a resumable slice store), and the figures (training.png, line.png)
TINY = ["experiment=smoke", "probe=basic", "landscape=basic", "train.checkpoint_interval_s=0",
        "dataset.train_size=256", "dataset.test_size=128", "model.width=16",
        "probe.data_size=64", "landscape.data_size=64", "landscape.line_points=5",
        "landscape.line_directions=2"]
SWEEP = "sweep"  # relative to each round's directory: every command runs with cwd = round


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """MNIST-1D generated once, so the subprocesses only read it."""
    from landscope.config import DatasetConfig
    from landscope.data import load_data

    path = tmp_path_factory.mktemp("fault-data")
    load_data(DatasetConfig(data_dir=str(path)))
    return path


def runner_args(data: Path, *extra: str) -> list[str]:
    return ["-m", "runner", "-m", *TINY, *extra, f"hydra.sweep.dir={SWEEP}",
            f"dataset.data_dir={data}"]


REPORT_ARGS = ["-m", "runner.report", SWEEP]


def logged_run(args: list[str], cwd: Path, shim: Path, state: Path
               ) -> tuple[subprocess.CompletedProcess, list]:
    """Run with the shim only logging; returns the process and its writes."""
    state.mkdir(parents=True)
    proc = faults.run(args, cwd, faults.fault_env(shim, "log", state))
    assert proc.returncode == 0, f"uninterrupted run failed:\n{proc.stderr[-3000:]}"
    return proc, faults.read_write_log(state)


@pytest.fixture(scope="module")
def campaign_ref(tmp_path_factory, data):
    """The uninterrupted one-job sweep (``train/``), the same plus its report (``report/``),
    and the numbered writes of each command."""
    root = tmp_path_factory.mktemp("fault-ref")
    shim = faults.install_shim(root / "shim")
    (root / "train").mkdir()
    _, runner_writes = logged_run(runner_args(data, "seed=0"), root / "train", shim,
                                  root / "state-train")
    (root / "report").mkdir()
    shutil.copytree(root / "train" / SWEEP, root / "report" / SWEEP)
    _, report_writes = logged_run(REPORT_ARGS, root / "report", shim, root / "state-report")
    return root, shim, runner_writes, report_writes


def _campaign_moments(runner_writes: list, report_writes: list) -> list[tuple[str, str, str]]:
    """``(command, fault spec, the file written at that moment)``: a kill before every write
    of the runner and of the report, and after the two writes that end a stage with nothing
    written until the process exits or draws (result.json before the figures; the last
    figure)."""
    moments = [("runner", f"kill-before:{n}", target) for n, _, target in runner_writes]
    result_n = max(n for n, _, target in runner_writes if target.endswith("result.json"))
    last_n, _, last_target = runner_writes[-1]
    moments += [("runner", f"kill-after:{result_n}", "result.json"),
                ("runner", f"kill-after:{last_n}", last_target)]
    moments += [("report", f"kill-before:{n}", target) for n, _, target in report_writes]
    return moments


def _kill_round(i: int, moment: tuple[str, str, str], root: Path, ref_root: Path, shim: Path,
                data: Path) -> dict:
    """One round: the command in a fresh directory, killed at the moment, then rerun without
    the fault. Returns what went wrong (an empty ``problems`` list when nothing)."""
    command, spec, target = moment
    here = root / f"round{i:02d}"
    here.mkdir()
    state = here.parent / f"state{i:02d}"
    state.mkdir()
    if command == "runner":
        args, reference = runner_args(data, "seed=0"), ref_root / "train" / SWEEP
    else:  # the report of the finished sweep, as the reference's report was run
        shutil.copytree(ref_root / "train" / SWEEP, here / SWEEP)
        args, reference = REPORT_ARGS, ref_root / "report" / SWEEP
    killed = faults.run(args, here, faults.fault_env(shim, spec, state))
    problems = []
    if killed.returncode != -signal.SIGKILL:
        problems.append(f"not killed at {spec} (exit {killed.returncode})")
    left_after_kill = faults.damaged(here / SWEEP)
    rerun = faults.run(args, here, faults.plain_env())
    if rerun.returncode != 0:
        problems.append(f"rerun exit {rerun.returncode}: {rerun.stderr.strip()[-800:]}")
    if "Traceback" in rerun.stderr:
        problems.append(f"rerun printed a traceback: {rerun.stderr.strip()[-800:]}")
    problems += faults.differences(reference, here / SWEEP)
    problems += faults.damaged(here / SWEEP)
    return {"command": command, "spec": spec, "target": target,
            "stage": faults.stage(target),
            "left_after_kill": left_after_kill, "problems": problems}


def test_sigkill_at_every_write_then_rerun_is_bit_identical(campaign_ref, tmp_path, data):
    """≥ 20 SIGKILLs spread over every stage; every rerun exits 0, every result file ends
    identical to the uninterrupted run (result.json, metrics.jsonl and checkpoints less their
    wall-clock fields, see faults.RESULT_VOLATILE; all other files byte for byte) and nothing
    is left half-written or unreadable."""
    ref_root, shim, runner_writes, report_writes = campaign_ref
    moments = _campaign_moments(runner_writes, report_writes)
    assert len(moments) >= 20, f"only {len(moments)} kill moments"
    tic = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        rounds = list(pool.map(lambda im: _kill_round(im[0], im[1], tmp_path, ref_root, shim,
                                                      data), enumerate(moments)))
    seconds = time.perf_counter() - tic
    tally = Counter(r["stage"] for r in rounds)
    print(f"\n{len(rounds)} kills in {seconds:.0f} s: " +
          ", ".join(f"{stage} {n}" for stage, n in sorted(tally.items())))
    for r in rounds:
        print(f"  {r['command']:6s} {r['spec']:15s} {r['stage']:10s} {Path(r['target']).name:28s}"
              f" {'ok' if not r['problems'] else 'FAILED'}"
              f"{'  left by the kill: ' + str(len(r['left_after_kill'])) if r['left_after_kill'] else ''}")
    assert {"setup", "training", "checkpoint", "probes", "slices", "result", "figures",
            "report"} <= set(tally), f"a stage was never interrupted: {tally}"
    failed = [f"{r['command']} {r['spec']} ({r['target']}):\n    " + "\n    ".join(r["problems"])
              for r in rounds if r["problems"]]
    assert not failed, f"{len(failed)} of {len(rounds)} rounds did not end identical and " \
                       "intact:\n" + "\n".join(failed)
