"""What a job's config means for the analysis: options it does not read, and jobs that are
one job twice.

A config can set options its job never reads: ``optimizer.betas`` under SGD,
``optimizer.momentum`` under Adam (or SAM around Adam), ``optimizer.step_size`` without the
step schedule, LLP's group under another optimizer (the ``read_if`` marks of the schema,
:func:`landscope.config.check.unread_keys`). The training fingerprint leaves them out, so
``optimizer=sgd,adam optimizer.betas=[0.9,0.99],[0.8,0.9]`` trains one SGD job per seed in two
directories with the same results. Read as written, the table would call them two
configurations of SGD and count each seed twice: pseudo-replication, which inflates every
test that counts configurations or seeds.

- :func:`effective_columns`: a job's flattened config with each unread option at its schema
  default, so two jobs that differ only in unread options have the same columns (and labels).
- :func:`mark_duplicates`: of jobs whose effective configs (options that change no result
  aside, :func:`landscope.config.layout_keys`) and seeds are equal (:func:`identity`), the
  first collected stays included; the others get status ``duplicate`` and a reason naming
  the one kept. :func:`landscope.analysis.collect.distinct_jobs` does the same for the
  readers of job directories (the escapes of H3).
- :func:`mark_other_settings`: of jobs of one trained model (seed and effective training
  config equal) probed or scanned with other settings (``probe.data_size=500,1000``: the
  sweep trains each model in two directories), one setting is kept for every model; the
  others get status ``other_setting``. Their measures are other quantities of the same model:
  pooled, they would count the model twice and mix two estimators in one test.

Torch-free, like :mod:`landscope.analysis.collect`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import pandas as pd

DUPLICATE = "duplicate"  # status of a job that repeats an included job's config and seed
# Config groups whose names the measured scalars use; their config keys get a "config." prefix.
_PREFIXED_GROUPS = ("probe", "landscape")
STAGE_COLUMNS = tuple(f"config.{g}." for g in _PREFIXED_GROUPS)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1, "c": [1, 2]}}`` → ``{"a.b": 1, "a.c": "[1, 2]"}`` (lists as JSON)."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and value:
                out.update(flatten(value, name))
            else:
                out.update(flatten(value, name) if isinstance(value, dict)
                           else {name: scalar(value)})
        return out
    return {prefix: scalar(obj)}


def scalar(value: Any) -> Any:
    """A table cell: lists and dicts as JSON, enums and the like as strings."""
    if isinstance(value, (list, tuple)):
        return json.dumps(value)
    if isinstance(value, dict):  # empty dict
        return json.dumps(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # enums and anything else


def column(key: str) -> str:
    """The table column of config option ``key`` (the groups probe and landscape prefixed:
    ``probe.*`` and ``landscape.*`` hold the measured scalars)."""
    return f"config.{key}" if key.split(".")[0] in _PREFIXED_GROUPS else key


@lru_cache(maxsize=1)
def _defaults() -> str:
    """The schema's defaults as plain data (JSON, so that each caller gets its own copy)."""
    from omegaconf import OmegaConf

    from landscope.config import Config

    return json.dumps(OmegaConf.to_container(OmegaConf.structured(Config), enum_to_str=True))


def _over(default: Any, saved: Any) -> Any:
    """``saved`` over ``default``, group by group (plain data; a saved config written by the
    runner holds every option, an older or hand-written one may not)."""
    if not isinstance(default, dict) or not isinstance(saved, dict):
        return saved
    return {**default, **{k: _over(default.get(k), v) for k, v in saved.items()}}


def unread_options(cfg: dict) -> list[str]:
    """Dotted names of the options (or groups) ``cfg`` (a saved config, current names) does
    not read; empty when its marks cannot be read off ``cfg`` (values of another shape)."""
    from landscope.config import Config
    from landscope.config.check import unread_keys

    try:
        return unread_keys(Config, _over(json.loads(_defaults()), cfg))
    except Exception:  # noqa: BLE001 - not on the schema: taken as written
        return []


@lru_cache(maxsize=1)
def _flat_defaults() -> dict:
    """The defaults flattened, by column (read only)."""
    return {column(k): v for k, v in flatten(json.loads(_defaults())).items()}


def effective_columns(cfg: dict) -> dict[str, Any]:
    """``cfg`` flattened into table columns (:func:`column`), every option it does not read at
    its schema default (None where the schema has none)."""
    columns = {column(k): v for k, v in flatten(cfg).items()}
    unread = [column(k) for k in unread_options(cfg)]
    defaults = _flat_defaults()
    for key in columns:
        if any(key == n or key.startswith(n + ".") for n in unread):
            columns[key] = defaults.get(key)
    return columns


@lru_cache(maxsize=1)
def _free() -> tuple[str, ...]:
    from landscope.config import Config, layout_keys

    return tuple(column(k) for k in layout_keys(Config))


def identity(columns: dict[str, Any], seed: Any, prefixes: tuple[str, ...] = ()) -> str:
    """A job's seed and effective config columns as one string, equal for one job: options
    the config lacks at their defaults; options that change no result (named by
    :func:`landscope.config.layout_keys`) and columns starting with ``prefixes`` left out."""
    kept = sorted((k, v) for k, v in _meant(columns).items()
                  if k != "seed" and not k.startswith(prefixes))
    return json.dumps([seed, kept], default=str)


def _meant(columns: dict[str, Any]) -> dict[str, Any]:
    """``columns`` over the defaults, without the options that change no result."""
    free = _free()
    return {k: v for k, v in {**_flat_defaults(), **columns}.items()
            if not any(k == f or k.startswith(f + ".") for f in free)}


def stage_setting(columns: dict[str, Any]) -> dict[str, Any]:
    """The probe and landscape settings a job ran (its ``config.probe.*`` and
    ``config.landscape.*`` columns, missing ones at their defaults; options that change no
    result left out)."""
    return {k: v for k, v in _meant(columns).items() if k.startswith(STAGE_COLUMNS)}


def first_copies(identities: list[Any]) -> list[Any]:
    """Per position, the position of the first equal identity before it (None for a first
    one, and for None: a job without a config is nobody's copy)."""
    first: dict[str, int] = {}
    out = []
    for i, ident in enumerate(identities):
        out.append(None if ident is None or first.setdefault(ident, i) == i else first[ident])
    return out


def copy_reason(kept: str, trained: bool = False) -> str:
    """Why a job is left out as a copy of ``kept`` (``trained``: of its trained model)."""
    if trained:
        return (f"the same trained model as {kept} (the same seed and training config; it "
                "differs at most in options training does not read): one minimum, counted once")
    return (f"the same config and seed as {kept} (it differs at most in options it does not "
            "read or that change no result): one job, counted once")


def mark_duplicates(jobs: pd.DataFrame, identities: list[Any]) -> None:
    """In place: every included job whose :func:`identity` equals an earlier included job's
    is excluded, status :data:`DUPLICATE` (``identities`` per row; None: no config)."""
    included = jobs["included"].tolist()
    idents = [ident if ok else None for ident, ok in zip(identities, included)]
    for i, first in enumerate(first_copies(idents)):
        if first is not None:
            kept = jobs.iloc[first]
            row = jobs.index[i]
            jobs.loc[row, ["status", "included"]] = [DUPLICATE, False]
            jobs.loc[row, "reason"] = copy_reason(f"{kept['sweep']}/{kept['job']}")


OTHER_SETTING = "other_setting"  # status of a trained model's job at a setting not analysed


def _text(value: Any) -> str:
    """A cell as the command line writes it (``400``, ``true``, ``null``, ``[0.01, 0.05]``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None or isinstance(a, bool) or isinstance(b, bool):
        return a == b
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["probe.data_size=400"]`` → ``{"config.probe.data_size": 400}`` (values read as YAML,
    as Hydra reads overrides); a LandscopeError names an item that is not ``KEY=VALUE`` of a
    probe or landscape option of the schema."""
    import difflib

    import yaml

    from landscope.errors import LandscopeError

    out: dict[str, Any] = {}
    known = [k for k in _flat_defaults() if k.startswith(STAGE_COLUMNS)]
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        col = key if key.startswith("config.") else column(key)
        if not sep or not key or not col.startswith(STAGE_COLUMNS):
            raise LandscopeError(f"--setting {item}: expected KEY=VALUE of a probe.* or "
                                 "landscape.* option, e.g. --setting probe.data_size=400")
        if col not in known:
            close = difflib.get_close_matches(col, known, n=1)
            hint = f" (did you mean {close[0][len('config.'):]}?)" if close else ""
            raise LandscopeError(f"--setting {item}: no option {key}{hint}")
        out[col] = scalar(yaml.safe_load(value)) if value else None
    return out


def _no_match(prefer: dict[str, Any], settings: list[dict[str, Any]]) -> str:
    for key, value in prefer.items():
        seen = sorted({_text(s.get(key)) for s in settings})
        if not any(_same(s.get(key), value) for s in settings):
            return (f"--setting {key[len('config.'):]}={_text(value)}: no completed job ran "
                    f"it (the jobs ran {', '.join(seen)})")
    return ("--setting " + " ".join(f"{k[len('config.'):]}={_text(v)}" for k, v in prefer.items())
            + ": no completed job ran all of these together")


def mark_other_settings(jobs: pd.DataFrame, trained: list[Any], settings: list[dict],
                        prefer: dict[str, Any] | None = None) -> None:
    """In place: of included jobs that are one trained model (equal ``trained`` identities,
    :func:`identity` without the probe and landscape columns) probed or scanned with other
    settings (``settings`` per row, :func:`stage_setting`), one stays included and the others
    get status :data:`OTHER_SETTING`: a measure taken with other settings is another
    quantity, and one model is one unit. The setting kept is the same for every model: the
    one most included jobs ran, among those that match ``prefer`` (:func:`parse_settings`;
    the first collected on ties). A model without a job at that setting keeps its first
    (matching) job. Raises a LandscopeError when no included job matches ``prefer``."""
    from landscope.errors import LandscopeError

    rows = [i for i, ok in enumerate(jobs["included"].tolist()) if ok and trained[i] is not None]
    key = {i: json.dumps(sorted(settings[i].items()), default=str) for i in rows}
    matching = [i for i in rows if all(_same(settings[i].get(k), v)
                                       for k, v in (prefer or {}).items())]
    if prefer and not matching:
        raise LandscopeError(_no_match(prefer, [settings[i] for i in rows]))
    matched = set(matching)
    groups: dict[Any, list[int]] = {}
    for i in rows:
        groups.setdefault(trained[i], []).append(i)
    counts: dict[str, int] = {}
    for i in matching:
        counts[key[i]] = counts.get(key[i], 0) + 1
    chosen = max(counts, key=counts.__getitem__) if counts else None
    for group in (g for g in groups.values() if len(g) > 1):
        keep = next((i for i in group if key[i] == chosen),
                    next((i for i in group if i in matched), group[0]))
        kept = jobs.iloc[keep]
        for i in group:
            if i != keep:
                row = jobs.index[i]
                jobs.loc[row, ["status", "included"]] = [OTHER_SETTING, False]
                jobs.loc[row, "reason"] = _setting_reason(
                    f"{kept['sweep']}/{kept['job']}", settings[i], settings[keep])


def _setting_reason(kept: str, mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    differ = [k for k in sorted({*mine, *theirs}) if not _same(mine.get(k), theirs.get(k))]
    said = ", ".join(f"{k[len('config.'):]}={_text(mine.get(k))} where it has "
                     f"{_text(theirs.get(k))}" for k in differ)
    return (f"the same trained model as {kept}, measured with other settings ({said}): a "
            "measure taken with other settings is another quantity and one model is one unit, "
            "so the analysis keeps one setting per model (runner.report --setting KEY=VALUE "
            "chooses it)")


def analysed_setting(jobs: pd.DataFrame) -> str | None:
    """A sentence on the setting kept by :func:`mark_other_settings` (None when no job is
    :data:`OTHER_SETTING`)."""
    other = jobs["status"] == OTHER_SETTING
    if not other.any():
        return None
    rows = jobs[other | jobs["included"]]
    varying = [c for c in jobs.columns if c.startswith(STAGE_COLUMNS)
               and rows[c].astype(str).nunique() > 1]
    kept = jobs.loc[jobs["included"]]
    said = ", ".join(f"{c[len('config.'):]}=" + "/".join(  # the most kept first
        _text(v.item() if hasattr(v, "item") else v) for v in kept[c].value_counts().index)
        for c in varying)
    n = int(other.sum())
    return (f"{n} job{'s' if n != 1 else ''} measured a trained model already analysed with "
            f"other probe or landscape settings (status {OTHER_SETTING}); each model is analysed "
            f"once, at {said} (runner.report --setting KEY=VALUE chooses another).")
