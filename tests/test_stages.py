"""Post-training stages (landscope.stages): one protocol, one runner for the cache, the skip of a
diverged job and the merge into result.json; a toy stage goes through the same runner."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest

from landscope.io import read_json
from landscope.jobdir import JobDir
from landscope.jobresults import JOB_STAGES, LandscapeStage, ProbeStage
from landscope.stages import (
    CachedStage,
    Report,
    Stage,
    StageContext,
    cached_run,
    missing,
    run_stages,
    stage_fields,
)


class Toy:
    """A stage written against the protocol alone (no base class)."""

    group = "toy"

    def __init__(self, on: bool = True):
        self.on, self.runs = on, 0

    def fingerprint(self, cfg) -> Optional[str]:
        return f"toy{_k(cfg)}" if self.on else None

    def run(self, ctx: StageContext) -> Report:
        self.runs += 1
        return Report({"answer": 42.0 + _k(ctx.cfg)}, {"curve": np.arange(3.0)}, ["a note"])


def _k(cfg) -> int:
    return cfg["k"] if isinstance(cfg, dict) else 1  # a job's config: 1


class AfterResult:
    group, after_result = "seen", True

    def __init__(self):
        self.saw = None

    def fingerprint(self, cfg):
        return "x"

    def run(self, ctx):
        self.saw = read_json(ctx.job.path / "result.json")
        return Report()


def _ctx(tmp_path, cfg=None, **result):
    return StageContext(cfg or {"k": 1}, JobDir(tmp_path), result={"status": "completed",
                                                                   **result})


def test_a_toy_stage_is_cached_and_merged(tmp_path):
    toy = Toy()
    assert isinstance(toy, Stage)
    result = run_stages(_ctx(tmp_path, final={"test_acc": 0.5}), [toy])
    assert toy.runs == 1
    assert result == {"status": "completed", "final": {"test_acc": 0.5},
                      "toy": {"answer": 43.0}, "toy_fingerprint": "toy1"}
    assert read_json(tmp_path / "result.json") == result
    record = read_json(tmp_path / "toy" / "toy1.json")
    assert record == {"scalars": {"answer": 43.0}, "notes": ["a note"], "arrays": ["curve"]}
    assert np.array_equal(JobDir(tmp_path).cache("toy", "toy1").arrays()["curve"], np.arange(3.0))

    again = run_stages(_ctx(tmp_path), [toy])  # a hit: not run again
    assert toy.runs == 1 and again["toy"] == {"answer": 43.0}
    run_stages(_ctx(tmp_path, {"k": 2}), [toy])  # another config: another cache
    assert toy.runs == 2 and (tmp_path / "toy" / "toy2.json").is_file()


def test_an_unreadable_cache_is_a_miss(tmp_path):
    toy = Toy()
    run_stages(_ctx(tmp_path), [toy])
    (tmp_path / "toy" / "toy1.npz").write_bytes(b"torn")
    run_stages(_ctx(tmp_path), [toy])
    assert toy.runs == 2
    (tmp_path / "toy" / "toy1.json").write_text("{")
    assert cached_run(_ctx(tmp_path), toy, "toy1") == {"answer": 43.0} and toy.runs == 3


def test_cached_run_keys_the_record(tmp_path):
    toy = Toy()
    cached_run(_ctx(tmp_path), toy, "toy1_epoch_3", {"checkpoint_sha256": "aa"})
    assert read_json(tmp_path / "toy" / "toy1_epoch_3.json")["checkpoint_sha256"] == "aa"
    cached_run(_ctx(tmp_path), toy, "toy1_epoch_3", {"checkpoint_sha256": "aa"})
    assert toy.runs == 1
    cached_run(_ctx(tmp_path), toy, "toy1_epoch_3", {"checkpoint_sha256": "bb"})  # other bytes
    assert toy.runs == 2


def test_a_stage_that_is_off_adds_nothing_and_after_result_stages_see_the_file(tmp_path):
    toy, after = Toy(on=False), AfterResult()
    result = run_stages(_ctx(tmp_path), [after, toy])
    assert result == {"status": "completed"} and toy.runs == 0
    assert after.saw == {"status": "completed"}  # run once result.json was written
    assert not (tmp_path / "toy").exists()


def test_a_diverged_job_is_skipped_with_todays_fields(tmp_path, compose):
    cfg = compose(["probe=basic", "landscape=basic"])
    pfp, lfp = ProbeStage().fingerprint(cfg), LandscapeStage().fingerprint(cfg)
    toy = Toy()
    ctx = StageContext(cfg, JobDir(tmp_path), result={"status": "diverged"})
    result = run_stages(ctx, [*JOB_STAGES, toy])
    assert result == {"status": "diverged",
                      "probes": {"skipped": "diverged"}, "probe_fingerprint": pfp,
                      "landscape": {"skipped": "diverged"}, "landscape_fingerprint": lfp,
                      "toy": {"skipped": "diverged"}, "toy_fingerprint": "toy1"}
    assert toy.runs == 0 and read_json(tmp_path / "result.json") == result
    assert not (tmp_path / "probes").exists() and not (tmp_path / "landscape").exists()


def test_probes_merge_keeps_other_presets(tmp_path, compose):
    """A cached probe result (no probes run) merged beside the presets result.json held."""
    cfg = compose(["probe=basic"])
    pfp = ProbeStage().fingerprint(cfg)
    job = JobDir(tmp_path)
    job.cache("probes", pfp).write({"scalars": {"a": 1.0}, "probe": {"name": "basic"}},
                                   {"x": np.zeros(1)})
    job.cache("probes", "full0").write({"scalars": {"a": 2.0, "b": 3.0},
                                        "probe": {"name": "full"}}, {"x": np.zeros(1)})
    previous = {"status": "completed", "probe_fingerprint": "full0",
                "probes": {"a": 2.0, "b": 3.0},
                "probes_by_fingerprint": {"full0": {"a": 2.0, "b": 3.0}, "old": {"c": 1.0}}}
    ctx = StageContext(cfg, job, result=dict(previous), previous=previous)
    result = run_stages(ctx, [ProbeStage()])
    assert result["probes_by_fingerprint"] == {"full0": {"a": 2.0, "b": 3.0}, "old": {"c": 1.0},
                                               pfp: {"a": 1.0}}
    # the richest preset stays on top, named by its own cache record
    assert (result["probe_fingerprint"], result["probe_preset"]) == ("full0", "full")
    assert result["probes"] == {"a": 2.0, "b": 3.0}
    assert read_json(tmp_path / "result.json") == result


def test_cached_stage_defaults(tmp_path):
    class Doubled(CachedStage):
        group, config_field = "doubled", "doubled"

        def fingerprint(self, cfg):
            return "d"

        def run(self, ctx):
            return Report({"v": 2.0}, {}, ["n"])

    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"doubled": {"name": "x"}})
    fields = stage_fields(StageContext(cfg, JobDir(tmp_path), result={}), Doubled())
    assert fields == {"doubled": {"v": 2.0}, "doubled_fingerprint": "d"}
    assert read_json(tmp_path / "doubled" / "d.json") == {
        "scalars": {"v": 2.0}, "notes": ["n"], "doubled": {"name": "x"}, "arrays": []}


@pytest.mark.parametrize("stage", JOB_STAGES)
def test_job_stages_follow_the_protocol(stage):
    assert isinstance(stage, Stage) and stage.group in ("probes", "landscape", "figures")


def test_missing_names_the_stages_a_finished_result_lacks(compose):
    """What makes a finished job run its stages again without retraining: a stage that is on
    and whose fingerprint the result does not hold (probes: any preset kept side by side)."""
    cfg = compose(["probe=basic", "landscape=none"])
    probes, toy = ProbeStage(), Toy()
    pfp = probes.fingerprint(cfg)
    assert missing(cfg, {"status": "completed"}, [probes, toy, *JOB_STAGES[1:]]) == [probes, toy]
    done = {"status": "completed", "probe_fingerprint": "other",
            "probes_by_fingerprint": {pfp: {}}, "toy_fingerprint": "toy1"}
    assert missing(cfg, done, [probes, toy, *JOB_STAGES]) == []
    assert missing(compose(["probe=none", "landscape=none"]), {}, JOB_STAGES) == []
