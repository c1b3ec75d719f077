"""`runner.connect`'s cost, said before it runs: one plan line per group of pairs (the pairs to
compute, their path points and bend steps, the timed estimate) and tqdm bars over each path's
points and the bend's steps; neither changes a value."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from landscope.geometry import pairs as P
from runner import connect

SETTINGS = ["landscape.path_points=5", "landscape.bezier.epochs=2", "landscape.data_size=100"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir) -> Path:
    """Two seeds of a small batch-norm CNN (200 train samples, batch 64: 4 bend steps an
    epoch), so the Bezier curve's points (BatchNorm recomputed) are timed apart."""
    root = tmp_path_factory.mktemp("connect_plan")
    out = root / "sweep"
    proc = run_cli(["-m", "seed=0,1", "model=cnn", "model.norm=batch", "model.width=4",
                    "train.epochs=1", "probe=none", "landscape=none",
                    "dataset.train_size=200", "dataset.test_size=100",
                    f"hydra.sweep.dir={out}"], root, data_dir=data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _settings(extra=()) -> tuple[dict, bool]:
    return connect._landscape_config([*SETTINGS, *extra])


def test_pair_seconds_times_each_part_of_a_pair(sweep):
    settings, _ = _settings()
    pairs, _ = P.plan_pairs(sweep)
    t = P.pair_seconds(pairs[0], settings)
    assert t["per_epoch"] == math.ceil(200 / 64) and t["samples"] == (100, 100)
    assert all(t[k] > 0 for k in ("linear", "bezier", "step"))
    no_bend, _ = _settings(["landscape.bezier.enabled=false"])
    t = P.pair_seconds(pairs[0], no_bend)
    assert t["linear"] > 0 and (t["step"], t["per_epoch"]) == (0.0, 0)


def test_plan_line_arithmetic(sweep, monkeypatch, tmp_path):
    settings, _ = _settings()
    pairs, _ = P.plan_pairs(sweep)
    fixed = {"linear": 0.002, "bezier": 0.004, "step": 0.01, "per_epoch": 4,
             "samples": (100, 100)}
    monkeypatch.setattr(P, "pair_seconds", lambda pair, s: fixed)
    (line,) = P.plan_lines(pairs, settings, tmp_path)
    # 5 linear points at 2 ms, 5 Bezier points at 4 ms, 2 epochs of 4 steps at 10 ms: 0.11 s,
    # shown to one decimal; 5 linear points alone: 0.01 s, two significant digits
    assert line.startswith(f"connect plan, {pairs[0]['group']}: 1 pair, 0 cached, "
                           "1 to compute, each linear 5 points, bend 2 epochs of 4 steps, "
                           "Bezier 5 points on 100 train + 100 test samples; ")
    assert line.endswith("~2.0 ms a linear point, ~4.0 ms a Bezier point, ~10 ms a bend step, "
                         "so ~0.1 s a pair, ~0.1 s in all")
    no_bend, _ = _settings(["landscape.bezier.enabled=false"])
    (line,) = P.plan_lines(pairs * 3, no_bend, tmp_path)
    assert "3 pairs, 0 cached, 3 to compute, each linear 5 points on 100 train" in line
    assert line.endswith("~2.0 ms a linear point, so ~0.01 s a pair, ~0.03 s in all")


def test_connect_says_its_plan_shows_bars_and_changes_no_value(sweep, bars, capsys):
    """The command logs the plan before the pair; each path and the bend get a bar that
    reaches its total; the values equal a pair computed without plan or bars, bit for bit;
    the bars' switch is not part of the cache key."""
    from landscope.io import read_json

    with pytest.raises(SystemExit) as info:
        connect.main([str(sweep), *SETTINGS, "landscape.progress=true"])
    out = capsys.readouterr().out
    assert info.value.code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("connect plan, ") and "1 to compute" in lines[0]
    assert lines[1].startswith("computed: ")
    shown = [(b["desc"], b["total"], b["n"], b["closed"]) for b in bars.shown()]
    assert shown == [("linear", 5, 5, True), ("bend", 8, 8, True), ("Bezier", 5, 5, True)]

    settings, _ = _settings()
    pairs, _ = P.plan_pairs(sweep)
    record, arrays = P.connect_pair(pairs[0], settings)
    (json_path,) = (sweep / "connectivity").glob("*/*.json")
    stored = read_json(json_path)
    assert stored["scalars"] == record["scalars"]
    with np.load(json_path.with_suffix(".npz")) as z:
        assert all(np.array_equal(z[k], v) for k, v in arrays.items())

    with pytest.raises(SystemExit) as info:
        connect.main([str(sweep), *SETTINGS, "landscape.progress=false"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert out.splitlines()[0].endswith(": 1 pair, 1 cached, nothing to compute")
    assert "1 pair: 0 computed, 1 cached, 0 failed" in out


def test_ctrl_c_while_planning_exits_130_with_the_resume_hint(sweep, monkeypatch, capsys):
    def interrupted(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(connect, "plan_lines", interrupted)
    with pytest.raises(SystemExit) as info:
        connect.main([str(sweep), *SETTINGS, "landscape.path_points=3"])
    assert info.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted: run the same command again to resume"
