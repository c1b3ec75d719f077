"""The wheel's package list (pyproject.toml, written by hand because conf/ ships as
``runner.conf``) names every Python package under src/: an editable install finds a missing
one anyway, a wheel install does not."""

from __future__ import annotations

import tomllib

from conftest import REPO


def test_every_package_under_src_is_in_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    src = REPO / "src"
    found = {".".join(p.parent.relative_to(src).parts) for p in src.rglob("__init__.py")}
    assert found, "no packages found under src/"
    assert found - listed == set(), f"packages missing from pyproject.toml: {found - listed}"
    assert "runner.conf" in listed  # the configs, from conf/
