"""Options a config sets but its job does not read (``optimizer.betas`` under SGD,
``optimizer.momentum`` under Adam, ``optimizer.step_size`` without the step schedule...):
left out of the training fingerprint, so such jobs are one job and not two configurations
(pseudo-replication); directories written before keep resuming; the analysis table reads
them at their defaults and counts a job held twice once."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from omegaconf import OmegaConf

from landscope.analysis import collect
from landscope.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from landscope.config import Config
from landscope.config.check import unread_keys
from landscope.fingerprints import MARKED_LATER, earlier_fingerprint, fingerprint
from landscope.optim import build_optimizer, build_scheduler

TINY = ["dataset.train_size=256", "dataset.test_size=128", "train.batch_size=64",
        "model.width=16", "model.depth=2", "train.epochs=2", "probe=none", "landscape=none"]

OPTIMIZER_MARKS = [k for k in MARKED_LATER if k.startswith("optimizer.")]
#: each of them at a value other than any a preset gives it
CHANGED = {"momentum": 0.5, "nesterov": True, "betas": [0.8, 0.99], "eps": 1e-6, "rho": 0.1,
           "adaptive": True, "base": "sgd", "step_size": 3, "gamma": 0.5, "min_lr": 0.01}


def _built(opt: dict) -> tuple:
    """What build_optimizer and build_scheduler make of ``opt``: the classes, the
    optimizer's settings (a wrapped optimizer's included) and 25 epochs of learning rates."""
    cfg = OmegaConf.create(opt)
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer([param], cfg)
    inner = getattr(optimizer, "base_optimizer", None)
    scheduler = build_scheduler(optimizer, cfg, epochs=25)
    lrs = []
    for _ in range(25):
        optimizer.zero_grad()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    return (type(optimizer).__name__, type(inner).__name__, sorted(optimizer.defaults.items()),
            getattr(optimizer, "momentum_scale", None), lrs)


def _optimizer_trees():
    default = OmegaConf.to_container(OmegaConf.structured(Config()), enum_to_str=True)
    for name, base, schedule in itertools.product(
            ("sgd", "momentum", "adam", "adamw", "sam", "llp"),
            ("sgd", "momentum", "adam", "adamw"), ("constant", "step", "cosine")):
        tree = json.loads(json.dumps(default))
        tree["optimizer"].update(name=name, base=base, schedule=schedule, momentum=0.9)
        yield tree


@pytest.mark.filterwarnings("ignore::UserWarning")  # schedulers stepped without a step
def test_the_marks_say_exactly_what_the_optimizer_and_its_schedule_read():
    """Every MARKED_LATER option, changed alone, changes what is built exactly when the
    schema says the config reads it (a wrong mark would merge two different jobs)."""
    checked = 0
    for tree in _optimizer_trees():
        unread = set(unread_keys(Config, tree))
        before = _built(tree["optimizer"])
        for key in OPTIMIZER_MARKS:
            leaf = key.split(".")[1]
            changed = {**tree["optimizer"], leaf: CHANGED[leaf]}
            if leaf == "base" and tree["optimizer"]["base"] == "sgd":
                changed["base"] = "adam"
            same = _built(changed) == before
            assert same == (key in unread), (tree["optimizer"], key)
            checked += 1
    assert checked == 6 * 4 * 3 * len(CHANGED)


@pytest.mark.parametrize("overrides,plain", [
    (["optimizer.betas=[0.8,0.99]", "optimizer.eps=1e-6"], []),
    (["optimizer.momentum=0.9", "optimizer.nesterov=true"], []),
    (["optimizer.rho=0.1", "optimizer.adaptive=true", "optimizer.base=adam"], []),
    (["optimizer.step_size=5", "optimizer.gamma=0.5", "optimizer.min_lr=0.01"], []),
    (["optimizer=adam", "optimizer.momentum=0.5"], ["optimizer=adam"]),
    (["optimizer=sam", "optimizer.base=adam"], ["optimizer=sam", "optimizer.base=adam",
                                                "optimizer.momentum=0"]),
    (["optimizer.schedule=cosine", "optimizer.gamma=0.5"], ["optimizer.schedule=cosine"]),
    (["optimizer=llp", "optimizer.betas=[0.5,0.5]"], ["optimizer=llp"]),
])
def test_options_a_job_does_not_read_change_no_training_hash(compose, overrides, plain):
    assert fingerprint(compose(overrides)) == fingerprint(compose(plain))


@pytest.mark.parametrize("overrides,other", [
    (["optimizer=momentum"], ["optimizer=momentum", "optimizer.momentum=0.5"]),
    (["optimizer=adam"], ["optimizer=adam", "optimizer.betas=[0.8,0.99]"]),
    (["optimizer=sam"], ["optimizer=sam", "optimizer.rho=0.1"]),
    (["optimizer=sam"], ["optimizer=sam", "optimizer.base=sgd"]),
    (["optimizer.schedule=step"], ["optimizer.schedule=step", "optimizer.gamma=0.5"]),
    (["optimizer.schedule=cosine"], ["optimizer.schedule=cosine", "optimizer.min_lr=0.01"]),
])
def test_options_a_job_reads_still_change_its_hash(compose, overrides, other):
    assert fingerprint(compose(overrides)) != fingerprint(compose(other))


# Version-2 training hashes recorded before the optimizer's options were marked (commit
# 8764f55): a job that reads them, at defaults or not, keeps its hash ...
KEPT = {
    "": "82ce9c0bde4b4834",
    "optimizer=adam": "05d4066946a33afb",
    "optimizer=adamw": "f75746908db8def0",
    "optimizer=momentum": "a0dd1a5b58786114",
    "optimizer=sam": "ee93ca68f88c7a7d",
    "optimizer=llp": "2c78045357d57552",
    "optimizer=llp_meta": "e4309607098f09fc",
    "optimizer=llp optimizer.base=momentum optimizer.momentum=0.9": "acf67419d1902ef3",
    "optimizer=momentum optimizer.nesterov=true": "e2ff869ac3915e9e",
    "optimizer=adam optimizer.betas=[0.8,0.99]": "7c343ccf7a878e66",
    "optimizer=adam optimizer.eps=1e-6": "7297e290d2a84211",
    "optimizer.schedule=step": "6f1669a71f0e0f13",
    "optimizer.schedule=step optimizer.step_size=5 optimizer.gamma=0.5": "5158dde19fc0e105",
    "optimizer.schedule=cosine": "2ef8253b020ff06c",
    "optimizer.schedule=cosine optimizer.min_lr=0.001": "04e26dec90a6745f",
    "optimizer=sam optimizer.rho=0.1 optimizer.adaptive=true": "45a5f5a34fe57eed",
    "model=cnn optimizer=adam seed=3": "2c4f95da4ad228f6",
}
# ... and one that set an option it does not read had this hash, now its earlier_fingerprint
EARLIER = {
    "optimizer=sam optimizer.base=adam": "a4b007a6a9d6e7b2",  # the preset's momentum 0.9
    "optimizer.betas=[0.8,0.99]": "c17d1b381a264a6b",
    "optimizer.momentum=0.9": "816e14f1719651d7",
    "optimizer.rho=0.1": "03d0e66b51dc4163",
    "optimizer.step_size=5": "868bc1e3bdfacc03",
    "optimizer.min_lr=0.01": "90cce98976ea96c8",
    "optimizer=adam optimizer.momentum=0.5": "7a8fcaa47a4caa8f",
    "optimizer=adam optimizer.base=adam": "0922fea2ccdaa65b",
    "optimizer.schedule=cosine optimizer.gamma=0.5": "595f94c27255414d",
}


def test_jobs_that_read_the_marked_options_keep_their_version_2_hashes(compose):
    for overrides, recorded in KEPT.items():
        cfg = compose(overrides.split())
        assert fingerprint(cfg) == recorded, overrides
        assert earlier_fingerprint(cfg) is None, overrides


def test_a_job_that_set_an_unread_option_knows_its_earlier_hash(compose):
    for overrides, recorded in EARLIER.items():
        cfg = compose(overrides.split())
        assert earlier_fingerprint(cfg) == recorded != fingerprint(cfg), overrides


def _as_written_before(job, cfg) -> None:
    """Give the job's records the hash the release before the marks gave its config."""
    old = earlier_fingerprint(cfg)
    for path in list_checkpoints(job / "checkpoints"):
        ckpt = load_checkpoint(path)
        save_checkpoint(job / "checkpoints", ckpt["epoch"], {**ckpt, "fingerprint": old},
                        keep=10)
    result = job / "result.json"
    if result.exists():
        result.write_text(json.dumps({**json.loads(result.read_text()), "fingerprint": old}))


def test_a_directory_written_before_the_marks_is_still_its_jobs(compose, tmp_path,
                                                                 one_torch_thread):
    """An SGD job with optimizer.momentum=0.9 (unread), written when that option was hashed:
    finished, it is skipped, not refused; interrupted, it resumes from its checkpoint, and
    its result keeps the checkpoint's hash so the checkpoint still counts as the job's."""
    from landscope.jobdir import JobDir
    from landscope.jobs import JobRefused, train_job

    overrides = ["optimizer.momentum=0.9", *TINY]
    cfg = compose(overrides)
    job = tmp_path / "job"
    first = train_job(cfg, job, overrides)
    _as_written_before(job, cfg)
    again = train_job(compose(overrides), job, overrides)
    assert again.get("skipped") and again["final"] == first["final"]

    (job / "result.json").unlink()  # interrupted after its last checkpoint
    resumed = train_job(compose(overrides), job, overrides)
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == 2
    assert resumed["final"] == first["final"]
    assert resumed["fingerprint"] == fingerprint(cfg)
    assert resumed["fingerprint_earlier"] == earlier_fingerprint(cfg)
    JobDir(job).final_checkpoint(resumed, fallback=True)
    with pytest.raises(JobRefused, match="different config"):
        train_job(compose(["optimizer=momentum", *TINY]), job, overrides)


def _job(root, name, optimizer: dict, seed: int, acc: float):
    import yaml

    job = root / name
    job.mkdir(parents=True)
    config = {"seed": seed, "name": "grid", "model": {"name": "mlp", "width": 32},
              "optimizer": optimizer, "train": {"epochs": 3, "threads": 1 + seed % 2},
              "probe": {"name": "none"}, "landscape": {"name": "none"}}
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    (job / "result.json").write_text(json.dumps({
        "status": "completed", "seed": seed, "final": {"test_acc": acc, "train_acc": 1.0}}))


def test_the_table_reads_unread_options_at_their_defaults_and_counts_one_job_once(tmp_path):
    """optimizer=sgd,adam optimizer.betas=[0.9,0.99],[0.8,0.9] seed=0,1: eight directories,
    six jobs. The SGD directories of one seed are one job: the second is excluded as a
    duplicate; the configurations are sgd, adam with each betas (three, not four)."""
    root = tmp_path / "sweep"
    for (name, betas), seed in itertools.product(
            [("sgd", [0.9, 0.99]), ("sgd", [0.8, 0.9]), ("adam", [0.9, 0.99]),
             ("adam", [0.8, 0.9])], (0, 1)):
        _job(root, f"{name},betas={betas[0]},seed={seed}",
             {"name": name, "lr": 0.1, "betas": betas, "momentum": 0.9}, seed, 0.5 + seed / 10)
    c = collect(root)
    jobs = c.jobs.set_index("job")
    assert c.counts == {"completed": 6, "duplicate": 2}
    dup = jobs[jobs["status"] == "duplicate"]
    assert sorted(dup.index) == ["sgd,betas=0.9,seed=0", "sgd,betas=0.9,seed=1"]
    assert dup["reason"].str.contains("the same config and seed as sweep/sgd,betas=0.8").all()
    kept = c.included.set_index("job")
    assert kept.loc["sgd,betas=0.8,seed=0", "optimizer.betas"] == "[0.9, 0.999]"
    assert kept.loc["sgd,betas=0.8,seed=0", "optimizer.momentum"] == 0.0
    assert kept.loc["adam,betas=0.8,seed=0", "optimizer.betas"] == "[0.8, 0.9]"
    assert kept.loc["adam,betas=0.8,seed=0", "optimizer.momentum"] == 0.0
    assert sorted(c.swept) == ["optimizer.betas", "optimizer.name"]
    labels = c.included.groupby(["optimizer.name", "optimizer.betas"]).size()
    assert sorted(labels.tolist()) == [2, 2, 2]
    assert len(c.excluded) == 2


def test_jobs_without_a_config_are_never_called_duplicates(tmp_path):
    root = tmp_path / "sweep"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "result.json").write_text(json.dumps(
            {"status": "completed", "seed": 0, "final": {"test_acc": 0.5}}))
    assert collect(root).counts == {"completed": 2}


def test_mode_connectivity_pairs_seeds_not_two_directories_of_one_job(tmp_path):
    """runner.connect groups jobs by their training fingerprint without the seed: the SGD
    directories of optimizer.betas=a,b fall into one group, which pairs seed 0 with seed 1
    once (not a job with itself) and says which directories it skipped."""
    from landscope.geometry.pairs import plan_pairs
    from landscope.io import write_json

    sweep = tmp_path / "sweep"
    for betas, seed in itertools.product(("0.8", "0.9"), (0, 1)):
        job = sweep / f"optimizer.betas=[{betas},0.99],seed={seed}"
        job.mkdir(parents=True)
        (job / "config.yaml").write_text(
            f"seed: {seed}\noptimizer:\n  name: sgd\n  betas: [{betas}, 0.99]\n")
        write_json(job / "result.json", {"status": "completed", "epochs_completed": 1})
    pairs, notes = plan_pairs(sweep)
    assert [(p["a"]["name"], p["b"]["name"]) for p in pairs] == [
        ("optimizer.betas=[0.8,0.99],seed=0", "optimizer.betas=[0.8,0.99],seed=1")]
    assert notes == [
        f"skipped: optimizer.betas=[0.9,0.99],seed={s} (the same trained model as "
        f"optimizer.betas=[0.8,0.99],seed={s}: the same seed, and its config differs only in "
        "options training does not read)" for s in (0, 1)]


def test_the_escapes_of_h3_read_one_directory_per_trained_model(tmp_path):
    """The escapes start from a job's minimum: directories of one seed whose configs differ
    only in options training does not read (SGD's rho, the probe's sample count) are one."""
    from landscope.analysis.hypotheses.escapes import escape_jobs

    sweep = tmp_path / "sweep"
    for other, seed in itertools.product(("optimizer.rho=0.05", "optimizer.rho=0.1",
                                          "probe.data_size=500"), (0, 1)):
        job = sweep / f"{other},seed={seed}"
        (job / "escape").mkdir(parents=True)
        group, key = other.split("=")[0].split(".")
        (job / "config.yaml").write_text(
            f"seed: {seed}\n{group}:\n  {key}: {other.split('=')[1]}\n")
        (job / "result.json").write_text(json.dumps({"status": "completed", "seed": seed}))
        (job / "escape" / "abc.json").write_text("{}")
    notes: list[str] = []
    assert [j.name for j in escape_jobs(sweep, notes)] == [
        "optimizer.rho=0.05,seed=0", "optimizer.rho=0.05,seed=1"]
    assert notes == [f"left out {other},seed={s}: the same trained model as "
                     f"optimizer.rho=0.05,seed={s} (the same seed and training config; it "
                     "differs at most in options training does not read): one minimum, counted "
                     "once" for other in ("optimizer.rho=0.1", "probe.data_size=500")
                     for s in (0, 1)]


def test_runner_escape_continues_one_directory_per_job(tmp_path):
    from landscope.escape.jobs import completed_jobs

    sweep = tmp_path / "sweep"
    for step_size, seed in itertools.product((5, 10), (0, 1)):
        job = sweep / f"optimizer.step_size={step_size},seed={seed}"
        job.mkdir(parents=True)
        (job / "config.yaml").write_text(f"seed: {seed}\noptimizer:\n  step_size: {step_size}\n")
        (job / "result.json").write_text(json.dumps({
            "status": "completed", "seed": seed, "fingerprint": "x", "final": {}}))
    jobs, notes = completed_jobs([str(sweep)])
    assert [j["name"] for j in jobs] == ["optimizer.step_size=10,seed=0",
                                         "optimizer.step_size=10,seed=1"]
    assert [n.split(":")[0] for n in notes] == ["left out optimizer.step_size=5,seed=0",
                                                "left out optimizer.step_size=5,seed=1"]


def test_edge_of_stability_reads_an_sgd_jobs_momentum_as_the_zero_it_trained_with(tmp_path):
    """SGD forces momentum 0 whatever optimizer.momentum says: the EoS threshold 2(1+β)/η
    must use β = 0 for such a job (it used the config's 0.9, and dropped it for nesterov)."""
    from landscope.analysis.eos import eos_jobs

    job = tmp_path / "sweep" / "job"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(
        "seed: 0\noptimizer:\n  name: sgd\n  momentum: 0.9\n  nesterov: true\n"
        "probe:\n  name: basic\n  every_n_steps: 5\n")
    (job / "result.json").write_text(json.dumps(
        {"status": "completed", "seed": 0, "final": {"test_acc": 0.5}}))
    row = collect(tmp_path / "sweep").included.iloc[0]
    assert (row["optimizer.momentum"], row["optimizer.nesterov"]) == (0.0, False)
    assert len(eos_jobs(collect(tmp_path / "sweep").included)) == 1


def test_the_sweep_warns_before_training_a_job_again(tmp_path, data_dir):
    from conftest import run_cli

    proc = run_cli(["-m", "experiment=smoke", "optimizer=sgd,adam",
                    "optimizer.betas=[0.9,0.99],[0.8,0.9]", "seed=0", "train.epochs=1",
                    "hydra.sweep.dir=sweep"], tmp_path, data_dir=data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warnings = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "again" in ln]
    assert len(warnings) == 1, warnings
    assert ("warning: job optimizer.betas=[0.8,0.9],optimizer=sgd,seed=0,train.epochs=1 is job "
            "optimizer.betas=[0.9,0.99],optimizer=sgd,seed=0,train.epochs=1 again") in warnings[0]
    assert "4 jobs: 4 completed" in proc.stdout
    assert collect(tmp_path / "sweep").counts == {"completed": 3, "duplicate": 1}


def test_the_sweeper_calls_two_jobs_one_only_when_their_stages_agree_too(compose):
    """The training fingerprint leaves the probe and landscape settings out; a sweep over
    them (probe.data_size=500,1000) puts one model in two directories on purpose and is not
    warned."""
    from landscope.fingerprints import job_fingerprints, landscape_fingerprint, probe_fingerprint

    def key(*overrides):
        cfg = compose(["probe=basic", *overrides])
        keys = job_fingerprints(cfg)
        assert keys == (fingerprint(cfg), probe_fingerprint(cfg), landscape_fingerprint(cfg))
        return keys

    assert key("optimizer.betas=[0.8,0.9]") == key()
    assert key("probe.data_size=500") != key()
    assert key("landscape=none") != key()
