"""Checks of a composed job config that look at its shape rather than one value
(:func:`landscope.config.validate` calls them first): options the schema does not define
(Hydra's ``+key=value`` / ``++key=value`` could add them), non-finite numbers anywhere,
a ``<group>.name`` override contradicting the group's choice, and job directory names longer
than the filesystem allows."""

from __future__ import annotations

import difflib
import math
from dataclasses import fields, is_dataclass
from functools import lru_cache
from typing import Any, Optional, get_type_hints

from landscope.errors import ConfigError

#: Config groups whose option files set ``<group>.name`` (the choice and the name must agree).
NAMED_GROUPS = ("dataset", "model", "optimizer", "loss", "augment", "probe", "landscape",
                "logger")
#: Longest file or directory name most filesystems accept (bytes).
MAX_NAME_BYTES = 255


@lru_cache(maxsize=1)
def option_names() -> tuple:
    """Dotted name of every option and section of the schema (``optimizer``, ``optimizer.lr``)."""
    names: list = []

    def walk(cls: type, prefix: str) -> None:
        hints = get_type_hints(cls)
        for f in fields(cls):
            names.append(prefix + f.name)
            if is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")

    from landscope.config import Config

    walk(Config, "")
    return tuple(names)


def unknown_option(key: str) -> str:
    """The one-line refusal of ``key``, an option the schema does not define; an option
    renamed since (:mod:`landscope.config.renames`) is told its current name.

    >>> unknown_option("optimizer.llp_c")
    'unknown option optimizer.llp_c: renamed optimizer.llp.c'
    """
    from landscope.config.renames import renamed

    current = renamed(key)
    if current is not None:
        return f"unknown option {key}: renamed {current}"
    close = difflib.get_close_matches(key, option_names(), n=1, cutoff=0.6)
    return f"unknown option {key}" + (f" (did you mean {close[0]}?)" if close else "")


def group_now(key: str, value: str) -> Optional[str]:
    """The one-line refusal of the override ``key=value`` when ``key``, an old option, names a
    group now (the old switch ``probe.pacbayes`` is ``probe.pacbayes.enabled``: Hydra reads
    ``probe.pacbayes=true`` as a value for the whole group); None for any other key.

    >>> group_now("probe.pacbayes", "true")
    'probe.pacbayes is a group now: use probe.pacbayes.enabled=true'
    >>> group_now("probe.top_k", "3") is None
    True
    """
    from landscope.config.renames import renamed

    current = renamed(key)
    if current is None or not current.startswith(key + "."):
        return None
    value = {"True": "true", "False": "false"}.get(value, value)  # as a sweep's job spells it
    return f"{key} is a group now: use {current}={value}"


def plain_tree(cfg: Any) -> dict:
    """The job's options as plain containers (interpolations unresolved), without ``hydra``."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        return {}
    keys = [k for k in cfg.keys() if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=False)


def check_schema_and_numbers(tree: dict) -> None:
    """Refuse keys the schema lacks (Hydra's ``+key=value`` can add them) and non-finite floats."""
    known = set(option_names())

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                name = f"{key}.{k}" if key else str(k)
                if name not in known:
                    raise ConfigError(unknown_option(name))
                walk(v, name)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"{key} must be a finite number (got {node})")

    for k, v in tree.items():  # a schema section holding a scalar is the schema's to refuse
        walk({k: v}, "")


def check_composed_job(cfg: Any) -> None:
    """With the ``hydra`` node of a composed job: its directory's names fit the filesystem,
    and a ``<group>.name=X`` override agrees with the group's choice
    (``optimizer=adam optimizer.name=sgd`` would run SGD at Adam's settings in a directory
    named ``optimizer=adam``)."""
    hydra = cfg.get("hydra") if hasattr(cfg, "get") else None
    if hydra is None:
        return
    mode = str(getattr(hydra.get("mode"), "name", hydra.get("mode")))
    if mode == "RUN":
        check_dir_name(hydra.run.dir)
    elif mode == "MULTIRUN":
        check_dir_name(f"{hydra.sweep.dir}/{hydra.sweep.subdir}")
    choices = hydra.runtime.get("choices") or {}
    overridden = {str(o).split("=", 1)[0].lstrip("+~") for o in hydra.overrides.get("task") or []}
    for group in NAMED_GROUPS:
        choice = choices.get(group)
        if f"{group}.name" in overridden and choice is not None:
            name = str(cfg[group].name)
            if name != str(choice):
                raise ConfigError(
                    f"{group}.name={name} contradicts the {group} preset {choice}: choose it with "
                    f"{group}={name} alone (the preset sets the name and its settings)")


def check_dir_name(path: Any) -> None:
    """Refuse a job directory path with a component longer than the filesystem allows."""
    from pathlib import Path

    for part in Path(str(path)).parts:
        if len(part.encode()) > MAX_NAME_BYTES:
            raise ConfigError(
                f"job directory name {part[:40]}... is {len(part.encode())} bytes (the limit is "
                f"{MAX_NAME_BYTES}); leave swept keys out of it with "
                "hydra.job.config.override_dirname.exclude_keys=[...] or set a shorter "
                "hydra.sweep.subdir / hydra.run.dir")
