"""Options whose names changed, and the one-off translations between the spellings.

:data:`RENAMED` maps an old dotted name (as configs, command lines and job directory names
written by an earlier release spell it) to the current one. :func:`to_current` rewrites a
stored config tree (a job's ``config.yaml``) to the current names, so jobs written before a
rename still load on the schema; :func:`to_legacy` rewrites a current tree to the old names,
for the version-1 fingerprints, which were hashes of the old layout; :func:`renamed` gives
the one-line hint for a command line that uses an old name."""

from __future__ import annotations

import copy
from typing import Any, Optional

#: old dotted name -> current dotted name
RENAMED: dict[str, str] = {}


def _move(tree: dict, old: str, new: str) -> None:
    *parents, leaf = old.split(".")
    node = tree
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return
    if not isinstance(node, dict) or leaf not in node:
        return
    value = node.pop(leaf)
    *parents, leaf = new.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def _prune(tree: Any) -> Any:
    """Drop the dict nodes a move left empty."""
    if isinstance(tree, dict):
        for k in [k for k, v in tree.items() if isinstance(v, dict)]:
            _prune(tree[k])
            if tree[k] == {}:
                del tree[k]
    return tree


def to_current(tree: dict) -> dict:
    """A copy of ``tree`` (plain containers) with every old name moved to its current one.

    >>> to_current({"seed": 1})
    {'seed': 1}
    """
    out = copy.deepcopy(tree)
    for old, new in RENAMED.items():
        _move(out, old, new)
    return _prune(out) if RENAMED else out


def to_legacy(tree: dict) -> dict:
    """A copy of ``tree`` with every current name moved back to its old one."""
    out = copy.deepcopy(tree)
    for old, new in RENAMED.items():
        _move(out, new, old)
    return _prune(out) if RENAMED else out


def renamed(key: str) -> Optional[str]:
    """The current name of ``key`` when it is an old one, else None.

    >>> renamed("optimizer.lr") is None
    True
    """
    return RENAMED.get(key)
