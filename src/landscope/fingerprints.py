"""The hashes that key a job and its caches: :func:`fingerprint` (what training computes: a
job directory holds one config's job), :func:`probe_fingerprint` and
:func:`landscape_fingerprint` (what the post-training stages compute: their caches and
result.json fields).

Version 2 (:data:`FINGERPRINT_VERSION`, recorded in result.json and checkpoints) hashes the
options that can change a result and differ from the schema's defaults: an option added
later at a default that keeps the old behaviour changes no hash, with no special case.
Options are hashed under their first names (a rename or a nesting changes no hash).
Options marked LAYOUT (threads, progress bars, checkpoint cadence, W&B...) and options the
config does not read (marked ``read_if`` on the schema: LLP's settings under another
optimizer, Adam's betas under SGD and the other optimizer settings of :data:`MARKED_LATER`,
the synthetic problems' settings on real data, PAC-Bayes settings with the bound off...) are
left out. Changing a default, or what an option means, needs a new version
and a migration (a test holds the version-2 defaults). Jobs written before version 2 are
recognized by their version-1 fingerprints (:mod:`landscope.fingerprints_v1`) and migrated
once (:mod:`landscope.migrate`).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any, Mapping, Optional

from omegaconf import OmegaConf

from landscope.config import (
    STAGE_GROUPS,
    SYNTHETIC,
    Config,
    DatasetConfig,
    LandscapeConfig,
    ProbeConfig,
    layout_keys,
    result_free_keys,
    typed,
)
from landscope.config.check import unread_keys
from landscope.config.renames import to_legacy

FINGERPRINT_VERSION = 2

#: Options marked ``read_if`` after version 2 was released (the optimizer's settings that
#: only some optimizers or schedules read, the model's that only some models read, the
#: synthetic problems' that only one of them reads). The defaults they are compared with keep
#: them, so a job that reads one at its default hashes as before; a job that set one it does
#: not read now hashes as the job without it, and was hashed with it before
#: (:func:`earlier_fingerprint`; the ``dataset.*`` ones only on a synthetic problem, which
#: read them all before).
MARKED_LATER = ("optimizer.momentum", "optimizer.nesterov", "optimizer.betas", "optimizer.eps",
                "optimizer.rho", "optimizer.adaptive", "optimizer.base", "optimizer.step_size",
                "optimizer.gamma", "optimizer.min_lr", "model.width", "model.depth", "model.norm",
                "model.skip", "model.activation", "model.patch_size", "model.heads",
                "model.kernel_size", "dataset.spectrum", "dataset.dim", "dataset.condition",
                "dataset.outliers", "dataset.tolerance", "dataset.sharp_curvature",
                "dataset.flat_curvature", "dataset.barrier", "dataset.tilt")
#: The synthetic problems' options among them. Version 2 hashed all of them at their values
#: on either problem (the defaults, on mnist1d, never held them); one the problem does not
#: read is hashed at its default now, so a job that leaves it alone hashes as before.
_SYNTHETIC_LATER = tuple(k for k in MARKED_LATER if k.startswith("dataset."))


def _plain(cfg: Any) -> dict:
    """``cfg`` on the schema (options it lacks at their defaults) as plain data (the costly
    part, about 0.1 s: build it once per config)."""
    return OmegaConf.to_container(OmegaConf.structured(typed(cfg)), resolve=True,
                                  enum_to_str=True)


def _tree(cfg: Any, keep: tuple[str, ...] = (), plain: Optional[dict] = None) -> dict:
    """``cfg`` (or its :func:`_plain` data) without the options it does not read
    (:func:`~landscope.config.check.unread_keys`; those in ``keep`` stay), each option under
    its first name (:func:`~landscope.config.renames.to_legacy`): renaming or nesting an
    option changes no hash. On a synthetic problem the unread ones of
    :data:`_SYNTHETIC_LATER` are set to their defaults instead of left out."""
    tree = json.loads(json.dumps(plain)) if plain is not None else _plain(cfg)
    synthetic = str(tree["dataset"]["name"]) in SYNTHETIC
    for key in unread_keys(Config, tree):
        if key in keep:
            continue
        if synthetic and key in _SYNTHETIC_LATER:
            leaf = key.split(".")[1]
            tree["dataset"][leaf] = getattr(DatasetConfig(), leaf)
        else:
            _drop(tree, key)
    return to_legacy(tree)


@lru_cache(maxsize=1)
def _defaults() -> str:
    return json.dumps(_tree(Config(), keep=tuple(k for k in MARKED_LATER
                                                 if k not in _SYNTHETIC_LATER)))


def _default_tree() -> dict:
    return json.loads(_defaults())


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.get(p, {})
    node.pop(leaf, None)


def _changed(tree: Any, default: Any) -> Any:
    """The entries of ``tree`` that differ from ``default`` (recursively for sections)."""
    if not isinstance(tree, dict) or not isinstance(default, dict):
        return tree
    out = {}
    for k, v in tree.items():
        if k not in default:
            out[k] = v
        elif isinstance(v, dict) and isinstance(default[k], dict):
            sub = _changed(v, default[k])
            if sub:
                out[k] = sub
        elif v != default[k]:
            out[k] = v
    return out


def _hash(kind: str, canonical: dict) -> str:
    text = json.dumps({"fingerprint_version": FINGERPRINT_VERSION, "kind": kind,
                       "options": canonical}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: the probe options the in-training λmax hook (probe.every_n_steps > 0) reads: its rows are
#: written by training, so they key the job like any other training option
STEP_CURVATURE_KEYS = ("every_n_steps", "data_size", "seed", "micro_batch", "mode")


def _training_options(tree: dict) -> dict:
    """The options of a whole-config tree that training reads."""
    probe = tree.get("probe") or {}
    if probe.get("name", "none") != "none" and probe.get("every_n_steps"):
        tree["step_curvature"] = {k: probe.get(k) for k in STEP_CURVATURE_KEYS}
    for key in (*result_free_keys(), *STAGE_GROUPS):
        _drop(tree, key)
    return tree


def _probe_options(probe: dict) -> dict:
    """The options of the probe group that its estimators read."""
    for key in layout_keys(ProbeConfig):
        probe.pop(key, None)
    return probe


def _landscape_options(landscape: dict) -> dict:
    for key in layout_keys(LandscapeConfig):
        landscape.pop(key, None)
    return landscape


def _train_hash(tree: dict) -> str:
    return _hash("train", _changed(_training_options(tree), _training_options(_default_tree())))


def fingerprint(cfg: Any) -> str:
    """Hash of the options training reads that differ from their defaults."""
    return _train_hash(_tree(cfg))


def training_fingerprints(cfg: Any) -> tuple[str, Optional[str]]:
    """``(fingerprint(cfg), earlier_fingerprint(cfg))`` from one conversion of ``cfg``."""
    plain = _plain(cfg)
    now = _train_hash(_tree(cfg, plain=plain))
    synthetic = str(plain["dataset"]["name"]) in SYNTHETIC
    kept = tuple(k for k in MARKED_LATER if synthetic or k not in _SYNTHETIC_LATER)
    before = _train_hash(_tree(cfg, keep=kept, plain=plain))
    return now, None if before == now else before


def earlier_fingerprint(cfg: Any) -> Optional[str]:
    """The version-2 training hash ``cfg`` had before :data:`MARKED_LATER` were marked,
    when it differs from :func:`fingerprint` (the config sets an option it does not read),
    else None: a job directory written then holds this config's job."""
    return training_fingerprints(cfg)[1]


def probe_fingerprint(cfg: Any, tree: Optional[dict] = None) -> Optional[str]:
    """Hash of the probe options (None when probes are off): a completed job whose
    result.json carries another one gets its probes (re)computed, without retraining.
    ``tree``: ``cfg``'s :func:`_tree`, when the caller has it."""
    if str(cfg.probe.name) == "none":
        return None
    tree = _tree(cfg) if tree is None else tree
    return _hash("probe", _changed(_probe_options(tree["probe"]),
                                   _probe_options(_default_tree()["probe"])))


def landscape_fingerprint(cfg: Any, tree: Optional[dict] = None) -> Optional[str]:
    """Hash of the landscape options (None when it is off), like :func:`probe_fingerprint`."""
    if str(cfg.landscape.name) == "none":
        return None
    tree = _tree(cfg) if tree is None else tree
    return _hash("landscape", _changed(_landscape_options(tree["landscape"]),
                                       _landscape_options(_default_tree()["landscape"])))


def job_fingerprints(cfg: Any) -> tuple[str, Optional[str], Optional[str]]:
    """What a job computes: its training, probe and landscape fingerprints, from one
    conversion of ``cfg`` (equal for two configs that differ only in options none reads)."""
    tree = _tree(cfg)
    probe, landscape = probe_fingerprint(cfg, tree), landscape_fingerprint(cfg, tree)
    return _train_hash(tree), probe, landscape


def legacy_fingerprint(cfg: Any) -> str:
    """The version-1 training fingerprint of ``cfg`` (what a job directory written before
    version 2 records)."""
    from landscope.fingerprints_v1 import fingerprint_v1

    return fingerprint_v1(cfg)


def same_config(record: Mapping, fp: str, legacy: Optional[str] = None,
                earlier: Optional[str] = None) -> bool:
    """Whether ``record`` (a result.json or checkpoint) holds a job of the config whose
    fingerprint is ``fp``: by its version-2 fingerprint or ``earlier`` (the config's
    :func:`earlier_fingerprint`), or, for a record written before version 2, by ``legacy``
    (the config's version-1 fingerprint) or the record's own ``fingerprint_v1`` (kept by the
    migration)."""
    stored = record.get("fingerprint")
    if stored is None:
        return False
    if stored == fp:
        return True
    if record.get("fingerprint_version", 1) >= 2:
        return earlier is not None and stored == earlier
    return stored in {legacy, record.get("fingerprint_v1")} - {None}


def checkpoint_of(ckpt: Mapping, result: Mapping) -> bool:
    """Whether checkpoint ``ckpt`` was written by the job whose result is ``result`` (a
    checkpoint from before version 2 carries the fingerprint the migration kept as the
    result's ``fingerprint_v1``; one from before :data:`MARKED_LATER`, the result's
    ``fingerprint_earlier`` when the job resumed from it)."""
    stored = ckpt.get("fingerprint")
    return stored is not None and stored in {result.get("fingerprint"),
                                             result.get("fingerprint_v1"),
                                             result.get("fingerprint_earlier")}
