"""The README's calibration table is generated from the shipped rates (scripts/readme_figures.py),
not typed: it must equal what the script writes."""

import importlib.util
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("readme_figures",
                                                  ROOT / "scripts" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_calibration_table_is_the_generated_one():
    rf = _script()
    rates = pd.read_csv(rf.RATES, keep_default_na=False, na_values=["", "nan", "NaN"])
    table = rf.calibration_table(rates)
    text = rf.README.read_text(encoding="utf-8")
    assert rf.current(text, "calibration").strip() == table.strip(), \
        "README calibration table is stale: run scripts/readme_figures.py"
    # every family with stored rows appears, with its worst null rate
    for key, label in rf.FAMILIES:
        if (rates.apply(rf._family, axis=1) == key).any():
            assert f"| {label} |" in table


def test_replace_rewrites_only_between_markers():
    rf = _script()
    text = "a <!-- figures:tests -->old<!-- /figures:tests --> b"
    assert rf.replace(text, "tests", "new") == ("a <!-- figures:tests -->new"
                                                "<!-- /figures:tests --> b")
    sentence = rf.tests_sentence(12, None, "The suite … took 3.0 minutes on this 2-core CPU")
    assert "12 tests" in sentence and "took 3.0 minutes on this" in sentence
