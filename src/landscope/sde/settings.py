"""The settings of an SDE check (``runner.sde``'s ``sde.KEY=VALUE``; the command's docstring
describes each): the :class:`SdeConfig` schema, its check and fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, List, Optional

from landscope.errors import ConfigError
from landscope.sde.theory import SAMPLINGS
from landscope.settings import stored, structured_settings, with_shown

RESULTS_DIR = "sde"
FORMAT = 1  # bump when the meaning of a stored result changes
STARTS = ("saddle", "origin")


@dataclass
class SdeConfig:
    """Settings of ``python -m runner.sde`` (its module docstring)."""

    runs: int = 4000  # independent SGD runs per (eta, B) cell
    steps: int = 40000  # SGD steps per run
    seed: int = 0  # batch-draw seed (each cell hashes it with its sampling, eta and B)
    sampling: List[str] = field(default_factory=lambda: ["replacement"])  # or epoch
    start: str = "saddle"  # common start: the saddle (tilt, 0) or the origin (0, 0)
    progress: Optional[bool] = None  # bars: true, false, null (on a terminal); not stored


def sde_config(overrides: list[str]) -> dict[str, Any]:
    """The settings: :class:`SdeConfig` merged with ``sde.KEY=VALUE`` overrides and checked
    (ConfigError naming the key); ``progress`` beside them only when it is set (it is never
    stored, :func:`landscope.settings.stored`)."""
    settings = structured_settings(SdeConfig, "sde", overrides, "sde.runs=2000")
    validate(settings)
    return with_shown(settings, stored(settings))


def validate(s: dict) -> None:
    """Raise :class:`ConfigError` naming the first impossible setting."""

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"sde.{key} must be {what} (got {s[key]!r})")

    need(s["runs"] >= 10, "runs", ">= 10")
    need(s["steps"] >= 2, "steps", ">= 2")
    need(s["seed"] >= 0, "seed", ">= 0")
    need(len(s["sampling"]) >= 1 and all(v in SAMPLINGS for v in s["sampling"])
         and len(set(s["sampling"])) == len(s["sampling"]), "sampling",
         f"a non-empty list of distinct values from {', '.join(SAMPLINGS)}")
    need(s["start"] in STARTS, "start", " or ".join(STARTS))


def settings_fingerprint(settings: dict) -> str:
    """16 hex digits of the SHA-256 of the settings (sorted JSON, ``progress`` left out) and
    the format version."""
    text = json.dumps({"format": FORMAT, **stored(settings)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
