"""Refusals are whole and up front (issue #17 defects 1, 2, 15): a sweep or run that cannot
go ahead is one ``error:`` line, exit 2, and leaves every file it found byte-identical."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import CONF, run_cli
from landscope.config import ConfigError, validate

SMOKE = ["experiment=smoke"]


@pytest.fixture(scope="module")
def warm_data(data_dir):
    """Generate MNIST-1D once so subprocesses only read the cache."""
    from landscope.config import DatasetConfig
    from landscope.data import load_data

    load_data(DatasetConfig(data_dir=str(data_dir)))
    return data_dir


def _snapshot(root: Path) -> dict:
    """Every path under ``root``: (bytes, mtime_ns) of files, None for directories."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = None if p.is_dir() else (p.read_bytes(), st.st_mtime_ns)
    return out


def _refused(proc, needle: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def test_a_sweep_over_another_configs_jobs_is_refused_whole_and_touches_nothing(tmp_path,
                                                                              warm_data):
    """Defect 1: the default config named like a finished smoke sweep maps onto its job
    directories; refused before multirun.yaml or any traceback is written."""
    assert run_cli(["-m", *SMOKE, "seed=0,1"], tmp_path, data_dir=warm_data).returncode == 0
    sweep = tmp_path / "outputs" / "sweeps" / "smoke"
    before = _snapshot(tmp_path / "outputs")
    assert "seed=0/result.json" in str(list(before))

    line = _refused(run_cli(["-m", "seed=0,1", "name=smoke"], tmp_path, data_dir=warm_data),
                    "outputs/sweeps/smoke/seed=0 holds a job with a different config")
    assert "hydra.sweep.dir" in line and "name" in line
    assert _snapshot(tmp_path / "outputs") == before

    # a single run aimed at the same directory: refused too, before anything is written
    _refused(run_cli(["seed=0", f"hydra.run.dir='{sweep / 'seed=0'}'"], tmp_path,
                     data_dir=warm_data), f"{sweep / 'seed=0'} holds a job")
    assert _snapshot(tmp_path / "outputs") == before

    # an unfinished job (checkpoints, no result.json) is known by its checkpoint's fingerprint
    os.remove(sweep / "seed=0" / "result.json")
    before = _snapshot(tmp_path / "outputs")
    _refused(run_cli(["-m", "seed=0,1", "name=smoke"], tmp_path, data_dir=warm_data),
             "outputs/sweeps/smoke/seed=0 holds a job with a different config (checkpoint")
    assert _snapshot(tmp_path / "outputs") == before


@pytest.mark.parametrize("args,needle", [
    (["optimizer.lrr=0.1"], "error: unknown option optimizer.lrr (did you mean optimizer.lr?)"),
    (["+optimizer.lrr=0.1"], "error: unknown option optimizer.lrr (did you mean optimizer.lr?)"),
    (["++optimizer.lrr=0.1"], "error: unknown option optimizer.lrr (did you mean optimizer.lr?)"),
    (["+train.epoch=5"], "error: unknown option train.epoch (did you mean train.epochs?)"),
    (["optimizerr=adam"], "error: unknown option optimizerr (did you mean optimizer?)"),
    (["+optimizer.lr=0.2"], "optimizer.lr is already an option: set it with optimizer.lr=0.2"),
    (["-m", "+optimizer.lrr=0.1,0.2"], "unknown option optimizer.lrr (did you mean optimizer.lr?)"),
    (["-m", "optimizer.lrr=0.1,0.2"], "unknown option optimizer.lrr (did you mean optimizer.lr?)"),
    # an option renamed since the previous release (landscope.config.renames): its new name
    (["optimizer.llp_c=2"], "error: unknown option optimizer.llp_c: renamed optimizer.llp.c"),
    (["+optimizer.llp_eps=0.001"],
     "error: unknown option optimizer.llp_eps: renamed optimizer.llp.eps"),
    (["-m", "optimizer=llp", "optimizer.llp_every=2,3"],
     "unknown option optimizer.llp_every: renamed optimizer.llp.every"),
    (["probe.pacbayes_n_mc=7"],
     "error: unknown option probe.pacbayes_n_mc: renamed probe.pacbayes.n_mc"),
    # the old switch's path is the group's now: Hydra reads it as a value for the whole group
    (["probe.pacbayes=true"],
     "error: probe.pacbayes is a group now: use probe.pacbayes.enabled=true"),
    (["+probe.pacbayes=true"],
     "error: probe.pacbayes is a group now: use probe.pacbayes.enabled=true"),
    (["-m", "probe.pacbayes=true,false"],
     "probe.pacbayes is a group now: use probe.pacbayes.enabled=true"),
    # the probe estimators' switches and settings (probe.trace.*, probe.density.*, ...)
    (["probe.trace_rse=0.05"], "error: unknown option probe.trace_rse: renamed probe.trace.rse"),
    (["probe.slq_steps=20"], "error: unknown option probe.slq_steps: renamed probe.density.steps"),
    (["+probe.keskar_epsilons=[0.01]"], "error: unknown option probe.keskar_epsilons: "
     "renamed probe.sharpness.keskar_epsilons"),
    (["probe.noise_alignment=exact"],
     "error: unknown option probe.noise_alignment: renamed probe.noise.alignment"),
    (["probe.trace=false"], "error: probe.trace is a group now: use probe.trace.enabled=false"),
    (["+probe.density=true"],
     "error: probe.density is a group now: use probe.density.enabled=true"),
    (["probe.noise=true"], "error: probe.noise is a group now: use probe.noise.enabled=true"),
    (["-m", "probe.sharpness=true,false"],
     "probe.sharpness is a group now: use probe.sharpness.enabled=true"),
    # the landscape parts' switches and settings (landscape.line.*, landscape.plane.*, ...)
    (["landscape.line_points=11"],
     "error: unknown option landscape.line_points: renamed landscape.line.points"),
    (["landscape.snapshot_dtype=float16"], "error: unknown option landscape.snapshot_dtype: "
     "renamed landscape.trajectory.snapshot_dtype"),
    (["landscape.intrinsic_dim=true"],
     "error: unknown option landscape.intrinsic_dim: renamed landscape.intrinsic.enabled"),
    (["landscape.line=true"],
     "error: landscape.line is a group now: use landscape.line.enabled=true"),
    (["+landscape.plane=false"],
     "error: landscape.plane is a group now: use landscape.plane.enabled=false"),
    (["-m", "landscape.trajectory=true,false"],
     "landscape.trajectory is a group now: use landscape.trajectory.enabled=true"),
])
def test_keys_the_schema_lacks_are_refused_and_never_advised(tmp_path, warm_data, args, needle):
    """Defect 2: ``+``/``++`` cannot add options, and no message suggests them."""
    line = _refused(run_cli([*args, *SMOKE], tmp_path, data_dir=warm_data), needle)
    assert "+" not in line.split("]: ")[-1]  # a sweep's line may quote the job's overrides
    assert not (tmp_path / "outputs").exists()


def _compose(overrides):
    """A job's config with its ``hydra`` node, as the runner's checks see it."""
    from hydra import compose, initialize_config_dir

    from landscope.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("overrides", [
    ["+train.grad_clip=1.0"],  # a schema option that is null: + sets it
    ["++optimizer.lr=0.2"],  # ++ on an existing option sets it
    ["optimizer=adam", "optimizer.name=adam"], ["model.name=mlp"],  # agreeing choices
])
def test_overrides_within_the_schema_still_validate(overrides):
    validate(_compose(overrides))


@pytest.mark.parametrize("overrides,message", [
    (["model.init_scale=inf"], "model.init_scale must be a finite number (got inf)"),
    (["model.init_scale=nan"], "model.init_scale must be a finite number (got nan)"),
    (["train.checkpoint_interval_s=inf"], "train.checkpoint_interval_s must be a finite"),
    (["probe.sharpness.rhos=[0.05,inf]"], "probe.sharpness.rhos must be a finite"),
    (["train.grad_clip=-inf"], "train.grad_clip must be a finite"),
    (["dataset=quadratic", "model=quadratic", "dataset.condition=inf"],
     "dataset.condition must be a finite"),
    (["optimizer=adam", "optimizer.name=sgd"], "optimizer.name=sgd contradicts the optimizer "
                                               "preset adam: choose it with optimizer=sgd"),
    (["optimizer.name=adam"], "optimizer.name=adam contradicts the optimizer preset sgd"),
    (["model=cnn", "model.name=mlp"], "model.name=mlp contradicts the model preset cnn"),
    (["dataset=digits", "dataset.name=mnist1d"], "dataset.name=mnist1d contradicts"),
    (["probe=basic", "probe.name=full"], "probe.name=full contradicts the probe preset basic"),
    (["landscape=none", "++landscape.name=full"], "landscape.name=full contradicts"),
    (["logger.name=wandb"], "logger.name=wandb contradicts the logger preset none"),
])
def test_non_finite_numbers_and_contradicting_choices_are_refused(overrides, message):
    """Defect 15 (b, c), in process: every numeric option, every named group."""
    with pytest.raises(ConfigError) as err:
        validate(_compose(overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("args,needle", [
    (["model.init_scale=inf"], "model.init_scale must be a finite number (got inf)"),
    (["-m", "model.init_scale=1.0,nan"], "model.init_scale must be a finite number (got nan)"),
    (["optimizer=adam", "optimizer.name=sgd"], "optimizer.name=sgd contradicts"),
    (["-m", "optimizer=sgd,adam", "optimizer.name=sgd"], "optimizer.name=sgd contradicts"),
])
def test_runner_refuses_non_finite_and_contradictions_up_front(tmp_path, warm_data, args,
                                                               needle):
    """Defect 15 (b, c): refused before a directory is written, sweeps included."""
    _refused(run_cli([*args, *SMOKE], tmp_path, data_dir=warm_data), needle)
    assert not (tmp_path / "outputs").exists()


LONG = "probe.sharpness.rhos=[" + ",".join(f"0.{i:04d}1" for i in range(1, 41)) + "]"


@pytest.mark.parametrize("args", [["-m", "seed=0,1", LONG], ["seed=0", LONG]])
def test_job_directory_names_over_255_bytes_are_refused_up_front(tmp_path, warm_data, args):
    """Defect 15 (a): a long override list makes a directory name no filesystem takes."""
    line = _refused(run_cli([*args, *SMOKE], tmp_path, data_dir=warm_data),
                    "(the limit is 255)")
    assert "hydra.job.config.override_dirname.exclude_keys" in line
    assert not (tmp_path / "outputs").exists()
