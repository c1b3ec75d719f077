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
- Jobs of one trained model measured with other probe or landscape settings:
  :mod:`landscope.analysis.stage_settings`.

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
def flat_defaults() -> dict:
    """The defaults flattened, by column (read only)."""
    return {column(k): v for k, v in flatten(json.loads(_defaults())).items()}


def effective_columns(cfg: dict) -> dict[str, Any]:
    """``cfg`` flattened into table columns (:func:`column`), every option it does not read at
    its schema default (None where the schema has none)."""
    columns = {column(k): v for k, v in flatten(cfg).items()}
    unread = [column(k) for k in unread_options(cfg)]
    defaults = flat_defaults()
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
    kept = sorted((k, v) for k, v in meant_columns(columns).items()
                  if k != "seed" and not k.startswith(prefixes))
    return json.dumps([seed, kept], default=str)


def meant_columns(columns: dict[str, Any]) -> dict[str, Any]:
    """``columns`` over the defaults, without the options that change no result."""
    return {k: v for k, v in {**flat_defaults(), **columns}.items() if not _changes_nothing(k)}


@lru_cache(maxsize=None)
def _changes_nothing(key: str) -> bool:
    """Whether column ``key`` is (below) an option named by ``layout_keys`` (per key, once)."""
    return any(key == f or key.startswith(f + ".") for f in _free())


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

