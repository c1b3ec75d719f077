"""Options whose names changed, and the one-off translations between the spellings.

:data:`RENAMED` maps an old dotted name (as configs, command lines and job directory names
written by an earlier release spell it) to the current one. :func:`to_current` rewrites a
stored config tree (a job's ``config.yaml``) to the current names, so jobs written before a
rename still load on the schema; :func:`to_legacy` rewrites a current tree to the old names,
for the version-1 fingerprints, which were hashes of the old layout; :func:`renamed` gives
the one-line hint for a command line that uses an old name; :func:`legacy_dirname` spells a
job directory name (Hydra's ``override_dirname``) as the release before the renames did, so
that the runner can move a job directory written then to its current name."""

from __future__ import annotations

import copy
import re
from typing import Any, Optional

#: old dotted name -> current dotted name, in the order :func:`to_current` applies them
#: (:func:`to_legacy` the reverse): an old option whose name becomes a group (the switch
#: ``probe.pacbayes``, now ``probe.pacbayes.enabled``) comes before the options that move
#: into that group, so the switch has left the path before the group is made there.
RENAMED: dict[str, str] = {
    **{f"optimizer.llp_{key}": f"optimizer.llp.{key}"
       for key in ("probes", "eps", "every", "rule", "c", "curvature", "aggregate", "ema",
                   "damping", "seed",
                   # added since the release (issue 21): flattened alike so the old layout
                   # holds no llp group; hashed only away from their defaults
                   "meta", "meta_action", "meta_ridge", "meta_warmup", "meta_horizon",
                   "meta_min_scale")},
    "probe.pacbayes": "probe.pacbayes.enabled",
    **{f"probe.pacbayes_{key}": f"probe.pacbayes.{key}"
       for key in ("data_size", "n_mc", "n_select", "delta", "delta_mc", "beta_grid",
                   "posterior", "steps", "lr_mean", "lr_var", "batch_size", "n_match")},
    # the probe estimators: each switch first, then its settings
    "probe.sharpness": "probe.sharpness.enabled",
    **{f"probe.sharpness_{key}": f"probe.sharpness.{key}"
       for key in ("family", "rhos", "samples", "antithetic")},
    "probe.keskar_epsilons": "probe.sharpness.keskar_epsilons",
    "probe.trace": "probe.trace.enabled",
    **{f"probe.trace_{key}": f"probe.trace.{key}" for key in ("rse", "max_samples")},
    "probe.density": "probe.density.enabled",
    "probe.slq_probes": "probe.density.probes",
    "probe.slq_steps": "probe.density.steps",
    "probe.density_grid": "probe.density.grid",
    "probe.density_sigma": "probe.density.sigma",
    "probe.logdet_eps": "probe.density.logdet_eps",
    "probe.noise": "probe.noise.enabled",
    **{f"probe.noise_{key}": f"probe.noise.{key}" for key in ("samples", "alignment")},
    # the landscape parts: each switch first, then its settings
    "landscape.line": "landscape.line.enabled",
    **{f"landscape.line_{key}": f"landscape.line.{key}"
       for key in ("directions", "eigen", "points", "range")},
    "landscape.plane": "landscape.plane.enabled",
    **{f"landscape.plane_{key}": f"landscape.plane.{key}" for key in ("points", "range", "eigen")},
    "landscape.trajectory": "landscape.trajectory.enabled",
    "landscape.snapshot_every_steps": "landscape.trajectory.snapshot_every_steps",
    "landscape.snapshot_dtype": "landscape.trajectory.snapshot_dtype",
    "landscape.trajectory_points": "landscape.trajectory.points",
    "landscape.intrinsic_dim": "landscape.intrinsic.enabled",
    **{f"landscape.intrinsic_{key}": f"landscape.intrinsic.{key}"
       for key in ("dims", "projection", "epochs", "lr")},
    "landscape.bezier": "landscape.bezier.enabled",
    **{f"landscape.bezier_{key}": f"landscape.bezier.{key}" for key in ("epochs", "lr")},
}


def _move(tree: dict, old: str, new: str) -> None:
    """Move the option at dotted ``old`` to ``new`` in ``tree``, making the groups on the way.
    Nothing moves when ``old`` is absent or holds a group (a dict: the current layout's
    ``probe.pacbayes``, not the old switch), when a non-group value (an old switch) stands where
    ``new`` needs a group, or when ``new`` holds a group that is not empty."""
    *parents, leaf = old.split(".")
    node = tree
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return
    if not isinstance(node, dict) or leaf not in node or isinstance(node[leaf], dict):
        return
    source, value = node, node.pop(leaf)
    *parents, leaf = new.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):  # an old switch where a group goes: leave as it was
            source[old.rsplit(".", 1)[-1]] = value
            return
    if isinstance(node.get(leaf), dict) and node[leaf]:  # a group with options left in it
        source[old.rsplit(".", 1)[-1]] = value
        return
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
    >>> to_current({"probe": {"pacbayes": True, "pacbayes_n_mc": 7}})
    {'probe': {'pacbayes': {'enabled': True, 'n_mc': 7}}}
    """
    out = copy.deepcopy(tree)
    for old, new in RENAMED.items():
        _move(out, old, new)
    return _prune(out) if RENAMED else out


def to_legacy(tree: dict) -> dict:
    """A copy of ``tree`` with every current name moved back to its old one (in the reverse
    of :func:`to_current`'s order: a group's options leave it before the switch takes its
    place).

    >>> to_legacy({"probe": {"pacbayes": {"enabled": True, "n_mc": 7}}})
    {'probe': {'pacbayes': True, 'pacbayes_n_mc': 7}}
    """
    out = copy.deepcopy(tree)
    for old, new in reversed(RENAMED.items()):
        _move(out, new, old)
    return _prune(out) if RENAMED else out


def renamed(key: str) -> Optional[str]:
    """The current name of ``key`` when it is an old one, else None.

    >>> renamed("optimizer.lr") is None
    True
    """
    return RENAMED.get(key)


def legacy_dirname(name: str, item_sep: str = ",", kv_sep: str = "=") -> str:
    """``name``, a job directory name made of overrides (Hydra's ``override_dirname``: the
    ``key=value`` items sorted and joined by ``item_sep``), as the release before the renames
    spelled it: every current option name replaced by its old one, the items sorted again as
    Hydra sorts them. A name with no renamed option comes back unchanged.

    >>> legacy_dirname("optimizer.llp.c=2,optimizer=llp,seed=0")
    'optimizer.llp_c=2,optimizer=llp,seed=0'
    >>> legacy_dirname("optimizer.betas=[0.9,0.99],seed=1")
    'optimizer.betas=[0.9,0.99],seed=1'
    """
    old_of = {new: old for old, new in RENAMED.items()}
    # an item starts where item_sep is followed by a key and kv_sep (list values hold item_sep)
    key = rf"[+~]*[\w.@/-]+{re.escape(kv_sep)}"
    items = re.split(rf"{re.escape(item_sep)}(?={key})", name)
    changed = False
    for i, item in enumerate(items):
        m = re.match(rf"([+~]*)([\w.@/-]+){re.escape(kv_sep)}", item)
        if m and m.group(2) in old_of:
            items[i] = m.group(1) + old_of[m.group(2)] + item[m.end() - len(kv_sep):]
            changed = True
    if not changed:
        return name
    # Hydra sorts the items as written with "=" before it puts kv_sep in
    return item_sep.join(sorted(items, key=lambda it: it.replace(kv_sep, "=")))
