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

import os
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

# the tiniest job that still runs every stage: 2 epochs (2 checkpoints), basic probes,
# 1-D slices (a resumable slice store), and the figures (training.png, line.png)
TINY = ["experiment=smoke", "probe=basic", "landscape=basic", "train.checkpoint_interval_s=0",
        "dataset.train_size=256", "dataset.test_size=128", "model.width=16",
        "probe.data_size=64", "landscape.data_size=64", "landscape.line.points=5",
        "landscape.line.directions=2"]
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
    # every other write of the report (its writes are alike: tables, figures, md, html)
    moments += [("report", f"kill-before:{n}", target) for n, _, target in report_writes[::2]]
    return moments


def _kill_round(i: int, moment: tuple[str, str, str], root: Path, ref_root: Path, shim: Path,
                data: Path) -> dict:
    """One round: the command in a fresh directory, killed at the moment, then rerun without
    the fault. Returns what went wrong (``problems``: the kill did not happen, the rerun
    failed, a result differs from the reference, a file is torn) and the temporary files
    left behind after the kill and after the rerun."""
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
    left_by_kill = faults.leftovers(here / SWEEP)
    rerun = faults.run(args, here, faults.plain_env())
    if rerun.returncode != 0:
        problems.append(f"rerun exit {rerun.returncode}: {rerun.stderr.strip()[-800:]}")
    if "Traceback" in rerun.stderr:
        problems.append(f"rerun printed a traceback: {rerun.stderr.strip()[-800:]}")
    problems += faults.differences(reference, here / SWEEP)
    problems += faults.damaged(here / SWEEP)
    return {"command": command, "spec": spec, "target": target, "stage": faults.stage(target),
            "problems": problems, "left_by_kill": left_by_kill,
            "left_after_rerun": faults.leftovers(here / SWEEP)}


@pytest.fixture(scope="module")
def campaign(campaign_ref, tmp_path_factory, data) -> list[dict]:
    """Every kill round (two at a time: each round is a pair of short processes)."""
    ref_root, shim, runner_writes, report_writes = campaign_ref
    moments = _campaign_moments(runner_writes, report_writes)
    root = tmp_path_factory.mktemp("fault-rounds")
    tic = time.perf_counter()
    # two rounds at a time alone; one under pytest-xdist, whose workers already fill the cores
    with ThreadPoolExecutor(max_workers=1 if os.environ.get("PYTEST_XDIST_WORKER") else 2) \
            as pool:
        rounds = list(pool.map(lambda im: _kill_round(im[0], im[1], root, ref_root, shim, data),
                               enumerate(moments)))
    tally = Counter(r["stage"] for r in rounds)
    print(f"\n{len(rounds)} kills in {time.perf_counter() - tic:.0f} s: " +
          ", ".join(f"{stage} {n}" for stage, n in sorted(tally.items())))
    for r in rounds:
        print(f"  {r['command']:6s} {r['spec']:15s} {r['stage']:10s} {Path(r['target']).name:22s}"
              f" {'identical' if not r['problems'] else 'FAILED'}; temporary files left by the"
              f" kill {len(r['left_by_kill'])}, after the rerun {len(r['left_after_rerun'])}")
    return rounds


@pytest.mark.slow
def test_sigkill_at_every_write_then_rerun_is_bit_identical(campaign):
    """≥ 20 SIGKILLs spread over every stage; every rerun exits 0 without a traceback, every
    result file ends identical to the uninterrupted run (JSON, JSON lines, checkpoints and
    the report's tables less the wall-clock fields of faults.VOLATILE_KEYS; every other file
    byte for byte) and no result file is torn or unreadable."""
    assert len(campaign) >= 20, f"only {len(campaign)} kill moments"
    stages = {r["stage"] for r in campaign}
    assert {"setup", "training", "checkpoint", "probes", "slices", "result", "figures",
            "report"} <= stages, f"a stage was never interrupted: {stages}"
    failed = [f"{r['command']} {r['spec']} ({r['target']}):\n    " + "\n    ".join(r["problems"])
              for r in campaign if r["problems"]]
    assert not failed, f"{len(failed)} of {len(campaign)} rounds did not end identical and " \
                       "intact:\n" + "\n".join(failed)


@pytest.mark.slow
def test_sigkill_leaves_no_temporary_file_after_the_rerun(campaign):
    """A kill between writing a temporary file and swapping it in leaves ``.<name>.*.tmp``
    behind; the rerun must not leave it there (a killed checkpoint write is a model-sized
    file; a reader of the directory should find only results)."""
    left = [f"{r['command']} {r['spec']}: {', '.join(r['left_after_rerun'])}"
            for r in campaign if r["left_after_rerun"]]
    assert not left, f"{len(left)} of {len(campaign)} reruns left temporary files:\n" + \
        "\n".join(left)


# --- a two-job sweep: two runners at once, and a full disk ----------------------------------

SEEDS = "seed=0,1"
FIRST_JOB = "seed=0"  # job directory names end so (train.checkpoint_* are left out of names)
SECOND_JOB = "seed=1"


@pytest.fixture(scope="module")
def sweep_ref(tmp_path_factory, data):
    """The uninterrupted two-job sweep and its numbered writes."""
    root = tmp_path_factory.mktemp("fault-sweep-ref")
    shim = faults.install_shim(root / "shim")
    (root / "run").mkdir()
    _, writes = logged_run(runner_args(data, SEEDS), root / "run", shim, root / "state")
    return root / "run" / SWEEP, shim, writes


def _job_of(target: str) -> str | None:
    for job in (FIRST_JOB, SECOND_JOB):
        if f"{job}/" in target:
            return job
    return None


def _writes_per_job(writes: list) -> dict[str, Counter]:
    """For each job: how many files of each stage were written into it."""
    out: dict[str, Counter] = {}
    for _, _, target in writes:
        job = _job_of(target)
        if job is not None:
            out.setdefault(job, Counter())[faults.stage(target)] += 1
    return out


@pytest.mark.slow
def test_two_runners_on_one_sweep_do_each_job_once(sweep_ref, tmp_path, data):
    """Two identical sweep commands started together: the runner that takes the first job is
    held inside it (at its first checkpoint) until the other has exited, so the other meets
    the locked job. It skips it in one line and trains the second job; the first runner then
    finds the second job done. Every job is trained by one process only, with the reference's
    number of checkpoint and metrics writes, and the sweep ends identical to the reference."""
    reference, shim, ref_writes = sweep_ref
    state = tmp_path / "state"
    state.mkdir()
    env = faults.fault_env(shim, f"hold:{FIRST_JOB}/checkpoints/", state)
    cmd = [sys.executable, *runner_args(data, SEEDS)]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 300
        while not list(state.glob("held.*")) and time.monotonic() < deadline and \
                all(p.poll() is None for p in procs):
            time.sleep(0.1)
        held = [int(p.name.split(".")[1]) for p in state.glob("held.*")]
        assert len(held) == 1, f"expected one runner inside the first job, found {held}"
        holder = next(p for p in procs if p.pid == held[0])
        other = next(p for p in procs if p is not holder)
        while other.poll() is None and len(list(state.glob("held.*"))) == 1 and \
                time.monotonic() < deadline:  # the other runs while the holder is held
            time.sleep(0.1)
        assert len(list(state.glob("held.*"))) == 1, \
            "both runners entered the first job (no lock kept the second out)"
        other_out, other_err = other.communicate(timeout=300)
        (state / "release").touch()
        holder_out, holder_err = holder.communicate(timeout=300)
    finally:  # a failed wait must not leave a runner behind
        (state / "release").touch()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()

    assert holder.returncode == 0, f"the first runner failed:\n{holder_err[-2000:]}"
    assert other.returncode == 0, f"the second runner failed:\n{other_err[-2000:]}"
    other_text = other_out + other_err
    locked = [ln for ln in other_text.splitlines() if "locked by another process" in ln]
    # one log line ("warning: ... locked ...; skipped") and its row in the status table
    assert locked and all(FIRST_JOB in ln or "skipped" in ln for ln in locked), other_text
    assert sum("warning:" in ln for ln in locked) == 1, \
        f"the locked job is not reported in exactly one warning line:\n{other_text}"
    assert "Traceback" not in other_err + holder_err
    assert "skipped: already done" in holder_out + holder_err, \
        "the first runner did not find the second job done"

    writes = faults.read_write_log(state)
    pids_per_job = {}
    for _, pid, target in writes:
        job = _job_of(target)
        if job is not None:
            pids_per_job.setdefault(job, set()).add(pid)
    assert pids_per_job == {FIRST_JOB: {holder.pid}, SECOND_JOB: {other.pid}}, \
        f"a job was written by more than one process (or by the wrong one): {pids_per_job}"
    assert _writes_per_job(writes) == _writes_per_job(ref_writes), \
        "a job's files were written more (or less) often than in one uninterrupted sweep"
    assert faults.differences(reference, tmp_path / SWEEP) == []
    assert faults.damaged(tmp_path / SWEEP) == [] and faults.leftovers(tmp_path / SWEEP) == []


def _job_dir_name(sweep: Path, job: str) -> str:
    (name,) = [p.name for p in sweep.iterdir() if p.is_dir() and p.name.endswith(job)]
    return name


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file's bytes, less the job locks (which hold the last locker's pid)."""
    return {rel: p.read_bytes() for rel, p in faults.tree(root, (".lock",)).items()}


def _no_space_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines()
            if "no space left on device" in ln.lower()]


@pytest.fixture(scope="module")
def full_disk(sweep_ref, tmp_path_factory, data) -> dict:
    """The two-job sweep on a disk that fills up at the second job's first checkpoint
    (``full``); then the same command with the disk still full, every write failing
    (``still_full``); then once more with space (``rerun``). The sweep's files are snapshot
    after each step."""
    reference, shim, ref_writes = sweep_ref
    first_ckpt = min(n for n, _, target in ref_writes
                     if f"{SECOND_JOB}/checkpoints/" in target)
    root = tmp_path_factory.mktemp("fault-full-disk")
    args = runner_args(data, SEEDS)
    sweep = root / SWEEP
    out = {"sweep": sweep, "reference": reference}
    for step, spec in (("full", f"enospc:{first_ckpt}"), ("still_full", "enospc:1"),
                       ("rerun", None)):
        state = root / f"state-{step}"
        state.mkdir()
        env = faults.fault_env(shim, spec, state) if spec else faults.plain_env()
        out[step] = faults.run(args, root, env)
        out[f"after_{step}"] = {
            "files": _snapshot(sweep), "damaged": faults.damaged(sweep),
            "leftovers": faults.leftovers(sweep),
            "first_job_differences": faults.differences(
                reference / _job_dir_name(reference, FIRST_JOB),
                sweep / _job_dir_name(reference, FIRST_JOB)),
            "differences": faults.differences(reference, sweep)}
    return out


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The lines that name the full disk as an error."""
    return [ln for ln in _no_space_lines(proc) if ln.startswith("error:") or " error: " in ln]


@pytest.mark.slow
def test_full_disk_nothing_corrupt_and_a_rerun_completes(full_disk):
    """A full disk: the sweep exits non-zero without a traceback, naming the full disk; the
    job finished before is intact and no file is torn or left half-written; a second run with
    the disk still full changes no byte of the finished job; once there is space again the
    same command completes the sweep identical to the uninterrupted reference."""
    for step in ("full", "still_full"):
        proc = full_disk[step]
        text = proc.stdout + proc.stderr
        assert proc.returncode not in (0, -signal.SIGKILL), f"{step}: exit {proc.returncode}"
        assert "Traceback" not in text, f"{step}:\n{text[-3000:]}"
        assert _error_lines(proc), f"{step}: no error line names the full disk:\n{text[-3000:]}"
        after = full_disk[f"after_{step}"]
        assert after["damaged"] == [] and after["leftovers"] == [], f"{step}: {after}"
        assert after["first_job_differences"] == [], \
            f"{step}: the job finished before the disk filled up differs from the reference"
    first = _job_dir_name(full_disk["reference"], FIRST_JOB) + "/"

    def first_job(step: str) -> dict:
        return {k: v for k, v in full_disk[f"after_{step}"]["files"].items()
                if k.startswith(first)}

    assert first_job("still_full") == first_job("full"), \
        "a run on a full disk changed the finished job's files"
    rerun = full_disk["rerun"]
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = full_disk["after_rerun"]
    assert after["differences"] == [] and after["damaged"] == [] and after["leftovers"] == []


@pytest.mark.slow
def test_full_disk_is_one_error_line(full_disk):
    """Each run on the full disk says so in exactly one error line (the job's failure, not a
    second line about the failure record that could not be written)."""
    for step in ("full", "still_full"):
        proc = full_disk[step]
        lines = _error_lines(proc)
        assert len(lines) == 1, f"{step}: {len(lines)} error lines name the full disk:\n" + \
            "\n".join(lines)


def test_the_comparison_sees_torn_files_leftovers_and_changed_results(tmp_path):
    """The harness itself (fast, no subprocess): a torn JSON, npz or checkpoint is reported
    as damaged, a temporary file as a leftover, and a changed result (but not a changed wall
    time) as a difference."""
    import io

    import numpy as np
    import torch

    from landscope.checkpoint import save_checkpoint
    from landscope.io import write_json

    def job(root: Path, loss: float, seconds: float) -> Path:
        write_json(root / "result.json", {"final": {"test_loss": loss}, "wall_time_s": seconds,
                                          "probes": {"lambda_max": 2.0, "probe_seconds": seconds}})
        buf = io.BytesIO()
        np.savez(buf, curve=np.array([loss, 1.0]))
        (root / "probes").mkdir()
        (root / "probes" / "p.npz").write_bytes(buf.getvalue())
        save_checkpoint(root / "checkpoints", 1, {"epoch": 1, "seconds": seconds,
                                                  "model": {"w": torch.tensor([loss])}})
        return root

    ref = job(tmp_path / "ref", 0.5, 1.0)
    same = job(tmp_path / "same", 0.5, 7.0)  # another wall time only
    other = job(tmp_path / "other", 0.25, 1.0)
    assert faults.differences(ref, same) == []
    assert faults.differences(ref, other) == ["checkpoint differs: checkpoints/epoch_000001.pt",
                                              "differs: probes/p.npz", "differs: result.json"]
    assert faults.damaged(ref) == [] and faults.leftovers(ref) == []
    for rel in ("result.json", "probes/p.npz", "checkpoints/epoch_000001.pt"):
        path = same / rel
        path.write_bytes(path.read_bytes()[:-7])
    (same / ".result.json.abc123.tmp").write_text("{")
    assert sorted(d.split(" (")[0] for d in faults.damaged(same)) == [
            "unreadable: checkpoints/epoch_000001.pt", "unreadable: probes/p.npz",
            "unreadable: result.json"]
    assert faults.leftovers(same) == [".result.json.abc123.tmp"]
