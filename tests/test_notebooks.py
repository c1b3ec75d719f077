"""The tutorial notebooks (notebooks/NN_*.py, jupytext percent format) run top to bottom in a
fresh kernel of this interpreter (scripts/run_notebooks.py: jupytext + nbclient, an explicit
kernelspec, so no user kernelspec is needed or used), each in its own temporary working
directory; any cell error fails the test. Each notebook must show its figures (image/png
outputs) and the numbers it promises, read from the checks.json it writes: the Hessian
estimators against the dense Hessian, the Analyzer against the job's own probe, the
batch-size ordering of lambda_max, the architectures' accuracies, the Bezier curve against
the straight line."""

from __future__ import annotations

import json
import math
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import run_notebooks  # noqa: E402

NAMES = [p.stem for p in run_notebooks.sources()]
FIGURES = {"01_introduction": 3, "02_hessian": 1, "03_sharpness_generalization": 1,
           "04_architectures": 1, "05_visualizations": 5}


def test_the_five_tutorials_are_there_without_outputs():
    assert NAMES == sorted(FIGURES)
    for path in run_notebooks.sources():
        text = path.read_text()
        assert text.count("# %%") >= 5 and "# %% [markdown]" in text
        nb = run_notebooks.convert(path)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.fixture
def execute(tmp_path, data_dir):
    """Run one notebook in ``tmp_path``; its ``_out/data`` is the session's data directory
    (MNIST-1D generated once)."""
    (tmp_path / "_out").mkdir()
    (tmp_path / "_out" / "data").symlink_to(data_dir, target_is_directory=True)

    def _execute(name: str) -> tuple[object, dict]:
        nb = run_notebooks.execute(REPO / "notebooks" / f"{name}.py", tmp_path, timeout=300)
        assert run_notebooks.pngs(nb) == FIGURES[name]
        checks = json.loads((tmp_path / "_out" / name / "checks.json").read_text())
        return nb, checks

    return _execute


@pytest.mark.slow
def test_01_introduction(execute):
    nb, c = execute("01_introduction")
    assert c["status"] == "completed" and c["n_samples"] == c["train_size"] == 1000
    # the Analyzer and the job's probe: the same 1,000 samples, the same loss, float32
    assert c["analyzer_lambda_max"] == pytest.approx(c["job_lambda_max"], rel=1e-4)
    # the plane's centre is the trained model itself: its loss over the whole train set
    assert c["centre_loss"] == pytest.approx(c["job_train_loss"], rel=1e-5)


@pytest.mark.slow
def test_02_hessian_estimators_agree_with_the_dense_hessian(execute):
    nb, c = execute("02_hessian")
    assert c["n_params"] == 460
    assert c["hv_rel_error"] < 1e-12
    assert c["lanczos_max_rel_error"] < 1e-6 and c["lanczos_products"] < c["n_params"] / 5
    assert abs(c["trace"] - c["trace_exact"]) <= 4 * c["trace_stderr"]
    assert c["trace_stderr"] <= 0.011 * abs(c["trace"])
    assert c["slq_moment2"] == pytest.approx(c["exact_moment2"], rel=0.15)
    text = "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))
    assert "worst relative error" in text and "standard errors away" in text


@pytest.mark.slow
def test_03_sharper_minima_at_larger_batches(execute):
    nb, c = execute("03_sharpness_generalization")
    assert c["batch"] == [8, 32, 128, 512] and c["status"] == ["completed"] * 4
    assert all(loss <= 0.05 for loss in c["train_loss"])  # stopped at the same train loss
    lam = c["lambda_max"]
    assert all(a < b for a, b in zip(lam, lam[1:])), lam  # measured 0.81, 2.98, 6.81, 16.6
    assert -1 <= c["tau"] <= 1


@pytest.mark.slow
def test_04_architectures(execute):
    nb, c = execute("04_architectures")
    assert sorted(c) == ["cnn", "mlp", "resnet (no skip)", "resnet (skip)"]
    for name in ("cnn", "resnet (skip)", "resnet (no skip)"):
        assert c[name]["test acc"] > 0.7, (name, c[name])  # measured 0.86-0.95 (mlp 0.45)
    for name in ("resnet (skip)", "resnet (no skip)"):
        assert c[name]["lambda_max"] > 5 * c["mlp"]["lambda_max"]  # measured 144-198 vs 15
    assert all(math.isfinite(r["slice rise"]) and r["slice rise"] > 0 for r in c.values())


@pytest.mark.slow
def test_05_visualizations(execute):
    nb, c = execute("05_visualizations")
    assert {"plane_contour.png", "plane_surface.png", "trajectory.png"} <= set(c["figures"])
    # the trained bend removes the straight line's barrier (measured 1.05 against 0.006)
    assert c["linear_barrier"] > 0.3 and c["bezier_barrier"] < 0.2 * c["linear_barrier"]
    assert 0 < c["pc_explained"] <= 1
    assert math.isfinite(c["plane_centre_loss"]) and c["plane_centre_loss"] > 0
