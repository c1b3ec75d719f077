"""The report: built from saved results alone, every section present, figures embedded,
excluded jobs listed, the planted relation found; the command's exit codes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from landscope.analysis.report import TOP_SCATTER, build_report
from landscope.errors import LandscopeError

SECTIONS = ["Sweep summary", "Jobs not included", "Per-configuration summary",
            "Measures against test error", "Strongest measures", "Appendix: fits",
            "Appendix: calibration of the tests"]


def _write_job(root, name, config, result=None):
    job = root / name
    job.mkdir(parents=True)
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    if result is not None:
        (job / "result.json").write_text(json.dumps(result))


@pytest.fixture
def sweep(tmp_path):
    """12 completed jobs (2 optimizers x 6 seeds) where test error rises with lambda_max,
    plus a failed job and one without result.json."""
    rng = np.random.default_rng(0)
    root = tmp_path / "sweep"
    for opt in ("sgd", "adam"):
        for seed in range(6):
            lam = float(rng.uniform(1, 20))
            acc = 0.9 - 0.01 * lam + float(rng.normal(0, 0.005))
            cfg = {"seed": seed, "optimizer": {"name": opt, "lr": 0.1 if opt == "sgd" else 0.001},
                   "model": {"name": "mlp"}}
            _write_job(root, f"optimizer={opt},seed={seed}", cfg, {
                "status": "completed", "seed": seed, "stop_reason": "max_epochs",
                "final": {"train_loss": float(rng.uniform(0.01, 0.02)), "train_acc": 1.0,
                          "test_acc": acc, "generalization_gap": 1 - acc, "epoch": 5},
                "probes": {"lambda_max": lam, "trace": float(rng.uniform(10, 20))},
                "landscape": {"line_train_rise_mean": float(rng.uniform(1, 2))}})
    _write_job(root, "optimizer=sgd,seed=9", {"seed": 9, "optimizer": {"name": "sgd", "lr": 0.1}},
               {"status": "failed", "error": "RuntimeError: boom", "seed": 9})
    _write_job(root, "optimizer=adam,seed=9", {"seed": 9, "optimizer": {"name": "adam"}})
    return root


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_report_sections_images_and_tables(sweep, tmp_path):
    out = tmp_path / "report"
    page = build_report([sweep], out)
    parser = _Collect()
    parser.feed(page.read_text())
    text = " ".join(parser.text)
    for section in SECTIONS:
        assert section in text, section
    # every figure is embedded as a PNG data URI: the page stands alone
    assert len(parser.images) == min(TOP_SCATTER, 3)  # 3 measures in this sweep
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "RuntimeError: boom" in text and "no result.json" in text  # excluded, with reasons
    # the appendix fit uses the table's inference: CR2 by seed, configuration fixed effects
    assert "Covariance: CR2 (Bell–McCaffrey), clustered by seed" in text
    assert "Seed clusters: 6" in text
    md = (out / "report.md").read_text()
    assert all(f"## {s}" in md or f"### {s}" in md for s in SECTIONS)
    assert md.count("](figures/") == 3 and all((out / "figures").glob("*.png"))
    # the markdown measures table has as many cells per row as headers
    lines = md.splitlines()
    start = next(i for i, r in enumerate(lines) if r.startswith("| measure"))
    header, rows = lines[start], lines[start + 2:start + 5]
    assert rows and all(r.count(" | ") == header.count(" | ") for r in rows)
    # the planted relation (within each optimizer, across seeds): lambda_max ranks test error
    # best, significant after Holm with 6 seeds as the units; 2 configurations can make no
    # between-config claim (the smallest exact p is 1)
    measures = pd.read_csv(out / "measures.csv")
    top = measures.iloc[0]
    assert top["measure"] == "probe.lambda_max"
    assert (top["n"], top["n_seeds"], top["n_configs"]) == (12, 6, 2)
    assert top["within_tau"] > 0.6 and top["within_tau_p_holm"] < 0.01
    assert top["within_coef"] > 0 and top["within_p_holm"] < 0.01
    assert top["between_p"] == 1.0
    assert "within-config" in md and "between-config" in md.lower()
    summary = pd.read_csv(out / "configurations.csv")
    assert list(summary["seeds"]) == [6, 6] and "±" in summary["test_acc"][0]
    # plain SGD (lr 0.1) is set against its stability limit 2/lr = 20; Adam is not
    # (optimizer.name and optimizer.lr change together: one factor, named by the lr)
    sgd = summary.set_index("configuration").loc["optimizer.lr=0.1"]
    adam = summary.set_index("configuration").loc["optimizer.lr=0.001"]
    assert float(sgd["2/lr"]) == 20 and "±" in str(sgd["λmax·lr/2"])
    assert pd.isna(adam["2/lr"])
    for name in ("jobs.csv", "jobs.parquet", "excluded.csv", "measures_gap.csv"):
        assert (out / name).is_file()
    gap = pd.read_csv(out / "measures_gap.csv")  # the mixed model against the gap too
    lam = gap[gap["measure"] == "probe.lambda_max"].iloc[0]
    assert {"within_coef", "within_se", "within_p", "between_tau"} <= set(gap.columns)
    assert np.isfinite(lam["within_coef"])
    assert len(pd.read_parquet(out / "jobs.parquet")) == 14  # every job kept, 12 included


def test_report_is_regenerable_and_refuses_empty_input(sweep, tmp_path):
    def stable(page):  # statsmodels stamps its summary with the date and time
        return [r for r in page.read_text().splitlines() if "Date:" not in r and "Time:" not in r]
    first = stable(build_report([sweep], tmp_path / "a"))
    assert first == stable(build_report([sweep], tmp_path / "b"))  # from saved results alone
    (tmp_path / "empty").mkdir()
    with pytest.raises(LandscopeError):
        build_report([tmp_path / "empty"], tmp_path / "c")


def test_report_command(sweep, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    ok = subprocess.run([sys.executable, "-m", "runner.report", str(sweep)], cwd=tmp_path,
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"report: {sweep / 'report' / 'report.html'}"
    bad = subprocess.run([sys.executable, "-m", "runner.report", str(tmp_path / "nowhere")],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_within_fit_of_a_constant_test_error_is_a_note_not_a_degenerate_fit():
    """Every job with the same test error: the appendix gets a one-line note instead of a fit
    (and no RuntimeWarning); otherwise the fit has the table's CR2 inference and its numbers."""
    import warnings

    from landscope.analysis.inference import cluster_ols, dummies
    from landscope.analysis.report_measures import within_fit_text

    rng = np.random.default_rng(3)
    df = pd.DataFrame({"probe.lambda_max": rng.normal(size=12), "seed": np.tile(np.arange(6), 2),
                       "optimizer.name": np.repeat(["sgd", "adam"], 6),
                       "final.train_loss": rng.uniform(0.01, 0.02, 12)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        note = within_fit_text(df.assign(**{"final.test_acc": 0.7}), "probe.lambda_max")
        acc = 0.7 - 0.01 * df["probe.lambda_max"] + 0.002 * rng.normal(size=12)
        fit = within_fit_text(df.assign(**{"final.test_acc": acc}), "probe.lambda_max")
    assert note.startswith("probe.lambda_max: no fit")
    assert "CR2" in fit and "probe.lambda_max (standardized)" in fit and "Seed clusters: 6" in fit
    x = df["probe.lambda_max"].to_numpy()
    D, _ = dummies(df["optimizer.name"])
    X = np.column_stack([np.ones(12), (x - x.mean()) / x.std(ddof=1),
                         df["final.train_loss"], D])
    ref = cluster_ols(1 - acc, X, df["seed"], ["c", "m", "l", "d"])
    row = next(r for r in fit.splitlines() if r.startswith("probe.lambda_max (standardized)"))
    assert float(row.split()[2]) == pytest.approx(ref.coef[1], rel=1e-3)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_report_h2_section_when_skip_is_swept(tmp_path):
    """A sweep over model.skip x 8 seeds where skip lowers lambda_max: the report gets an H2
    section with the verdict, its table (h2.csv) and the paired plot."""
    rng = np.random.default_rng(1)
    root = tmp_path / "h2"
    for seed in range(8):
        base = float(rng.uniform(5, 10))
        for skip in (True, False):
            lam = base * (0.5 if skip else 1.0)
            cfg = {"seed": seed, "model": {"name": "mlp", "skip": skip, "depth": 6}}
            _write_job(root, f"model.skip={str(skip).lower()},seed={seed}", cfg, {
                "status": "completed", "seed": seed, "stop_reason": "max_epochs",
                "final": {"train_loss": 0.1, "train_acc": 0.9, "test_acc": 0.7,
                          "generalization_gap": 0.2, "epoch": 5},
                "probes": {"lambda_max": lam, "trace": 10 * lam + float(rng.normal()),
                           "density_n_outliers": 5.0, "density_outlier_mass": 0.01}})
    page = build_report([root], tmp_path / "out")
    parser = _Collect()
    parser.feed(page.read_text())
    text = " ".join(parser.text)
    assert "H2: skip connections flatten the landscape" in text
    assert "Verdict: supported" in text
    table = pd.read_csv(tmp_path / "out" / "h2.csv")
    lam = table[table["measure"] == "probe.lambda_max"].iloc[0]
    assert lam["n"] == 8 and lam["median_diff"] < 0 and lam["verdict"] == "supported"
    assert (tmp_path / "out" / "figures" / "h2_paired.png").is_file()
    assert any("h2_paired" in a for a in (tmp_path / "out" / "report.md").read_text().splitlines())


def test_every_registered_section_resolves_and_several_apply_at_once(tmp_path):
    """One sweep that varies the batch size and skip connections and carries PAC-Bayes bounds:
    the H1, H2 and H4 sections are all written, every figure is embedded, and every entry of
    SECTIONS is a Section with callables (a renamed function fails at import)."""
    from landscope.analysis.report import SECTIONS, Section

    assert [s.calibration for s in SECTIONS[:5]] == ["H1", "H2", "H3", "H4", "optimizers"]
    for s in SECTIONS:
        assert isinstance(s, Section) and callable(s.applies) and callable(s.write) and s.title
    rng = np.random.default_rng(3)
    root = tmp_path / "sweep"
    for batch in (16, 64, 256):
        for skip in (True, False):
            for seed in range(8):
                lam = 3.0 * np.log2(batch) - (1.0 if skip else 0.0) + float(rng.normal(0, 0.3))
                acc = 0.8 - 0.01 * lam + float(rng.normal(0, 0.005))
                naive = 1.0
                iso = float(rng.uniform(0.9, 0.95))
                cfg = {"seed": seed, "name": "combo",
                       "train": {"batch_size": batch, "target_train_loss": 0.1},
                       "model": {"name": "mlp", "skip": skip}}
                _write_job(root, f"model.skip={str(skip).lower()},seed={seed},"
                                 f"train.batch_size={batch}", cfg, {
                    "status": "completed", "seed": seed, "stop_reason": "target_train_loss",
                    "final": {"train_loss": float(rng.uniform(0.09, 0.1)), "train_acc": 0.99,
                              "test_acc": acc, "generalization_gap": 0.99 - acc, "epoch": 30},
                    "probes": {"lambda_max": lam, "trace": float(rng.uniform(10, 20)),
                               "density_n_outliers": int(rng.integers(1, 5)),
                               "density_outlier_mass": float(rng.uniform(0, 1)),
                               "pacbayes_naive": naive, "pacbayes_isotropic": iso,
                               "pacbayes_hessian": iso * 0.8,
                               "pacbayes_hessian_is_isotropic": 0.0,
                               "pacbayes_isotropic_e_mc": 0.5, "pacbayes_hessian_e_mc": 0.5}})
    page = build_report([root], tmp_path / "report")
    parser = _Collect()
    parser.feed(page.read_text())
    text = " ".join(parser.text)
    for heading in ("H1: smaller batches", "H2: skip connections", "H4: Hessian-informed"):
        assert heading in text, heading
    assert "H3:" not in text and "Optimizer study" not in text and "Study (a)" not in text
    for name in ("h1.csv", "h2.csv", "h4.csv"):
        assert (tmp_path / "report" / name).exists(), name
    pngs = sorted((tmp_path / "report" / "figures").glob("*.png"))
    assert {"h1_batch.png", "h2_paired.png", "h4_bounds.png"} <= {p.name for p in pngs}
    assert len(parser.images) == len(pngs)
    assert all(src.startswith("data:image/png;base64,") for src in parser.images)
    md = (tmp_path / "report" / "report.md").read_text()
    assert md.count("## Appendix: fits") == 1 and "### H1 (a):" in md
