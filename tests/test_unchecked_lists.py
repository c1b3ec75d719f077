"""Probe results written before the multiplicity check (December 2026) in the analysis.

One Lanczos run holds one direction of each eigenspace, so a top-k written before the check
could list a repeated eigenvalue once and reach further down the spectrum instead. The runner
probes such a job again (tests/test_jobdir_robustness.py); until it has, ``collect`` leaves out
the measures a top-k's later entries decide (λ2, the gap, its ratio, the condition number) and
the report says so. λmax, the first entry, stands.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import yaml

from landscope.analysis import collect
from landscope.probes.checked import (
    TOP_LIST_SCALARS,
    predates_multiplicity_check,
    top_list_predates_check,
)

CHECKED = {"lambda_max": 9.0, "lambda_2": 9.0, "spectral_gap": 0.0, "gap_ratio": 1.0,
           "condition_number": 3.0, "lambda_min_positive": 3.0, "top_checked": True,
           "top_missed_copies": 1, "trace": 40.0, "hvps": 30}
OLD = {k: v for k, v in CHECKED.items() if k not in ("top_checked", "top_missed_copies")}
OLD.update(lambda_2=5.0, spectral_gap=4.0, gap_ratio=5 / 9, condition_number=4.5,
           lambda_min_positive=2.0)  # λ1 = 9 listed once: the list reached further down


def _job(root, name: str, seed: int, probes: dict, acc: float = 0.6, **result) -> None:
    job = root / name
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(yaml.safe_dump(
        {"seed": seed, "model": {"name": "mlp", "width": 32},
         "optimizer": {"name": "sgd", "lr": 0.1}, "probe": {"name": "basic", "top_k": 5}}))
    (job / "result.json").write_text(json.dumps({
        "status": "completed", "seed": seed, "probes": probes,
        "final": {"test_acc": acc, "train_acc": 1.0, "train_loss": 0.01}, **result}))


def test_the_predicate_needs_no_torch():
    code = ("import sys; import landscope.analysis.collect, landscope.probes.checked; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_which_scalars_predate_the_check():
    assert top_list_predates_check(OLD) and predates_multiplicity_check(OLD)
    assert not top_list_predates_check(CHECKED) and not predates_multiplicity_check(CHECKED)
    k1 = {"lambda_max": 9.0, "lambda_2": math.nan, "spectral_gap": math.nan}
    assert not predates_multiplicity_check(k1)  # a top-1 has nothing to check
    assert not top_list_predates_check({"spectral_gap": True})  # not a number
    blocks = {**CHECKED, "blocks": {"fc1": {"lambda_max": 2.0}}}
    assert predates_multiplicity_check(blocks) and not top_list_predates_check(blocks)
    assert not predates_multiplicity_check(None)


def test_older_top_lists_lose_the_scalars_of_their_later_entries(tmp_path):
    root = tmp_path / "sweep"
    _job(root, "seed=0", 0, CHECKED)
    _job(root, "seed=1", 1, OLD)
    _job(root, "seed=2", 2, {"lambda_max": 7.0, "lambda_2": math.nan, "trace": 40.0,
                             "spectral_gap": math.nan})  # top-1
    _job(root, "seed=3", 3, {**OLD, "lambda_max": 8.0})
    c = collect(root)
    rows = c.included.set_index("seed")
    assert rows["probe.lambda_max"].tolist() == [9.0, 9.0, 7.0, 8.0]
    assert rows["probe.trace"].tolist() == [40.0] * 4
    for name in TOP_LIST_SCALARS:
        assert rows.loc[0, f"probe.{name}"] == CHECKED[name]
        assert math.isnan(rows.loc[1, f"probe.{name}"]) and math.isnan(rows.loc[3, f"probe.{name}"])
    assert c.counts == {"completed": 4}  # still analysed: lambda_max and the rest stand
    assert c.notes == [
        "2 jobs' probe results predate the check for missed copies of repeated eigenvalues "
        "(December 2026), so an eigenvalue list of theirs may name a repeated eigenvalue once "
        "and reach further down the spectrum instead; the measures that depend on the top-k's "
        "entries after the first are left out for them (lambda_2, spectral_gap, gap_ratio, "
        "condition_number, lambda_min_positive; lambda_max stands). Running the sweep's command "
        "again (runner.probe, for results it added) measures them again, without retraining."]


def test_only_per_block_lists_older_than_the_check_leave_the_measures_and_say_so(tmp_path):
    root = tmp_path / "sweep"
    _job(root, "seed=0", 0, {**CHECKED, "blocks": {"fc1": {"lambda_max": 2.0}}})
    _job(root, "seed=1", 1, CHECKED)
    c = collect(root)
    assert c.included["probe.spectral_gap"].tolist() == [0.0, 0.0]
    assert len(c.notes) == 1 and c.notes[0].startswith("1 job's probe results predate")
    assert "left out" not in c.notes[0]


def test_a_job_read_with_an_older_preset_loses_them_too(tmp_path):
    """result.json shows a checked preset at 5,000 samples; the job also keeps one at 1,000
    from before the check, and 1,000 is the setting most models were measured with."""
    root = tmp_path / "sweep"
    for seed in range(3):
        _job(root, f"seed={seed}", seed, CHECKED)
    job = root / "seed=0"
    result = json.loads((job / "result.json").read_text())
    result.update(probe_fingerprint="new", probes=CHECKED,
                  probes_by_fingerprint={"old": OLD, "new": CHECKED})
    (job / "result.json").write_text(json.dumps(result))
    (job / "probes").mkdir()
    for fp, size in (("old", 1000), ("new", 5000)):
        (job / "probes" / f"{fp}.json").write_text(json.dumps(
            {"probe": {"name": "basic", "top_k": 5, "data_size": size}, "scalars": {}}))
    for seed in (1, 2):  # measured with 1,000 samples, checked
        other = root / f"seed={seed}"
        (other / "probes").mkdir()
        res = json.loads((other / "result.json").read_text())
        res["probe_fingerprint"] = "one"
        (other / "result.json").write_text(json.dumps(res))
        (other / "probes" / "one.json").write_text(json.dumps(
            {"probe": {"name": "basic", "top_k": 5, "data_size": 1000}, "scalars": {}}))
    c = collect(root)
    rows = c.included.set_index("seed")
    assert pd.isna(rows.loc[0, "probe.top_checked"])  # read with the older preset
    assert any("analysed with the probe results kept beside" in n for n in c.notes)
    assert math.isnan(rows.loc[0, "probe.spectral_gap"])
    assert rows.loc[1, "probe.spectral_gap"] == 0.0
    assert any(n.startswith("1 job's probe results predate") for n in c.notes)


def test_on_a_tie_the_setting_measured_after_the_check_is_analysed(tmp_path):
    """Both models keep a preset from before the check (1,000 samples, shown by result.json)
    and a checked one (5,000): as many models were measured with each, so the checked one is
    analysed and no list scalar is left out."""
    root = tmp_path / "sweep"
    for seed in range(2):
        _job(root, f"seed={seed}", seed, OLD, probe_fingerprint="old",
             probes_by_fingerprint={"old": OLD, "new": CHECKED})
        (root / f"seed={seed}" / "probes").mkdir()
        for fp, size in (("old", 1000), ("new", 5000)):
            (root / f"seed={seed}" / "probes" / f"{fp}.json").write_text(json.dumps(
                {"probe": {"name": "basic", "top_k": 5, "data_size": size}, "scalars": {}}))
    c = collect(root)
    assert c.included["probe.spectral_gap"].tolist() == [0.0, 0.0]
    assert c.included["probe.top_checked"].tolist() == [True, True]
    assert c.included["measured_with"].tolist() == ["probe.data_size=5000"] * 2
    assert not any("predate" in n for n in c.notes)


def test_the_report_says_so(tmp_path):
    from runner.report import main

    root = tmp_path / "sweep"
    for seed in range(3):
        _job(root, f"seed={seed}", seed, OLD if seed == 1 else CHECKED, acc=0.5 + seed / 10)
    out = tmp_path / "report"
    main([str(root), "--out", str(out), "--no-wandb"])
    text = (out / "report.md").read_text()
    assert "1 job's probe results predate the check for missed copies" in text
    jobs = pd.read_csv(out / "jobs.csv").set_index("seed")
    assert math.isnan(jobs.loc[1, "probe.spectral_gap"]) and jobs.loc[0, "probe.spectral_gap"] == 0
