"""One trained model measured with several probe or landscape settings is one unit.

``python -m runner -m optimizer=sgd,adam seed=0,1 probe.data_size=500,1000`` trains each model
in two directories and probes it with 500 samples in one, 1,000 in the other. Pooled, the
report would count each model twice (its test error twice, as two seeds' worth of evidence) and
mix two estimators of λmax in one test. ``collect`` keeps one setting for every model (the one
most jobs ran, or the one ``runner.report --setting`` names) and lists the others as
``other_setting``.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import yaml

from landscope.analysis import collect
from landscope.analysis.stage_settings import OTHER_SETTING, parse_settings
from landscope.errors import LandscopeError


def _job(root, name: str, optimizer: str, seed: int, probe: dict, acc: float,
         lam: float, landscape: dict | None = None, final: dict | None = None) -> None:
    job = root / name
    job.mkdir(parents=True)
    config = {"seed": seed, "model": {"name": "mlp", "width": 32},
              "optimizer": {"name": optimizer, "lr": 0.1},
              "probe": {"name": "basic", **probe},
              "landscape": {"name": "none", **(landscape or {})}}
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    (job / "result.json").write_text(json.dumps({
        "status": "completed", "seed": seed, "probes": {"lambda_max": lam},
        "final": final or {"test_acc": acc, "train_acc": 1.0, "train_loss": 0.01 * seed}}))


def _sweep(tmp_path):
    """sgd, adam × seeds 0, 1 × data_size 500, 1000, and one more model (sgd, seed 2) probed
    only with 1,000 samples: 1,000 is the setting most jobs ran (5 against 4)."""
    root = tmp_path / "sweep"
    for opt in ("adam", "sgd"):
        for seed in (0, 1):
            for size in (500, 1000):
                _job(root, f"{opt},n={size},seed={seed}", opt, seed, {"data_size": size},
                     0.5 + seed / 10, lam=size / 100 + seed)
    _job(root, "sgd,n=1000,seed=2", "sgd", 2, {"data_size": 1000}, 0.7, lam=12.0)
    return root


def test_a_trained_model_is_analysed_once_at_the_setting_most_jobs_ran(tmp_path):
    c = collect(_sweep(tmp_path))
    assert c.counts == {"completed": 5, OTHER_SETTING: 4}
    kept = c.included
    assert sorted(kept["job"]) == ["adam,n=1000,seed=0", "adam,n=1000,seed=1",
                                   "sgd,n=1000,seed=0", "sgd,n=1000,seed=1", "sgd,n=1000,seed=2"]
    assert (kept["config.probe.data_size"] == 1000).all()
    assert not kept.duplicated(["optimizer.name", "seed"]).any()
    other = c.excluded.set_index("job")
    assert sorted(other.index) == ["adam,n=500,seed=0", "adam,n=500,seed=1",
                                   "sgd,n=500,seed=0", "sgd,n=500,seed=1"]
    assert other.loc["sgd,n=500,seed=1", "reason"].startswith(
        "the same trained model as sweep/sgd,n=1000,seed=1, measured with other settings "
        "(probe.data_size=500 where it has 1000): a measure taken with other settings is "
        "another quantity and one model is one unit")
    assert "config.probe.data_size" not in c.swept
    assert c.notes == [
        "4 jobs measured a trained model already analysed with other probe or landscape "
        "settings (status other_setting); each model is analysed once, at "
        "probe.data_size=1000 (runner.report --setting KEY=VALUE chooses another)."]


def test_the_setting_can_be_chosen_and_a_model_without_it_keeps_its_only_job(tmp_path):
    c = collect(_sweep(tmp_path), parse_settings(["probe.data_size=500"]))
    assert c.counts == {"completed": 5, OTHER_SETTING: 4}
    kept = c.included.set_index("job")
    assert sorted(kept.index) == ["adam,n=500,seed=0", "adam,n=500,seed=1", "sgd,n=1000,seed=2",
                                  "sgd,n=500,seed=0", "sgd,n=500,seed=1"]
    assert kept.loc["sgd,n=500,seed=1", "probe.lambda_max"] == 6.0
    assert "each model is analysed once, at probe.data_size=500/1000 (" in c.notes[0]
    # the model without a job at 500 is analysed at 1000: the report says the tests pool both
    assert c.notes[1].startswith(
        "The analysed jobs' measures were taken with different probe or landscape settings, "
        "and every test pools them: probe.data_size = 500 (4 jobs), 1000 (1 job).")


def test_a_setting_no_job_ran_is_refused_by_name(tmp_path):
    root = _sweep(tmp_path)
    with pytest.raises(LandscopeError, match=r"^--setting probe.data_size=300: no completed job "
                                             r"ran it \(the jobs ran 1000, 500\)$"):
        collect(root, parse_settings(["probe.data_size=300"]))
    # a setting every job ran is no choice, but no error either
    c = collect(root, parse_settings(["probe.seed=0", "probe.data_size=1000"]))
    assert c.counts == {"completed": 5, OTHER_SETTING: 4}
    other = tmp_path / "other"
    _job(other, "a", "sgd", 0, {"data_size": 500}, 0.5, 1.0, {"plane": {"enabled": True}})
    _job(other, "b", "sgd", 0, {"data_size": 1000}, 0.5, 1.0, {"plane": {"enabled": False}})
    with pytest.raises(LandscopeError, match=r"^--setting probe.data_size=500 "
                       r"landscape.plane.enabled=false: no completed job ran all of these "
                       r"together$"):
        collect(other, parse_settings(["probe.data_size=500", "landscape.plane.enabled=false"]))


@pytest.mark.parametrize("item, message", [
    ("probe.datasize=400", "no option probe.datasize (did you mean probe.data_size?)"),
    ("optimizer.lr=0.1", "expected KEY=VALUE of a probe.* or landscape.* option"),
    ("probe.data_size", "expected KEY=VALUE of a probe.* or landscape.* option"),
    ("=3", "expected KEY=VALUE"),
])
def test_a_setting_that_is_not_a_probe_or_landscape_option_is_refused(item, message):
    with pytest.raises(LandscopeError, match=f"^--setting {item}: .*"):
        parse_settings([item])
    with pytest.raises(LandscopeError, match=message.replace("*", r"\*").replace("(", r"\(")
                       .replace(")", r"\)").replace("?", r"\?")):
        parse_settings([item])


def test_settings_are_read_as_hydra_reads_overrides(tmp_path):
    assert parse_settings(["probe.data_size=400", "config.probe.seed=1",
                           "landscape.plane.enabled=false", "probe.sharpness.rhos=[0.01,0.05]",
                           "probe.data_size=null"]) == {
        "config.probe.data_size": None, "config.probe.seed": 1,
        "config.landscape.plane.enabled": False,
        "config.probe.sharpness.rhos": "[0.01, 0.05]"}
    root = tmp_path / "sweep"
    for seed in (0, 1):
        for on in (True, False):
            _job(root, f"plane={on},seed={seed}", "sgd", seed, {}, 0.5, 1.0,
                 landscape={"plane": {"enabled": on}})
    c = collect(root, parse_settings(["landscape.plane.enabled=false"]))
    assert sorted(c.included["job"]) == ["plane=False,seed=0", "plane=False,seed=1"]
    assert "landscape.plane.enabled=false" in c.notes[0]


def test_other_models_and_full_copies_are_not_other_settings(tmp_path):
    """Jobs of different training configs are different models whatever their settings; a job
    at the same setting as another of its model is a duplicate, not another setting."""
    root = tmp_path / "sweep"
    _job(root, "a", "sgd", 0, {"data_size": 500}, 0.5, 1.0)
    _job(root, "b", "adam", 0, {"data_size": 1000}, 0.6, 2.0)
    _job(root, "c", "adam", 0, {"data_size": 1000}, 0.6, 2.0)
    c = collect(root)
    assert c.counts == {"completed": 2, "duplicate": 1}
    assert c.notes == [  # two models measured with different settings: said, not dropped
        "The analysed jobs' measures were taken with different probe or landscape settings, "
        "and every test pools them: probe.data_size = 500 (1 job), 1000 (1 job). A measure "
        "taken with other settings is another estimator: measure the jobs alike (runner.probe "
        "or runner.landscape with one setting) to compare them."]
    assert collect(root / "a").notes == []


def test_runner_report_takes_the_setting_and_refuses_one_no_job_ran(tmp_path, capsys):
    from runner.report import main

    root = _sweep(tmp_path)
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exc:
        main([str(root), "--out", str(out), "--no-wandb", "--setting", "probe.data_size=300"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --setting probe.data_size=300: no completed job ran it (the jobs ran 1000, 500)")
    assert not out.exists()
    with pytest.raises(SystemExit) as exc:
        main([str(root), "--out", str(out), "--setting"])
    assert exc.value.code == 2
    assert "--setting needs a probe or landscape option" in capsys.readouterr().err
    main([str(root), "--out", str(out), "--no-wandb", "--setting=probe.data_size=500"])
    text = (out / "report.md").read_text()
    assert "9 jobs from" in text and "5 completed, 4 other_setting" in text
    assert "each model is analysed once, at probe.data_size=500/1000" in text


def test_the_measures_table_speaks_of_no_job_when_no_job_has_a_train_loss(tmp_path):
    """Its control (the train loss) missing everywhere leaves no analysable row: n = 0 and no
    estimate, where the granulated τ once raised a pandas error on the empty frame."""
    from landscope.analysis.measures_table import measures_table

    root = tmp_path / "sweep"
    for opt, seed in itertools.product(("sgd", "adam"), (0, 1, 2)):
        _job(root, f"{opt},{seed}", opt, seed, {}, 0.5, 1.0 + seed,
             final={"test_acc": 0.5 + seed / 10, "train_acc": 1.0})
    table = measures_table(collect(root).included, ["probe.lambda_max"])
    assert table.loc[0, "n"] == 0 and math.isnan(table.loc[0, "psi"])


def test_a_job_measured_again_is_read_with_the_settings_of_its_measures(tmp_path, data_dir):
    """runner.probe on one job of a sweep with another probe.data_size: result.json shows that
    run's scalars (the newest of two presets with as many scalars) while config.yaml keeps what
    the job started with, and the first run's scalars stay beside them. The report analyses
    every model at the setting most were measured with, so the job is read with its first
    run's scalars, and says so; --setting reads it with the new ones, and the table says what
    each row's scalars were measured with (measured_with)."""
    import os
    import subprocess
    import sys

    from conftest import REPO, run_cli

    proc = run_cli(["-m", "experiment=smoke", "seed=0,1", "probe=basic", "probe.data_size=64",
                    "landscape=none", "hydra.sweep.dir=sweep"], tmp_path, data_dir=data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = tmp_path / "sweep"
    before = collect(sweep)
    assert before.counts == {"completed": 2} and before.notes == []
    assert before.included["measured_with"].isna().all()
    first = before.included.set_index("seed").loc[1, "probe.lambda_max"]
    job = next(sweep.glob("*seed=1*"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    again = subprocess.run([sys.executable, "-m", "runner.probe", str(job), "probe=basic",
                            "probe.data_size=32"], cwd=tmp_path, capture_output=True, text=True,
                           env=env)
    assert again.returncode == 0, again.stderr
    result = json.loads((job / "result.json").read_text())
    assert result["probes"]["probe_data_size"] == 32 and len(result["probes_by_fingerprint"]) == 2
    after = collect(sweep)
    rows = after.included.set_index("seed")
    assert rows.loc[1, "probe.probe_data_size"] == 64 and rows.loc[1, "probe.lambda_max"] == first
    assert pd_isna(rows.loc[1, "measured_with"]) and pd_isna(rows.loc[0, "measured_with"])
    assert after.notes == [
        "1 job was measured again with other settings (runner.probe), and result.json shows "
        "the newer measures; it is analysed with the probe results kept beside them at "
        "probe.data_size=64, as the other models are."]
    chosen = collect(sweep, parse_settings(["probe.data_size=32"]))
    rows = chosen.included.set_index("seed")
    assert rows.loc[1, "probe.probe_data_size"] == 32
    assert rows.loc[1, "measured_with"] == "probe.data_size=32"
    assert rows.loc[1, "config.probe.data_size"] == 64  # config.yaml, as the job started
    assert chosen.notes == [
        "The analysed jobs' measures were taken with different probe or landscape settings, "
        "and every test pools them: probe.data_size = 64 (1 job), 32 (1 job). A measure taken "
        "with other settings is another estimator: measure the jobs alike (runner.probe or "
        "runner.landscape with one setting) to compare them."]


def pd_isna(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def test_the_landscape_settings_are_read_from_the_record_of_its_scalars(tmp_path):
    """runner.landscape with other settings: result.json names landscape/<lfp>.json, whose
    record holds the landscape group the scalars were measured with. A record that is missing
    or unreadable leaves config.yaml's settings (nothing is made up)."""
    root = tmp_path / "sweep"
    for seed in (0, 1):
        _job(root, f"seed={seed}", "sgd", seed, {}, 0.5, 1.0,
             landscape={"name": "basic", "line": {"points": 21}})
    scanned = {"landscape": {"name": "basic", "line": {"points": 41}}, "scalars": {}}
    for seed, record in ((0, scanned), (1, "not json")):
        job = root / f"seed={seed}"
        result = json.loads((job / "result.json").read_text())
        (job / "result.json").write_text(json.dumps({**result, "landscape_fingerprint": "abc"}))
        (job / "landscape").mkdir()
        (job / "landscape" / "abc.json").write_text(
            json.dumps(record) if isinstance(record, dict) else record)
    c = collect(root)
    rows = c.included.set_index("seed")
    assert rows.loc[0, "measured_with"] == "landscape.line.points=41"
    assert pd_isna(rows.loc[1, "measured_with"])
    assert rows.loc[0, "config.landscape.line.points"] == 21  # config.yaml's
    assert c.notes[0].endswith("every test pools them: landscape.line.points = 41 (1 job), 21 "
                               "(1 job)."
                               " A measure taken with other settings is another estimator: "
                               "measure the jobs alike (runner.probe or runner.landscape with "
                               "one setting) to compare them.")


def test_a_column_reads_as_the_measures_were_taken():
    """The studies describe the landscape grid behind their measures from the settings of
    the scan that made them (a job scanned again on a 41-point grid), not from config.yaml."""
    import pandas as pd

    from landscope.analysis.stage_settings import measured_column

    jobs = pd.DataFrame({"config.landscape.plane.points": [21, 21, 21],
                         "measured_with": [None, "landscape.plane.points=41 probe.seed=3",
                                           "probe.sharpness.rhos=[0.01,0.05]"]})
    assert measured_column(jobs, "config.landscape.plane.points").tolist() == [21, 41, 21]
    rhos = measured_column(jobs, "config.probe.sharpness.rhos")  # no such column: missing
    assert rhos.isna().tolist() == [True, True, False] and rhos[2] == "[0.01, 0.05]"
    seeds = measured_column(jobs, "config.probe.seed")
    assert seeds.isna().tolist() == [True, False, True] and seeds[1] == 3


def _presets(job, shown: str, presets: dict) -> None:
    """Give ``job`` probe presets side by side: ``presets`` = {fp: (probe group or None for
    no record, scalars)}; result.json shows ``shown``."""
    result = json.loads((job / "result.json").read_text())
    result.update(probe_fingerprint=shown, probes=presets[shown][1],
                  probes_by_fingerprint={fp: sc for fp, (_, sc) in presets.items()})
    (job / "result.json").write_text(json.dumps(result))
    (job / "probes").mkdir(exist_ok=True)
    for fp, (group, scalars) in presets.items():
        if group is not None:
            (job / "probes" / f"{fp}.json").write_text(
                json.dumps({"probe": group, "scalars": scalars}))


def test_a_job_is_read_with_the_preset_at_the_setting_most_models_were_measured_with(tmp_path):
    """Five models probed with 1,000 samples; three of them measured again with 5,000
    (result.json shows the newer run), whose scalars differ in type and set (an integer count,
    a list, one scalar only one preset has). A preset without a record of its settings is
    never chosen (nothing says what it measured), so seed 2 has only 5,000. 1,000 covers four
    models, 5,000 three: the models are analysed at 1,000 where they can be; the columns hold
    that preset's scalars, those of the other are gaps, and the types follow."""
    root = tmp_path / "sweep"
    old = {"lambda_max": 1.0, "hvps": 10, "eigs": [3.0, 2.0]}
    new = {"lambda_max": 2.0, "hvps": 12, "only_new": "x"}
    for seed in range(5):
        _job(root, f"seed={seed}", "sgd", seed, {"data_size": 1000}, 0.5, 1.0)
    _presets(root / "seed=0", "b", {"a": ({"name": "basic", "data_size": 1000}, old),
                                    "b": ({"name": "basic", "data_size": 5000}, new)})
    _presets(root / "seed=1", "b", {"a": ({"name": "basic", "data_size": 1000}, old),
                                    "b": ({"name": "basic", "data_size": 5000}, new)})
    _presets(root / "seed=2", "b", {"a": (None, old),  # no record: not a candidate
                                    "b": ({"name": "basic", "data_size": 5000}, new)})
    c = collect(root)
    rows = c.included.set_index("seed")
    assert rows["probe.lambda_max"].tolist() == [1.0, 1.0, 2.0, 1.0, 1.0]
    assert rows.loc[0, "probe.hvps"] == 10 and rows.loc[2, "probe.hvps"] == 12
    assert rows.loc[0, "probe.eigs"] == "[3.0, 2.0]" and pd_isna(rows.loc[2, "probe.eigs"])
    assert pd_isna(rows.loc[0, "probe.only_new"]) and rows.loc[2, "probe.only_new"] == "x"
    assert pd_isna(rows.loc[0, "measured_with"])
    assert rows.loc[2, "measured_with"] == "probe.data_size=5000"
    assert c.notes[0] == (
        "2 jobs were measured again with other settings (runner.probe), and result.json shows "
        "the newer measures; they are analysed with the probe results kept beside them at "
        "probe.data_size=1000, as the other models are.")
    assert "probe.data_size = 1000 (4 jobs), 5000 (1 job)" in c.notes[1]
    chosen = collect(root, parse_settings(["probe.data_size=5000"])).included
    assert chosen["probe.lambda_max"].tolist() == [2.0, 2.0, 2.0, 1.0, 1.0]
    assert chosen["measured_with"].tolist()[:3] == ["probe.data_size=5000"] * 3
