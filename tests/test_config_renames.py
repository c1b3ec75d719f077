"""Options renamed since the previous release (``optimizer.llp_*`` -> ``optimizer.llp.*``;
``probe.pacbayes`` -> ``probe.pacbayes.enabled`` and ``probe.pacbayes_*`` ->
``probe.pacbayes.*``, the old switch's path now the group's; the landscape parts ``landscape.line``
-> ``landscape.line.enabled``, ``landscape.line_*`` -> ``landscape.line.*`` and likewise
``plane``, ``trajectory``, ``intrinsic`` and ``bezier``): the names map, stored configs of
the old layout still load, a command line with an old name is one line
(tests/test_refusals.py), and a job directory named with the old spelling is renamed to the
current one before its job runs (single runs and sweeps)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import run_cli
from landscope.config import Config
from landscope.config.renames import RENAMED, legacy_dirname, renamed, to_current, to_legacy

LLP_KEYS = ("probes", "eps", "every", "rule", "c", "curvature", "aggregate", "ema", "damping",
            "seed",
            # added since the release (the meta-model, issue 21), flattened alike
            "meta", "meta_action", "meta_ridge", "meta_warmup", "meta_horizon", "meta_min_scale")
PACBAYES_KEYS = ("data_size", "n_mc", "n_select", "delta", "delta_mc", "beta_grid", "posterior",
                 "steps", "lr_mean", "lr_var", "batch_size", "n_match")


def test_the_llp_options_moved_into_their_group():
    from landscope.config_checks import option_names

    llp = {k: v for k, v in RENAMED.items() if k.startswith("optimizer.")}
    assert llp == {f"optimizer.llp_{k}": f"optimizer.llp.{k}" for k in LLP_KEYS}
    names = set(option_names())
    assert set(RENAMED.values()) <= names
    # an old switch (probe.pacbayes, landscape.line) is a current name too (its group's); no other
    switches = {old for old, new in RENAMED.items() if new == f"{old}.enabled"}
    assert set(RENAMED) & names == switches and "probe.pacbayes" in switches
    assert renamed("optimizer.llp_c") == "optimizer.llp.c" and renamed("optimizer.lr") is None


def test_the_pacbayes_options_moved_into_their_group():
    pb = {k: v for k, v in RENAMED.items() if k.startswith("probe.pacbayes")}
    assert pb == {"probe.pacbayes": "probe.pacbayes.enabled",
                  **{f"probe.pacbayes_{k}": f"probe.pacbayes.{k}" for k in PACBAYES_KEYS}}
    # the switch leaves the group's path before any option moves into the group
    order = list(RENAMED)
    assert order.index("probe.pacbayes") < min(order.index(f"probe.pacbayes_{k}")
                                               for k in PACBAYES_KEYS)
    assert renamed("probe.pacbayes_n_mc") == "probe.pacbayes.n_mc"
    assert renamed("probe.pacbayes") == "probe.pacbayes.enabled"
    assert renamed("probe.pacbayes_hessian") is None  # a result's name, not an option


def _tree(compose, overrides) -> dict:
    return OmegaConf.to_container(compose(overrides), resolve=True, enum_to_str=True)


def test_a_config_goes_to_the_old_layout_and_back(compose):
    tree = _tree(compose, ["optimizer=llp", "optimizer.llp.c=2", "optimizer.llp.seed=3"])
    old = to_legacy(tree)
    assert "llp" not in old["optimizer"]
    assert old["optimizer"]["llp_c"] == 2.0 and old["optimizer"]["llp_seed"] == 3
    assert {k for k in old["optimizer"] if k.startswith("llp_")} == {f"llp_{k}" for k in LLP_KEYS}
    assert to_current(old) == tree and to_legacy(to_current(old)) == old


@pytest.mark.parametrize("overrides", [
    ["probe=standard"],  # the switch off, every setting at its default
    ["probe=pacbayes"],  # the switch on
    ["probe=standard", "probe.pacbayes.n_mc=7", "probe.pacbayes.beta_grid=[0.5]"],  # off, set
    ["probe=pacbayes", "probe.pacbayes.n_mc=7", "probe.pacbayes.posterior=grid",
     "probe.pacbayes.data_size=100"],  # on, set
    ["probe=none", "probe.pacbayes.enabled=true", "optimizer=llp", "optimizer.llp.c=2"],
])
def test_a_config_with_the_pacbayes_group_goes_to_the_old_layout_and_back(compose, overrides):
    tree = _tree(compose, overrides)
    group = tree["probe"]["pacbayes"]
    old = to_legacy(tree)
    assert old["probe"]["pacbayes"] is group["enabled"]  # the switch, a bool, back in its place
    assert {k: old["probe"][f"pacbayes_{k}"] for k in PACBAYES_KEYS} == {
        k: group[k] for k in PACBAYES_KEYS}
    assert not [k for k in old["probe"] if k.startswith("pacbayes.")]
    assert to_current(old) == tree and to_legacy(to_current(old)) == old
    # each translation leaves a tree already in its layout alone
    assert to_current(tree) == tree and to_legacy(old) == old
    # the order of the keys in the tree does not matter: settings before the switch
    flipped = {**old, "probe": dict(reversed(list(old["probe"].items())))}
    assert to_current(flipped) == tree
    inner = {**tree, "probe": {**tree["probe"], "pacbayes": dict(reversed(list(group.items())))}}
    assert to_legacy(inner) == old


@pytest.mark.parametrize("old, current", [
    ({"probe": {"pacbayes": True}}, {"probe": {"pacbayes": {"enabled": True}}}),
    ({"probe": {"pacbayes": False}}, {"probe": {"pacbayes": {"enabled": False}}}),
    ({"probe": {"pacbayes_n_mc": 7}}, {"probe": {"pacbayes": {"n_mc": 7}}}),  # no switch
    ({"probe": {"pacbayes_n_mc": 7, "pacbayes": True, "top_k": 3}},  # settings first
     {"probe": {"pacbayes": {"enabled": True, "n_mc": 7}, "top_k": 3}}),
    ({"probe": {"top_k": 3}}, {"probe": {"top_k": 3}}),  # neither
    ({"probe": {"pacbayes": None}}, {"probe": {"pacbayes": {"enabled": None}}}),
])
def test_partial_pacbayes_trees_go_both_ways(old, current):
    assert to_current(old) == current
    assert to_legacy(current) == old
    assert to_current(current) == current and to_legacy(old) == old


def test_a_group_with_options_left_in_it_is_not_replaced_by_the_switch():
    # an option the map does not know (a later release's) keeps the group: nothing is lost
    tree = {"probe": {"pacbayes": {"enabled": True, "n_mc": 7, "later": 1}}}
    assert to_legacy(tree) == {"probe": {"pacbayes": {"enabled": True, "later": 1},
                                         "pacbayes_n_mc": 7}}


def _old_job(path: Path, tree: dict) -> Path:
    """A job directory whose config.yaml the previous release wrote (flat llp_* names)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(to_legacy(tree), sort_keys=False))
    return path


def test_a_stored_config_of_the_old_layout_loads_under_the_new_names(compose, tmp_path):
    from landscope.analysis.collect import config_columns
    from landscope.fingerprints import fingerprint
    from landscope.jobcheck import saved_config_fingerprint
    from landscope.jobdir import JobDir

    cfg = compose(["optimizer=llp", "optimizer.llp.c=2", "optimizer.llp.every=3"])
    job = JobDir(_old_job(tmp_path / "old", _tree(compose, ["optimizer=llp", "optimizer.llp.c=2",
                                                             "optimizer.llp.every=3"])))
    assert "llp_c" in (job.path / "config.yaml").read_text()
    typed = job.config()
    assert typed.optimizer.llp.c == 2.0 and typed.optimizer.llp.every == 3
    assert job.config(typed=False).optimizer.llp.c == 2.0
    assert job.saved_config()["optimizer"]["llp"]["c"] == 2.0
    columns, note = config_columns(job)
    assert note is None and columns["optimizer.llp.c"] == 2.0
    assert not [k for k in columns if k.startswith("optimizer.llp_")]
    assert saved_config_fingerprint(job.path, fingerprint) == fingerprint(cfg)


@pytest.mark.parametrize("overrides", [
    ["probe=pacbayes", "probe.pacbayes.n_mc=7", "probe.pacbayes.beta_grid=[0.5,1.0]"],
    ["probe=standard", "probe.pacbayes.n_mc=7"],  # switch off, a setting changed
    ["+experiment=h4_binary"],
])
def test_a_stored_pacbayes_config_of_the_old_layout_loads_under_the_new_names(compose, tmp_path,
                                                                              overrides):
    from landscope.analysis.collect import config_columns
    from landscope.fingerprints import fingerprint, probe_fingerprint
    from landscope.fingerprints_v1 import probe_fingerprint_v1
    from landscope.jobcheck import saved_config_fingerprint
    from landscope.jobdir import JobDir

    try:
        cfg = compose(overrides)
    except Exception:  # noqa: BLE001 - experiment given without + where it is a default
        overrides = [o.lstrip("+") for o in overrides]
        cfg = compose(overrides)
    tree = _tree(compose, overrides)
    job = JobDir(_old_job(tmp_path / "old", tree))
    text = (job.path / "config.yaml").read_text()
    stored = yaml.safe_load(text)["probe"]
    assert "pacbayes_n_mc:" in text and "enabled" not in yaml.safe_dump(stored)
    assert isinstance(stored["pacbayes"], bool)
    typed = job.config()
    pb = cfg.probe.pacbayes
    assert typed.probe.pacbayes.enabled == pb.enabled and typed.probe.pacbayes.n_mc == pb.n_mc
    assert list(typed.probe.pacbayes.beta_grid) == list(pb.beta_grid)
    assert OmegaConf.to_container(typed.probe) == OmegaConf.to_container(cfg.probe)
    assert job.config(typed=False).probe.pacbayes.n_mc == pb.n_mc
    assert job.saved_config()["probe"]["pacbayes"]["enabled"] is pb.enabled
    columns, note = config_columns(job)
    # the analysis reads a setting the job does not read (the bound off) at its default
    read = pb.n_mc if pb.enabled else OmegaConf.structured(Config()).probe.pacbayes.n_mc
    assert note is None and columns["config.probe.pacbayes.n_mc"] == read
    assert bool(columns["config.probe.pacbayes.enabled"]) is pb.enabled
    assert not [k for k in columns if "pacbayes_" in k]
    assert saved_config_fingerprint(job.path, fingerprint) == fingerprint(cfg)
    assert probe_fingerprint(typed) == probe_fingerprint(cfg)
    assert probe_fingerprint_v1(typed) == probe_fingerprint_v1(cfg)


def test_the_figures_read_an_old_config(compose, tmp_path):
    from landscope.plot_jobs import _lr

    job = _old_job(tmp_path / "old", _tree(compose, ["optimizer=momentum"]))
    assert _lr(job) == pytest.approx(0.03 / 1.9)


@pytest.mark.parametrize("name,old", [
    ("optimizer.llp.c=2,optimizer=llp,seed=0", "optimizer.llp_c=2,optimizer=llp,seed=0"),
    ("+optimizer.llp.seed=3,optimizer.llp.every=2,optimizer.lr=0.1",
     "+optimizer.llp_seed=3,optimizer.llp_every=2,optimizer.lr=0.1"),
    ("optimizer.betas=[0.9,0.99],optimizer.llp.ema=0.5",
     "optimizer.betas=[0.9,0.99],optimizer.llp_ema=0.5"),
    ("optimizer.llp.c=2", "optimizer.llp_c=2"),
    ("probe.pacbayes.enabled=true,probe=standard", "probe.pacbayes=true,probe=standard"),
    ("probe.pacbayes.n_mc=7,probe=pacbayes,seed=0", "probe.pacbayes_n_mc=7,probe=pacbayes,seed=0"),
    # Hydra sorts the old spelling: "probe.pacbayes=" before "probe.pacbayes_"
    ("probe.pacbayes.beta_grid=[0.1,1.0],probe.pacbayes.enabled=true,probe.pacbayes.n_mc=7",
     "probe.pacbayes=true,probe.pacbayes_beta_grid=[0.1,1.0],probe.pacbayes_n_mc=7"),
    ("optimizer.llp.c=2,probe.pacbayes.delta=0.01",
     "optimizer.llp_c=2,probe.pacbayes_delta=0.01"),
    ("probe.pacbayes.enabled=true", "probe.pacbayes=true"),
    ("probe.pacbayes_hessian=1", "probe.pacbayes_hessian=1"),  # not an option name of the map
    ("optimizer.lr=0.1,seed=0", "optimizer.lr=0.1,seed=0"),  # nothing renamed: unchanged
    ("optimizer.llp.cc=2", "optimizer.llp.cc=2"),  # not an option name of the map
    ("smoke", "smoke"),
])
def test_legacy_dirname_spells_a_directory_name_the_old_way(name, old):
    assert legacy_dirname(name) == old


def test_legacy_dirname_with_other_separators():
    assert legacy_dirname("optimizer.llp.c:2__seed:0", "__", ":") == "optimizer.llp_c:2__seed:0"


def test_legacy_job_dir_only_when_the_new_one_is_absent_or_empty(tmp_path):
    from landscope.legacy_dirs import adopt_legacy_dir, legacy_job_dir

    new = tmp_path / "sweep" / "optimizer.llp.c=2,seed=0"
    old = tmp_path / "sweep" / "optimizer.llp_c=2,seed=0"
    assert legacy_job_dir(new) is None  # no old directory
    old.mkdir(parents=True)
    (old / "result.json").write_text("{}")
    assert legacy_job_dir(new) == old
    new.mkdir()
    assert legacy_job_dir(new) == old  # an empty directory (a launcher made it) is replaced
    (new / "config.yaml").write_text("seed: 0\n")
    assert legacy_job_dir(new) is None  # the new one holds something: leave both alone
    (new / "config.yaml").unlink()
    assert adopt_legacy_dir(new, old)
    assert not old.exists() and (new / "result.json").read_text() == "{}"
    assert legacy_job_dir(tmp_path / "sweep" / "seed=0") is None  # nothing renamed


def test_legacy_job_dir_finds_a_pacbayes_directory_of_the_old_spelling(tmp_path):
    from landscope.legacy_dirs import legacy_job_dir

    new = tmp_path / "sweep" / "probe.pacbayes.enabled=true,probe.pacbayes.n_mc=7,seed=0"
    old = tmp_path / "sweep" / "probe.pacbayes=true,probe.pacbayes_n_mc=7,seed=0"
    old.mkdir(parents=True)
    assert legacy_job_dir(new) == old


def test_a_locked_old_directory_is_not_renamed(tmp_path):
    from landscope.joblock import job_lock
    from landscope.legacy_dirs import adopt_legacy_dir

    new, old = tmp_path / "optimizer.llp.c=2", tmp_path / "optimizer.llp_c=2"
    old.mkdir()
    with job_lock(old):
        assert not adopt_legacy_dir(new, old)
    assert old.is_dir() and not new.exists()


# ------------------------------------------------------------------ the landscape parts
LANDSCAPE_GROUPS = {  # old switch -> its group, and the old names of the group's settings
    "line": ("line", {f"line_{k}": k for k in ("directions", "eigen", "points", "range")}),
    "plane": ("plane", {f"plane_{k}": k for k in ("points", "range", "eigen")}),
    "trajectory": ("trajectory", {"snapshot_every_steps": "snapshot_every_steps",
                                  "snapshot_dtype": "snapshot_dtype",
                                  "trajectory_points": "points"}),
    "intrinsic_dim": ("intrinsic", {f"intrinsic_{k}": k
                                    for k in ("dims", "projection", "epochs", "lr")}),
    "bezier": ("bezier", {f"bezier_{k}": k for k in ("epochs", "lr")}),
}


def test_the_landscape_options_moved_into_their_groups():
    land = {k: v for k, v in RENAMED.items() if k.startswith("landscape.")}
    expected = {}
    for switch, (group, settings) in LANDSCAPE_GROUPS.items():
        expected[f"landscape.{switch}"] = f"landscape.{group}.enabled"
        expected.update({f"landscape.{old}": f"landscape.{group}.{new}"
                         for old, new in settings.items()})
    assert land == expected
    order = list(RENAMED)
    for switch, (_group, settings) in LANDSCAPE_GROUPS.items():
        # the switch leaves the group's path before any option moves into the group
        assert order.index(f"landscape.{switch}") < min(order.index(f"landscape.{old}")
                                                        for old in settings)
    assert renamed("landscape.line") == "landscape.line.enabled"
    assert renamed("landscape.snapshot_dtype") == "landscape.trajectory.snapshot_dtype"
    assert renamed("landscape.path_points") is None  # stays where it was
    assert renamed("landscape.line_train_rise_mean") is None  # a result's name, not an option


def _landscape_old_layout_matches(tree: dict, old: dict) -> None:
    for switch, (group, settings) in LANDSCAPE_GROUPS.items():
        node = tree["landscape"][group]
        assert old["landscape"][switch] is node["enabled"]  # the switch, a bool, in its place
        assert {o: old["landscape"][o] for o in settings} == {o: node[n]
                                                              for o, n in settings.items()}
    assert not [k for k in old["landscape"] if isinstance(old["landscape"][k], dict)]
    assert "intrinsic" not in old["landscape"]


@pytest.mark.parametrize("overrides", [
    ["landscape=basic"],
    ["landscape=full"],
    ["landscape=none"],
    ["landscape=basic", "landscape.line.points=11", "landscape.line.range=0.5",
     "landscape.plane.enabled=true", "landscape.plane.eigen=true",
     "landscape.trajectory.snapshot_dtype=float16", "landscape.intrinsic.dims=[4,16]",
     "landscape.bezier.enabled=false", "landscape.bezier.lr=0.1"],
    ["landscape=full", "landscape.line.enabled=false", "landscape.trajectory.points=7",
     "landscape.trajectory.snapshot_every_steps=3", "landscape.intrinsic.projection=dense",
     "probe.pacbayes.enabled=true", "optimizer=llp", "optimizer.llp.c=2"],
    ["experiment=study_width"],
])
def test_a_config_with_the_landscape_groups_goes_to_the_old_layout_and_back(compose, overrides):
    tree = _tree(compose, overrides)
    old = to_legacy(tree)
    _landscape_old_layout_matches(tree, old)
    assert to_current(old) == tree and to_legacy(to_current(old)) == old
    # each translation leaves a tree already in its layout alone
    assert to_current(tree) == tree and to_legacy(old) == old
    # the order of the keys does not matter: settings before the switches, and inside a group
    flipped = {**old, "landscape": dict(reversed(list(old["landscape"].items())))}
    assert to_current(flipped) == tree
    inner = {**tree, "landscape": {k: dict(reversed(list(v.items()))) if isinstance(v, dict)
                                   else v for k, v in reversed(list(tree["landscape"].items()))}}
    assert to_legacy(inner) == old


@pytest.mark.parametrize("old, current", [
    ({"landscape": {"line": True}}, {"landscape": {"line": {"enabled": True}}}),
    ({"landscape": {"line_points": 11, "line": False}},  # a setting before its switch
     {"landscape": {"line": {"enabled": False, "points": 11}}}),
    ({"landscape": {"snapshot_dtype": "float16"}},  # no switch
     {"landscape": {"trajectory": {"snapshot_dtype": "float16"}}}),
    ({"landscape": {"intrinsic_dims": [4], "intrinsic_dim": True, "seed": 1}},
     {"landscape": {"intrinsic": {"enabled": True, "dims": [4]}, "seed": 1}}),
    ({"landscape": {"bezier": False, "bezier_lr": 0.1, "path_points": 11}},
     {"landscape": {"bezier": {"enabled": False, "lr": 0.1}, "path_points": 11}}),
    ({"landscape": {"plane": True, "line": True}},
     {"landscape": {"plane": {"enabled": True}, "line": {"enabled": True}}}),
    ({"landscape": {"seed": 1}}, {"landscape": {"seed": 1}}),  # neither
])
def test_partial_landscape_trees_go_both_ways(old, current):
    assert to_current(old) == current
    assert to_legacy(current) == old
    assert to_current(current) == current and to_legacy(old) == old


@pytest.mark.parametrize("overrides", [
    ["landscape=basic", "landscape.line.points=11"],
    ["landscape=full", "landscape.plane.points=11", "landscape.trajectory.points=7",
     "landscape.trajectory.snapshot_dtype=float16", "landscape.intrinsic.dims=[4,16]",
     "landscape.intrinsic.epochs=3"],
    ["landscape=none", "landscape.bezier.enabled=false", "landscape.bezier.epochs=3"],
    ["experiment=study_optimizers"],
])
def test_a_stored_landscape_config_of_the_old_layout_loads_under_the_new_names(compose,
                                                                               tmp_path,
                                                                               overrides):
    from landscope.analysis.collect import config_columns
    from landscope.fingerprints import fingerprint, landscape_fingerprint
    from landscope.fingerprints_v1 import landscape_fingerprint_v1
    from landscope.jobcheck import saved_config_fingerprint
    from landscope.jobdir import JobDir

    cfg = compose(overrides)
    job = JobDir(_old_job(tmp_path / "old", _tree(compose, overrides)))
    stored = yaml.safe_load((job.path / "config.yaml").read_text())["landscape"]
    assert isinstance(stored["line"], bool) and "trajectory_points" in stored
    assert "intrinsic" not in stored and "enabled" not in str(stored)
    typed = job.config()
    assert OmegaConf.to_container(typed.landscape) == OmegaConf.to_container(cfg.landscape)
    assert typed.landscape.line.points == cfg.landscape.line.points
    assert typed.landscape.trajectory.snapshot_dtype == cfg.landscape.trajectory.snapshot_dtype
    assert job.config(typed=False).landscape.plane.enabled == cfg.landscape.plane.enabled
    assert job.saved_config()["landscape"]["bezier"]["enabled"] is cfg.landscape.bezier.enabled
    columns, note = config_columns(job)
    assert note is None and columns["config.landscape.line.points"] == cfg.landscape.line.points
    assert bool(columns["config.landscape.intrinsic.enabled"]) is cfg.landscape.intrinsic.enabled
    assert not [k for k in columns if k.startswith("config.landscape.line_")]
    assert saved_config_fingerprint(job.path, fingerprint) == fingerprint(cfg)
    assert landscape_fingerprint(typed) == landscape_fingerprint(cfg)
    assert landscape_fingerprint_v1(typed) == landscape_fingerprint_v1(cfg)


@pytest.mark.parametrize("name,old", [
    ("landscape.line.enabled=true,landscape=none", "landscape.line=true,landscape=none"),
    # Hydra sorts the old spelling: "landscape.line=" before "landscape.line_"
    ("landscape.line.directions=1,landscape.line.enabled=true,landscape.line.points=5",
     "landscape.line=true,landscape.line_directions=1,landscape.line_points=5"),
    ("landscape.data_size=64,landscape.line.directions=1,landscape.line.points=5,"
     "landscape=basic,optimizer.llp.c=2",
     "landscape.data_size=64,landscape.line_directions=1,landscape.line_points=5,"
     "landscape=basic,optimizer.llp_c=2"),
    ("landscape.trajectory.enabled=true,landscape.trajectory.snapshot_dtype=float16",
     "landscape.snapshot_dtype=float16,landscape.trajectory=true"),
    ("landscape.intrinsic.dims=[4,16],landscape.intrinsic.enabled=true,seed=0",
     "landscape.intrinsic_dim=true,landscape.intrinsic_dims=[4,16],seed=0"),
    ("landscape.bezier.enabled=false,landscape.path_points=11",
     "landscape.bezier=false,landscape.path_points=11"),
    ("landscape.plane.eigen=true,landscape.plane.points=11",
     "landscape.plane_eigen=true,landscape.plane_points=11"),
    ("landscape.path_points=11,landscape.seed=1", "landscape.path_points=11,landscape.seed=1"),
])
def test_legacy_dirname_spells_a_landscape_directory_name_the_old_way(name, old):
    assert legacy_dirname(name) == old


def test_legacy_job_dir_finds_a_landscape_directory_of_the_old_spelling(tmp_path):
    from landscope.legacy_dirs import legacy_job_dir

    new = tmp_path / "sweep" / "landscape.line.points=5,landscape.plane.enabled=true,seed=0"
    old = tmp_path / "sweep" / "landscape.line_points=5,landscape.plane=true,seed=0"
    old.mkdir(parents=True)
    assert legacy_job_dir(new) == old


# ------------------------------------------------------------------ through the runner
TINY = ["experiment=smoke", "model.width=8", "model.depth=1", "dataset.train_size=128",
        "dataset.test_size=64", "train.epochs=1", "optimizer=llp", "optimizer.llp.every=3"]


@pytest.fixture(scope="module")
def warm_data(data_dir):
    """Generate MNIST-1D once so subprocesses only read the cache."""
    from landscope.config import DatasetConfig
    from landscope.data import load_data

    load_data(DatasetConfig(data_dir=str(data_dir)))
    return data_dir


def assert_renamed_and_skipped(args, cwd, data_dir, job, old, result) -> None:
    """Running ``args`` again finds the job in its old-named directory ``old``: one logged
    rename to ``job``, then skipped as done, result.json unchanged (neither rerun nor redone)."""
    again = run_cli(args, cwd, data_dir=data_dir)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out
    assert f"renamed from {old.name}" in out and "skipped: already done" in out
    assert job.is_dir() and not old.exists()
    assert json.loads((job / "result.json").read_text()) == result


def _make_old(job: Path) -> Path:
    """Turn a finished job into what the previous release left: its directory named with the
    old spelling and its config.yaml and overrides.yaml in the old names."""
    config = yaml.safe_load((job / "config.yaml").read_text())
    (job / "config.yaml").write_text(yaml.safe_dump(to_legacy(config), sort_keys=False))
    overrides = yaml.safe_load((job / "overrides.yaml").read_text())
    (job / "overrides.yaml").write_text(yaml.safe_dump(
        [legacy_dirname(o) for o in overrides]))
    old = job.with_name(legacy_dirname(job.name))
    job.rename(old)
    return old


@pytest.mark.parametrize("multirun", [True, False])
def test_a_job_directory_named_the_old_way_is_renamed_and_its_job_kept(tmp_path, warm_data,
                                                                        multirun):
    args = [*(["-m"] if multirun else []), *TINY, "optimizer.llp.c=2", "seed=0"]
    first = run_cli(args, tmp_path, data_dir=warm_data)
    assert first.returncode == 0, first.stdout + first.stderr
    (job,) = (tmp_path / "outputs" / ("sweeps" if multirun else "runs") / "smoke").glob("*=*")
    assert "optimizer.llp.c=2" in job.name
    result = json.loads((job / "result.json").read_text())
    old = _make_old(job)
    assert "optimizer.llp_c=2" in old.name and not job.exists()

    assert_renamed_and_skipped(args, tmp_path, warm_data, job, old, result)


def test_a_pacbayes_job_directory_named_the_old_way_is_renamed_and_its_job_kept(tmp_path,
                                                                               warm_data):
    """The old switch and a setting in the name (``probe.pacbayes=true,probe.pacbayes_n_mc=20``):
    the sweep finds the job there, renames the directory, and neither retrains nor re-probes."""
    args = ["-m", "experiment=smoke", "model.width=8", "dataset.train_size=128",
            "dataset.test_size=64", "train.epochs=1", "probe=basic", "probe.pacbayes.enabled=true",
            "probe.pacbayes.n_mc=20", "probe.pacbayes.posterior=grid",
            "probe.pacbayes.n_select=2", "seed=0"]
    first = run_cli(args, tmp_path, data_dir=warm_data)
    assert first.returncode == 0, first.stdout + first.stderr
    (job,) = (tmp_path / "outputs" / "sweeps" / "smoke").glob("*=*")
    result = json.loads((job / "result.json").read_text())
    assert result["probes"]["pacbayes_n_mc"] == 20.0
    old = _make_old(job)
    assert "probe.pacbayes=true" in old.name.lower() and "probe.pacbayes_n_mc=20" in old.name
    assert "pacbayes_n_mc: 20" in (old / "config.yaml").read_text()

    assert_renamed_and_skipped(args, tmp_path, warm_data, job, old, result)


def test_a_landscape_job_directory_named_the_old_way_is_renamed_and_its_job_kept(tmp_path,
                                                                                 warm_data):
    """Old switches and settings in the name (``landscape.line_points=5``,
    ``landscape.trajectory=true``, ...): the sweep finds the job there, renames the directory,
    and neither retrains nor scans again."""
    args = ["-m", "experiment=smoke", "model.width=8", "dataset.train_size=128",
            "dataset.test_size=64", "train.epochs=1", "landscape=basic",
            "landscape.data_size=64", "landscape.line.points=5", "landscape.line.directions=1",
            "landscape.trajectory.enabled=true", "landscape.trajectory.points=3", "seed=0"]
    first = run_cli(args, tmp_path, data_dir=warm_data)
    assert first.returncode == 0, first.stdout + first.stderr
    (job,) = (tmp_path / "outputs" / "sweeps" / "smoke").glob("*=*")
    result = json.loads((job / "result.json").read_text())
    assert "line_train_loss_centre" in result["landscape"]
    assert "trajectory_snapshots" in result["landscape"]
    old = _make_old(job)
    assert "landscape.line_points=5" in old.name and "landscape.trajectory=true" in old.name.lower()
    assert "trajectory_points: 3" in (old / "config.yaml").read_text()

    assert_renamed_and_skipped(args, tmp_path, warm_data, job, old, result)


def test_an_old_directory_holding_another_config_is_refused_and_left_alone(tmp_path,
                                                                           warm_data):
    args = ["-m", *TINY, "optimizer.llp.c=2", "seed=0"]
    assert run_cli(args, tmp_path, data_dir=warm_data).returncode == 0
    (job,) = (tmp_path / "outputs" / "sweeps" / "smoke").glob("*=*")
    other = job.with_name(job.name.replace("optimizer.llp.c=2", "optimizer.llp.c=3"))
    shutil.copytree(job, other)  # the c=2 job where the c=3 job would be
    old = _make_old(other)
    refused = run_cli(["-m", *TINY, "optimizer.llp.c=3", "seed=0"], tmp_path,
                      data_dir=warm_data)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"{old.name} holds a job with a different config" in refused.stderr
    assert old.is_dir() and not other.exists()
