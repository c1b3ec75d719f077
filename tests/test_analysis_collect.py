"""landscope.analysis.collect on job directories written here (no training)."""

from __future__ import annotations

import importlib
import json

import pandas as pd
import pytest
import yaml

from landscope.analysis import collect, save, swept_factors

collect_module = importlib.import_module("landscope.analysis.collect")


def _config(lr: float, seed: int, width: int = 32, name: str = "sgd") -> dict:
    return {"seed": seed, "name": "default", "resume": True,
            "model": {"name": "mlp", "width": width, "norm": "none"},
            "optimizer": {"name": name, "lr": lr, "betas": [0.9, 0.999]},
            "train": {"epochs": 3, "threads": seed},  # threads: bookkeeping, never swept
            "probe": {"name": "standard", "trace": {"enabled": True}, "seed": 0},
            "landscape": {"name": "basic", "seed": 0}}


def _result(seed: int, test_acc: float, status: str = "completed") -> dict:
    return {"status": status, "stop_reason": "max_epochs" if status == "completed" else "diverged",
            "final": {"epoch": 3, "train_loss": 0.1, "train_acc": 0.95, "test_loss": 0.5,
                      "test_acc": test_acc, "generalization_gap": 0.95 - test_acc,
                     "grad_evals": 30},
            "epochs_completed": 3, "wall_time_s": 1.5, "n_params": 100, "seed": seed,
            "overrides": [f"seed={seed}"],
            "probes": {"trace": 4.0 + seed, "lambda_max": 1.0, "hvp_method": "cached",
                       "eig_all_converged": True},
            "landscape": {"line_train_rise_mean": 2.0, "landscape_line_seconds": 0.3}}


def _job(root, name, config=None, result=None, raw=None):
    job = root / name
    job.mkdir(parents=True)
    if config is not None:
        (job / "config.yaml").write_text(yaml.safe_dump(config))
    if result is not None:
        (job / "result.json").write_text(json.dumps(result))
    if raw is not None:
        (job / "result.json").write_text(raw)
    return job


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweeps" / "grid"
    _job(root, "lr=0.1,seed=0", _config(0.1, 0), _result(0, 0.80))
    _job(root, "lr=0.1,seed=1", _config(0.1, 1), _result(1, 0.82))
    _job(root, "lr=0.01,seed=0", _config(0.01, 0), _result(0, 0.70))
    diverged = _result(0, 0.1, status="diverged")
    diverged["probes"] = {"skipped": "diverged"}
    _job(root, "lr=10,seed=0", _config(10.0, 0, width=64), diverged)
    _job(root, "lr=1,seed=0", _config(1.0, 0),
         {"status": "failed", "error": "ValueError: boom", "seed": 0})
    _job(root, "lr=2,seed=0", _config(2.0, 0))  # killed before result.json
    _job(root, "lr=3,seed=0", _config(3.0, 0), raw='{"status": "compl')  # torn file
    (root / "connectivity").mkdir()  # runner.connect output: not a job
    (root / ".hydra").mkdir()
    (root / "multirun.yaml").write_text("x: 1\n")
    return root


def test_rows_statuses_counts_and_reasons(sweep):
    c = collect([sweep])
    jobs = c.jobs.set_index("job")
    assert len(jobs) == 7  # connectivity/, .hydra/ and multirun.yaml are not jobs
    assert c.counts == {"completed": 3, "diverged": 1, "failed": 1, "incomplete": 1,
                        "unreadable": 1}
    assert jobs["included"].to_dict() == {
        "lr=0.01,seed=0": True, "lr=0.1,seed=0": True, "lr=0.1,seed=1": True, "lr=10,seed=0": False,
        "lr=1,seed=0": False, "lr=2,seed=0": False, "lr=3,seed=0": False}
    assert jobs.loc["lr=1,seed=0", "reason"] == "ValueError: boom"
    assert jobs.loc["lr=2,seed=0", "reason"] == "no result.json"
    assert jobs.loc["lr=3,seed=0", "status"] == "unreadable"
    assert "JSONDecodeError" in jobs.loc["lr=3,seed=0", "reason"]
    assert jobs.loc["lr=10,seed=0", "reason"].startswith("diverged")
    assert sorted(c.excluded["job"]) == sorted(["lr=10,seed=0", "lr=1,seed=0", "lr=2,seed=0",
                                                "lr=3,seed=0"])
    assert list(c.excluded.columns) == ["sweep", "job", "status", "reason", "path"]
    assert set(c.jobs["sweep"]) == {"grid"}
    assert len(c.included) == 3 and c.included["included"].all()


def test_columns_flattened_and_prefixed(sweep):
    c = collect(sweep)
    row = c.jobs.set_index("job").loc["lr=0.1,seed=1"]
    assert row["optimizer.lr"] == 0.1 and row["model.width"] == 32
    assert row["optimizer.name"] == "sgd" and row["model.norm"] == "none"  # enums as strings
    assert json.loads(row["optimizer.betas"]) == [0.9, 0.999]  # lists as JSON strings
    # no collision: the Hessian trace and the switch that asked for it
    assert row["probe.trace"] == 5.0 and bool(row["config.probe.trace.enabled"]) is True
    assert row["config.landscape.seed"] == 0 and row["landscape.line_train_rise_mean"] == 2.0
    assert row["final.test_acc"] == 0.82 and row["test_error"] == pytest.approx(0.18)
    assert row["final.generalization_gap"] == pytest.approx(0.13)
    assert row["seed"] == 1 and row["n_params"] == 100 and row["wall_time_s"] == 1.5
    assert row["stop_reason"] == "max_epochs" and row["overrides"] == "seed=1"
    assert c.jobs.set_index("job").loc["lr=10,seed=0", "probe.skipped"] == "diverged"
    assert c.jobs.set_index("job").loc["lr=2,seed=0", "optimizer.lr"] == 2.0  # config still read


def test_swept_ignores_seed_bookkeeping_and_excluded_jobs(sweep):
    # model.width differs only in the diverged job; seed and train.threads differ but are not
    # hyperparameters; the lr of excluded jobs (1, 2, 3, 10) does not count either.
    assert collect(sweep).swept == ["optimizer.lr"]


def test_swept_factors_merge_dependent_keys():
    df = pd.DataFrame({"included": True,
                       "optimizer.name": ["sgd", "adam", "momentum"] * 2,
                       "optimizer.lr": [0.1, 0.003, 0.1] * 2,  # determined by the name
                       "model.width": [32] * 3 + [64] * 3})
    assert swept_factors(df, ["optimizer.lr", "optimizer.name", "model.width"]) == \
        ["optimizer.name", "model.width"]
    same = df.assign(alias=df["optimizer.name"].str.upper())  # same partition: first key kept
    assert swept_factors(same, ["optimizer.name", "alias"]) == ["optimizer.name"]


def test_single_job_dir_and_several_sweeps(sweep, tmp_path):
    one = collect(sweep / "lr=0.1,seed=0")
    assert len(one.jobs) == 1 and one.jobs["sweep"][0] == "grid" and one.counts == {"completed": 1}
    other = tmp_path / "sweeps" / "other"
    _job(other, "lr=0.5,seed=0", _config(0.5, 0), _result(0, 0.5))
    both = collect([sweep, other, sweep / "lr=0.1,seed=0"])  # a job named twice counts once
    assert len(both.jobs) == 8 and sorted(set(both.jobs["sweep"])) == ["grid", "other"]
    with pytest.raises(FileNotFoundError):
        collect([tmp_path / "nowhere"])


def test_save_writes_atomically_readable_files(sweep, tmp_path):
    c = collect([sweep])
    out = tmp_path / "analysis"
    paths = save(c, out)
    assert sorted(p.name for p in out.iterdir()) == ["collection.json", "excluded.csv", "jobs.csv",
                                                     "jobs.parquet"]  # no temp files left
    parquet = pd.read_parquet(paths["jobs.parquet"])
    csv = pd.read_csv(paths["jobs.csv"])
    assert len(parquet) == len(csv) == 7 and list(parquet.columns) == list(c.jobs.columns)
    assert parquet["included"].sum() == 3
    assert parquet.set_index("job").loc["lr=0.1,seed=1", "probe.trace"] == 5.0
    assert len(pd.read_csv(paths["excluded.csv"])) == 4
    summary = json.loads(paths["collection.json"].read_text())
    assert summary["counts"]["unreadable"] == 1 and summary["swept"] == ["optimizer.lr"]
    save(c, out)  # overwriting is fine


def test_status_constants_match_jobs():
    jobs = pytest.importorskip("landscope.jobs")
    assert (collect_module.COMPLETED, collect_module.DIVERGED, collect_module.FAILED) == \
        (jobs.COMPLETED, jobs.DIVERGED, jobs.FAILED)


def test_a_result_with_a_status_and_nothing_else_is_not_completed(tmp_path):
    """issue #17 defect 11: {"status": "completed"} alone was counted as a completed job (the
    runner treats it as unreadable and reruns the job)."""
    root = tmp_path / "sweeps" / "bare"
    _job(root, "seed=0", _config(0.1, 0), {"status": "completed"})
    _job(root, "seed=1", _config(0.1, 1), _result(1, 0.8))
    jobs = collect([root]).jobs.set_index("job")
    assert jobs.loc["seed=0", "status"] == "unreadable" and not jobs.loc["seed=0", "included"]
    assert jobs.loc["seed=0", "reason"] == "result.json has no final metrics"
    assert jobs.loc["seed=1", "included"]
