"""The settings of an escape run (``runner.escape``'s ``escape.KEY=VALUE``; the command's
docstring describes each): the :class:`EscapeConfig` schema, their check and fingerprint."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from landscope.errors import ConfigError
from landscope.escape.dynamics import NOISES, EscapeRule
from landscope.settings import stored, structured_settings, with_shown

PREFIX = "escape."
RESULTS_DIR = "escape"
FORMAT = 1  # bump when the meaning of a stored result changes


@dataclass
class EscapeConfig:
    """Settings of ``python -m runner.escape`` (its module docstring)."""

    lrs: List[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    batch_sizes: List[int] = field(default_factory=lambda: [4, 16, 64])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])
    max_steps: int = 600
    eval_every: int = 2
    eval_size: Optional[int] = 1000
    eval_seed: int = 0
    delta_abs: float = 0.1
    delta_rel: float = 0.0
    confirm: int = 2
    radius: Optional[float] = None
    noise: List[str] = field(default_factory=lambda: ["sgd"])
    lr_unit: str = "absolute"
    noise_k: Optional[int] = None
    noise_samples: Optional[int] = 1024
    progress: Optional[bool] = None  # bars: true, false, null (on a terminal); not stored


# settings added after the first format: left out of the stored settings (and so of the
# fingerprint) while at these defaults, so the default settings' fingerprint is unchanged
LATER_DEFAULTS = {"noise": ["sgd"], "lr_unit": "absolute", "noise_k": None,
                  "noise_samples": 1024}
LR_UNITS = ("absolute", "stability")


def canonical(settings: dict) -> dict:
    """The settings as stored and fingerprinted: the later settings dropped while at their
    defaults (:data:`LATER_DEFAULTS`), and ``progress`` always
    (:func:`landscope.settings.stored`)."""
    return {k: v for k, v in stored(settings).items()
            if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


def escape_config(overrides: list[str]) -> dict[str, Any]:
    """The settings: :class:`EscapeConfig` merged with ``escape.KEY=VALUE`` overrides and
    checked (ConfigError naming the key); as stored (:func:`canonical`), with ``progress``
    beside them when it is set."""
    settings = structured_settings(EscapeConfig, "escape", overrides, "escape.lrs=[0.05,0.2]")
    validate(settings)
    return with_shown(settings, canonical(settings))


def validate(s: dict) -> None:
    """Raise :class:`ConfigError` naming the first impossible setting."""

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"escape.{key} must be {what} (got {s[key]!r})")

    need(len(s["lrs"]) >= 1 and all(math.isfinite(v) and v > 0 for v in s["lrs"]), "lrs",
         "a non-empty list of numbers > 0")
    need(len(s["batch_sizes"]) >= 1 and all(v >= 1 for v in s["batch_sizes"]), "batch_sizes",
         "a non-empty list of integers >= 1")
    need(len(s["seeds"]) >= 1 and all(v >= 0 for v in s["seeds"]), "seeds",
         "a non-empty list of integers >= 0")
    for name, values in (("lrs", s["lrs"]), ("batch_sizes", s["batch_sizes"]),
                         ("seeds", s["seeds"])):
        need(len(set(values)) == len(values), name, "without repeated values")
    need(s["max_steps"] >= 1, "max_steps", ">= 1")
    need(s["eval_every"] >= 1, "eval_every", ">= 1")
    need(s["eval_size"] is None or s["eval_size"] >= 1, "eval_size", ">= 1 or null")
    need(s["eval_seed"] >= 0, "eval_seed", ">= 0")
    need(len(s["noise"]) >= 1 and all(v in NOISES for v in s["noise"])
         and len(set(s["noise"])) == len(s["noise"]), "noise",
         f"a non-empty list of distinct values from {', '.join(NOISES)}")
    need(s["lr_unit"] in LR_UNITS, "lr_unit", " or ".join(LR_UNITS))
    need(s["noise_k"] is None or s["noise_k"] >= 1, "noise_k", ">= 1 or null")
    need(s["noise_samples"] is None or s["noise_samples"] >= 2, "noise_samples",
         ">= 2 or null")
    EscapeRule(delta_abs=s["delta_abs"], delta_rel=s["delta_rel"], confirm=s["confirm"],
               radius=s["radius"])  # raises ConfigError naming the setting


def settings_fingerprint(settings: dict) -> str:
    """16 hex digits of the SHA-256 of the settings (sorted JSON, :func:`canonical`) and the
    format version."""
    text = json.dumps({"format": FORMAT, **canonical(settings)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
