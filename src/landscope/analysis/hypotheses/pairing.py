"""Pairing jobs for H2: a factor's on and off sides (``model.skip`` true/false, or a
``model.norm`` level against ``none``), the other swept config keys a pair must share, and the
pairs by seed (see :mod:`landscope.analysis.hypotheses.h2`).
"""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import Any, Sequence

import numpy as np
import pandas as pd

from landscope.analysis.collect import swept_keys
from landscope.errors import LandscopeError

# Factors with levels rather than true/false, and the level that means "off"; every other level
# is an "on" level, compared with this one.
OFF_LEVELS: dict[str, str] = {"model.norm": "none"}
# The factors H2 looks at, in report order (h2_comparisons).
FACTORS = ("model.skip", "model.norm")
# Columns of a collected frame that are not config keys (collect.py's bookkeeping and results).
_NOT_CONFIG = {"sweep", "job", "path", "status", "included", "reason", "stop_reason", "seed",
               "n_params", "wall_time_s", "epochs_completed", "overrides", "test_error",
               "train_error"}
_RESULT_PREFIXES = ("final.", "probe.", "landscape.")


def as_bool(value: Any) -> bool | None:
    """A factor value as True/False (``true``/``false`` strings, 1/0), or None."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str):
        return {"true": True, "false": False, "1": True, "0": False}.get(value.strip().lower())
    if isinstance(value, (int, float, np.integer, np.floating)) and not pd.isna(value):
        return {1: True, 0: False}.get(value) if value in (0, 1) else None
    return None


def level_value(value: Any) -> str | None:
    """A value of a factor with levels as lower-case text (enum members by their value), or
    None when missing."""
    if isinstance(value, Enum):
        value = value.value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.strip().lower() if isinstance(value, str) else json.dumps(value, default=str)


def factor_side(value: Any, level: str | None = None, off: str | None = None) -> bool | None:
    """Which side of a comparison a factor value is on: True (on), False (off) or None.

    With ``off`` None the factor is true/false (:func:`as_bool`); otherwise ``off`` (e.g.
    ``"none"``) is False, ``level`` (e.g. ``"batch"``) is True and anything else None."""
    if off is None:
        return as_bool(value)
    v = level_value(value)
    if v is not None and v == level_value(off):
        return False
    if v is not None and level is not None and v == level_value(level):
        return True
    return None


def other_level(value: Any, level: str | None, off: str | None) -> bool:
    """True for a value at another "on" level of a factor with levels: not part of the
    comparison ``level`` vs ``off`` (left out silently, not unpaired)."""
    return off is not None and level_value(value) is not None \
        and factor_side(value, level, off) is None


def side_names(level: str | None, off: str | None) -> tuple[str, str]:
    return ("true", "false") if off is None else (str(level), str(off))


def included_jobs(jobs: pd.DataFrame) -> pd.DataFrame:
    return jobs[jobs["included"].astype(bool)] if "included" in jobs.columns else jobs


def factor_levels(jobs: pd.DataFrame, factor: str = "model.norm", off: str | None = None
                  ) -> list[str]:
    """The "on" levels of a factor with levels among the included rows of ``jobs``, sorted
    (every value but ``off``, default :data:`OFF_LEVELS`; missing values left out)."""
    off = OFF_LEVELS.get(factor) if off is None else off
    if off is None or factor not in jobs.columns:
        return []
    found = {level_value(v) for v in included_jobs(jobs)[factor]} - {None, level_value(off)}
    return sorted(found)


def resolve_level(jobs: pd.DataFrame, factor: str, level: Any = None, off: Any = None
                  ) -> tuple[str | None, str | None]:
    """``(level, off)`` of one comparison: ``(None, None)`` for a true/false factor
    (``model.skip``); for a factor with levels, ``off`` defaults to :data:`OFF_LEVELS` and
    ``level`` to the only other level present (an error when there are several: pass one, or
    use :func:`h2_tests`)."""
    off = OFF_LEVELS.get(factor) if off is None else off
    if off is None:
        if level is not None:
            raise LandscopeError(f"H2: {factor} is a true/false factor; level={level!r} needs "
                                 "off= (the level that means off)")
        return None, None
    check_columns(jobs, factor)
    if level is None:
        found = factor_levels(jobs, factor, off)
        if len(found) != 1:
            raise LandscopeError(
                f"H2: {factor} has {len(found)} levels besides {off!r} "
                f"({', '.join(found) or 'none'}): pass level= (one of them) or use h2_tests")
        level = found[0]
    level, off = level_value(level), level_value(off)
    if level is None or level == off:
        raise LandscopeError(f"H2: level {level!r} of {factor} must differ from off={off!r}")
    return level, off


def h2_comparisons(jobs: pd.DataFrame, swept: Sequence[str] | None = None,
                   factors: Sequence[str] = FACTORS) -> list[tuple[str, str | None]]:
    """The comparisons ``(factor, level)`` H2 can make on ``jobs``: ``("model.skip", None)``
    when ``model.skip`` is swept, and ``("model.norm", level)`` for every level other than
    ``none`` when ``none`` and at least one other level are among the included rows.
    ``swept``: the swept config keys (default: computed from the included rows)."""
    rows = included_jobs(jobs)
    swept = swept_keys(rows, [f for f in factors if f in rows.columns]) if swept is None \
        else list(swept)
    out: list[tuple[str, str | None]] = []
    for factor in factors:
        if factor not in swept or factor not in rows.columns:
            continue
        off = OFF_LEVELS.get(factor)
        if off is None:
            out.append((factor, None))
        elif level_value(off) in {level_value(v) for v in rows[factor]}:
            out += [(factor, level) for level in factor_levels(rows, factor, off)]
    return out


def check_columns(jobs: pd.DataFrame, factor: str) -> None:
    if factor not in jobs.columns:
        raise LandscopeError(f"H2: no column {factor!r} in the jobs table (factor to compare)")
    if "seed" not in jobs.columns:
        raise LandscopeError("H2: no column 'seed' in the jobs table (pairs are matched by seed)")


def config_code(value: Any) -> str:
    return "\0missing" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else json.dumps(value, default=str)


def pairing_keys(jobs: pd.DataFrame, factor: str, exclude: Sequence[str] = ()) -> list[str]:
    """The swept config keys of ``jobs`` (seeds and bookkeeping excluded) other than ``factor``."""
    candidates = [c for c in jobs.columns
                  if c not in _NOT_CONFIG and not c.startswith(_RESULT_PREFIXES)
                  and c != factor and c not in exclude]
    return swept_keys(jobs, candidates)


def pair_jobs(jobs: pd.DataFrame, factor: str = "model.skip", keys: Sequence[str] | None = None,
              *, level: Any = None, off: Any = None,
              ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Pair the included rows of ``jobs`` that agree on ``keys`` and ``seed`` and differ in
    ``factor`` (True vs False; for a factor with levels, ``level`` vs ``off``: see
    :func:`resolve_level`). Returns ``(pairs, unpaired, keys)``: ``pairs`` has the keys,
    ``seed``, ``on`` and ``off`` (row labels of ``jobs``) and ``job_on``/``job_off``;
    ``unpaired`` lists every included row left out, with a reason (rows at a third level of
    a factor with levels are not part of the comparison and not listed)."""
    check_columns(jobs, factor)
    level_on, level_off = resolve_level(jobs, factor, level, off)
    on_name, off_name = side_names(level_on, level_off)
    boolean = level_off is None
    rows = included_jobs(jobs)
    keys = list(keys) if keys is not None else pairing_keys(rows, factor)
    missing = [k for k in keys if k not in rows.columns]
    if missing:
        raise LandscopeError(f"H2: pairing keys not in the jobs table: {', '.join(missing)}")
    job_names = rows["job"] if "job" in rows.columns else pd.Series(rows.index.astype(str),
                                                                    index=rows.index)
    sides = rows[factor].map(lambda v: factor_side(v, level_on, level_off))
    unpaired: list[dict[str, Any]] = []
    groups: dict[tuple, dict[bool, list]] = {}
    for label in rows.index:
        value, seed = sides[label], rows.at[label, "seed"]
        if other_level(rows.at[label, factor], level_on, level_off):
            continue
        if value is None:
            what = "true/false" if boolean else f"{off_name!r} or {on_name!r}"
            unpaired.append({"row": label, "job": job_names[label], "seed": seed,
                             factor: rows.at[label, factor],
                             "reason": f"{factor}={rows.at[label, factor]!r} is not {what}"})
            continue
        if seed is None or (isinstance(seed, float) and math.isnan(seed)):
            unpaired.append({"row": label, "job": job_names[label], "seed": seed,
                             factor: value if boolean else rows.at[label, factor],
                             "reason": "no seed"})
            continue
        key = tuple(config_code(rows.at[label, k]) for k in keys) + (config_code(as_number(seed)),)
        groups.setdefault(key, {True: [], False: []})[value].append(label)
    pairs = _match(groups, rows, keys, job_names, factor, (on_name, off_name), boolean,
                   unpaired)
    pairs_df = pd.DataFrame(pairs, columns=[*keys, "seed", "on", "off", "job_on", "job_off"])
    unpaired_df = pd.DataFrame(unpaired, columns=["row", "job", "seed", factor, "reason"])
    return pairs_df, unpaired_df, keys


def _match(groups: dict[tuple, dict[bool, list]], rows: pd.DataFrame, keys: list[str],
           job_names: pd.Series, factor: str, names: tuple[str, str], boolean: bool,
           unpaired: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs of :func:`pair_jobs`: each group (config and seed) with exactly one job on
    each side; the jobs of every other group go to ``unpaired`` with the reason."""
    on_name, off_name = names
    pairs: list[dict[str, Any]] = []
    for side in groups.values():
        on, off = side[True], side[False]
        if len(on) == 1 and len(off) == 1:
            first = rows.loc[on[0]]
            pairs.append({**{k: first[k] for k in keys}, "seed": first["seed"], "on": on[0],
                          "off": off[0], "job_on": job_names[on[0]], "job_off": job_names[off[0]]})
            continue
        if on and off:
            why = f"ambiguous: {len(on)} jobs with {factor}={on_name} and {len(off)} with " \
                  f"{off_name} at the same config and seed"
        else:
            why = f"no partner with {factor}={off_name if on else on_name} at the same config " \
                  "and seed"
        for label in on + off:
            unpaired.append({"row": label, "job": job_names[label], "seed": rows.at[label, "seed"],
                             factor: (label in on) if boolean else rows.at[label, factor],
                             "reason": why})
    return pairs


def as_number(value: Any) -> Any:
    """Seeds as ints where they are whole numbers (1 and 1.0 pair)."""
    try:
        f = float(value)
        return int(f) if f.is_integer() else f
    except (TypeError, ValueError):
        return value
