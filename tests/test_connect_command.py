"""`python -m runner.connect SWEEP_DIR`: pairs of seeds, output files, caching, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli
from landscope.io import read_json, write_json
from runner import connect


def run_connect(args, cwd, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "runner.connect", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


@pytest.mark.slow
def test_connect_sweep_writes_pairs_and_caches(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "seed=0,1", "train.epochs=1", "probe=none", "dataset.train_size=200",
                    "model.width=16", f"hydra.sweep.dir={sweep}"], tmp_path, data_dir=data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    settings = ["landscape.path_points=5", "landscape.bezier.epochs=2",
                "landscape.data_size=100"]
    first = run_connect([sweep, *settings], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "1 pair: 1 computed, 0 cached, 0 failed" in first.stdout
    group = (sweep / "connectivity"
             / "dataset.train_size=200,model.width=16,probe=none,train.epochs=1")
    stem = ("dataset.train_size=200,model.width=16,probe=none,seed=0,train.epochs=1__"
            "dataset.train_size=200,model.width=16,probe=none,seed=1,train.epochs=1")
    json_path, npz_path = group / f"{stem}.json", group / f"{stem}.npz"
    assert sorted(p.name for p in group.iterdir()) == sorted([json_path.name, npz_path.name])
    record = read_json(json_path)
    assert record["landscape"] == {"path_points": 5, "bezier": True, "bezier_epochs": 2,
                                   "bezier_lr": 0.01, "bn": "keep", "data_size": 100,
                                   "seed": 0, "batch_size": 2048}
    assert len(record["checkpoint_a"]) == 64 and record["checkpoint_a"] != record["checkpoint_b"]
    assert (record["seed_a"], record["seed_b"]) == (0, 1)
    sc = record["scalars"]
    for p in ("linear", "bezier"):
        for split in ("train", "test"):
            for metric in ("loss", "error"):
                for k in ("barrier_mean", "barrier_interp", "max", "mean", "integral"):
                    assert np.isfinite(sc[f"{p}_{split}_{metric}_{k}"])
                # both paths share their endpoints (no BatchNorm here)
                assert sc[f"{p}_{split}_{metric}_barrier_interp"] >= 0
    assert sc["linear_train_loss_start"] == sc["bezier_train_loss_start"]
    # 200 samples, batch 64 -> 4 steps per epoch, 2 epochs
    assert sc["bezier_grad_evals"] == 8 == record["bend"]["grad_evals"]
    with np.load(npz_path) as z:
        arrays = {k: z[k] for k in z.files}
    assert set(arrays) == set(record["arrays"])
    assert arrays["linear_t"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert arrays["bezier_bend"].shape == (record["n_params"],)
    assert arrays["linear_train_loss"][0] == arrays["bezier_train_loss"][0]
    assert np.isclose(sc["linear_train_loss_max"], arrays["linear_train_loss"].max(), rtol=0,
                      atol=0)

    before = {p: p.stat().st_mtime_ns for p in (json_path, npz_path)}
    second = run_connect([sweep, *settings], tmp_path)
    assert second.returncode == 0, second.stderr
    assert "1 pair: 0 computed, 1 cached, 0 failed" in second.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # another setting is another computation, without the Bezier curve
    third = run_connect([sweep, "landscape.path_points=3", "landscape.bezier.enabled=false",
                         "landscape.data_size=50"], tmp_path)
    assert third.returncode == 0, third.stderr
    assert "1 computed" in third.stdout
    record3 = read_json(json_path)
    assert not any(k.startswith("bezier") for k in record3["scalars"])

    bad = run_connect([tmp_path / "no_such_dir"], tmp_path)
    assert bad.returncode == 2
    lines = _error_lines(bad.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:") and "no_such_dir" in lines[0]


def _fake_job(sweep: Path, name: str, seed: int, status: str = "completed",
              width: int = 16) -> Path:
    job = sweep / name
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(f"seed: {seed}\nmodel:\n  width: {width}\n")
    write_json(job / "result.json", {"status": status, "epochs_completed": 1})
    return job


@pytest.mark.parametrize("case,needle", [
    ("not_a_dir", "not a sweep directory"),
    ("empty", "no job directories"),
    ("no_pairs", "no pairs to connect"),
    ("override", "only landscape overrides"),
    ("unknown_key", "path_pointz"),
    ("bad_value", "landscape.path_points must be >= 2"),
    ("bad_bezier", "landscape.bezier.epochs must be >= 1"),
    # names of the release before landscape.bezier.* was a group: the one-line hints
    ("old_switch", "landscape.bezier is a group now: use landscape.bezier.enabled=false"),
    ("old_name", "unknown option landscape.bezier_lr: renamed landscape.bezier.lr"),
    ("two_paths", "expected one sweep directory"),
])
def test_bad_input_exits_2_with_one_error_line(tmp_path, capsys, case, needle):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    # seeds 0 and 1 differ in width; seed 2 diverged: nothing to pair
    _fake_job(sweep, "seed=0", 0)
    _fake_job(sweep, "model.width=8,seed=1", 1, width=8)
    _fake_job(sweep, "seed=2", 2, status="diverged")
    args = {
        "not_a_dir": [tmp_path / "missing"],
        "empty": [tmp_path],
        "no_pairs": [sweep],
        "override": [sweep, "model.width=3"],
        "unknown_key": [sweep, "landscape.path_pointz=3"],
        "bad_value": [sweep, "landscape.path_points=1"],
        "bad_bezier": [sweep, "landscape.bezier.epochs=0"],
        "old_switch": [sweep, "landscape.bezier=false"],
        "old_name": [sweep, "landscape.bezier_lr=0.1"],
        "two_paths": [sweep, sweep / "seed=0"],
    }[case]
    if case == "empty":
        (tmp_path / "other").mkdir()
    with pytest.raises(SystemExit) as info:  # in-process: the same main() as the command
        connect.main([str(a) for a in args])
    out = capsys.readouterr()
    assert info.value.code == 2, out.out + out.err
    lines = _error_lines(out.err)
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    assert not (sweep / "connectivity").exists()


def test_help_is_the_module_docstring(capsys):
    with pytest.raises(SystemExit) as info:
        connect.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "python -m runner.connect SWEEP_DIR" in out and "Exit codes" in out


def test_a_failing_pair_exits_1_and_the_others_still_run(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    # two groups of two seeds; neither job of the first group has a checkpoint, and the
    # second group's cached result is already in place (same digests and settings)
    for name, seed in (("seed=0", 0), ("seed=1", 1)):
        _fake_job(sweep, name, seed)
    for name, seed in (("model.width=8,seed=0", 0), ("model.width=8,seed=1", 1)):
        job = _fake_job(sweep, name, seed, width=8)
        (job / "checkpoints").mkdir()
        (job / "checkpoints" / "epoch_000001.pt").write_bytes(
            b"LSCKPT1\n" + bytes([seed]) * 32 + b"payload")
    key = {"checkpoint_a": "00" * 32, "checkpoint_b": "01" * 32,
           "landscape": {"path_points": 21, "bezier": True, "bezier_epochs": 10,
                         "bezier_lr": 0.01, "bn": "keep", "data_size": 1000, "seed": 0,
                         "batch_size": 2048}}
    group = sweep / "connectivity" / "model.width=8"
    write_json(group / "model.width=8,seed=0__model.width=8,seed=1.json",
               {**key, "scalars": {"linear_train_loss_barrier_mean": 0.5,
                                   "linear_train_loss_barrier_interp": 0.25}})
    (group / "model.width=8,seed=0__model.width=8,seed=1.npz").write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        connect.main([str(sweep)])
    out = capsys.readouterr()
    assert info.value.code == 1, out.out + out.err
    assert "failed: seeds/seed=0__seed=1: seed=0 has no checkpoint" in out.err
    # the plan still speaks for both groups: the broken pair untimed, the cached one done
    assert "connect plan, seeds: 1 pair, 0 cached; not timed (" in out.out
    assert "seed=0 has no checkpoint)" in out.out
    assert "connect plan, model.width=8: 1 pair, 1 cached, nothing to compute" in out.out
    assert "cached: model.width=8/model.width=8,seed=0__model.width=8,seed=1" in out.out
    assert "linear train loss barrier 0.5/0.25" in out.out
    assert "2 pairs: 0 computed, 1 cached, 1 failed" in out.out


@pytest.mark.slow
def test_long_job_names_get_hashed_pair_files_that_the_h2_reader_follows(tmp_path, data_dir):
    """Two seeds with many overrides: ``<jobA>__<jobB>`` is over 255 bytes with the atomic
    writer's temporary prefix; the pair files are named by digests, their json names the jobs,
    and the H2 reader (load_barriers) reads the jobs' configs through those names."""
    from landscope.analysis.hypotheses.h2_barriers import load_barriers
    from landscope.geometry.pairs import MAX_PAIR_NAME, pair_file_name

    sweep = tmp_path / "sweep"
    long = ["train.epochs=1", "probe=none", "landscape=none", "dataset.train_size=120",
            "dataset.test_size=60", "model.width=8", "model.depth=2", "optimizer.lr=0.05",
            "optimizer.weight_decay=0.0001", "train.batch_size=40", "model.activation=tanh",
            "train.eval_batch_size=512"]
    proc = run_cli(["-m", "seed=0,1", *long, f"hydra.sweep.dir={sweep}"], tmp_path,
                   data_dir=data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = run_connect([sweep, "landscape.path_points=3", "landscape.bezier.enabled=false",
                       "landscape.data_size=60"], tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    (json_path,) = (sweep / "connectivity").glob("*/*.json")
    record = read_json(json_path)
    assert len(f"{record['job_a']}__{record['job_b']}".encode()) > MAX_PAIR_NAME
    assert json_path.stem == pair_file_name(record["job_a"], record["job_b"])
    assert len(json_path.stem) == 26 and json_path.with_suffix(".npz").is_file()
    rows = load_barriers(sweep, factor="model.width")
    assert list(rows["job_a"]) == [record["job_a"]] and rows["reason"].isna().all()
    assert (rows["seed_a"].iloc[0], rows["seed_b"].iloc[0]) == (0, 1)
