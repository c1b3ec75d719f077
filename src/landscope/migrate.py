"""The one-off migration of a job directory written before fingerprint version 2.

Such a directory's result.json carries version-1 fingerprints (no ``fingerprint_version``),
and its probe and landscape caches are named by them. :func:`migrate_job` checks the
record against the job's own config.yaml (its version-1 fingerprint must match: a directory
it cannot vouch for is left alone), renames each cache to its version-2 name (npz first,
the JSON record last, so a half-migrated cache is never read as complete), and rewrites
result.json last with the version-2 fingerprints, the version, and the old training
fingerprint as ``fingerprint_v1`` (the job's checkpoints still carry it; see
:func:`landscope.fingerprints.checkpoint_of`). A rerun after a crash finishes the job; a
migrated directory is not touched again. Callers hold the job's lock."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import OmegaConf

from landscope.fingerprints import (
    FINGERPRINT_VERSION,
    fingerprint,
    landscape_fingerprint,
    probe_fingerprint,
)
from landscope.fingerprints_v1 import (
    fingerprint_v1,
    landscape_fingerprint_v1,
    probe_fingerprint_v1,
)
from landscope.io import read_json, write_json
from landscope.jobcheck import read_result
from landscope.jobdir import RESULT_FILE, JobDir

log = logging.getLogger("landscope")

#: cache directory -> (config group its records hold, version-1 and version-2 hashes)
_CACHES: dict[str, tuple[str, Callable, Callable]] = {
    "probes": ("probe", probe_fingerprint_v1, probe_fingerprint),
    "landscape": ("landscape", landscape_fingerprint_v1, landscape_fingerprint),
}


def needs_migration(result: Optional[dict]) -> bool:
    """Whether ``result`` (a parsed result.json) predates fingerprint version 2."""
    return isinstance(result, dict) and isinstance(result.get("fingerprint"), str) and \
        result.get("fingerprint_version", 1) < FINGERPRINT_VERSION


def migrate_job(job_dir: Path, cfg: Any = None) -> bool:
    """Bring ``job_dir`` to fingerprint version 2 (see the module); True when it changed.

    ``cfg``: the config of the command at hand, when it has one; the job is vouched for by
    it or by its own config.yaml (the first whose version-1 fingerprint is the record's)."""
    job = JobDir(Path(job_dir))
    result = read_result(job.path / RESULT_FILE, warn=False)
    if not needs_migration(result):
        return False
    candidates = [c for c in (cfg, _saved(job)) if c is not None]
    base = next((c for c in candidates if _quiet(fingerprint_v1, c) == result["fingerprint"]),
                None)
    if base is None:
        log.warning("warning: %s: result.json's fingerprint is neither this config's nor its "
                    "config.yaml's; left as it is", job.path)
        return False
    renamed: dict[str, str] = {}
    for kind, (group, old_hash, new_hash) in _CACHES.items():
        for path in sorted((job.path / kind).glob("*.json")):
            names = _cache_names(candidates, path, group, old_hash, new_hash)
            if names is not None and _rename_cache(job.path / kind, *names):
                renamed[names[0]] = names[1]
    write_json(job.path / RESULT_FILE, _migrated(result, base, renamed))
    log.info("%s: records moved to fingerprint version %d", job.path, FINGERPRINT_VERSION)
    return True


def _saved(job: JobDir) -> Any:
    try:
        return job.config()
    except Exception:  # noqa: BLE001 - an unreadable config.yaml vouches for nothing
        return None


def _quiet(hash_: Callable, cfg: Any) -> Optional[str]:
    try:
        return hash_(cfg)
    except Exception:  # noqa: BLE001 - options the schema no longer takes: no match
        return None


def _cache_names(candidates: list, path: Path, group: str, old_hash: Callable,
                 new_hash: Callable) -> Optional[tuple[str, str]]:
    """``(old, new)`` names of the cache at ``path``: from the settings its record holds
    (on each candidate config), else from a candidate's own; None when named by neither."""
    from landscope.config.renames import to_current

    stage_cfgs = []
    try:
        record = read_json(path)
        settings = to_current({group: record[group]})[group]
        stage_cfgs = [OmegaConf.merge(c, {group: settings}) for c in candidates]
    except Exception:  # noqa: BLE001 - an unreadable record: the candidates' own settings
        pass
    for stage_cfg in [*stage_cfgs, *candidates]:
        old, new = _quiet(old_hash, stage_cfg), _quiet(new_hash, stage_cfg)
        if old and new and path.stem in (old, new):
            return old, new
    return None


def _rename_cache(directory: Path, old: str, new: str) -> bool:
    """npz, then the JSON record (its presence marks a complete cache); True when the cache
    has its new name afterwards."""
    for suffix in (".npz", ".json"):
        src, dst = directory / f"{old}{suffix}", directory / f"{new}{suffix}"
        if src.exists():
            os.replace(src, dst)
    return (directory / f"{new}.json").exists()


def _migrated(result: dict, cfg: Any, renamed: dict[str, str]) -> dict:
    out = dict(result)
    out["fingerprint_v1"] = result["fingerprint"]
    out["fingerprint"] = fingerprint(cfg)
    out["fingerprint_version"] = FINGERPRINT_VERSION
    for key in ("probe_fingerprint", "landscape_fingerprint"):
        if result.get(key) in renamed:
            out[key] = renamed[result[key]]
    if isinstance(result.get("probes_by_fingerprint"), dict):
        out["probes_by_fingerprint"] = {renamed.get(k, k): v
                                        for k, v in result["probes_by_fingerprint"].items()}
    return out
