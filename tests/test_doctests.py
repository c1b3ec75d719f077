"""The docstring examples: every module of the library with a ``>>>`` example runs its doctests
(issue #19 item 6), and every pointer from a docstring or comment to docs/measurements.md names a
section that exists there."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

import landscope

PACKAGE = Path(landscope.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[1]
MIN_EXAMPLES = 15


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules_with_examples() -> list[str]:
    return sorted(_module_name(p) for p in PACKAGE.rglob("*.py")
                  if ">>>" in p.read_text(encoding="utf-8"))


MODULES = _modules_with_examples()


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
    assert result.attempted > 0, f"{name} has '>>>' but doctest found no example"


def test_enough_examples() -> None:
    finder = doctest.DocTestFinder()
    n = sum(len(t.examples) for name in MODULES
            for t in finder.find(importlib.import_module(name)))
    assert n >= MIN_EXAMPLES, f"only {n} doctest examples in {MODULES}"


def test_measurement_pointers_resolve() -> None:
    doc = REPO / "docs" / "measurements.md"
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', doc.read_text(encoding="utf-8")))
    missing = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for anchor in re.findall(r"docs/measurements\.md#([a-z0-9-]+)",
                                 path.read_text(encoding="utf-8")):
            if anchor not in anchors:
                missing.append(f"{path.relative_to(REPO)}: #{anchor}")
    assert not missing, "pointers to sections docs/measurements.md lacks: " + ", ".join(missing)
