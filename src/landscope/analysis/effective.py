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
  aside, :func:`landscope.config.layout_keys`) and seeds are equal, the first collected stays
  included; the others get status ``duplicate`` and a reason naming the one kept.

Torch-free, like :mod:`landscope.analysis.collect`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Callable

import pandas as pd

DUPLICATE = "duplicate"  # status of a job that repeats an included job's config and seed


@lru_cache(maxsize=1)
def _schema() -> tuple[Any, str]:
    """The schema as an omegaconf node, and its defaults flattened (as JSON, so the cache
    hands out copies)."""
    from omegaconf import OmegaConf

    from landscope.config import Config

    node = OmegaConf.structured(Config)
    return node, json.dumps(OmegaConf.to_container(node, enum_to_str=True))


def unread_options(cfg: dict) -> list[str]:
    """Dotted names of the options (or groups) ``cfg`` (a saved config, current names) does
    not read; empty when the schema cannot read ``cfg`` (an option it no longer has)."""
    from omegaconf import OmegaConf

    from landscope.config import Config
    from landscope.config.check import unread_keys

    try:
        tree = OmegaConf.to_container(OmegaConf.merge(_schema()[0], cfg), resolve=True,
                                      enum_to_str=True)
        return unread_keys(Config, tree)
    except Exception:  # noqa: BLE001 - not on the schema: taken as written
        return []


def effective_columns(cfg: dict, columns: dict[str, Any], flatten: Callable[[Any], dict],
                      column: Callable[[str], str]) -> dict[str, Any]:
    """``columns`` (``cfg`` flattened, named by ``column``) with every option ``cfg`` does not
    read at its schema default (None where the schema has none)."""
    unread = unread_options(cfg)
    if not unread:
        return columns
    defaults = {column(k): v for k, v in flatten(json.loads(_schema()[1])).items()}
    names = [column(k) for k in unread]
    out = dict(columns)
    for key in columns:
        if any(key == n or key.startswith(n + ".") for n in names):
            out[key] = defaults.get(key)
    return out


def _identity(jobs: pd.DataFrame, config: list[str], free: list[str]) -> pd.Series:
    """Per row, its seed and effective config as one string (options in ``free``, which
    change no result, left out)."""
    keep = [c for c in config if c in jobs and not any(c == f or c.startswith(f + ".")
                                                          for f in free)]
    cells = jobs[["seed", *keep]].astype(object).where(jobs[["seed", *keep]].notna(), None)
    return cells.apply(lambda row: json.dumps(list(row), default=str), axis=1)


def mark_duplicates(jobs: pd.DataFrame, config: list[str], has_config: pd.Series,
                    column: Callable[[str], str]) -> None:
    """In place: every included job (with a readable config) whose seed and effective config
    equal an earlier included job's is excluded, status :data:`DUPLICATE`."""
    from landscope.config import Config, layout_keys

    rows = jobs["included"] & has_config
    if rows.sum() < 2:
        return
    free = [column(k) for k in layout_keys(Config) if k != "seed"]
    ident = _identity(jobs[rows], config, free)
    first = ident.groupby(ident, sort=False).transform(lambda s: s.index[0])
    for i in ident.index[first.values != ident.index.values]:
        kept = jobs.loc[first[i]]
        jobs.loc[i, ["status", "included"]] = [DUPLICATE, False]
        jobs.loc[i, "reason"] = (f"the same config and seed as {kept['sweep']}/{kept['job']} "
                                 "(it differs at most in options it does not read or that "
                                 "change no result): one job, counted once")
