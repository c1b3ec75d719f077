"""A sweep over probe or landscape settings trains each model once (landscope.jobreuse).

``python -m runner -m probe.data_size=32,48`` puts one trained model in two directories. The
second job starts from the first's final checkpoint: nothing is trained again, and every file
it writes is what training it again would have written (training is deterministic), less the
time and the ``trained_in`` that says where the training was done.
"""

from __future__ import annotations

import json
import re

import pytest

from landscope.checkpoint import list_checkpoints, load_checkpoint
from landscope.io import read_json, read_jsonl

TINY = ["dataset.train_size=128", "dataset.test_size=64", "train.batch_size=32",
        "train.epochs=2", "model.width=8", "model.depth=1", "probe=basic", "probe.top_k=2",
        "probe.sharpness.enabled=false", "landscape=none"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(job) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"}
            for row in read_jsonl(job / "metrics.jsonl")]


def _untimed(scalars: dict) -> dict:
    return {k: v for k, v in scalars.items() if "seconds" not in k}


def _model(job) -> dict:
    return load_checkpoint(list_checkpoints(job / "checkpoints")[0])["model"]


def _same_model(a, b) -> bool:
    ma, mb = _model(a), _model(b)
    return ma.keys() == mb.keys() and all((ma[k] == mb[k]).all() for k in ma)


def test_a_second_setting_takes_the_first_jobs_training(tiny_job):
    first, a = tiny_job(["probe.data_size=32"], "a")
    taken, b = tiny_job(["probe.data_size=48"], "b")
    again, c = tiny_job(["probe.data_size=48", "train.reuse_trained=false"], "c")
    assert "trained_in" not in first and "trained_in" not in again
    assert taken["trained_in"] == "a" and taken["resumed_from_epoch"] == 2
    assert again["resumed_from_epoch"] is None
    # the same model, history and final metrics as the job it was taken from
    assert taken["final"] == first["final"] == again["final"]
    assert read_jsonl(b / "metrics.jsonl") == read_jsonl(a / "metrics.jsonl")
    assert _rows(c) == _rows(a)
    assert _same_model(a, b) and _same_model(b, c)
    # the linked checkpoint is the sibling's file; b's own probes ran with 48 samples
    assert (b / "checkpoints" / "epoch_000002.pt").read_bytes() == \
        (a / "checkpoints" / "epoch_000002.pt").read_bytes()
    assert taken["probe_fingerprint"] != first["probe_fingerprint"]
    assert read_json(b / "probes" / f"{taken['probe_fingerprint']}.json")["probe"]["data_size"] \
        == 48
    # exactly what training it again gives (the timings aside)
    assert _untimed(taken["probes"]) == _untimed(again["probes"])
    assert taken["probe_fingerprint"] == again["probe_fingerprint"]


def test_other_training_records_or_a_defective_sibling_train_again(tiny_job):
    curv = ["probe.every_n_epochs=1"]
    first, a = tiny_job([*curv, "probe.data_size=32"], "a")
    assert "curv_lambda_max" in read_jsonl(a / "metrics.jsonl")[-1]
    # the curvature during training is recorded with other probe settings: trained
    other, _ = tiny_job([*curv, "probe.data_size=48"], "b")
    # none recorded here, a's history holds some: trained, and no curvature in its history
    plain, c = tiny_job(["probe.data_size=48"], "c")
    assert "trained_in" not in other and "trained_in" not in plain
    assert "curv_lambda_max" not in read_jsonl(c / "metrics.jsonl")[-1]
    assert other["final"] == plain["final"] == first["final"]


def test_a_job_killed_after_taking_its_training_still_says_where_it_was_done(
        tiny_job, monkeypatch):
    import landscope.jobtrain as jobtrain

    first, a = tiny_job(["probe.data_size=32"], "a")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as patched:  # killed in the probe stage, after the take
        patched.setattr(jobtrain, "run_stages", killed)
        with pytest.raises(KeyboardInterrupt):
            tiny_job(["probe.data_size=48"], "b")
    b = a.parent / "b"
    assert not (b / "result.json").exists() and list_checkpoints(b / "checkpoints")
    assert read_json(b / "trained_in.json") == {"trained_in": "a", "epoch": 2}
    rerun, _ = tiny_job(["probe.data_size=48"], "b")
    assert rerun["trained_in"] == "a" and rerun["resumed_from_epoch"] == 2
    assert rerun["final"] == first["final"] and _same_model(a, b)


def test_the_record_of_a_take_names_the_training_only_at_its_final_epoch(tmp_path):
    from landscope.io import write_json
    from landscope.jobreuse import TAKEN_FILE, taken_earlier

    assert taken_earlier(tmp_path, 2) is None  # nothing taken
    write_json(tmp_path / TAKEN_FILE, {"trained_in": "a", "epoch": 2})
    assert taken_earlier(tmp_path, 2) == "a"
    # resumed from an earlier checkpoint (the final one never placed): trained here
    assert taken_earlier(tmp_path, 1) is None and taken_earlier(tmp_path, 0) is None
    (tmp_path / TAKEN_FILE).write_text("{ cut sh", encoding="utf-8")
    assert taken_earlier(tmp_path, 2) is None


def test_a_sibling_whose_final_checkpoint_is_damaged_is_not_taken(tiny_job, tmp_path):
    tiny_job(["probe.data_size=32"], "a")
    path = list_checkpoints(tmp_path / "a" / "checkpoints")[0]
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    result, b = tiny_job(["probe.data_size=48"], "b")
    assert "trained_in" not in result and result["status"] == "completed"
    assert path.read_bytes() == bytes(raw)  # the sibling's files untouched


def test_an_unfinished_sibling_is_not_taken(tiny_job, tmp_path):
    tiny_job(["probe.data_size=32"], "a")
    (tmp_path / "a" / "result.json").unlink()
    result, _ = tiny_job(["probe.data_size=48"], "b")
    assert "trained_in" not in result


def test_a_job_whose_probes_failed_after_training_keeps_it_for_a_sibling_and_runner_probe(
        compose, tmp_path, monkeypatch, capsys):
    """The noise step refused for memory after training: the failed result.json keeps the
    training, a sibling with the setting changed takes it, and runner.probe finishes the job,
    neither training again."""
    import landscope.jobs as jobs
    from landscope.jobcheck import finished_training
    from landscope.probes import per_sample
    from runner.cli import update_finished_jobs

    def cfg(samples):
        return compose([*TINY, "probe.noise.enabled=true", f"probe.noise.samples={samples}"])

    with monkeypatch.context() as patched:  # room for a few rows of its 418 parameters
        patched.setattr(per_sample, "available_bytes", lambda device: 20_000)
        failed = jobs.run_job(cfg(32), tmp_path / "a", [])
    assert failed["status"] == "failed" and failed["message"].endswith(jobs.KEPT_TRAINING)
    assert failed["message"].startswith("probe.noise.samples=32 needs about")
    record = read_json(tmp_path / "a" / "result.json")
    assert record["status"] == "failed" and record["error"] == \
        failed["message"][:-len(jobs.KEPT_TRAINING)]
    trained = finished_training(record)
    assert trained["status"] == "completed" and trained["epochs_completed"] == 2
    assert "probes" not in trained and (tmp_path / "a" / "traceback.txt").is_file()

    taken, b = jobs.train_job(cfg(16), tmp_path / "b", []), tmp_path / "b"
    assert taken["trained_in"] == "a" and taken["resumed_from_epoch"] == 2
    assert taken["final"] == trained["final"] and _same_model(tmp_path / "a", b)
    assert taken["probes"]["noise_samples"] == 16

    assert update_finished_jobs([(tmp_path / "a", cfg(16))], "probed", "probe", dict) == 0
    done = read_json(tmp_path / "a" / "result.json")
    assert done["status"] == "completed" and "error" not in done and "trained" not in done
    assert done["final"] == trained["final"] and done["epochs_completed"] == 2
    assert _untimed(done["probes"]) == _untimed(taken["probes"])
    assert not (tmp_path / "a" / "traceback.txt").exists()
    assert read_jsonl(tmp_path / "a" / "metrics.jsonl") == read_jsonl(b / "metrics.jsonl")

    # a job that failed in training has no training to probe: skipped, saying so
    record.pop("trained")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "result.json").write_text(json.dumps(record), encoding="utf-8")
    assert finished_training(record) is None
    capsys.readouterr()
    assert update_finished_jobs([(tmp_path / "c", cfg(16))], "probed", "probe", dict) == 0
    assert capsys.readouterr().out.strip() == \
        f"skipped: {tmp_path / 'c'} (status failed in training: the runner resumes it)"


def test_the_trajectory_is_taken_with_the_training_when_recorded_alike(compose, tmp_path):
    from landscope.jobs import train_job

    def tiny_job(overrides, name):
        tiny = [o for o in TINY if not o.startswith("landscape=")]
        cfg = compose([*tiny, "landscape=basic", "landscape.trajectory.enabled=true",
                       "landscape.line.enabled=false", "landscape.trajectory.points=3",
                       *overrides])
        return train_job(cfg, tmp_path / name, []), tmp_path / name

    first, a = tiny_job(["landscape.data_size=32"], "a")
    assert (a / "trajectory.npz").is_file()
    taken, b = tiny_job(["landscape.data_size=48"], "b")
    assert taken["trained_in"] == "a"
    assert (b / "trajectory.npz").read_bytes() == (a / "trajectory.npz").read_bytes()
    # snapshots every step instead of every epoch: not what a recorded, so trained
    other, c = tiny_job(["landscape.data_size=48", "landscape.trajectory.snapshot_every_steps=1"],
                        "c")
    assert "trained_in" not in other
    assert (c / "trajectory.npz").read_bytes() != (a / "trajectory.npz").read_bytes()


def test_the_tracker_gets_the_history_and_the_sweep_table_says_so(compose, tmp_path,
                                                                   monkeypatch):
    import landscope.jobs as jobs
    from landscope.tracking import Tracker

    logged: list[dict] = []

    class Recording(Tracker):
        def log_epoch(self, row: dict) -> None:
            logged.append(row)

    monkeypatch.setattr(jobs, "make_tracker", lambda cfg: Recording())
    first = jobs.run_job(compose([*TINY, "probe.data_size=32"]), tmp_path / "a", [])
    assert first["message"] == "max_epochs" and len(logged) == 2
    logged.clear()
    second = jobs.run_job(compose([*TINY, "probe.data_size=48"]), tmp_path / "b", [])
    assert second["status"] == "completed"
    assert second["message"] == "max_epochs (the training of a job beside it)"
    assert [r["epoch"] for r in logged] == [1, 2]
    assert logged == read_jsonl(tmp_path / "a" / "metrics.jsonl")


def test_a_launcher_that_runs_jobs_at_once_gets_each_models_first_job_first():
    from hydra_plugins.landscope_sweeper.landscope_sweeper import first_trainings_first

    jobs = [["seed=0", "n=32"], ["seed=0", "n=48"], ["seed=1", "n=32"], ["seed=1", "n=48"]]
    trainings = ["A", "A", "B", "B"]
    assert first_trainings_first([jobs], trainings, None) == [[jobs[0], jobs[2], jobs[1], jobs[3]]]
    assert first_trainings_first([jobs[:3], jobs[3:]], trainings, 3) == \
        [[jobs[0], jobs[2], jobs[1]], [jobs[3]]]
    batches = [jobs[:2], jobs[2:]]  # no two jobs share a training: left as they are
    assert first_trainings_first(batches, ["A", "B", "C", "D"], 2) is batches


def test_the_sweep_order_under_the_parallel_launcher(tmp_path, data_dir):
    from conftest import run_cli

    args = ["-m", "experiment=smoke", "train.epochs=1", "hydra/launcher=parallel", "seed=0,1",
            "probe=basic", "probe.data_size=32,48", "probe.sharpness.enabled=false",
            "landscape=none", "hydra.sweep.dir=par"]
    proc = run_cli(args, tmp_path, data_dir=data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout[proc.stdout.index("job "):].splitlines()[2:6]
    names = [line.split()[0] for line in table]
    order = [re.search(r"probe.data_size=(\d+).*seed=(\d)", name).groups() for name in names]
    # Hydra's order was (32, 0), (48, 0), (32, 1), (48, 1): both settings of seed 0 at once
    assert order == [("32", "0"), ("32", "1"), ("48", "0"), ("48", "1")]
    first = [read_json(tmp_path / "par" / name / "result.json") for name in names[:2]]
    assert not any("trained_in" in r for r in first)  # they ran first: nothing to take


def test_atomic_link_links_or_copies_and_clears_a_killed_writes_leftover(tmp_path, monkeypatch):
    import os

    from landscope import io as lio

    source = tmp_path / "a" / "epoch_000002.pt"
    source.parent.mkdir()
    source.write_bytes(b"checkpoint")
    dead = tmp_path / "b" / ".epoch_000002.pt.nohost_here-1.dead.tmp"  # not this host's: kept
    gone = tmp_path / "b" / f".epoch_000001.pt.{lio._HOST}-999999999.dead.tmp"  # no such pid
    dead.parent.mkdir()
    dead.write_bytes(b"x")
    gone.write_bytes(b"x")
    lio.atomic_link(source, tmp_path / "b" / source.name)
    linked = tmp_path / "b" / source.name
    assert linked.read_bytes() == b"checkpoint" and os.path.samefile(linked, source)
    assert sorted(p.name for p in linked.parent.iterdir()) == sorted([dead.name, source.name])

    def no_links(*_):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    lio.atomic_link(source, tmp_path / "c" / source.name)
    copied = tmp_path / "c" / source.name
    assert copied.read_bytes() == b"checkpoint" and not os.path.samefile(copied, source)
    assert [p.name for p in copied.parent.iterdir()] == [source.name]
