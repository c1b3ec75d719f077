"""W&B tracking (logger=wandb) in offline mode, checked by reading the offline run files back
with tests/wandb_reader.py: history, config, summary, figures, exit codes, resume, the report
artifact, and that tracking failures never cost a job."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import run_cli
from landscope.io import read_json
from wandb_reader import read_finished_run as read_run

SMOKE = ["experiment=smoke"]
OFFLINE = ["logger=wandb", "logger.mode=offline"]


@pytest.fixture(scope="module")
def warm_data(data_dir):
    from landscope.config import DatasetConfig
    from landscope.data import load_data

    load_data(DatasetConfig(data_dir=str(data_dir)))
    return data_dir


@pytest.fixture(autouse=True)
def no_wandb_account(monkeypatch, tmp_path):
    """No API key, no netrc, no inherited W&B mode: as on a fresh machine."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


def offline_runs(job: Path) -> list[Path]:
    return sorted((job / "wandb").glob("offline-run-*"))


def test_job_run_holds_history_config_summary_and_figures(tmp_path, warm_data):
    args = ["-m", *SMOKE, *OFFLINE, "seed=3", "optimizer.lr=0.05", "probe=basic",
            "landscape=basic", "probe.every_n_epochs=1", "logger.tags=[study]",
            f"dataset.data_dir={warm_data}"]
    proc = run_cli(args, tmp_path)  # figures drawn (run_cli would switch them off)
    assert proc.returncode == 0, proc.stderr
    job = tmp_path / "outputs" / "sweeps" / "smoke" / \
        "landscape=basic,optimizer.lr=0.05,probe.every_n_epochs=1,probe=basic,seed=3"
    assert job.is_dir(), sorted(p.name for p in job.parent.iterdir())  # logger keys not in the name
    (run_dir,) = offline_runs(job)
    run = read_run(run_dir)
    assert run.run["group"] == "smoke" and run.run["job_type"] == "train"
    assert run.run["name"] == job.name and run.run["project"] == "landscope"
    assert {"study", "dataset:mnist1d", "model:mlp", "optimizer:sgd"} <= set(run.run["tags"])
    assert run.run["id"] == (job / "wandb_run_id").read_text().strip()
    # config: the resolved Hydra config and the overrides
    assert run.config["optimizer"]["lr"] == 0.05 and run.config["seed"] == 3
    assert run.config["logger"]["name"] == "wandb"
    assert "optimizer.lr=0.05" in run.config["overrides"]
    # history: one row per epoch with the metrics.jsonl values
    epochs = [r for r in run.history if "train_loss" in r]
    metrics = [row for row in map(eval_json, (job / "metrics.jsonl").read_text().splitlines())]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for logged, row in zip(epochs, metrics):
        assert logged["test_acc"] == pytest.approx(row["test_acc"])
        assert logged["train_loss"] == pytest.approx(row["train_loss"])
        # curvature through training (probe.every_n_epochs)
        assert logged["curv_lambda_max"] == pytest.approx(row["curv_lambda_max"])
    # summary: final metrics and probe/landscape scalars; figures as images
    result = read_json(job / "result.json")
    assert run.summary["status"] == "completed"
    assert run.summary["final/test_acc"] == pytest.approx(result["final"]["test_acc"])
    assert run.summary["probe/lambda_max"] == pytest.approx(result["probes"]["lambda_max"])
    assert any(k.startswith("landscape/") for k in run.summary)
    images = [k for r in run.history for k in r if k.startswith("figures/")]
    assert images and any(f.startswith("media/images/figures/") for f in run.files)
    assert run.exit_code == 0

    # the report of a tracked sweep becomes an artifact of the sweep's group
    from runner.report import main as report_main

    report_main([str(job.parent)])
    (report_run,) = sorted((job.parent / "report" / "wandb").glob("offline-run-*"))
    logged = read_run(report_run)
    assert logged.run["job_type"] == "report" and logged.run["group"] == "smoke"
    assert logged.artifacts == ["report-smoke"]


def eval_json(line: str) -> dict:
    import json

    return json.loads(line)


def test_a_job_that_took_its_training_logs_that_jobs_history(tmp_path, warm_data):
    """landscope.jobreuse: the second probe setting trains nothing, yet its run shows the
    training curves and names the job they come from."""
    args = ["-m", *SMOKE, *OFFLINE, "probe=basic", "probe.data_size=32,48", "seed=0",
            "landscape=none", f"dataset.data_dir={warm_data}", "landscape.figures=false"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted((tmp_path / "outputs" / "sweeps" / "smoke").glob("*seed=0*"))
    results = {job.name: read_json(job / "result.json") for job in jobs}
    (taken,) = [job for job in jobs if "trained_in" in results[job.name]]
    source = results[taken.name]["trained_in"]
    assert source in results and "trained_in" not in results[source]
    run = read_run(offline_runs(taken)[0])
    assert run.summary["trained_in"] == source
    epochs = [r for r in run.history if "train_loss" in r]
    metrics = [eval_json(line) for line in (taken / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs] == [row["epoch"] for row in metrics] == [1, 2]
    assert [r["test_acc"] for r in epochs] == pytest.approx([row["test_acc"] for row in metrics])


def test_diverged_job_run_is_marked_failed(tmp_path, warm_data):
    proc = run_cli([*SMOKE, *OFFLINE, "optimizer.lr=1e6", "hydra.run.dir=job"], tmp_path,
                   data_dir=warm_data)
    assert proc.returncode == 0, proc.stderr
    assert read_json(tmp_path / "job" / "result.json")["status"] == "diverged"
    (run_dir,) = offline_runs(tmp_path / "job")
    assert read_run(run_dir).exit_code == 1


def test_failing_job_run_is_finished_as_failed(tmp_path, compose, monkeypatch):
    import landscope.jobs as jobs
    import landscope.jobtrain as jobtrain

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash in training")

    monkeypatch.setattr(jobtrain, "fit", boom)
    cfg = compose([*SMOKE, *OFFLINE])
    summary = jobs.run_job(cfg, tmp_path / "job", [*SMOKE, *OFFLINE])
    assert summary["status"] == "failed" and "simulated crash" in summary["message"]
    (run_dir,) = offline_runs(tmp_path / "job")
    run = read_run(run_dir)
    assert (run.exit_code == 1
            and run.run["name"] == "experiment=smoke,logger=wandb,logger.mode=offline")


def test_resumed_job_continues_its_own_run(tmp_path, warm_data):
    args = [*SMOKE, *OFFLINE, "train.checkpoint_interval_s=0", "hydra.run.dir=job"]
    assert run_cli(args, tmp_path, data_dir=warm_data).returncode == 0
    job = tmp_path / "job"
    run_id = (job / "wandb_run_id").read_text().strip()
    (job / "result.json").unlink()  # as if killed before the end: the job resumes
    proc = run_cli(args, tmp_path, data_dir=warm_data)
    assert proc.returncode == 0, proc.stderr
    assert read_json(job / "result.json")["resumed_from_epoch"] == 2
    runs = [read_run(d) for d in offline_runs(job)]
    assert len(runs) >= 2 and {r.run["id"] for r in runs} == {run_id}


def test_mode_auto_is_offline_without_an_api_key(monkeypatch, tmp_path):
    from landscope.tracking import api_key_configured, resolve_mode

    assert not api_key_configured() and resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online" and resolve_mode("offline") == "offline"
    monkeypatch.delenv("WANDB_API_KEY")
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"


def test_tracking_failure_costs_nothing(tmp_path, compose, monkeypatch, caplog):
    import wandb

    import landscope.jobs as jobs

    seen = []

    def refuse(*args, **kwargs):
        seen.append(kwargs["settings"])
        raise ConnectionError("no route to host")

    monkeypatch.setattr(wandb, "init", refuse)
    cfg = compose([*SMOKE, *OFFLINE, "logger.init_timeout=7"])
    summary = jobs.run_job(cfg, tmp_path / "job", [*SMOKE, *OFFLINE])
    assert summary["status"] == "completed"
    assert seen and seen[0].init_timeout == 7.0  # an unreachable server is waited on this long
    assert any("W&B tracking off" in r.getMessage() and "no route to host" in r.getMessage()
               for r in caplog.records)


def test_report_is_logged_as_an_artifact(tmp_path):
    from omegaconf import OmegaConf

    from landscope.config import LoggerConfig
    from landscope.tracking import log_report

    out = tmp_path / "report"
    (out / "figures").mkdir(parents=True)
    (out / "report.html").write_text("<html></html>")
    (out / "report.md").write_text("# report")
    (out / "jobs.csv").write_text("a,b\n1,2\n")
    (out / "figures" / "x.png").write_bytes(b"\x89PNG")
    cfg = OmegaConf.structured(LoggerConfig(name="wandb", mode="offline"))
    run_dir = log_report(out, "default", cfg, ["outputs/sweeps/default"])
    assert run_dir is not None
    (offline,) = sorted((out / "wandb").glob("offline-run-*"))
    run = read_run(offline)
    assert run.run["job_type"] == "report" and run.run["group"] == "default"
    assert run.artifacts == ["report-default"] and run.exit_code == 0
    assert os.path.isdir(offline)
