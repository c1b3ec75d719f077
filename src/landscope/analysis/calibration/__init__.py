"""The calibration suite: every test the report uses, run on simulated sweeps under named null
and planted scenarios (``python -m runner.calibrate``).

Each hypothesis has its own module of scenarios (:data:`MODULES`), each exposing
``scenarios() -> list[Scenario]``. The rates measured at the shipped ``R`` are stored in
``rates.csv`` next to this file (written by ``python -m runner.calibrate --write``); the report
quotes them through :func:`calibration_note` and lists them in its appendix.
"""

from __future__ import annotations

import importlib
import math
from functools import lru_cache
from pathlib import Path

import pandas as pd

from landscope.analysis.calibration.core import (
    NULL_LIMIT,
    Rate,
    Scenario,
    binomial_interval,
    calibrate,
    completed,
    run_scenario,
    write_job,
)

__all__ = ["NULL_LIMIT", "Rate", "Scenario", "binomial_interval", "calibrate", "completed",
           "run_scenario", "write_job", "MODULES", "all_scenarios", "shipped_rates",
           "calibration_note", "merge_rates", "RATES_FILE"]

MODULES = ("measures", "h1", "h2", "h3", "h4", "optimizers", "init_scale")
RATES_FILE = Path(__file__).with_name("rates.csv")


def all_scenarios(hypotheses: tuple[str, ...] | None = None) -> list[Scenario]:
    """Every registered scenario (optionally only those of the given hypotheses, by the names
    in :data:`MODULES`)."""
    out: list[Scenario] = []
    for name in MODULES:
        if hypotheses is not None and name not in hypotheses:
            continue
        module = importlib.import_module(f"landscope.analysis.calibration.{name}")
        out.extend(module.scenarios())
    return out


@lru_cache(maxsize=4)
def _read(path: str) -> pd.DataFrame:
    p = Path(path)
    # "null" is a value of the kind column, not a missing value
    return pd.read_csv(p, keep_default_na=False, na_values=["", "nan", "NaN"]) \
        if p.is_file() else pd.DataFrame()


def shipped_rates(path: str | Path | None = None) -> pd.DataFrame:
    """The stored rates (empty when the suite has not been written yet)."""
    return _read(str(path or RATES_FILE))


def calibration_note(test: str, rates: pd.DataFrame | None = None) -> str:
    """One phrase with a test's calibration from the stored rates: the worst false-positive
    rate over its null scenarios and the power in each planted one, e.g.
    ``"calibration (R=200): null ≤ 4.5 % [2.1, 8.4] over 3 scenarios; power 61 % (chain, b=0.5)"``.
    ``"not calibrated"`` when the suite has no rows for ``test``."""
    rates = shipped_rates() if rates is None else rates
    if rates.empty or "test" not in rates:
        return "not calibrated"
    rows = rates[rates["test"] == test]
    if rows.empty:
        return "not calibrated"
    parts = []
    null = rows[rows["kind"] == "null"]
    if len(null):
        worst = null.loc[null["rate"].idxmax()]
        parts.append(f"false-positive rate ≤ {_pct(worst['rate'])} [{_pct(worst['low'])}, "
                     f"{_pct(worst['high'])}] over {len(null)} null scenario"
                     f"{'s' if len(null) > 1 else ''}")
    for row in rows[rows["kind"] == "stress"].itertuples():
        parts.append(f"{_pct(row.rate)} under a stress null beyond the goal ({row.scenario})")
    for row in rows[rows["kind"] == "power"].itertuples():
        parts.append(f"power {_pct(row.rate)} ({row.scenario}"
                     + (f": {row.effect}" if isinstance(row.effect, str) and row.effect else "")
                     + ")")
    lo, hi = int(rows["runs"].min()), int(rows["runs"].max())
    return f"calibration (R={lo if lo == hi else f'{lo}–{hi}'}): " + "; ".join(parts)


def merge_rates(stored: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``stored`` with the rows of every scenario in ``new`` replaced by ``new``'s (scenario
    order kept; new scenarios appended): a partial re-run, e.g. one scenario at a larger R."""
    if stored.empty:
        return new.reset_index(drop=True)
    order = list(dict.fromkeys(list(stored["scenario"]) + list(new["scenario"])))
    replaced = set(new["scenario"])
    parts = [new[new["scenario"] == s] if s in replaced else stored[stored["scenario"] == s]
             for s in order]
    return pd.concat(parts, ignore_index=True)


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(float(x)) else f"{100 * float(x):.1f} %"
