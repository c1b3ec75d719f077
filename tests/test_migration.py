"""Fingerprint version 2 and the one-off migration of job directories written before it.

``tests/fixtures/release_2026_12`` holds a two-job sweep written by the release of
December 2026 (fingerprint version 1, flat ``optimizer.llp_*`` names): an SGD and an LLP
job (``optimizer.llp_c=2``), each finished with its probe (basic) and landscape (basic)
caches. Recorded by::

    python -m runner -m experiment=smoke model.width=8 model.depth=1 dataset.train_size=128 \\
        dataset.test_size=64 probe=basic probe.data_size=64 landscape=basic \\
        landscape.data_size=64 landscape.line_points=5 landscape.line_directions=1 \\
        landscape.figures=false optimizer=sgd,llp optimizer.llp_c=2 name=release
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from landscope.config.renames import RENAMED
from landscope.fingerprints import (
    FINGERPRINT_VERSION,
    fingerprint,
    landscape_fingerprint,
    probe_fingerprint,
)
from landscope.fingerprints_v1 import (
    fingerprint_v1,
    landscape_fingerprint_v1,
    probe_fingerprint_v1,
)
from landscope.jobdir import JobDir
from landscope.migrate import migrate_job

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "release_2026_12"
V2_DEFAULTS = REPO / "tests" / "expected" / "fingerprint_v2_defaults.json"
JOBS = sorted(p.name for p in FIXTURE.iterdir() if p.is_dir())


def _copy(tmp_path: Path) -> Path:
    sweep = tmp_path / "outputs" / "sweeps" / "release"
    shutil.copytree(FIXTURE, sweep)
    return sweep


def _overrides(job: Path, data_dir: Path) -> list[str]:
    """The job's overrides as written then, in today's spelling and with this data_dir."""
    import yaml

    out = []
    for item in yaml.safe_load((job / "overrides.yaml").read_text()):
        key, value = item.split("=", 1)
        if key == "dataset.data_dir":
            value = str(data_dir)
        out.append(f"{RENAMED.get(key, key)}={value}")
    return out


def _bytes(job: Path, pattern: str) -> dict:
    return {p.relative_to(job).as_posix(): p.read_bytes() for p in sorted(job.glob(pattern))}


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from landscope.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("name", JOBS)
def test_the_frozen_version_1_hashes_reproduce_what_the_release_recorded(name, tmp_path):
    job = JobDir(FIXTURE / name)
    result, cfg = job.result(), job.config()
    assert "fingerprint_version" not in result
    assert fingerprint_v1(cfg) == result["fingerprint"]
    assert probe_fingerprint_v1(cfg) == result["probe_fingerprint"]
    assert landscape_fingerprint_v1(cfg) == result["landscape_fingerprint"]
    # ... and so does today's command line, in today's spelling
    cfg_now = _compose(_overrides(job.path, tmp_path))
    assert fingerprint_v1(cfg_now) == result["fingerprint"]
    assert fingerprint(cfg_now) == fingerprint(cfg) != result["fingerprint"]


@pytest.mark.parametrize("name", JOBS)
def test_a_finished_job_of_the_release_is_migrated_once_not_retrained(name, tmp_path,
                                                                      data_dir):
    from landscope.jobs import train_job

    job = _copy(tmp_path) / name
    before = {**_bytes(job, "checkpoints/*.pt"), **_bytes(job, "metrics.jsonl"),
              **{k: v for k, v in _bytes(job, "*/*.npz").items()}}
    old = json.loads((job / "result.json").read_text())
    overrides = _overrides(job, data_dir)
    cfg = _compose(overrides)

    result = train_job(cfg, job, overrides)
    assert result.get("skipped") is True  # recognized: neither retrained nor re-probed
    assert result["fingerprint"] == fingerprint(cfg)
    assert result["fingerprint_version"] == FINGERPRINT_VERSION
    assert result["fingerprint_v1"] == old["fingerprint"]
    pfp, lfp = probe_fingerprint(cfg), landscape_fingerprint(cfg)
    assert result["probe_fingerprint"] == pfp and list(result["probes_by_fingerprint"]) == [pfp]
    assert result["landscape_fingerprint"] == lfp
    assert result["probes"] == old["probes"] and result["landscape"] == old["landscape"]
    assert sorted(p.name for p in (job / "probes").iterdir()) == [f"{pfp}.json", f"{pfp}.npz"]
    assert sorted(p.name for p in (job / "landscape").iterdir()) == [f"{lfp}.json",
                                                                    f"{lfp}.npz"]
    after = {**_bytes(job, "checkpoints/*.pt"), **_bytes(job, "metrics.jsonl"),
             **{k.replace(old["probe_fingerprint"], pfp)
                 .replace(old["landscape_fingerprint"], lfp): v
                for k, v in _bytes(job, "*/*.npz").items()}}
    assert after == {k.replace(old["probe_fingerprint"], pfp)
                     .replace(old["landscape_fingerprint"], lfp): v for k, v in before.items()}
    # the old checkpoints still count as this job's final checkpoint
    path, ckpt = JobDir(job).final_checkpoint(result, fallback=True)
    assert ckpt["epoch"] == result["epochs_completed"]

    text = (job / "result.json").read_text()
    assert migrate_job(job) is False  # once
    again = train_job(cfg, job, overrides)
    assert again.get("skipped") is True and (job / "result.json").read_text() == text


def test_a_sweep_of_the_release_is_reported_after_its_rerun(tmp_path, data_dir):
    """The rerun of the sweep's command skips both jobs; the report reads them."""
    from landscope.jobs import train_job

    sweep = _copy(tmp_path)
    for name in JOBS:
        overrides = _overrides(sweep / name, data_dir)
        assert train_job(_compose(overrides), sweep / name, overrides).get("skipped") is True
    out = subprocess.run([sys.executable, "-m", "runner.report", str(sweep)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    report = (sweep / "report" / "report.md").read_text()
    assert "2 jobs from" in report and "2 completed jobs are analysed" in report


def test_an_unfinished_job_of_the_release_resumes_from_its_checkpoint(tmp_path, data_dir):
    from landscope.jobs import train_job

    job = _copy(tmp_path) / JOBS[0]
    old = json.loads((job / "result.json").read_text())
    (job / "result.json").unlink()  # as if it was interrupted after its last checkpoint
    metrics = (job / "metrics.jsonl").read_bytes()
    overrides = _overrides(job, data_dir)
    result = train_job(_compose(overrides), job, overrides)
    assert result["status"] == "completed" and result["resumed_from_epoch"] == 2
    assert result["final"] == old["final"]
    assert result["fingerprint_v1"] == old["fingerprint"]
    assert (job / "metrics.jsonl").read_bytes() == metrics
    JobDir(job).final_checkpoint(result, fallback=True)


def test_a_directory_whose_record_and_config_disagree_is_left_alone(tmp_path):
    job = _copy(tmp_path) / JOBS[0]
    result = json.loads((job / "result.json").read_text())
    result["fingerprint"] = "0" * 16
    (job / "result.json").write_text(json.dumps(result))
    text = (job / "result.json").read_text()
    assert migrate_job(job) is False
    assert (job / "result.json").read_text() == text


def test_the_version_2_defaults_are_those_recorded():
    """Version 2 hashes the options that differ from their defaults: a default changed
    without a new version (and a migration) would give old jobs the new default's hash."""
    from omegaconf import OmegaConf

    from landscope.config import Config
    from landscope.config.renames import to_legacy

    recorded = json.loads(V2_DEFAULTS.read_text())
    # every option's default, the ones the default config does not read included
    now = to_legacy(OmegaConf.to_container(OmegaConf.structured(Config()), enum_to_str=True))

    def walk(old, new, where):
        for key, value in old.items():
            assert key in new, f"{where}{key} removed: a new fingerprint version is needed"
            if isinstance(value, dict):
                walk(value, new[key], f"{where}{key}.")
            else:
                assert new[key] == value, (f"default of {where}{key} changed: a new "
                                           "fingerprint version is needed")

    walk(recorded, now, "")
