"""Escape from a minimum (landscope.escape) on the closed-form two-basin surface, and the
``python -m runner.escape`` command on a tiny real sweep (results, caching, bad input)."""

from __future__ import annotations

import math

import pytest
import torch

from landscope.config import DatasetConfig, DatasetName
from landscope.data import load_data
from landscope.errors import ConfigError
from landscope.escape import EscapeRule, EscapeRun, run_escape
from landscope.io import read_json
from landscope.synthetic import TwoBasinModel


def two_basin(theta=(-1.0, 0.0), n=256):
    """The two-basin problem (sharp minimum (-1, 0) with d2L/dv2 = 10, so GD is unstable
    there for lr > 2/10; flat minimum (1, 0)), the model in float64 at ``theta``."""
    data = load_data(DatasetConfig(name=DatasetName.two_basin, train_size=n, test_size=n))
    model = TwoBasinModel(data.meta.problem).double()
    with torch.no_grad():
        model.theta.copy_(torch.tensor(theta, dtype=torch.float64))
    return model, data


def reference_gd(ref, theta0, lr, max_steps, eval_every, delta, confirm=1):
    """Full-batch GD on the closed form: the escape step by the module's definition."""
    theta = torch.tensor(theta0, dtype=torch.float64)
    loss0 = ref.loss(theta)
    streak_start, streak = None, 0
    for step in range(1, max_steps + 1):
        theta = theta - lr * ref.gradient(theta)
        if step % eval_every and step != max_steps:
            continue
        loss = ref.loss(theta)
        if not loss <= loss0 + delta:
            streak_start = step if streak == 0 else streak_start
            streak += 1
            if streak >= confirm or not math.isfinite(loss):
                return streak_start
        else:
            streak, streak_start = 0, None
    return None


def test_gd_above_two_over_lambda_leaves_the_sharp_basin_as_the_closed_form_says():
    model, data = two_basin((-1.0, 1e-3))
    ref = data.meta.problem
    assert ref.hessian(torch.tensor([-1.0, 0.0]))[1, 1] == pytest.approx(10.0)  # 2/λ = 0.2
    run = run_escape(model, data.train, lr=0.3, batch_size=10_000, seed=0, max_steps=100,
                     eval_every=1, rule=EscapeRule(delta_abs=0.05), eval_size=None)
    expected = reference_gd(ref, (-1.0, 1e-3), 0.3, 100, 1, 0.05)
    assert run.escaped and run.escape_step == expected and 3 <= expected <= 20
    assert run.batch_size == 256  # full batch: the noise sums to zero exactly
    assert run.loss0 == pytest.approx(ref.loss(torch.tensor([-1.0, 1e-3])), abs=1e-12)
    assert run.threshold == pytest.approx(run.loss0 + 0.05)
    assert run.steps == list(range(0, expected + 1))  # stops once escaped
    for step, loss in zip(run.steps, run.losses):
        assert (loss > run.threshold) == (step >= expected)
    assert run.distances[0] == 0.0 and run.distances[-1] > 0
    # far below 2/λ gradient descent stays (the loss decreases): censored, full trace
    calm = run_escape(model, data.train, lr=0.01, batch_size=10_000, max_steps=50,
                      eval_every=5, rule=EscapeRule(delta_abs=0.05), eval_size=None)
    assert not calm.escaped and calm.escape_step is None and calm.censored
    assert calm.steps == list(range(0, 51, 5)) and calm.steps_run == 50
    assert reference_gd(ref, (-1.0, 1e-3), 0.01, 50, 5, 0.05) is None
    assert max(calm.losses) <= calm.loss0 + 1e-12


def test_sgd_escape_is_seeded_and_leaves_the_callers_model_alone():
    model, data = two_basin((-1.0, 0.0))  # exactly at the sharp minimum: SGD noise kicks it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rule = EscapeRule(delta_abs=0.05, confirm=2, radius=0.5)
    a = run_escape(model, data.train, lr=0.3, batch_size=8, seed=3, max_steps=200,
                   eval_every=2, rule=rule)
    b = run_escape(model, data.train, lr=0.3, batch_size=8, seed=3, max_steps=200,
                   eval_every=2, rule=rule)
    assert a.escaped and a.escape_step is not None and a.escape_step % 2 == 0
    assert (a.escape_step, a.radius_step, a.steps, a.losses, a.distances) == \
        (b.escape_step, b.radius_step, b.steps, b.losses, b.distances)
    # the run goes on until both criteria fired (escape confirmed over 2 checks, radius)
    assert a.diverged or (a.radius_step is not None and a.steps_run < 200
                          and a.steps_run >= max(a.radius_step, a.escape_step + 2))
    c = run_escape(model, data.train, lr=0.3, batch_size=8, seed=4, max_steps=200,
                   eval_every=2, rule=rule)
    assert c.losses != a.losses  # another batch order
    stay = run_escape(model, data.train, lr=0.01, batch_size=8, seed=3, max_steps=300,
                      eval_every=10, rule=rule)
    assert not stay.escaped and stay.radius_step is None and stay.steps_run == 300
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert model.theta.grad is None
    # the record round-trips through a dict (what runner.escape stores)
    assert EscapeRun.from_dict(a.to_dict()) == a


def test_confirmation_divergence_and_bad_arguments():
    model, data = two_basin((-1.0, 1e-3))
    kw = dict(batch_size=10_000, max_steps=100, eval_every=1, eval_size=None)
    one = run_escape(model, data.train, lr=0.3, rule=EscapeRule(delta_abs=0.05), **kw)
    three = run_escape(model, data.train, lr=0.3, rule=EscapeRule(delta_abs=0.05, confirm=3),
                       **kw)
    # the loss grows monotonically here: the same first step, confirmed two checks later
    assert three.escape_step == one.escape_step and three.steps_run == one.steps_run + 2
    # relative margin: max(delta_abs, delta_rel * |L0|)
    rel = EscapeRule(delta_abs=1e-3, delta_rel=1e4)
    assert rel.threshold(0.5) == 0.5 + 5e3 and "max(" in rel.describe()
    # a non-finite loss confirms the escape at once, even when confirm cannot be reached
    boom = run_escape(model, data.train, lr=1e3, rule=EscapeRule(delta_abs=0.05, confirm=1000),
                      **{**kw, "max_steps": 500})
    assert boom.escaped and boom.diverged and boom.escape_step == 1
    assert 1 < boom.steps_run < 500 and not math.isfinite(boom.losses[-1])
    for bad in (dict(lr=0.0), dict(lr=float("nan")), dict(lr=0.1, batch_size=0),
                dict(lr=0.1, max_steps=0), dict(lr=0.1, eval_every=0)):
        with pytest.raises(ConfigError):
            run_escape(model, data.train, **{"batch_size": 8, **bad})
    for bad in (dict(delta_abs=-1.0), dict(delta_abs=0.0), dict(confirm=0),
                dict(radius=0.0), dict(delta_rel=float("inf"))):
        with pytest.raises(ConfigError):
            EscapeRule(**bad)


# --------------------------------------------------------------------------- the command
@pytest.fixture
def tiny_sweep(tmp_path, compose, one_torch_thread):
    """Two completed jobs (seeds 0, 1) as the runner leaves them: the composed config.yaml,
    result.json and a checksummed final checkpoint (the MLP at its seeded initialization:
    training is not what is tested, and torch.optim's first use costs seconds)."""
    from omegaconf import OmegaConf

    from landscope.checkpoint import save_checkpoint
    from landscope.io import atomic_write_text, write_json
    from landscope.jobs import fingerprint, seed_everything
    from landscope.models import build_model

    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        cfg = compose([f"seed={seed}", "dataset=digits", "train.epochs=1", "probe=none",
                       "landscape=none", "dataset.train_size=200", "model.width=16"])
        job = sweep / f"seed={seed}"
        atomic_write_text(job / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        seed_everything(seed)
        model = build_model(cfg.model, load_data(cfg.dataset).meta)
        save_checkpoint(job / "checkpoints", 1, {"epoch": 1, "model": model.state_dict()})
        write_json(job / "result.json", {
            "status": "completed", "epochs_completed": 1, "seed": seed,
            "fingerprint": fingerprint(cfg),
            "probes": {"noise_alignment_ratio": 10.0 + seed, "lambda_max": 1.0}})
    write_json(sweep / "seed=9" / "result.json", {"status": "failed", "error": "boom"})
    return sweep


SMALL = ["escape.lrs=[0.1,2.0]", "escape.batch_sizes=[8]", "escape.seeds=[0]",
         "escape.max_steps=20", "escape.eval_every=5", "escape.eval_size=100"]


def _run(argv, capsys):
    from runner import escape

    with pytest.raises(SystemExit) as exit_info:
        escape.main([str(a) for a in argv])
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_command_writes_cached_results(tiny_sweep, capsys):
    from landscope.escape.settings import escape_config, settings_fingerprint

    code, out, err = _run([tiny_sweep, *SMALL], capsys)
    assert code == 0, out + err
    assert "2 jobs: 2 computed, 0 cached, 0 failed" in out
    assert any(ln.startswith("skipped: ") and "seed=9" in ln and "failed" in ln
               for ln in out.splitlines())
    fp = settings_fingerprint(escape_config(SMALL))
    files = sorted(tiny_sweep.glob(f"*/escape/{fp}.json"))
    assert len(files) == 2
    assert sum(ln.startswith("computed: ") for ln in out.splitlines()) == 2, out
    record = read_json(files[0])
    assert record["complete"] and record["fingerprint"] == fp
    assert record["settings"]["lrs"] == [0.1, 2.0] and record["settings"]["max_steps"] == 20
    assert len(record["checkpoint_sha256"]) == 64 and record["checkpoint_epoch"] == 1
    runs = record["runs"]
    assert [(r["lr"], r["batch_size"], r["seed"]) for r in runs] == [(0.1, 8, 0), (2.0, 8, 0)]
    for r in runs:
        assert r["eval_size"] == 100 and r["steps"][0] == 0 and r["max_steps"] == 20
        assert r["eta_over_b"] == pytest.approx(r["lr"] / 8)
        assert r["escaped"] == (r["escape_step"] is not None)
        assert r["rule"] == {"delta_abs": 0.1, "delta_rel": 0.0, "confirm": 2, "radius": None}
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    # the analysis reads them back: one row per continuation, with the probe scalars
    from landscope.analysis.hypotheses.h3 import load_escapes

    df = load_escapes(tiny_sweep)
    assert len(df) == 4 and sorted(df["job"].unique()) == ["seed=0", "seed=1"]
    assert sorted(df["probe.noise_alignment_ratio"].unique()) == [10.0, 11.0]
    assert (df["eta_over_b"] == df["lr"] / 8).all() and (df["settings"] == fp).all()

    code, out, err = _run([tiny_sweep, *SMALL], capsys)
    assert code == 0 and "2 jobs: 0 computed, 2 cached, 0 failed" in out
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes

    # one job directory as the argument; an interrupted (partial) file resumes
    job = files[0].parent.parent
    partial = {**record, "complete": False, "runs": record["runs"][:1]}
    from landscope.io import write_json

    write_json(files[0], partial)
    code, out, err = _run([job, *SMALL], capsys)
    assert code == 0 and "1 job: 1 computed, 0 cached, 0 failed" in out
    again = read_json(files[0])
    assert again["complete"] and again["runs"] == record["runs"]


@pytest.mark.parametrize("override, needle", [
    ("escape.lr=0.1", "unknown setting escape.lr"),
    ("escape.max_steps=many", "escape.max_steps: Value 'many'"),
    ("escape.lrs=[0.1,", "bad escape override"),
    ("escape.lrs=[0.1,-1]", "escape.lrs must be"),
    ("escape.confirm=0", "confirm"),
    ("train.lr=0.1", "only escape.KEY=VALUE"),
])
def test_command_bad_override_is_one_line_exit_2(tmp_path, capsys, override, needle):
    code, out, err = _run([tmp_path, override], capsys)  # settings are checked first
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0] and out == ""


def test_command_refuses_a_directory_without_jobs(tmp_path, capsys):
    code, out, err = _run([tmp_path], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_on_a_terminal_each_job_shows_a_bar_of_its_continuations(tiny_sweep, capsys, bars,
                                                                 monkeypatch):
    """One bar per job counts its continuations (lrs x batch sizes x seeds x noise types);
    a partial file's runs start it; off a terminal no bar is shown."""
    import landscope.escape.jobs as escape_jobs
    from landscope.escape.settings import escape_config, settings_fingerprint
    from landscope.io import write_json

    code, out, err = _run([tiny_sweep, *SMALL], capsys)  # a log, not a terminal
    assert code == 0 and bars.shown() == [], out + err
    monkeypatch.setattr(escape_jobs, "wanted", lambda setting: True)
    two_seeds = [*SMALL, "escape.seeds=[0,1]"]
    code, out, err = _run([tiny_sweep, *two_seeds], capsys)
    assert code == 0, out + err
    shown = sorted((b["desc"], b["total"], b["initial"], b["n"], b["closed"])
                   for b in bars.shown())
    assert shown == [("escape seed=0", 4, 0, 4, True), ("escape seed=1", 4, 0, 4, True)]
    (path,) = tiny_sweep.glob(f"seed=0/escape/{settings_fingerprint(escape_config(two_seeds))}"
                              ".json")
    record = read_json(path)
    write_json(path, {**record, "complete": False, "runs": record["runs"][:3]})
    code, out, err = _run([tiny_sweep / "seed=0", *two_seeds], capsys)
    assert code == 0, out + err
    last = bars.shown()[-1]
    assert (last["total"], last["initial"], last["n"], last["closed"]) == (4, 3, 4, True)
    assert read_json(path)["runs"] == record["runs"]


# --------------------------------------------------------------------------- the plan
def _plans(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("escape plan, ")]


def test_each_job_says_its_plan_before_its_continuations(tiny_sweep, capsys):
    """The plan line comes before the job's result line; it counts the continuations still to
    run (a partial file's are read back) and gives their ceiling in seconds, every run
    censored at max_steps."""
    import re

    from landscope.escape.settings import escape_config, settings_fingerprint

    code, out, err = _run([tiny_sweep, *SMALL], capsys)
    assert code == 0, out + err
    lines = [ln for ln in out.splitlines() if ln.startswith(("escape plan, ", "computed: "))]
    assert [ln.split(":")[0].split(",")[0] for ln in lines] == ["escape plan", "computed"] * 2
    for plan, job in zip(_plans(out), ("seed=0", "seed=1")):
        assert plan.startswith(
            f"escape plan, {job}: 2 of 2 continuations to run (1 noise type × 2 learning rates × "
            "1 batch size × 1 seed), each at most 20 steps with the loss on 100 samples every 5; ")
        assert re.search(r"~[0-9.e-]+ ms a step at B=8, ~[0-9.e-]+ ms an evaluation, so at "
                         r"most ~[0-9.e-]+ s \(a continuation stops when it escapes\)$", plan)
    (path,) = tiny_sweep.glob(f"seed=0/escape/{settings_fingerprint(escape_config(SMALL))}.json")
    record = read_json(path)
    from landscope.io import write_json

    write_json(path, {**record, "complete": False, "runs": record["runs"][:1]})
    code, out, err = _run([tiny_sweep / "seed=0", *SMALL], capsys)
    assert code == 0, out + err
    (plan,) = _plans(out)
    assert plan.startswith("escape plan, seed=0: 1 of 2 continuations to run (1 noise type × "
                           "2 learning rates × 1 batch size × 1 seed; 1 stored by an "
                           "interrupted run is read back), each at most 20 steps")
    code, out, err = _run([tiny_sweep, *SMALL], capsys)  # complete: cached, no plan
    assert code == 0 and _plans(out) == [] and "0 computed, 2 cached" in out


def test_the_plan_adds_up_its_timings(monkeypatch):
    """``plan``: a continuation costs its setup, max_steps steps and an evaluation at step 0
    and every eval_every steps (the last at max_steps); plain SGD is timed per batch size,
    an injected noise once, and the setup and an evaluation only the first time."""
    from landscope.escape import plan as P

    timed = []

    def fake(model, split, *, batch_size, noise, settings, extra, known=None):
        timed.append((noise, batch_size, known))
        setup, evaluation = known or (0.5, 0.1)
        return setup, 0.01 if noise == "sgd" else 0.02, evaluation

    monkeypatch.setattr(P, "step_seconds", fake)
    settings = {"max_steps": 100, "eval_every": 30, "eval_size": 50, "eval_seed": 0}
    p = P.plan(None, None, settings, {}, {("sgd", 4): 3, ("sgd", 16): 2, ("isotropic", 4): 2,
                                         ("isotropic", 16): 2, ("sgd", 64): 0})
    assert timed == [("sgd", 4, None), ("sgd", 16, (0.5, 0.1)), ("isotropic", 4, (0.5, 0.1))]
    evals = 1 + 4  # steps 0, 30, 60, 90, 100
    sgd, iso = 0.5 + 100 * 0.01 + evals * 0.1, 0.5 + 100 * 0.02 + evals * 0.1
    assert p["seconds"] == pytest.approx(5 * sgd + 4 * iso)
    line = P.plan_line("j", {"lrs": [0.1], "batch_sizes": [4, 16], "seeds": [0, 1],
                             "max_steps": 100, "eval_every": 30}, ["sgd", "isotropic"], 8, 0,
                       p["timings"], p["seconds"], 50)
    assert line == ("escape plan, j: 8 of 8 continuations to run (2 noise types × 1 learning "
                    "rate × 2 batch sizes × 2 seeds), each at most 100 steps with the loss on 50 "
                    "samples every 30; ~20 ms a step with isotropic noise, ~10 ms a step at B=4, "
                    "~10 ms a step at B=16, ~100 ms an evaluation, so at most ~22 s (a "
                    "continuation stops when it escapes)")


def test_step_seconds_times_a_continuation_and_leaves_the_model_alone(one_torch_thread):
    from landscope.escape.plan import step_seconds

    model, data = two_basin()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = {"eval_size": 64, "eval_seed": 0}
    setup, step, evaluation = step_seconds(model, data.train, batch_size=16, noise="sgd",
                                           settings=settings, extra={})
    assert all(math.isfinite(t) and 0 <= t < 1.0 for t in (setup, step, evaluation))
    assert step > 0  # (an evaluation of 64 samples may read 0 within the timing's noise)
    again = step_seconds(model, data.train, batch_size=64, noise="sgd", settings=settings,
                         extra={}, known=(7.0, 8.0))
    assert again[0] == 7.0 and again[2] == 8.0 and 0 < again[1] < 1.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_step_seconds_is_never_0_when_the_timing_noise_swamps_the_difference(monkeypatch):
    # CI once read a step of 0.0 on a loaded host: the 2s-step run timed no slower than the
    # s-step one. A clock under which every run takes the same 5 ms plays that out.
    import itertools
    import types

    from landscope.escape import plan as escape_plan

    clock = itertools.count(0.0, 0.005)
    fake_time = types.SimpleNamespace(perf_counter=lambda: next(clock))
    monkeypatch.setattr(escape_plan, "time", fake_time)
    model, data = two_basin()
    setup, step, evaluation = escape_plan.step_seconds(
        model, data.train, batch_size=16, noise="sgd",
        settings={"eval_size": 64, "eval_seed": 0}, extra={})
    short = math.ceil(2 * escape_plan.TIMING_S / 0.005)  # 12 steps for a 5 ms first run
    assert step == pytest.approx(0.005 / (2 * short))  # the 2s-step run over its steps
    assert evaluation == pytest.approx(0.005 / (short + 1))  # the s+1 evaluations' run
    assert setup == pytest.approx(max(0.0, 0.005 - short * step - 2 * evaluation))


def test_progress_shows_the_bars_and_changes_no_result(tiny_sweep, capsys, bars, monkeypatch):
    """``escape.progress=true`` shows the bars off a terminal too, ``false`` hides them on one;
    neither is stored: the results and their fingerprint are those of the run without it."""
    import sys

    from landscope.escape.settings import escape_config, settings_fingerprint

    code, out, err = _run([tiny_sweep, *SMALL, "escape.progress=true"], capsys)
    assert code == 0, out + err
    assert sorted(b["desc"] for b in bars.shown()) == ["escape seed=0", "escape seed=1"]
    fp = settings_fingerprint(escape_config(SMALL))
    assert settings_fingerprint(escape_config([*SMALL, "escape.progress=true"])) == fp
    (path,) = tiny_sweep.glob(f"seed=0/escape/{fp}.json")
    assert "progress" not in read_json(path)["settings"]
    code, out, err = _run([tiny_sweep, *SMALL], capsys)
    assert code == 0 and "0 computed, 2 cached" in out
    for job in tiny_sweep.glob("seed=[01]/escape"):
        for f in job.iterdir():
            f.unlink()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    n = len(bars.shown())
    code, out, err = _run([tiny_sweep, *SMALL, "escape.progress=false"], capsys)
    assert code == 0 and "2 computed" in out and len(bars.shown()) == n
