"""The job directory never loses or strands work (issue #17): refusals write nothing, files
keep the umask's mode, unreadable caches are misses, finished jobs are repaired, one process
per job directory, a full disk is one line, honest checkpoint messages, probe presets side
by side."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

import landscope.io as lio
from conftest import metrics_without_time
from landscope.checkpoint import load_latest, save_checkpoint
from landscope.errors import CheckpointError
from landscope.io import atomic_write_bytes, read_json, read_jsonl
from landscope.joblock import job_lock
from landscope.jobs import (
    COMPLETED,
    FAILED,
    INVALID,
    SKIPPED,
    directory_conflict,
    fingerprint,
    probe_fingerprint,
    probe_finished_job,
    run_job,
    train_job,
)

TINY = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=64",
        "model.width=16", "model.depth=2", "train.epochs=2", "landscape=none"]
BASIC = ["probe=basic", "probe.sharpness.enabled=false", "probe.trace.enabled=false",
         "probe.data_size=128"]


def _timeless(scalars: dict) -> dict:
    return {k: v for k, v in scalars.items() if not k.endswith("seconds")}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


def _snapshot(d: Path) -> dict:
    """Every file under ``d`` (name -> bytes, mode): to prove nothing was touched."""
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mode) for p in sorted(d.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """One finished tiny job with basic probes (copied by each test that changes it)."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from landscope.config import register_configs

    register_configs()

    def make(*extra):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=[
                "landscape.figures=false", *TINY, *BASIC, *extra, f"dataset.data_dir={data_dir}"])

    job = tmp_path_factory.mktemp("trained") / "job"
    torch.set_num_threads(1)
    assert run_job(make(), job, [])["status"] == COMPLETED
    return job, make


def _copy(trained, tmp_path) -> Path:
    job = tmp_path / "job"
    shutil.copytree(trained[0], job)
    return job


# ------------------------------------------------------------------ defect 10 (and 1)
def test_refused_config_change_writes_nothing_and_the_original_command_resumes(trained, tmp_path):
    make = trained[1]
    job = _copy(trained, tmp_path)
    (job / "result.json").unlink()  # an unfinished job: only its checkpoints and config
    before = _snapshot(job)
    other = make("seed=5")
    assert "different config" in directory_conflict(other, job)
    summary = run_job(other, job, ["seed=5"])
    assert summary["status"] == INVALID and "delete" not in summary["message"]
    assert "hydra.sweep.dir" in summary["message"]
    assert _snapshot(job) == before  # config.yaml kept, no failed result.json, no traceback
    assert run_job(make(), job, [])["status"] == COMPLETED  # the original still resumes
    assert read_json(job / "result.json")["fingerprint"] == fingerprint(make())


def test_refusing_a_completed_job_leaves_no_traceback(trained, tmp_path):
    job = _copy(trained, tmp_path)
    before = _snapshot(job)
    assert run_job(trained[1]("seed=5"), job, ["seed=5"])["status"] == INVALID
    assert _snapshot(job) == before and not (job / "traceback.txt").exists()
    assert directory_conflict(trained[1](), job) is None
    assert directory_conflict(trained[1](), tmp_path / "absent") is None


# --------------------------------------------------------------------------- defect 3
def test_atomic_writes_keep_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        os.umask(0o027)
        atomic_write_bytes(tmp_path / "a.json", b"[]")  # replacing keeps the rule too
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_every_file_of_a_job_is_readable_by_the_group(trained, tmp_path):
    old = os.umask(0o027)
    try:
        job = tmp_path / "job"
        cfg = trained[1]("landscape.figures=true", "train.epochs=1")
        assert run_job(cfg, job, [])["status"] == COMPLETED
    finally:
        os.umask(old)
    files = [p for p in job.rglob("*") if p.is_file() and p.name != ".lock"]
    assert any(p.suffix == ".png" for p in files) and any(p.suffix == ".pt" for p in files)
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
        {p.name: oct(0o640) for p in files}


# -------------------------------------------------------------------------- defect 11
@pytest.mark.parametrize("content", [b"[]", b"null"])
def test_an_unreadable_probe_cache_is_a_miss(trained, tmp_path, content):
    job = _copy(trained, tmp_path)
    good = read_json(job / "result.json")
    (job / "probes" / f"{good['probe_fingerprint']}.json").write_bytes(content)
    (job / "result.json").unlink()  # the rerun reads the probe cache again
    summary = run_job(trained[1](), job, [])
    assert summary["status"] == COMPLETED, summary
    assert _timeless(read_json(job / "result.json")["probes"]) == _timeless(good["probes"])


def test_an_unreadable_landscape_cache_or_probe_npz_is_a_miss(trained, tmp_path):
    job = _copy(trained, tmp_path)
    cfg = trained[1]("landscape=basic", "landscape.data_size=64", "landscape.line.points=5",
                     "landscape.line.directions=2", "landscape.plane.enabled=false")
    good = train_job(cfg, job, [])  # the landscape on the finished job
    (job / "landscape" / f"{good['landscape_fingerprint']}.json").write_text("null")
    (job / "probes" / f"{good['probe_fingerprint']}.npz").write_bytes(b"garbage")
    (job / "result.json").unlink()
    summary = run_job(cfg, job, [])
    assert summary["status"] == COMPLETED, summary
    again = read_json(job / "result.json")
    assert _timeless(again["landscape"]) == _timeless(good["landscape"])
    assert _timeless(again["probes"]) == _timeless(good["probes"])


def test_a_result_without_fingerprint_reruns_from_the_checkpoints(trained, tmp_path):
    job = _copy(trained, tmp_path)
    good = read_json(job / "result.json")
    (job / "result.json").write_text(json.dumps({"status": "completed"}))
    assert directory_conflict(trained[1](), job) is None
    summary = run_job(trained[1](), job, [])
    assert summary["status"] == COMPLETED, summary
    again = read_json(job / "result.json")
    assert again["final"] == good["final"] and again["fingerprint"] == good["fingerprint"]


def test_a_partial_last_metrics_line_of_a_finished_job_is_repaired(trained, tmp_path):
    job = _copy(trained, tmp_path)
    rows = read_jsonl(job / "metrics.jsonl")
    text = (job / "metrics.jsonl").read_text()
    (job / "metrics.jsonl").write_text(text[:-20])  # a torn last line
    summary = run_job(trained[1](), job, [])
    assert summary["status"] == COMPLETED and "already done" in summary["message"]
    assert read_jsonl(job / "metrics.jsonl") == rows


# -------------------------------------------------------------------------- defect 13
def test_figures_lost_after_the_result_are_redrawn_and_a_stale_traceback_removed(trained,
                                                                                 tmp_path):
    job = tmp_path / "job"
    cfg = trained[1]("landscape.figures=true", "train.epochs=1")
    assert run_job(cfg, job, [])["status"] == COMPLETED
    assert (job / "figures" / "training.png").is_file()
    shutil.rmtree(job / "figures")  # killed after result.json, before the figures
    (job / ".figures.json").unlink()
    (job / "traceback.txt").write_text("an earlier failure")
    result_bytes = (job / "result.json").read_bytes()
    summary = run_job(cfg, job, [])
    assert summary["message"] == "skipped: already done"
    assert (job / "figures" / "training.png").is_file()
    assert not (job / "traceback.txt").exists()
    assert (job / "result.json").read_bytes() == result_bytes  # nothing retrained


# -------------------------------------------------------------------------- defect 14
def test_a_locked_job_is_skipped_and_left_alone(trained, tmp_path):
    job = _copy(trained, tmp_path)
    (job / "result.json").unlink()  # would otherwise be resumed and rewritten
    before = _snapshot(job)
    with job_lock(job):
        summary = run_job(trained[1](), job, [])
        assert summary["status"] == SKIPPED
        assert summary["message"] == f"locked by another process (pid {os.getpid()})"
        with pytest.raises(Exception, match="locked by another process"):
            probe_finished_job(trained[1](), job, {})
    assert {k: v for k, v in _snapshot(job).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}
    assert run_job(trained[1](), job, [])["status"] == COMPLETED  # released


def test_a_checkpoint_pruned_between_listing_and_reading_is_no_failure(tmp_path, monkeypatch):
    import landscope.checkpoint as ck

    for epoch in (1, 2):
        save_checkpoint(tmp_path, epoch, {"epoch": epoch}, keep=3)
    real = ck.load_checkpoint

    def racing(path):
        if path.name == "epoch_000002.pt" and not (tmp_path / "epoch_000003.pt").exists():
            save_checkpoint(tmp_path, 3, {"epoch": 3}, keep=1)  # another process saves, prunes
        return real(path)

    monkeypatch.setattr(ck, "load_checkpoint", racing)
    warnings = []
    assert load_latest(tmp_path, warn=warnings.append)["epoch"] == 3
    assert warnings == [] and not list(tmp_path.glob("*.corrupt"))


# -------------------------------------------------------------------- defect 15 (disk)
def test_a_full_disk_is_one_line_and_a_rerun_with_space_completes(trained, tmp_path,
                                                                   monkeypatch):
    job = tmp_path / "job"
    real, calls = lio._write, [0]

    def filling(fh, data):
        calls[0] += 1
        if calls[0] > 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, data)

    monkeypatch.setattr(lio, "_write", filling)
    summary = run_job(trained[1](), job, [])
    assert summary["status"] == FAILED
    assert summary["message"].startswith("no space left on device")
    assert "\n" not in summary["message"]
    assert not list(job.rglob("*.tmp"))  # nothing half-written
    monkeypatch.setattr(lio, "_write", real)
    assert run_job(trained[1](), job, [])["status"] == COMPLETED
    assert metrics_without_time(job) == metrics_without_time(trained[0])


# --------------------------------------------------------------- defect 5 (checkpoint)
def test_the_checkpoint_fallback_message_is_true(tmp_path):
    save_checkpoint(tmp_path, 1, {"epoch": 1})
    path = tmp_path / "epoch_000001.pt"
    path.write_bytes(path.read_bytes()[:50])
    warnings = []
    assert load_latest(tmp_path, warn=warnings.append) is None
    assert len(warnings) == 1 and "falling back" not in warnings[0]
    assert "no valid checkpoint remains" in warnings[0]


def test_a_finished_job_without_a_valid_checkpoint_says_so_and_stays_completed(trained, tmp_path):
    job = _copy(trained, tmp_path)
    for p in (job / "checkpoints").glob("*.pt"):
        p.write_bytes(p.read_bytes()[:100])
    previous = read_json(job / "result.json")
    new_probes = trained[1]("probe.top_k=2")
    with pytest.raises(CheckpointError) as err:
        probe_finished_job(new_probes, job, previous)
    msg = str(err.value)
    assert "final checkpoint" in msg and "no valid checkpoint remains" in msg
    assert "resume=false" in msg and "\n" not in msg
    summary = run_job(new_probes, job, [])  # the sweep asks for new probes: it fails, in a line
    assert summary["status"] == FAILED and "final checkpoint" in summary["message"]
    assert read_json(job / "result.json") == previous  # the training result stands


# -------------------------------------------------------------------------- defect 6
def test_probe_presets_live_side_by_side(trained, tmp_path):
    job = _copy(trained, tmp_path)
    first = read_json(job / "result.json")
    richer = trained[1]("probe.trace.enabled=true")  # more scalars than the trained preset
    pfp1, pfp2 = first["probe_fingerprint"], probe_fingerprint(richer)
    r2 = probe_finished_job(richer, job, first)
    assert r2["probe_fingerprint"] == pfp2 and set(r2["probes_by_fingerprint"]) == {pfp1, pfp2}
    assert r2["probes_by_fingerprint"][pfp1] == first["probes"]
    assert len(r2["probes"]) > len(first["probes"])
    # the poorer preset again: cached, and the top-level probes stay the richest
    r3 = probe_finished_job(trained[1](), job, r2)
    assert r3["probe_fingerprint"] == pfp2 and r3["probes"] == r2["probes"]
    assert r3["probe_preset"] == "basic" and r3["probes_by_fingerprint"][pfp1] == first["probes"]
    assert read_json(job / "result.json") == r3
    # a sweep asking for either preset skips the job
    assert run_job(trained[1](), job, [])["message"] == "skipped: already done"


def test_probes_written_before_the_multiplicity_check_are_probed_again(trained, tmp_path):
    """Scalars of a top-k (k >= 2) without ``top_checked`` come from a version whose Lanczos
    list could miss copies of a repeated eigenvalue: the job is probed again (result.json and
    the cache alike), without retraining; k = 1 presets, which have nothing to check, stand."""
    from landscope.jobresults import JOB_STAGES, ProbeStage
    from landscope.stages import missing

    job = _copy(trained, tmp_path)
    first = read_json(job / "result.json")
    assert ProbeStage().recorded(first) == {first["probe_fingerprint"]}  # basic: k = 1
    cfg = trained[1]("probe.top_k=3")
    pfp = probe_fingerprint(cfg)
    now = probe_finished_job(cfg, job, first)
    assert now["probes_by_fingerprint"][pfp]["top_checked"] is True
    assert missing(cfg, now, JOB_STAGES) == []
    names = ("top_checked", "top_missed_copies")
    old = json.loads(json.dumps(now))  # as the older version wrote them
    for scalars in (old["probes_by_fingerprint"][pfp], old["probes"]):
        for n in names:
            scalars.pop(n, None)
    cache = job / "probes" / f"{pfp}.json"
    record = read_json(cache)
    for n in names:
        record["scalars"].pop(n)
    cache.write_text(json.dumps(record))
    (job / "result.json").write_text(json.dumps(old))
    checkpoints = sorted(p.name for p in (job / "checkpoints").iterdir())
    assert [type(s) for s in missing(cfg, old, JOB_STAGES)] == [ProbeStage]
    again = probe_finished_job(cfg, job, old)
    assert again["probes_by_fingerprint"][pfp]["top_checked"] is True
    assert read_json(cache)["scalars"]["top_checked"] is True
    assert _timeless(again["probes_by_fingerprint"][first["probe_fingerprint"]]) == \
        _timeless(first["probes"])
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == checkpoints


def test_a_killed_writes_temporary_file_is_removed_by_the_next_write(tmp_path):
    """issue #17 (fault campaign): a write killed between its temporary file and the swap left
    ``.<name>.*.tmp`` behind for good. Temporary names carry host and pid; the next atomic
    write into the directory removes those whose process is gone, never a live one's or
    another host's."""
    import subprocess
    import sys

    from landscope import io as lio

    code = ("import os, sys, tempfile; sys.path.insert(0, sys.argv[2]); from landscope import io; "
            "tempfile.mkstemp(dir=sys.argv[1], prefix='.epoch_000001.pt.' + io._OWNER + '.', "
            "suffix='.tmp'); os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path), str(Path(lio.__file__).parents[1])])
    dead = [p.name for p in tmp_path.iterdir()]
    assert len(dead) == 1 and dead[0].endswith(".tmp")  # the killed write's leftover
    live = tmp_path / f".a.json.{lio._OWNER}.abc123.tmp"
    other_host = tmp_path / ".b.json.otherhost-1.abc123.tmp"
    live.write_text("x")
    other_host.write_text("x")
    lio.atomic_write_text(tmp_path / "result.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other_host.name, "result.json"])


def test_append_jsonl_writes_what_write_jsonl_writes(tmp_path):
    rows = [{"epoch": 1, "loss": float("nan"), "b": (1, 2)}, {"epoch": 2, "loss": 0.5}]
    lio.write_jsonl(tmp_path / "w.jsonl", rows)
    lio.append_jsonl(tmp_path / "a.jsonl", rows[:1])
    lio.append_jsonl(tmp_path / "a.jsonl", rows[1:])
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "w.jsonl").read_bytes()


def test_metrics_rows_appended_per_epoch_are_the_checkpoints_history(trained, tmp_path):
    job = tmp_path / "job"
    assert run_job(trained[1]("train.epochs=3"), job, [])["status"] == COMPLETED
    history = load_latest(job / "checkpoints")["history"]
    assert len(history) == 3
    assert read_jsonl(job / "metrics.jsonl") == json.loads(json.dumps(lio.jsonable(history)))
