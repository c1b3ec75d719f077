"""Launchers beyond the basic one (conf/hydra/launcher) and the W&B sweep generator
(runner.wandb_sweep): submitit_local gives the basic launcher's results, the SLURM preset
requeues into a resume, the Ray presets are well-formed, and the generated sweep YAML parses
and drives `python -m runner` with the right Hydra arguments."""

from __future__ import annotations

import itertools
import textwrap

import pytest
import yaml

from conftest import CONF, metrics_without_time, run_cli

SMOKE = ["experiment=smoke"]


@pytest.fixture(scope="module")
def warm_data(data_dir):
    from landscope.config import DatasetConfig
    from landscope.data import load_data

    load_data(DatasetConfig(data_dir=str(data_dir)))
    return data_dir


@pytest.mark.slow
def test_submitit_local_matches_basic_launcher(tmp_path, warm_data):
    args = ["-m", *SMOKE, "seed=0,1"]
    basic = run_cli([*args, "hydra.sweep.dir=basic"], tmp_path, data_dir=warm_data)
    sub = run_cli([*args, "hydra/launcher=submitit", "hydra.sweep.dir=sub"], tmp_path,
                  data_dir=warm_data, timeout=600)
    assert basic.returncode == 0 and sub.returncode == 0, sub.stderr[-2000:]
    for seed in ("seed=0", "seed=1"):
        assert metrics_without_time(tmp_path / "sub" / seed) == \
            metrics_without_time(tmp_path / "basic" / seed)
    assert (tmp_path / "sub" / ".submitit").is_dir()  # it really went through submitit
    assert "2 jobs: 2 completed" in sub.stdout


def hydra_launcher(compose, launcher: str, extra=()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from landscope.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", return_hydra_config=True,
                            overrides=[f"hydra/launcher={launcher}", *extra])
    return cfg.hydra.launcher


def test_slurm_preset_requeues_into_a_resume(compose):
    launcher = hydra_launcher(compose, "slurm", ["hydra.launcher.partition=gpu",
                                                 "hydra.launcher.gpus_per_node=1"])
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1
    assert launcher.max_num_timeout >= 1 and launcher.signal_delay_s > 0
    assert launcher.timeout_min > 0 and launcher.cpus_per_task >= 1
    # on SLURM's signal submitit calls the launcher's checkpoint(): the same task is
    # resubmitted with the same arguments, and the runner's resume=true continues the job
    import submitit

    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    delayed = BaseSubmititLauncher.checkpoint("launcher", "job-args", idx=3)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.args == ("job-args",) and delayed.kwargs == {"idx": 3}
    local = hydra_launcher(compose, "submitit")
    assert local._target_.endswith("LocalLauncher")


def test_ray_presets_are_well_formed():
    for name, address in (("ray_local", None), ("ray_cluster", "${oc.env:RAY_ADDRESS,auto}")):
        spec = yaml.safe_load((CONF / "hydra" / "launcher" / f"{name}.yaml").read_text())
        assert spec["defaults"] == ["ray"]  # hydra-ray-launcher's config node
        assert set(spec) == {"defaults", "ray"} and set(spec["ray"]) <= {"init", "remote"}
        assert spec["ray"]["init"]["address"] == address
        assert spec["ray"]["remote"]["num_cpus"] == 1


def test_joblib_preset_has_explicit_jobs_and_threads(compose):
    launcher = hydra_launcher(compose, "parallel", ["hydra.launcher.n_jobs=3"])
    assert launcher.n_jobs == 3 and launcher.backend == "loky"
    cfg = compose(["train.threads=2"])
    assert cfg.train.threads == 2


def test_wandb_sweep_yaml_drives_the_runner(tmp_path, compose, capsys):
    from runner.wandb_sweep import main

    out = tmp_path / "h2.sweep.yaml"
    main(["experiment=h2_skip", "train.epochs=3", "--out", str(out)])
    assert "16 runs" in capsys.readouterr().out
    spec = yaml.safe_load(out.read_text())
    assert spec["method"] == "grid" and spec["name"] == "h2_skip"
    assert spec["command"] == ["${env}", "${interpreter}", "-m", "runner", "experiment=h2_skip",
                               "train.epochs=3", "logger=wandb", "${args_no_hyphens}"]
    assert spec["parameters"] == {"model.skip": {"values": ["true", "false"]},
                                  "seed": {"values": [str(s) for s in range(8)]}}
    assert spec["metric"] == {"name": "final/test_acc", "goal": "maximize"}
    # what `wandb agent` runs for each combination composes into the intended job
    fixed = spec["command"][4:-1]
    keys = list(spec["parameters"])
    for values in itertools.islice(itertools.product(
            *(p["values"] for p in spec["parameters"].values())), 0, None, 5):
        args = [f"{k}={v}" for k, v in zip(keys, values)]  # ${args_no_hyphens}
        cfg = compose([*fixed, *args])
        assert cfg.model.skip is (values[0] == "true") and cfg.seed == int(values[1])
        assert cfg.train.epochs == 3 and cfg.logger.name.value == "wandb"


def test_wandb_sweep_command_line_sweeps_and_errors(tmp_path, capsys):
    from runner.wandb_sweep import main

    main(["optimizer=sgd,adam", "seed=range(0,3)", "--method", "random", "--out", "-"])
    spec = yaml.safe_load(capsys.readouterr().out)
    assert spec["parameters"] == {"optimizer": {"values": ["sgd", "adam"]},
                                  "seed": {"values": ["0", "1", "2"]}}
    assert spec["method"] == "random"
    for bad, needle in ((["optimizer=sgd,nope", "seed=0,1"], "optimizer/nope"),
                        (["seed=0,1", "optimizer.lr=-1"], "optimizer.lr must be > 0"),
                        (["train.epochs=2"], "nothing is swept"),
                        (["seed=0,1", "--method", "magic"], "--method must be one of"),
                        (["seed=0,1", "--frobnicate", "1"], "unknown option --frobnicate"),
                        (["experiment=study_training"], "hydra.sweeper.cases"),
                        (["seed=0,1", "optimizer.lrr=0.1"], "unknown option optimizer.lrr"),
                        (["seed=0,1", "optimizer=adam", "optimizer.name=sgd"],
                         "contradicts the optimizer preset adam")):
        with pytest.raises(SystemExit) as exit_info:
            main([*bad, "--out", str(tmp_path / "x.yaml")])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and err.startswith("error:") and needle in err
        assert len(err.splitlines()) == 1 and not (tmp_path / "x.yaml").exists()
        assert "To append" not in err and "+optimizer" not in err, err  # never advises +


def test_threads_per_job_follow_the_model_size_and_the_parallel_jobs(monkeypatch):
    """train.threads=null: one thread below 1M parameters (any number of parallel jobs);
    above, the cores shared among the jobs, at least one each; n_jobs as joblib reads it
    (-1: all cores)."""
    import types

    import landscope.jobtrain as jobs
    import runner.app as app

    monkeypatch.setattr(jobs, "available_cores", lambda: 8)
    assert jobs.default_threads(999_999, 1) == 1 and jobs.default_threads(50_000, 4) == 1
    assert jobs.default_threads(1_000_000, 1) == 8 and jobs.default_threads(2_000_000, 3) == 2
    assert jobs.default_threads(5_000_000, 16) == 1
    for n_jobs, expected in ((None, 1), (2, 2), (-1, 8), (-2, 7)):
        launcher = {} if n_jobs is None else {"n_jobs": n_jobs}
        monkeypatch.setattr(app, "HydraConfig", types.SimpleNamespace(
            get=lambda launcher=launcher: types.SimpleNamespace(launcher=launcher)))
        assert app._parallel_jobs() == expected, n_jobs


# A shim on PYTHONPATH, imported by every Python process of the sweep (sitecustomize): the
# job whose seed is $LANDSCOPE_TEST_KILL_SEED SIGKILLs its own process as training starts,
# as the out-of-memory killer would.  Only worker processes train, so the sweep survives.
_KILL_SHIM = textwrap.dedent("""
    import importlib.abc, importlib.util, os, signal, sys

    SEED = os.environ.get("LANDSCOPE_TEST_KILL_SEED")

    class _Patch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "landscope.jobs":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                train = module.train_job

                def train_job(cfg, *args, **kwargs):
                    if str(cfg.seed) == SEED:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return train(cfg, *args, **kwargs)

                module.train_job = train_job

            spec.loader.exec_module = exec_module
            return spec

    if SEED:
        sys.meta_path.insert(0, _Patch())
""")


@pytest.mark.slow
def test_a_killed_worker_fails_its_own_job_only(tmp_path, warm_data, compose):
    """Issue #17 defect 9: SIGKILL of one worker under hydra/launcher=parallel used to end the
    sweep with exit 2 and no table, killing the other job in flight.  Now that job alone is
    `failed` (result.json with the reason and the fingerprint), the others complete, the
    table is printed, the exit code is 1."""
    from conftest import REPO
    from landscope.io import read_json
    from landscope.jobs import fingerprint

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_KILL_SHIM)
    env = {"PYTHONPATH": f"{shim}:{REPO / 'src'}", "LANDSCOPE_TEST_KILL_SEED": "1"}
    args = ["-m", *SMOKE, "train.epochs=1", "hydra/launcher=parallel", "hydra.sweep.dir=par"]
    res = run_cli([*args, "seed=0,1,2"], tmp_path, data_dir=warm_data, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert "3 jobs: 2 completed, 1 failed" in res.stdout, out[-3000:]
    assert "worker process died (signal 9, SIGKILL)" in res.stdout
    assert "Traceback" not in out and "TerminatedWorkerError" not in out
    sweep = tmp_path / "par"
    job = {seed: next(sweep.glob(f"seed={seed},*")) for seed in (0, 1, 2)}  # seed=0,train...
    for seed in (0, 2):
        assert read_json(job[seed] / "result.json")["status"] == "completed"
    dead = read_json(job[1] / "result.json")
    assert dead["status"] == "failed" and dead["error"] == "worker process died (signal 9, SIGKILL)"
    assert dead["fingerprint"] == fingerprint(compose([*SMOKE, "train.epochs=1", "seed=1"]))
    assert dead["seed"] == 1 and dead["overrides"] and dead["versions"]
    assert "WorkerDied: worker process died" in (job[1] / "traceback.txt").read_text()



def test_worker_death_reasons_and_job_counts():
    from hydra_plugins.landscope_launcher.parallel_launcher import death_reason, n_workers
    from landscope.jobs import available_cores

    assert death_reason(-9) == "worker process died (signal 9, SIGKILL)"
    assert death_reason(-15) == "worker process died (signal 15, SIGTERM)"
    assert death_reason(3) == "worker process exited unexpectedly (exit code 3)"
    assert n_workers(2, 15) == 2 and n_workers(4, 3) == 3 and n_workers(None, 5) == 1
    assert n_workers(-1, 1000) == min(1000, __import__("joblib").cpu_count())
    assert n_workers(-1, 1) == 1 and available_cores() >= 1


def test_parallel_preset_uses_the_landscope_launcher(compose):
    launcher = hydra_launcher(compose, "parallel")
    assert launcher._target_.endswith("landscope_launcher.parallel_launcher.ParallelLauncher")
    assert launcher.n_jobs == 2
