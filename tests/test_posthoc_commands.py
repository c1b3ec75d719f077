"""The commands on finished jobs (runner.probe, .landscape, .connect, .escape, .figures,
.report) check their arguments, inputs and output locations before they compute: unknown
options are named as options, an unwritable output is one ``error:`` line and exit 2 with
nothing written; a job without a usable final checkpoint is one line that says which; the
messages say what happened (W&B offline, too few jobs, a damaged metrics.jsonl)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner import cli, connect, escape, figures, landscape, probe, report

COMMANDS = {"probe": probe, "landscape": landscape, "connect": connect, "escape": escape,
            "figures": figures, "report": report}
as_root = pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not bite for root")


def _job(sweep: Path, name: str, seed: int, status: str = "completed", ckpt: bytes | None = None,
         metrics: str | None = None) -> Path:
    job = sweep / name
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(f"seed: {seed}\nmodel:\n  width: 16\n")
    (job / "result.json").write_text(json.dumps({"status": status, "epochs_completed": 1}))
    if ckpt is not None:
        (job / "checkpoints").mkdir()
        (job / "checkpoints" / "epoch_000001.pt").write_bytes(ckpt)
    if metrics is not None:
        (job / "metrics.jsonl").write_text(metrics)
    return job


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Two completed seeds of one config, without checkpoints (nothing can be computed)."""
    root = tmp_path / "sweep"
    _job(root, "seed=0", 0)
    _job(root, "seed=1", 1)
    return root


def _run(module, args, capsys) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of the command's main() run in this process."""
    try:
        module.main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _tree(root: Path) -> dict:
    """Every path below ``root``, with the modification time of each file (a directory's own
    time changes with the write check's temporary file, which is removed again)."""
    return {str(p.relative_to(root)): p.is_file() and p.stat().st_mtime_ns
            for p in sorted(root.rglob("*"))}


# ----------------------------------------------------------------------------- arguments
def test_report_names_an_unknown_option_as_an_option(sweep, tmp_path, capsys):
    code, out, err = _run(report, [sweep, "--outt", tmp_path / "x"], capsys)
    assert code == 2 and out == ""
    assert _one_error(err) == "error: unknown option --outt (did you mean --out?)"
    assert not (sweep / "report").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_refuses_an_unknown_option(name, sweep, capsys):
    before = _tree(sweep)
    code, _, err = _run(COMMANDS[name], [sweep, "--bogus"], capsys)
    assert code == 2
    line = _one_error(err)
    assert line.startswith("error: unknown option --bogus"), line
    assert _tree(sweep) == before


def test_out_takes_both_spellings_and_once(capsys):
    args = ["a", "--out=x", "b"]
    assert cli.pop_out(args) == Path("x") and args == ["a", "b"]
    args = ["a", "--out", "y"]
    assert cli.pop_out(args) == Path("y") and args == ["a"]
    with pytest.raises(SystemExit) as info:
        cli.pop_out(["--out", "x", "--out=y"])
    assert info.value.code == 2 and "--out given 2 times" in _one_error(capsys.readouterr().err)


def test_the_write_check_leaves_nothing_behind(tmp_path):
    from landscope.errors import LandscopeError

    cli.check_writable([tmp_path / "a" / "b" / "c", tmp_path])
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(LandscopeError, match="file is not a directory"):
        cli.check_writable([tmp_path / "file" / "report"])
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


# ----------------------------------------------------------------------------- outputs
def test_report_refuses_an_output_below_a_file(sweep, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    code, out, err = _run(report, [sweep, "--out", tmp_path / "taken" / "report"], capsys)
    assert code == 2 and out == ""
    assert "cannot write to" in _one_error(err) and "is not a directory" in err


@as_root
def test_report_refuses_a_read_only_output_before_computing(sweep, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, out, err = _run(report, [sweep, "--out", ro], capsys)
        assert code == 2 and out == ""
        assert "cannot write to" in _one_error(err) and "Permission denied" in err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_report_refuses_a_directory_without_jobs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _run(report, [tmp_path / "empty"], capsys)
    assert code == 2 and "holds no jobs" in _one_error(err)
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("name", ["probe", "landscape", "escape"])
def test_job_commands_refuse_an_unwritable_job_before_computing(name, sweep, capsys):
    # a file where the command's results go; the job's checkpoint would fail much later
    target = {"probe": "probes", "landscape": "landscape", "escape": "escape"}[name]
    (sweep / "seed=1" / target).write_text("in the way")
    before = _tree(sweep)
    args = [sweep, "probe=basic"] if name == "probe" else [sweep]
    code, out, err = _run(COMMANDS[name], args, capsys)
    assert code == 2, out + err
    line = _one_error(err)
    assert "cannot write to" in line and f"seed=1/{target}" in line
    assert out == "" and _tree(sweep) == before


def test_connect_refuses_an_unwritable_sweep_before_computing(sweep, capsys):
    (sweep / "connectivity").write_text("in the way")
    code, out, err = _run(connect, [sweep], capsys)
    assert code == 2 and "connectivity is not a directory" in _one_error(err)
    assert out == ""


@as_root
def test_connect_refuses_a_read_only_sweep(sweep, capsys):
    sweep.chmod(0o500)
    try:
        code, out, err = _run(connect, [sweep], capsys)
    finally:
        sweep.chmod(0o700)
    assert code == 2 and "Permission denied" in _one_error(err)
    assert not (sweep / "connectivity").exists()


def test_figures_refuse_an_unwritable_output_before_drawing(tmp_path, capsys):
    job = _job(tmp_path / "sweep", "seed=0", 0, metrics='{"epoch": 1, "train_loss": 1.0}\n')
    (job / "figures").write_text("in the way")
    code, out, err = _run(figures, [job], capsys)
    assert code == 2 and "figures is not a directory" in _one_error(err) and out == ""
    (tmp_path / "taken").write_text("")
    code, out, err = _run(figures, [job, "--out", tmp_path / "taken"], capsys)
    assert code == 2 and "cannot write to" in _one_error(err) and out == ""


# ----------------------------------------------------------------------------- checkpoints
def test_landscape_and_probe_say_which_final_checkpoint_problem(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    missing = _job(sweep, "seed=0", 0)
    corrupt = _job(sweep, "seed=1", 1, ckpt=b"LSCKPT1\ntruncated")
    _job(sweep, "seed=2", 2, status="failed")
    code, out, err = _run(landscape, [sweep], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and "skipped:" in out and "seed=2" in out
    assert lines == [
        f"error: {missing}: no final checkpoint to scan: it is missing "
        f"({missing / 'checkpoints'} holds no checkpoint)",
        f"error: {corrupt}: no final checkpoint to scan: it is corrupt (checkpoint "
        f"{corrupt / 'checkpoints' / 'epoch_000001.pt'} is not a landscope checkpoint or is "
        "truncated (17 bytes))"]
    code, out, err = _run(probe, [sweep, "probe=basic"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 2
    assert lines[0].startswith(f"error: {missing}: no final checkpoint to probe: it is missing")
    assert lines[1].startswith(f"error: {corrupt}: no final checkpoint to probe: it is corrupt")


@pytest.mark.parametrize("name", ["connect", "escape"])
def test_connect_and_escape_give_one_line_per_bad_checkpoint(name, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _job(sweep, "seed=0", 0, ckpt=b"LSCKPT1\n" + bytes(32) + b"garbage")
    _job(sweep, "seed=1", 1, ckpt=b"LSCKPT1\n" + bytes(32) + b"garbage")
    code, out, err = _run(COMMANDS[name], [sweep], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and "Traceback" not in err
    assert len(lines) == (1 if name == "connect" else 2), lines  # one pair, two jobs
    assert all(ln.startswith("failed: ") and "checkpoint" in ln and "corrupt" in ln
               for ln in lines), lines


# ----------------------------------------------------------------------------- messages
def test_figures_name_the_damaged_metrics_file_and_line(tmp_path, capsys):
    job = _job(tmp_path / "sweep", "seed=0", 0,
               metrics='{"epoch": 1, "train_loss": 1.0}\n{"epoch": 2, "trai\n')
    code, _, err = _run(figures, [job], capsys)
    assert code == 1
    assert err.strip() == (f"failed: {job}: {job / 'metrics.jsonl'} line 2 is not valid JSON "
                           "(column 14): the file is damaged")


def _four_probed_jobs(root: Path) -> Path:
    for seed in range(4):
        job = root / f"seed={seed}"
        job.mkdir(parents=True)
        (job / "config.yaml").write_text(f"seed: {seed}\nmodel:\n  name: mlp\n")
        (job / "result.json").write_text(json.dumps({
            "status": "completed", "seed": seed, "stop_reason": "max_epochs",
            "final": {"train_loss": 0.01 + seed / 1000, "train_acc": 1.0,
                      "test_acc": 0.8 + seed / 100, "generalization_gap": 0.2, "epoch": 5},
            "probes": {"lambda_max": 1.0 + seed, "trace": 10.0 + seed}}))
    return root


def test_report_of_four_jobs_says_there_are_too_few(tmp_path, capsys):
    from landscope.analysis.report import build_report

    page = build_report([_four_probed_jobs(tmp_path / "sweep")], tmp_path / "out")
    text = page.with_suffix(".md").read_text()
    assert "only 4 jobs completed and can be analysed" in text
    assert "run the sweep with probes or landscape scans" not in text


@pytest.mark.slow  # an offline W&B run: ~15 s
def test_report_says_it_was_saved_offline_and_how_to_sync(tmp_path, capsys, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    sweep = _four_probed_jobs(tmp_path / "sweep")
    code, out, err = _run(report, [sweep, "--wandb"], capsys)
    assert code == 0, err
    assert "logged to W&B" not in out
    (offline,) = sorted((sweep / "report" / "wandb").glob("offline-run-*"))
    assert f"report saved for W&B offline in {offline} (not uploaded; upload it with: " \
           f"wandb sync {offline})" in out


def test_a_disabled_report_log_says_so():
    from omegaconf import OmegaConf

    from landscope.config import LoggerConfig
    from landscope.tracking import ReportLog, log_report

    cfg = OmegaConf.structured(LoggerConfig(name="wandb", mode="disabled"))
    logged = log_report(Path("/nonexistent"), "g", cfg, [])
    assert logged == ReportLog("disabled")
    assert report._logged_line(logged, "p", "g") == \
        "report not logged to W&B (logger.mode is disabled)"


def test_wandb_sweep_knows_its_options_and_checks_its_file(tmp_path, capsys):
    from runner import wandb_sweep

    code, out, err = _run(wandb_sweep, ["experiment=smoke", "seed=0,1", "--methd", "grid"], capsys)
    assert code == 2 and _one_error(err) == \
        "error: unknown option --methd (did you mean --method?)"
    (tmp_path / "taken").write_text("")
    code, out, err = _run(wandb_sweep, ["experiment=smoke", "seed=0,1", "--out",
                                        tmp_path / "taken" / "s.yaml"], capsys)
    assert code == 2 and "cannot write to" in _one_error(err) and out == ""


def test_probe_command_shows_the_preset_it_ran():
    """issue #17 defect 6: result.json's top-level probes are the richest preset the job has;
    runner.probe's line shows the scalars of the preset just run."""
    from runner.probe import _requested

    result = {"probes": {"lambda_max": 2.0, "trace": 3.0, "hvps": 40},
              "probes_by_fingerprint": {"basic0": {"lambda_max": 1.0, "hvps": 9},
                                        "std0": {"lambda_max": 2.0, "trace": 3.0, "hvps": 40}}}
    assert _requested(result, "basic0") == {"lambda_max": 1.0, "hvps": 9}
    assert _requested(result, "std0") == {"lambda_max": 2.0, "trace": 3.0, "hvps": 40}
    assert _requested({"probes": {"trace": 1.0}}, None) == {"trace": 1.0}  # an older result
