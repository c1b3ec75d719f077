"""hydra.sweeper.cases: sweeps that are a union of products (not one cartesian product), run
end to end, validated up front like every sweep."""

from __future__ import annotations

import pytest

from conftest import run_cli
from landscope.io import read_json


@pytest.fixture(scope="module")
def warm_data(data_dir):
    from landscope.config import DatasetConfig
    from landscope.data import load_data

    load_data(DatasetConfig(data_dir=str(data_dir)))
    return data_dir


CASES = 'hydra.sweeper.cases=["optimizer=adam","optimizer=sgd optimizer.lr=0.05"]'


def test_cases_times_params(tmp_path, warm_data):
    proc = run_cli(["-m", "experiment=smoke", CASES, "seed=0,1", "hydra.sweep.dir=sweep"],
                   tmp_path, data_dir=warm_data)
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["optimizer.lr=0.05,optimizer=sgd,seed=0",
                    "optimizer.lr=0.05,optimizer=sgd,seed=1",
                    "optimizer=adam,seed=0", "optimizer=adam,seed=1"]
    cfg = read_json(sweep / "optimizer=adam,seed=1" / "result.json")
    assert cfg["status"] == "completed" and cfg["seed"] == 1
    assert "4 jobs: 4 completed" in proc.stdout


def test_command_line_wins_over_a_case(tmp_path, warm_data):
    proc = run_cli(["-m", "experiment=smoke", CASES, "optimizer.lr=0.02", "seed=0",
                    "hydra.sweep.dir=sweep", "train.epochs=1"], tmp_path, data_dir=warm_data)
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["optimizer.lr=0.02,optimizer=adam,seed=0,train.epochs=1",
                    "optimizer.lr=0.02,optimizer=sgd,seed=0,train.epochs=1"]
    lrs = {j: read_json(tmp_path / "sweep" / j / "result.json")["status"] for j in jobs}
    assert set(lrs.values()) == {"completed"}


@pytest.mark.parametrize("cases, needle", [
    ('hydra.sweeper.cases=["optimizer=adam","optimizer=nope"]', "optimizer/nope"),
    ('hydra.sweeper.cases=["optimizer=adam","optimizer=sgd optimizer.lr=-1"]',
     "optimizer.lr must be > 0"),
    ('hydra.sweeper.cases=["optimizer=adam","optimizer=adam"]', "same job directory"),
])
def test_bad_case_is_one_line_and_writes_nothing(tmp_path, warm_data, cases, needle):
    proc = run_cli(["-m", "experiment=smoke", cases, "seed=0", "hydra.sweep.dir=sweep"],
                   tmp_path, data_dir=warm_data)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], proc.stderr
    assert not (tmp_path / "sweep").exists()
