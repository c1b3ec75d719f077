"""End-to-end: `python -m runner` in subprocesses (results contract, sweeps, resume, errors)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, metrics_without_time, run_cli
from landscope.checkpoint import list_checkpoints
from landscope.io import read_json, read_jsonl

SMOKE = ["experiment=smoke"]


@pytest.fixture(scope="module")
def warm_data(data_dir):
    """Generate MNIST-1D once so subprocesses only read the cache."""
    from landscope.config import DatasetConfig
    from landscope.data import load_data

    load_data(DatasetConfig(data_dir=str(data_dir)))
    return data_dir


def test_single_run_results_contract(tmp_path, warm_data):
    proc = run_cli([*SMOKE, "seed=0"], tmp_path, data_dir=warm_data)
    assert proc.returncode == 0, proc.stderr
    job = tmp_path / "outputs" / "runs" / "smoke" / "seed=0"
    assert {p.name for p in job.iterdir()} == {"config.yaml", "overrides.yaml", "metrics.jsonl",
                                               "result.json", "checkpoints", ".lock"}
    result = read_json(job / "result.json")
    assert result["status"] == "completed" and result["seed"] == 0
    assert result["epochs_completed"] == 2 and len(read_jsonl(job / "metrics.jsonl")) == 2
    for key in ("final", "wall_time_s", "n_params", "versions", "git_commit", "fingerprint"):
        assert key in result
    assert set(result["final"]) >= {"train_loss", "train_acc", "test_loss", "test_acc"}
    assert result["versions"]["torch"]
    assert [p.name for p in (job / "checkpoints").iterdir()] != []
    assert "completed:" in proc.stdout


def test_multirun_dirs_are_deterministic_and_rerun_skips(tmp_path, warm_data):
    args = ["-m", *SMOKE, "seed=0,1"]
    first = run_cli(args, tmp_path, data_dir=warm_data)
    assert first.returncode == 0, first.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "smoke"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["seed=0", "seed=1"]
    before = {s: metrics_without_time(sweep / s) for s in ("seed=0", "seed=1")}
    second = run_cli(args, tmp_path, data_dir=warm_data)
    assert second.returncode == 0
    assert second.stdout.count("skipped: already done") == 2
    assert {s: metrics_without_time(sweep / s) for s in before} == before
    assert "2 jobs: 2 completed" in second.stdout


@pytest.mark.slow
def test_multirun_isolates_diverged_and_failed_jobs(tmp_path, warm_data):
    data = tmp_path / "data"
    data.mkdir()
    (data / "mnist1d").symlink_to(warm_data / "mnist1d")
    raw = data / "MNIST" / "raw"  # present but corrupted: loading it raises inside the job
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x03 definitely not idx data")
    proc = run_cli(["-m", *SMOKE, "dataset=mnist1d,mnist", "optimizer.lr=0.05,1000000.0",
                    f"dataset.data_dir={data}"], tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "smoke"
    status = {p.name: read_json(p / "result.json")["status"] for p in sweep.iterdir() if p.is_dir()}
    assert status == {"dataset=mnist1d,optimizer.lr=0.05": "completed",
                      "dataset=mnist1d,optimizer.lr=1000000.0": "diverged",
                      "dataset=mnist,optimizer.lr=0.05": "failed",
                      "dataset=mnist,optimizer.lr=1000000.0": "failed"}
    assert (sweep / "dataset=mnist,optimizer.lr=0.05" / "traceback.txt").read_text().strip()
    assert "4 jobs: 1 completed, 1 diverged, 2 failed" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_diverged_only_sweep_exits_zero(tmp_path, warm_data):
    proc = run_cli(["-m", *SMOKE, "optimizer.lr=1e6"], tmp_path, data_dir=warm_data)
    assert proc.returncode == 0, proc.stderr
    assert "1 job: 1 diverged" in proc.stdout


def _bad_dir(tmp_path: Path) -> str:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    return f"hydra.run.dir={blocker}/job"


@pytest.mark.parametrize("args,needle", [
    (["optimizer=adamax"], "optimizer"),
    (["optimizer.lrr=0.1"], "lrr"),
    (["train.batch_size=big"], "train.batch_size"),
    (["model.norm=group"], "none, batch, layer"),
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=-1"], "optimizer.lr"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.epochs=-2"], "train.epochs"),
    (["model.width=0"], "model.width"),
    (["dataset=cifar10"], "cifar10"),
    ("unwritable", "cannot create output directory"),
    (["-m", "optimizer.lr=0.1,-1"], "optimizer.lr"),
    (["-m", "dataset=digits,cifar100"], "cifar100"),
    (["-m", *SMOKE, "train.progress=true,false"], "same job directory"),
    (["-m", *SMOKE, "seed=1,1"], "same job directory"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, warm_data, args, needle):
    if args == "unwritable":
        args = [_bad_dir(tmp_path)]
    proc = run_cli([*args, *SMOKE], tmp_path, data_dir=warm_data)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "outputs").exists()


def _wait_for_epochs(job: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(read_jsonl(job / "metrics.jsonl")) >= n:
                return
        except (ValueError, OSError):
            pass
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_and_rerun_gives_identical_metrics(tmp_path, warm_data):
    args = ["dataset.train_size=2000", "train.epochs=6", "optimizer=momentum",
            "optimizer.schedule=cosine", "model.width=64", "train.checkpoint_interval_s=0",
            "probe=none"]
    ref = run_cli([*args, "hydra.run.dir=ref"], tmp_path, data_dir=warm_data)
    assert ref.returncode == 0, ref.stderr
    job = tmp_path / "killed"
    cmd = [sys.executable, "-m", "runner", *args, f"hydra.run.dir={job}",
           f"dataset.data_dir={warm_data}"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    # kill once after two epochs, once at an arbitrary moment shortly after the restart
    for kill_after in ("epochs", 1.7):
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if kill_after == "epochs":
            _wait_for_epochs(job, 2, proc)
        else:
            time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert metrics_without_time(job) == metrics_without_time(tmp_path / "ref")
    final = read_json(job / "result.json")
    assert final["final"] == read_json(tmp_path / "ref" / "result.json")["final"]


def test_corrupted_checkpoint_falls_back_with_one_warning(tmp_path, warm_data):
    args = [*SMOKE, "train.epochs=3", "train.checkpoint_interval_s=0", "hydra.run.dir=job"]
    assert run_cli(args, tmp_path, data_dir=warm_data).returncode == 0
    job = tmp_path / "job"
    reference = metrics_without_time(job)
    newest = job / "checkpoints" / "epoch_000003.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as by a full disk
    (job / "result.json").unlink()
    proc = run_cli(args, tmp_path, data_dir=warm_data)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    warnings = [ln for ln in out.splitlines() if "warning:" in ln]
    assert len(warnings) == 1 and "epoch_000003.pt" in warnings[0]
    assert "Traceback" not in out
    assert metrics_without_time(job) == reference
    assert read_json(job / "result.json")["resumed_from_epoch"] == 2


@pytest.mark.slow
def test_joblib_launcher_matches_basic_launcher(tmp_path, warm_data):
    args = ["-m", *SMOKE, "seed=0,1"]
    basic = run_cli([*args, "hydra.sweep.dir=basic"], tmp_path, data_dir=warm_data)
    par = run_cli([*args, "hydra/launcher=parallel", "hydra.sweep.dir=par"], tmp_path,
                  data_dir=warm_data)
    assert basic.returncode == 0 and par.returncode == 0, par.stderr
    for seed in ("seed=0", "seed=1"):
        assert metrics_without_time(tmp_path / "par" / seed) == \
            metrics_without_time(tmp_path / "basic" / seed)
    assert "2 jobs: 2 completed" in par.stdout


def test_probe_command_on_a_finished_sweep(tmp_path, warm_data):
    assert run_cli(["-m", *SMOKE, "seed=0,1", "train.checkpoint_interval_s=0"], tmp_path,
                   data_dir=warm_data).returncode == 0
    sweep = tmp_path / "outputs" / "sweeps" / "smoke"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def probe(target, *args):
        return subprocess.run([sys.executable, "-m", "runner.probe", str(target), *args],
                              cwd=tmp_path, capture_output=True, text=True, env=env)

    first = probe(sweep, "probe=basic", "probe.data_size=128")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("probed:") == 2 and "running probes" in first.stderr + first.stdout
    again = probe(sweep, "probe=basic", "probe.data_size=128")
    assert again.returncode == 0 and "running probes" not in again.stderr + again.stdout  # cached
    job = next(sweep.glob("seed=0*"))  # seed=0 (train.checkpoint_interval_s is left out of names)
    result = read_json(job / "result.json")
    assert result["probes"]["lambda_max"] > 0 and result["status"] == "completed"
    pfp = result["probe_fingerprint"]
    assert (job / "probes" / f"{pfp}.json").is_file() and (job / "probes" / f"{pfp}.npz").is_file()
    bad = probe(sweep, "probe=sharpest")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and \
        len(bad.stderr.strip().splitlines()) == 1
    off = probe(sweep, "probe=none")
    assert off.returncode == 2 and "probe=none" in off.stderr

    # one checkpoint file (the oldest kept, not the final one): its own cache, result.json untouched
    ckpt = list_checkpoints(job / "checkpoints")[-1]
    epoch = int(ckpt.stem.split("_")[1])
    assert epoch < result["epochs_completed"]
    one = probe(ckpt, "probe=basic", "probe.data_size=128")
    assert one.returncode == 0, one.stderr
    assert f"(epoch {epoch})" in one.stdout and "running probes" in one.stderr + one.stdout
    cached = read_json(job / "probes" / f"{pfp}_{ckpt.stem}.json")
    assert cached["checkpoint"] == ckpt.name and cached["scalars"]["lambda_max"] > 0
    assert cached["scalars"]["lambda_max"] != result["probes"]["lambda_max"]
    assert read_json(job / "result.json") == result
    assert "running probes" not in (lambda r: r.stdout + r.stderr)(
        probe(ckpt, "probe=basic", "probe.data_size=128"))
    # a corrupted checkpoint file: one failure line, exit 1, nothing written for it
    broken = job / "checkpoints" / "epoch_000099.pt"
    broken.write_bytes(ckpt.read_bytes()[:-10])
    bad_ckpt = probe(broken, "probe=basic", "probe.data_size=128")
    assert bad_ckpt.returncode == 1 and bad_ckpt.stderr.count("failed:") == 1
    assert not list((job / "probes").glob(f"*{broken.stem}*"))
