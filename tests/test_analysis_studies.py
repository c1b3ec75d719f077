"""The founding-study tables (landscope.analysis.studies) on synthetic jobs and fake job
directories, their report sections, and the three presets (composition and job counts; no
training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from landscope.analysis import studies as st
from landscope.analysis.collect import Collection, collect
from landscope.analysis.doc import Doc
from landscope.analysis.report import ReportContext
from landscope.errors import LandscopeError

# --------------------------------------------------------------------------- synthetic jobs
# (a): three configurations x 3 seeds: (name, lr, wd) -> test_acc per seed, lambda_max per seed
TRAINING = {("adam", 0.003, 0.0): ([0.70, 0.72, 0.74], [0.3, 0.5, 0.4]),
            ("sgd", 0.1, 0.0): ([0.66, 0.68, 0.67], [18.0, 19.0, 20.0]),
            ("sgd", 0.01, 0.01): ([0.55, 0.57, 0.50], [30.0, 40.0, 35.0])}


def training_frame(name="study_training"):
    rows = []
    for (opt, lr, wd), (accs, lams) in TRAINING.items():
        for seed, (acc, lam) in enumerate(zip(accs, lams)):
            rows.append({"name": name, "included": True, "seed": seed, "optimizer.name": opt,
                         "optimizer.lr": lr, "optimizer.weight_decay": wd,
                         "optimizer.momentum": 0.0, "model.name": "mlp", "model.width": 128,
                         "final.test_acc": acc, "final.train_loss": 0.1,
                         "probe.lambda_max": lam, "path": f"/nowhere/{opt}{lr}{wd}{seed}"})
    return pd.DataFrame(rows)


def test_training_table_mean_sd_per_configuration():
    t = st.training_table(training_frame()).set_index("configuration")
    assert list(t.index) == ["adam lr=0.003", "sgd lr=0.01 wd=0.01", "sgd lr=0.1"]
    row = t.loc["sgd lr=0.01 wd=0.01"]
    assert row["n"] == 3
    assert row["test_acc_mean"] == pytest.approx(0.54)  # (0.55 + 0.57 + 0.50) / 3
    assert row["test_acc_sd"] == pytest.approx(math.sqrt((0.01**2 + 0.03**2 + 0.04**2) / 2))
    assert (row["lambda_max_mean"] == pytest.approx(35.0)
            and row["lambda_max_sd"] == pytest.approx(5.0))
    assert row["lambda_max"] == "35 ± 5"
    assert t.loc["sgd lr=0.1", "stability_limit"] == pytest.approx(20.0)
    assert math.isnan(t.loc["adam lr=0.003", "stability_limit"])
    assert t.loc["adam lr=0.003", "lambda_max_mean"] == pytest.approx(0.4)


def test_training_table_splits_architectures_when_several():
    df = training_frame()
    df.loc[df["seed"] == 2, "model.width"] = 64
    t = st.training_table(df)
    assert len(t) == 6 and "sgd lr=0.1 (mlp-64)" in set(t["configuration"])
    assert set(t["n"]) == {1, 2}


def test_training_kendall_across_jobs_equals_scipy():
    df = training_frame()
    df.loc[0, "probe.lambda_max"] = np.nan  # left out, not a crash
    k = st.training_kendall(df)
    ref = stats.kendalltau(df["probe.lambda_max"][1:], df["final.test_acc"][1:])
    assert (k["n"] == 8 and k["tau"] == pytest.approx(ref.statistic)
            and k["p"] == pytest.approx(ref.pvalue))
    assert k["tau"] < 0


def test_study_jobs_filters_by_name_and_included():
    df = pd.concat([training_frame(), training_frame("other")], ignore_index=True)
    df.loc[0, "included"] = False
    assert len(st.study_jobs(df, "study_training")) == 8
    assert st.study_jobs(df.drop(columns="name"), "study_training").empty


def test_mean_sd_single_value_and_empty():
    assert st.mean_sd([2.0]) == (2.0, pytest.approx(math.nan, nan_ok=True), 1)
    m, s, n = st.mean_sd([None, np.nan])
    assert n == 0 and math.isnan(m) and st.pm(m, s) == "–" and st.pm(2.0, math.nan) == "2"


# --------------------------------------------------------------------------- (b) width
def _metrics(job: Path, accs):
    job.mkdir(parents=True, exist_ok=True)
    (job / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "test_acc": a, "train_loss": 1.0}) + "\n"
        for e, a in enumerate(accs, 1)))


def test_epochs_to_target(tmp_path):
    _metrics(tmp_path / "a", [0.1, 0.35, 0.4, 0.2])
    assert st.epochs_to_target(tmp_path / "a" / "metrics.jsonl", 0.4) == 3  # >= counts
    assert st.epochs_to_target(tmp_path / "a" / "metrics.jsonl", 0.41) is None
    with pytest.raises(LandscopeError) as err:
        st.epochs_to_target(tmp_path / "missing" / "metrics.jsonl")
    assert "\n" not in str(err.value)
    (tmp_path / "bad.jsonl").write_text('{"epoch": 1, "test_acc": 0.5}\n{oops\n')
    with pytest.raises(LandscopeError, match="line 2"):
        st.epochs_to_target(tmp_path / "bad.jsonl", 0.9)


def width_frame(tmp_path):
    """mlp-32 (3 seeds: epochs 2, 4, never), cnn-16 (2 seeds: epochs 1, 3; a third without
    metrics.jsonl)."""
    curves = {("mlp", 32): [[0.1, 0.45, 0.5], [0.1, 0.2, 0.3, 0.42], [0.1, 0.2, 0.3, 0.39]],
              ("cnn", 16): [[0.5, 0.6], [0.2, 0.3, 0.41], None]}
    rows = []
    for (arch, width), runs in curves.items():
        for seed, accs in enumerate(runs):
            job = tmp_path / f"model={arch},model.width={width},seed={seed}"
            if accs is None:
                job.mkdir(parents=True)
            else:
                _metrics(job, accs)
            rows.append({"name": "study_width", "included": True, "seed": seed,
                         "model.name": arch, "model.width": width, "train.epochs": 4,
                         "n_params": 1000 * width, "final.test_acc": 0.5 + seed / 100,
                         "probe.lambda_max": 10.0 * (seed + 1),
                         "landscape.plane_train_rise_border_mean": 2.0 + seed,
                         "landscape.plane_train_basin_fraction": 0.1,
                         "landscape.plane_train_radius": 0.2, "path": str(job)})
    return pd.DataFrame(rows)


def test_width_table_epochs_reached_and_not_reached(tmp_path):
    t = st.width_table(width_frame(tmp_path), target=0.4).set_index("architecture")
    assert list(t.index) == ["cnn-16", "mlp-32"]
    mlp, cnn = t.loc["mlp-32"], t.loc["cnn-16"]
    assert (mlp["n"], mlp["n_reached"], mlp["n_not_reached"], mlp["n_no_metrics"]) == (3, 2, 1, 0)
    assert mlp["reached"] == "2/3" and mlp["epochs_mean"] == pytest.approx(3.0)
    assert mlp["epochs_sd"] == pytest.approx(math.sqrt(2.0))  # epochs 2 and 4
    assert (cnn["n_reached"], cnn["n_not_reached"], cnn["n_no_metrics"]) == (2, 0, 1)
    assert cnn["epochs_mean"] == pytest.approx(2.0)  # epochs 1 and 3
    assert (mlp["lambda_max_mean"] == pytest.approx(20.0)
            and mlp["plane_rise_mean"] == pytest.approx(3.0))
    assert mlp["epochs_budget"] == 4 and mlp["target_test_acc"] == 0.4 and mlp["n_params"] == 32000


# --------------------------------------------------------------------------- (c) optimizers
def optimizers_frame(root: Path):
    rows = []
    for opt in ("sgd", "adam"):
        for arch, width in (("mlp", 128), ("cnn", 16)):
            for seed in range(3):
                rows.append({"name": "study_optimizers", "included": True, "seed": seed,
                             "optimizer.name": opt, "optimizer.lr": 0.1 if opt == "sgd" else 0.003,
                             "optimizer.momentum": 0.0, "model.name": arch, "model.width": width,
                             "final.test_acc": 0.6, "probe.lambda_max": 1.0 + seed,
                             "landscape.line_train_rise_mean": 5.0 * (seed + 1),
                             "landscape.line_train_radius_min": 0.1,
                             "landscape.plane_train_rise_border_mean": 7.0,
                             "landscape.plane_train_basin_fraction": 0.05,
                             "path": str((root / f"model={arch},optimizer={opt},seed={seed}")
                                         .resolve())})
    return pd.DataFrame(rows)


def test_optimizers_table_with_barriers(tmp_path):
    jobs = optimizers_frame(tmp_path)
    sgd_mlp = jobs[(jobs["optimizer.name"] == "sgd") & (jobs["model.name"] == "mlp")]["path"]
    b = pd.DataFrame({"path_a": [sgd_mlp.iloc[0], sgd_mlp.iloc[0], sgd_mlp.iloc[1], "/elsewhere"],
                      "linear_train_loss_barrier_mean": [1.0, 2.0, 3.0, 99.0],
                      "linear_test_error_barrier_mean": [0.1, 0.2, 0.6, 9.0],
                      "reason": [None, None, None, None]})
    b.loc[len(b)] = [sgd_mlp.iloc[1], 50.0, 5.0, "unreadable"]  # a row with a reason is dropped
    t = st.optimizers_table(jobs, b).set_index(["optimizer", "architecture"])
    assert len(t) == 4 and set(t["n"]) == {3}
    row = t.loc[("sgd lr=0.1", "mlp-128")]
    assert row["n_pairs"] == 3 and row["barrier_loss_mean"] == pytest.approx(2.0)
    assert row["barrier_loss_sd"] == pytest.approx(1.0)
    assert row["barrier_test_error_mean"] == pytest.approx(0.3)
    assert (row["lambda_max_mean"] == pytest.approx(2.0)
            and row["line_rise_mean"] == pytest.approx(10.0))
    other = t.loc[("adam lr=0.003", "cnn-16")]
    assert other["n_pairs"] == 0 and math.isnan(other["barrier_loss_mean"])
    assert st.optimizers_table(jobs)["n_pairs"].sum() == 0  # no barriers at all


def _job_dir(root: Path, name: str, cfg: dict, result: dict, accs=(0.3, 0.5)):
    job = root / name
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(yaml.safe_dump(cfg))
    (job / "result.json").write_text(json.dumps(result))
    _metrics(job, list(accs))
    return job


def fake_optimizer_sweep(root: Path) -> Path:
    """A sweep directory of study_optimizers (2 optimizers x mlp x 2 seeds) with one
    connectivity result per configuration, as runner.connect writes them."""
    sweep = root / "study_optimizers"
    for opt, lam in (("sgd", 19.0), ("adam", 0.5)):
        names = []
        for seed in (0, 1):
            name = f"model=mlp,optimizer={opt},seed={seed}"
            names.append(name)
            _job_dir(sweep, name,
                     {"name": "study_optimizers", "seed": seed,
                      "optimizer": {"name": opt, "lr": 0.1, "momentum": 0.0},
                      "model": {"name": "mlp", "width": 128}, "probe": {"top_k": 1}},
                     {"status": "completed", "seed": seed, "final": {"test_acc": 0.6},
                      "probes": {"lambda_max": lam + seed},
                      "landscape": {"line_train_rise_mean": 3.0,
                                    "plane_train_rise_border_mean": 4.0}})
        group = sweep / "connectivity" / f"model=mlp,optimizer={opt}"
        group.mkdir(parents=True)
        (group / f"{names[0]}__{names[1]}.json").write_text(json.dumps(
            {"scalars": {"linear_train_loss_barrier_mean": 2.0 if opt == "sgd" else 0.25,
                         "linear_test_error_barrier_mean": 0.1}}))
    return sweep


def test_load_study_barriers_joins_on_the_job_path(tmp_path):
    sweep = fake_optimizer_sweep(tmp_path)
    b = st.load_study_barriers([sweep, tmp_path / "no_such_sweep_has_connectivity"])
    assert len(b) == 2 and b["reason"].isna().all()
    jobs = collect(sweep).included
    t = st.optimizers_table(jobs, b).set_index("optimizer")
    assert t.loc["sgd lr=0.1", "barrier_loss_mean"] == 2.0 and t.loc["sgd lr=0.1", "n_pairs"] == 1
    assert t.loc["adam lr=0.1", "barrier_loss_mean"] == 0.25
    assert t.loc["sgd lr=0.1", "lambda_max_mean"] == pytest.approx(19.5)
    assert st.load_study_barriers([tmp_path]) is None


# --------------------------------------------------------------------------- sections
def _ctx(jobs: pd.DataFrame, out: Path, paths=()) -> ReportContext:
    coll = Collection(jobs=jobs, excluded=pd.DataFrame(), counts={}, swept=[])
    return ReportContext(Doc("test"), coll, [Path(p) for p in paths], out)


@pytest.mark.parametrize("study", ["study_training", "study_width", "study_optimizers"])
def test_sections_write_table_csv_and_figure(tmp_path, study):
    jobs = {"study_training": training_frame(), "study_width": width_frame(tmp_path / "w"),
            "study_optimizers": optimizers_frame(tmp_path / "o")}[study]
    ctx = _ctx(jobs, tmp_path / "report")
    others = [s for s in ("study_training", "study_width", "study_optimizers") if s != study]
    assert getattr(st, f"applies_{study}")(ctx)
    assert not any(getattr(st, f"applies_{s}")(ctx) for s in others)
    getattr(st, f"section_{study}")(ctx)
    csv = pd.read_csv(tmp_path / "report" / f"{study}.csv")
    png = tmp_path / "report" / "figures" / f"{study}.png"
    assert len(csv) > 0 and png.stat().st_size > 1000
    md = ctx.doc.render_md()
    assert f"](figures/{study}.png)" in md and "| n |" in md and " ± " in md
    assert "data:image/png;base64" in ctx.doc.render_html("t")


def test_width_section_counts_not_reached(tmp_path):
    ctx = _ctx(width_frame(tmp_path / "w"), tmp_path / "r")
    st.section_study_width(ctx, target=0.4)
    md = ctx.doc.render_md()
    assert "1 job never reached it" in md and "1 without a readable metrics.jsonl" in md
    assert "| 2/3 |" in md


def test_optimizer_section_reads_connectivity_of_collected_sweep(tmp_path):
    sweep = fake_optimizer_sweep(tmp_path)
    coll = collect(sweep)
    assert set(coll.included["name"]) == {"study_optimizers"}  # the study's name is a column
    ctx = ReportContext(Doc("t"), coll, [sweep], tmp_path / "r")
    assert st.applies_study_optimizers(ctx) and not st.applies_study_training(ctx)
    st.section_study_optimizers(ctx)
    md = ctx.doc.render_md()
    assert "runner.connect" not in md  # barriers found: no hint to run it
    assert pd.read_csv(tmp_path / "r" / "study_optimizers.csv")["n_pairs"].tolist() == [1, 1]
    ctx2 = ReportContext(Doc("t"), coll, [], tmp_path / "r2")
    st.section_study_optimizers(ctx2)
    assert "runner.connect" in ctx2.doc.render_md()


# --------------------------------------------------------------------------- presets
def _jobs(preset: str, extra=()) -> list[list[str]]:
    """The job override lists of ``-m experiment=<preset> EXTRA``, as our sweeper expands them
    (the preset's params, times each of its cases if it has any)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from conftest import CONF
    from hydra_plugins.landscope_sweeper.landscope_sweeper import LandscopeSweeper

    spec = yaml.safe_load((CONF / "experiment" / f"{preset}.yaml").read_text())["hydra"]["sweeper"]
    sweeper = LandscopeSweeper(max_batch_size=None, params=spec["params"],
                               cases=spec.get("cases"))
    (batch,) = sweeper._expand(OverridesParser.create(), list(extra))
    return batch


LOW = ["optimizer=sgd", "optimizer.lr=0.01", "optimizer.weight_decay=0.01"]


def test_preset_training(compose):
    jobs = _jobs("study_training")
    assert len(jobs) == 15 and len({",".join(sorted(j)) for j in jobs}) == 15
    assert sum(sorted(LOW) == sorted(o for o in j if not o.startswith("seed")) for j in jobs) == 5
    for overrides, opt, lr, wd in ((["optimizer=adam"], "adam", 0.003, 0.0),
                                   (["optimizer=sgd"], "sgd", 0.1, 0.0), (LOW, "sgd", 0.01, 0.01)):
        cfg = compose(["experiment=study_training", *overrides])
        assert cfg.name == "study_training" and cfg.dataset.name == "mnist1d"
        assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == (opt, lr, wd)
        assert cfg.probe.top_k >= 1 and cfg.landscape.name == "none"


def test_preset_width(compose):
    jobs = _jobs("study_width")
    assert len(jobs) == 18 and len({",".join(sorted(j)) for j in jobs}) == 18
    widths = {tuple(sorted(o for o in j if o.startswith("model"))) for j in jobs}
    assert widths == {("model.width=" + str(w), "model=mlp") for w in (32, 64, 128)} | \
        {("model.width=" + str(w), "model=cnn") for w in (16, 32, 64)}
    cfg = compose(["experiment=study_width", "model=cnn", "model.width=16"])
    assert cfg.name == "study_width" and cfg.dataset.name == "mnist1d"
    assert (cfg.model.name, cfg.model.width) == ("cnn", 16)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("momentum", 0.01, 0.9)
    assert cfg.landscape.plane.enabled and cfg.landscape.plane.points == 11 and cfg.probe.top_k >= 1


def test_preset_optimizers(compose):
    jobs = _jobs("study_optimizers")
    assert len(jobs) == 54 and len({",".join(sorted(j)) for j in jobs}) == 54
    assert {tuple(sorted(o for o in j if o.startswith("model"))) for j in jobs} == \
        {("model.width=" + str(w), "model=" + m) for m, ws in (("mlp", (32, 64, 128)),
                                                             ("cnn", (16, 32, 64))) for w in ws}
    assert {o[0] for o in jobs} == {"optimizer=sgd", "optimizer=momentum", "optimizer=adam"}
    cfg = compose(["experiment=study_optimizers", "optimizer=momentum", "model=cnn"])
    assert cfg.name == "study_optimizers" and cfg.train.epochs == 5
    assert (cfg.optimizer.name, cfg.optimizer.momentum, cfg.model.name) == ("momentum", 0.9, "cnn")
    assert cfg.landscape.line.enabled and cfg.landscape.plane.enabled and cfg.probe.top_k >= 1


def test_mean_sd_cells():
    assert st.pm(0.2, 3.4e-17) == "0.2 ± 0"  # equal values: no rounding-noise spread
    assert st.pm(2.0, 0.5) == "2 ± 0.5" and st.pm(2.0, float("nan")) == "2"
    assert st.pm(float("nan"), 0.1) == "–"
