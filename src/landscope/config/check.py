"""What the config groups share: :func:`need` (one check, one :class:`ConfigError` naming the
key), the ``LAYOUT`` field marker for options that change how a job runs or shows but never
what it computes, and :func:`layout_keys`, the one list of those options that the
fingerprints and Hydra's directory names derive from."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any, Callable, get_type_hints

from landscope.errors import ConfigError

#: Field metadata of an option that changes no result (threads, progress bars, checkpoint
#: cadence, where data lives, W&B): left out of the fingerprints and of job directory names.
LAYOUT = {"result": False}


def read_if(condition: Callable[[dict, dict], bool]) -> dict:
    """Field metadata of an option (or a whole group) that is read only when
    ``condition(section, root)`` holds, on the config as plain data (``section``: the group
    holding the option, ``root``: the whole config; choices as strings). Where it does not
    hold, the fingerprints leave the option out (:func:`unread_keys`): changing LLP's settings
    under SGD re-runs nothing."""
    return {"read_if": condition}


def unread_keys(schema: type, tree: dict, root: dict | None = None,
                prefix: str = "") -> list[str]:
    """Dotted names of the options of ``tree`` (plain data on ``schema``, a config dataclass)
    that its :func:`read_if` marks say are not read; an unread group is named whole.

    >>> from landscope.config import Config
    >>> from omegaconf import OmegaConf
    >>> tree = OmegaConf.to_container(OmegaConf.structured(Config()), enum_to_str=True)
    >>> [k for k in unread_keys(Config, tree) if k.startswith("optimizer.l")]
    ['optimizer.llp']
    >>> [k for k in unread_keys(Config, tree) if k.startswith("model")]
    ['model.patch_size', 'model.heads', 'model.kernel_size']
    """
    root = tree if root is None else root
    keys: list[str] = []
    hints = get_type_hints(schema)
    for f in fields(schema):
        if f.name not in tree:
            continue
        condition = f.metadata.get("read_if")
        if condition is not None and not condition(tree, root):
            keys.append(prefix + f.name)
        elif is_dataclass(hints[f.name]) and isinstance(tree[f.name], dict):
            keys.extend(unread_keys(hints[f.name], tree[f.name], root, f"{prefix}{f.name}."))
    return keys


def need(ok: bool, key: str, requirement: str, value: Any) -> None:
    """Raise ``ConfigError("<key> must be <requirement> (got <value>)")`` unless ``ok``.

    >>> need(True, "optimizer.lr", "> 0", 0.1)
    >>> need(False, "optimizer.lr", "> 0", -1.0)
    Traceback (most recent call last):
    ...
    landscope.errors.ConfigError: optimizer.lr must be > 0 (got -1.0)
    """
    if not ok:
        raise ConfigError(f"{key} must be {requirement} (got {value!r})")


def positive(value: float) -> bool:
    """A finite number > 0.

    >>> positive(0.5), positive(0.0), positive(float("inf"))
    (True, False, False)
    """
    return math.isfinite(value) and value > 0


def layout_keys(schema: type, prefix: str = "") -> list[str]:
    """Dotted names of the options of ``schema`` (a config dataclass, its groups walked)
    marked :data:`LAYOUT`; a marked group is named whole.

    >>> from landscope.config import ProbeConfig
    >>> layout_keys(ProbeConfig, "probe.")
    ['probe.progress', 'probe.ranks']
    """
    keys: list[str] = []
    hints = get_type_hints(schema)
    for f in fields(schema):
        if f.metadata.get("result", True) is False:
            keys.append(prefix + f.name)
        elif is_dataclass(hints[f.name]):
            keys.extend(layout_keys(hints[f.name], f"{prefix}{f.name}."))
    return keys
