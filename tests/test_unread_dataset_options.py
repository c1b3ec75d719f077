"""The synthetic problems' options that only one problem reads (the quadratic's spectrum,
tolerance and generated-spectrum settings; the two basins' curvatures, barrier and tilt):
marked on the schema, so the training fingerprint leaves them out where they are not read and
the analysis counts a job that set one as the job without it; the hashes of the jobs that
read them are those of version 2 as released."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from landscope.config import Config, DatasetConfig
from landscope.config.check import unread_keys
from landscope.data import load_data
from landscope.fingerprints import MARKED_LATER, earlier_fingerprint, fingerprint

CHANGED = {"spectrum": [3.0, 1.0, 0.5], "dim": 8, "condition": 10.0, "outliers": [4.0],
           "tolerance": 0.2, "sharp_curvature": 20.0, "flat_curvature": 2.0, "barrier": 0.3,
           "tilt": 0.5}
DATASET_MARKS = [k for k in MARKED_LATER if k.startswith("dataset.")]


def _generated(dataset: dict) -> str:
    """The problem's train and test data and its closed-form description."""
    data = load_data(DatasetConfig(**dataset))
    rows = [(s.x.double().sum().item(), s.y.double().sum().item(), tuple(s.x.shape))
            for s in (data.train, data.test)]
    return json.dumps([rows, repr(data.meta.problem)])


@pytest.mark.parametrize("name, spectrum", [("quadratic", None), ("quadratic", [2.0, 1.0]),
                                            ("two_basin", None)])
def test_the_dataset_marks_say_exactly_what_the_problem_reads(name, spectrum):
    assert set(DATASET_MARKS) == {f"dataset.{k}" for k in CHANGED}
    tree = OmegaConf.to_container(OmegaConf.structured(Config()), enum_to_str=True)
    tree["dataset"].update(name=name, spectrum=spectrum, train_size=32, test_size=24)
    tree["model"]["name"] = name
    unread = set(unread_keys(Config, tree))
    dataset = {k: tree["dataset"][k] for k in ("name", "spectrum", "train_size", "test_size")}
    before = _generated(dataset)
    for key in DATASET_MARKS:
        leaf = key.split(".")[1]
        same = _generated({**dataset, leaf: CHANGED[leaf]}) == before
        assert same == (key in unread), (name, spectrum, key)


# version-2 hashes recorded before the synthetic problems' options were marked
KEPT = {
    "dataset=quadratic model=quadratic": "071f594c46ebffa6",
    "dataset=quadratic model=quadratic dataset.dim=8 dataset.condition=10 dataset.outliers=[4.0]":
        "8f4177df5ddd08d6",
    "dataset=quadratic model=quadratic dataset.tolerance=0.2": "e6f4d703e76cff8a",
    "dataset=quadratic model=quadratic dataset.spectrum=[3.0,1.0]": "2217ce29571e2277",
    "dataset=two_basin model=two_basin": "eb479c557609aaa6",
    "dataset=two_basin model=two_basin dataset.tilt=0.5 dataset.barrier=0.3": "caded30ad862c5c3",
    "dataset=two_basin model=two_basin dataset.sharp_curvature=20 dataset.flat_curvature=2":
        "fe6904425a534e97",
    "dataset=two_basin model=two_basin dataset.noise=0.1 dataset.test_shift=0.2":
        "c993f7c99f9f55e1",
    "dataset.tilt=0.5": "82ce9c0bde4b4834",  # mnist1d never read it
}
EARLIER = {  # overrides: (their version-2 hash, the job they now hash as)
    "dataset=quadratic model=quadratic dataset.spectrum=[3.0,1.0] dataset.dim=8":
        ("d092b7d153e7cf37", "dataset=quadratic model=quadratic dataset.spectrum=[3.0,1.0]"),
    "dataset=quadratic model=quadratic dataset.tilt=0.5":
        ("ef1281bcdb2a4cbe", "dataset=quadratic model=quadratic"),
    "dataset=quadratic model=quadratic dataset.barrier=0.3 dataset.sharp_curvature=20":
        ("8fda17efb7605ce5", "dataset=quadratic model=quadratic"),
    "dataset=two_basin model=two_basin dataset.dim=8":
        ("82da593ef3f290f4", "dataset=two_basin model=two_basin"),
    "dataset=two_basin model=two_basin dataset.tolerance=0.2 dataset.spectrum=[3.0]":
        ("801e8c4cb0f04984", "dataset=two_basin model=two_basin"),
}


def test_jobs_that_read_the_problem_options_keep_their_hashes(compose):
    for overrides, recorded in KEPT.items():
        cfg = compose(overrides.split())
        assert fingerprint(cfg) == recorded and earlier_fingerprint(cfg) is None, overrides


def test_a_problem_option_the_problem_does_not_read_changes_no_hash(compose):
    for overrides, (recorded, plain) in EARLIER.items():
        cfg = compose(overrides.split())
        assert earlier_fingerprint(cfg) == recorded, overrides
        assert fingerprint(cfg) == fingerprint(compose(plain.split())), overrides


def test_a_job_written_with_the_earlier_hash_resumes(compose_no_stages, tmp_path):
    """A two-basin job that set the quadratic's tolerance, trained before the marks (its
    result.json and checkpoints carry the earlier hash), is skipped, not refused or retrained."""
    from landscope.io import read_json, write_json
    from landscope.jobs import train_job

    tiny = ["dataset=two_basin", "model=two_basin", "train.epochs=2", "dataset.tolerance=0.2"]
    cfg = compose_no_stages(tiny)
    first = train_job(cfg, tmp_path / "job", tiny)
    earlier = earlier_fingerprint(cfg)
    assert first["fingerprint"] == fingerprint(cfg) != earlier
    result = read_json(tmp_path / "job" / "result.json")
    write_json(tmp_path / "job" / "result.json", {**result, "fingerprint": earlier})
    again = train_job(cfg, tmp_path / "job", tiny)
    assert again.get("skipped") and again["final"] == first["final"]


def test_the_analysis_counts_a_job_that_set_an_unread_option_once(tmp_path):
    """Two directories of one quadratic job, one of them with the two basins' tilt set: the
    same job, counted once (they were two units before the marks)."""
    import yaml

    from landscope.analysis import collect

    for name, extra in (("a", {}), ("b", {"tilt": 0.5})):
        job = tmp_path / "sweep" / name
        job.mkdir(parents=True)
        (job / "config.yaml").write_text(yaml.safe_dump(
            {"seed": 0, "dataset": {"name": "quadratic", **extra},
             "model": {"name": "quadratic"}, "optimizer": {"name": "sgd", "lr": 0.1}}))
        (job / "result.json").write_text(json.dumps({
            "status": "completed", "seed": 0, "probes": {"lambda_max": 10.0},
            "final": {"test_acc": 0.9, "train_acc": 1.0, "train_loss": 0.01}}))
    jobs = collect(tmp_path / "sweep").jobs.set_index("job")
    assert jobs.loc["a", "included"] and not jobs.loc["b", "included"]
    assert jobs.loc["b", "status"] == "duplicate"
