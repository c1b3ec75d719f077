"""The wheel's package list (pyproject.toml, written by hand because conf/ ships as
``runner.conf``) names every Python package under src/ and every config group under conf/:
an editable install finds a missing one anyway, a wheel install does not.  Building the
wheel and the editable wheel prints no deprecation warning from our packaging."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import tomllib

from conftest import REPO


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_under_src_is_in_the_wheel():
    listed = set(_setuptools()["packages"])
    src = REPO / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")}
    assert found, "no packages found under src/"
    assert found - listed == set(), f"packages missing from pyproject.toml: {found - listed}"
    assert "runner.conf" in listed  # the configs, from conf/


def test_every_config_group_is_a_listed_data_package():
    """setuptools warns for every data directory that is not a listed package (issue #17,
    defect 7), and package-data must ship its yaml files."""
    st = _setuptools()
    listed, data = set(st["packages"]), st["package-data"]
    conf = REPO / "conf"
    groups = {".".join(("runner", "conf", *d.relative_to(conf).parts))
              for d in [conf, *(p for p in conf.rglob("*") if p.is_dir())]}
    assert groups - listed == set(), f"config groups missing from packages: {groups - listed}"
    with_yaml = {".".join(("runner", "conf", *p.parent.relative_to(conf).parts))
                 for p in conf.rglob("*.yaml")}
    assert all(data.get(g) == ["*.yaml"] for g in with_yaml), \
        f"package-data misses {[g for g in with_yaml if data.get(g) != ['*.yaml']]}"


def test_license_is_an_spdx_string():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str)  # the TOML-table form is deprecated


_BUILD = """
import sys, warnings
warnings.simplefilter("default")
import setuptools.build_meta as backend
out = sys.argv[1]
print("WHEEL", backend.build_wheel(out))
print("EDITABLE", backend.build_editable(out))
"""


def test_build_prints_no_deprecation_warnings(tmp_path):
    """Build the wheel and the editable wheel (as `pip install -e .` does) from a copy of
    the project: no setuptools deprecation or packaging warning, every config and data file
    in the wheel."""
    proj = tmp_path / "proj"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, proj / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, proj / name)
    out = tmp_path / "dist"
    out.mkdir()
    res = subprocess.run([sys.executable, "-c", _BUILD, str(out)], cwd=proj,
                         capture_output=True, text=True, timeout=240)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-3000:]
    bad = [line for line in text.splitlines()
           if "Deprecat" in line or "BuildBackendWarning" in line
           or "absent from the `packages`" in line]
    assert bad == [], "\n".join(bad[:20])

    wheel = out / res.stdout.split("WHEEL ")[1].split()[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = REPO / "conf"
    want = {f"runner/conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*.yaml")}
    want.add("landscope/analysis/calibration/rates.csv")
    assert want - names == set(), f"missing from the wheel: {sorted(want - names)[:10]}"
    meta = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in meta
    assert (out / res.stdout.split("EDITABLE ")[1].split()[0]).is_file()


def test_make_test_runs_the_whole_suite_on_every_core():
    """`make test` (the README's and CI's command) runs pytest-xdist workers, slow tests
    included (issue #17, defect 8: the suite had grown to 16 minutes on one core)."""
    import importlib.util

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("pytest-xdist") for r in project["optional-dependencies"]["test"])
    assert importlib.util.find_spec("xdist") is not None, "pytest-xdist is not installed"
    dry = subprocess.run(["make", "-n", "-s", "test", "test-fast"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    runs = [line for line in dry.stdout.splitlines() if "-m pytest" in line]
    assert len(runs) == 2 and all(" -n auto " in line for line in runs), runs
    assert "not slow" not in runs[0] and "not slow" in runs[1]
