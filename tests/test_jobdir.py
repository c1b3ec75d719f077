"""landscope.jobdir on job directories the runner wrote: the result, the typed config, the final
checkpoint checked against ``epochs_completed`` (missing, corrupt, of another epoch), the model,
the keyed caches (npz first, JSON last), and finding the jobs of a sweep by status."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

import landscope.jobdir as jd
from landscope.errors import CheckpointError, LandscopeError, one_line
from landscope.jobdir import Cache, FinalCheckpointError, JobDir, Sweep, find_jobs, screen
from landscope.jobs import COMPLETED, run_job

TINY = ["dataset.train_size=128", "dataset.test_size=64", "train.batch_size=64",
        "model.width=8", "model.depth=2", "train.epochs=2", "train.checkpoint_interval_s=0",
        "landscape=none", "probe=none", "landscape.figures=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, one_torch_thread) -> Path:
    """One finished 2-epoch job (a checkpoint per epoch), written by the runner's run_job."""
    from hydra import compose, initialize_config_dir

    from conftest import CONF
    from landscope.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*TINY, f"dataset.data_dir={data_dir}"])
    job = tmp_path_factory.mktemp("trained") / "seed=0"
    assert run_job(cfg, job, ["seed=0"])["status"] == COMPLETED
    return job


def _copy(trained: Path, dest: Path) -> JobDir:
    shutil.copytree(trained, dest)
    return JobDir(dest)


# ----------------------------------------------------------------------------- one job
def test_a_finished_job_reads_its_result_config_checkpoint_and_model(trained):
    job = JobDir(trained)
    result = job.result()
    assert result["status"] == COMPLETED and result["epochs_completed"] == 2
    assert job.name == "seed=0" and str(job) == str(trained) and Path(job) == trained
    cfg = job.config()  # typed: the schema's fields, the job's values
    assert isinstance(cfg, DictConfig) and cfg.model.width == 8 and cfg.train.epochs == 2
    assert job.saved_config()["model"]["width"] == 8
    assert job.config(typed=False).model.width == 8
    assert [p.name for p in job.checkpoints()] == ["epoch_000002.pt", "epoch_000001.pt"]
    path, state = job.final_checkpoint()
    assert path == trained / "checkpoints" / "epoch_000002.pt" and state["epoch"] == 2
    assert job.final_checkpoint(result, fallback=True)[0] == path
    model, data = job.load_model()
    for name, value in model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    assert len(data.train) == 128
    assert job.holds(["checkpoints"]) and job.holds(["nothing", "checkpoints/*.pt"])
    assert not job.holds(["escape/*.json"])


def test_a_corrupt_or_missing_result_json_is_an_error_to_read(trained, tmp_path):
    job = _copy(trained, tmp_path / "job")
    (job.path / "result.json").write_text('{"status": "compl')  # torn
    with pytest.raises(ValueError):
        job.result()
    (job.path / "result.json").write_text("[1, 2]")  # not an object
    [found] = screen([job], (COMPLETED,))
    assert isinstance(found.error, AttributeError) and not found.ok
    (job.path / "result.json").unlink()
    with pytest.raises(FileNotFoundError):
        job.result()
    assert not job.has_result()


def test_the_final_checkpoint_must_be_of_the_completed_epoch(trained, tmp_path):
    job = _copy(trained, tmp_path / "seed=0")
    ckpts = job.path / "checkpoints"
    (ckpts / "epoch_000002.pt").unlink()  # the newest left is epoch 1; the job completed 2
    with pytest.raises(FinalCheckpointError) as info:
        job.final_checkpoint()
    assert str(info.value) == "seed=0: newest checkpoint is epoch 1, the job completed 2"
    assert info.value.problem == ("it is missing (the newest checkpoint, epoch_000001.pt, is "
                                  "of epoch 1; the job completed 2)")
    with pytest.raises(CheckpointError, match=r"\(the newest valid one is epoch 1\); rerun"):
        job.final_checkpoint(fallback=True)
    (ckpts / "epoch_000002.pt").write_bytes(b"LSCKPT1\ntruncated")  # corrupt newest
    with pytest.raises(FinalCheckpointError) as info:
        job.final_checkpoint()
    assert str(info.value).startswith(f"checkpoint {ckpts / 'epoch_000002.pt'} is not a "
                                      "landscope checkpoint")
    assert info.value.problem.startswith("it is corrupt (checkpoint ")
    assert (ckpts / "epoch_000002.pt").exists()  # read-only: left where it is
    with pytest.raises(CheckpointError, match="newest valid one is epoch 1"):
        job.final_checkpoint(fallback=True)  # moves the defective file aside
    assert (ckpts / "epoch_000002.pt.corrupt").exists()
    shutil.rmtree(ckpts)
    with pytest.raises(FinalCheckpointError) as info:
        job.newest_checkpoint()
    assert str(info.value) == "seed=0 has no checkpoint"
    assert info.value.problem == f"it is missing ({ckpts} holds no checkpoint)"


# ----------------------------------------------------------------------------- caches
def test_a_cache_round_trip_and_what_makes_a_miss(tmp_path):
    cache = JobDir(tmp_path).cache("probes", "abc_epoch_000001")
    arrays = {"b": np.arange(3.0), "a": np.eye(2)}
    written = cache.write({"scalars": {"x": 1.5}, "checkpoint": "k1"}, arrays)
    assert written["arrays"] == ["a", "b"]
    assert cache.json_path == tmp_path / "probes" / "abc_epoch_000001.json"
    assert json.loads(cache.json_path.read_text()) == written
    assert cache.read({"checkpoint": "k1"}) == written
    assert cache.read({"checkpoint": "k2"}) is None  # another key
    assert np.array_equal(cache.arrays(["a", "zzz"])["a"], np.eye(2))
    assert sorted(cache.arrays()) == ["a", "b"]
    cache.npz_path.write_bytes(b"")  # an unloadable npz: a miss unless only its presence counts
    assert cache.read() is None and cache.arrays() is None
    assert cache.read(npz="present") == written and cache.read(npz="none") == written
    cache.npz_path.unlink()
    assert cache.read(npz="present") is None and cache.read(npz="none") == written
    cache.json_path.write_text("not json")
    assert cache.read(npz="none") is None
    plain = Cache(tmp_path / "escape", "fp")  # a JSON-only cache writes no npz
    plain.write({"complete": True})
    assert plain.read(npz="none") == {"complete": True} and not plain.npz_path.exists()


def test_the_npz_is_written_before_the_json(tmp_path, monkeypatch):
    order = []
    real_bytes, real_json = jd.atomic_write_bytes, jd.write_json
    monkeypatch.setattr(jd, "atomic_write_bytes", lambda path, data: (
        order.append(Path(path).suffix), real_bytes(path, data)))
    monkeypatch.setattr(jd, "write_json", lambda path, obj: (
        order.append(Path(path).suffix), real_json(path, obj)))
    cache = Cache(tmp_path, "stem")
    cache.write({"scalars": {}}, {"v": np.zeros(2)})
    assert order == [".npz", ".json"]

    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(jd, "write_json", full_disk)  # killed between the two writes
    other = Cache(tmp_path, "other")
    with pytest.raises(OSError):
        other.write({"scalars": {}}, {"v": np.zeros(2)})
    assert other.npz_path.exists() and other.read() is None  # no JSON: not a result


# ----------------------------------------------------------------------------- many jobs
@pytest.fixture
def sweep(trained, tmp_path) -> Path:
    """The trained job and copies of it that diverged, failed, or have a torn result.json;
    plus a hidden job and a directory that is no job."""
    root = tmp_path / "sweep"
    _copy(trained, root / "seed=0")
    for name, status in (("seed=1", "diverged"), ("seed=2", "failed")):
        job = _copy(trained, root / name)
        result = job.result()
        (job.path / "result.json").write_text(json.dumps({**result, "status": status}))
    (_copy(trained, root / "seed=3").path / "result.json").write_text("{")
    _copy(trained, root / ".hidden")
    (root / "notes").mkdir()
    (root / "killed").mkdir()
    (root / "killed" / "config.yaml").write_text("seed: 4\n")
    return root


def test_a_sweep_lists_its_jobs_by_status(sweep):
    names = lambda jobs: [j.name for j in jobs]  # noqa: E731
    assert names(Sweep(sweep).jobs()) == [".hidden", "seed=0", "seed=1", "seed=2", "seed=3"]
    assert names(Sweep(sweep).jobs(status=("completed",))) == [".hidden", "seed=0"]
    assert names(Sweep(sweep).jobs(status=("completed", "diverged"))) == [
        ".hidden", "seed=0", "seed=1"]
    assert names(Sweep(sweep).job_dirs(jd.JOB_MARKERS, hidden=False)) == [
        "killed", "seed=0", "seed=1", "seed=2", "seed=3"]
    found = {s.job.name: s for s in screen(Sweep(sweep).jobs(), ("completed",))}
    assert found["seed=0"].ok and found["seed=0"].result["epochs_completed"] == 2
    assert not found["seed=2"].ok and found["seed=2"].status == "failed"
    assert isinstance(found["seed=3"].error, ValueError) and found["seed=3"].status is None
    assert Sweep(sweep / "missing").jobs() == []
    with pytest.raises(LandscopeError, match=r"notes holds no job directories \(no \*/result"):
        Sweep(sweep / "notes").job_dirs(required=True)


def test_find_jobs_takes_job_and_sweep_directories(sweep):
    job = sweep / "seed=0"
    assert find_jobs([job]) == [JobDir(job)]
    assert len(find_jobs([sweep])) == 5
    assert len(find_jobs([sweep, job], unique=True)) == 5
    assert len(find_jobs([sweep, job])) == 6
    with pytest.raises(LandscopeError, match="holds no job directories"):
        find_jobs([sweep / "notes"])
    with pytest.raises(LandscopeError, match=r"^\S+missing is neither a sweep nor a job"):
        find_jobs([sweep / "missing"])
    with pytest.raises(LandscopeError, match="missing: not here"):
        find_jobs([sweep / "missing"], "{path}: not here")
    assert find_jobs([sweep / "notes"], required=False) == []


# ----------------------------------------------------------------------------- one_line
def test_one_line_is_the_one_formatter():
    disk = OSError(errno.ENOSPC, "No space left on device", "/x/result.json")
    assert one_line(disk, typed=True, plain=True) == (
        "no space left on device writing /x/result.json; free some and run the same command "
        "again")
    assert one_line(ValueError("a\n  b"), typed=True, plain=True) == "ValueError: a b"
    assert one_line(LandscopeError("a\n  b"), typed=True, plain=True) == "a b"
    assert one_line(ValueError("a\n  b\n\nb")) == "a; b"  # condensed, lines deduplicated
    assert one_line(ValueError("a"), typed=True) == "ValueError: a"
    assert one_line(ValueError("")) == "ValueError"
