"""Settings from ``group.key=value`` overrides, checked into a typed object: one way for the
post-hoc commands to read their own settings from the command line.

:func:`only_group` refuses overrides of another group (``runner.connect`` takes only
``landscape.*``); :func:`structured_settings` merges ``group.KEY=VALUE`` overrides into a
dataclass schema with OmegaConf (an unknown key, a wrong type or an unparsable value is one
:class:`~landscope.errors.ConfigError` line naming the key) and returns the plain values;
:func:`stored` leaves out the options that only say how a command shows its work
(:data:`SHOWN`).
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from landscope.errors import ConfigError


def only_group(overrides: list[str], group: str, example: str, *,
               group_choice: bool = False) -> None:
    """Raise :class:`ConfigError` unless every override sets a key of ``group``:
    ``group.KEY=VALUE``, or with ``group_choice`` (overrides that Hydra composes) also
    ``group=PRESET`` and the ``+``/``~`` forms.

    >>> only_group(["probe.top_k=3"], "probe", "probe.top_k=3")
    >>> only_group(["train.epochs=3"], "probe", "probe.top_k=3")
    Traceback (most recent call last):
        ...
    landscope.errors.ConfigError: only probe.KEY=VALUE overrides are accepted here ...
    """
    prefixes = (f"{group}.", f"{group}=") if group_choice else (f"{group}.",)
    for o in overrides:
        if not (o.lstrip("+~") if group_choice else o).startswith(prefixes):
            if group_choice:
                raise ConfigError(f"only {group} overrides are accepted here (got {o!r}), "
                                  f"e.g. {example}")
            raise ConfigError(f"only {group}.KEY=VALUE overrides are accepted here (got {o!r}), "
                              f"e.g. {example}")


# options of how a command shows its work, not of what it computes: never stored with the
# results or fingerprinted (``escape.progress``, ``sde.progress``)
SHOWN = ("progress",)


def stored(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without the options of :data:`SHOWN`."""
    return {k: v for k, v in settings.items() if k not in SHOWN}


def with_shown(settings: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """``out`` with the options of :data:`SHOWN` that ``settings`` sets (not None) beside it."""
    return {**out, **{k: settings[k] for k in SHOWN if settings.get(k) is not None}}


def structured_settings(schema: type, group: str, overrides: list[str],
                        example: str) -> dict[str, Any]:
    """``schema`` (a dataclass) merged with ``group.KEY=VALUE`` overrides, as plain values."""
    only_group(overrides, group, example)
    prefix = f"{group}."
    base = OmegaConf.structured(schema)
    dotlist = [o[len(prefix):] for o in overrides]
    for item in dotlist:
        key = item.split("=", 1)[0]
        if "=" not in item or not key:
            raise ConfigError(f"expected {group}.KEY=VALUE (got {prefix + item!r})")
        if key.split(".")[0] not in base:
            raise ConfigError(f"unknown setting {group}.{key} (known: "
                              f"{', '.join(prefix + k for k in base)})")
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
    except Exception as exc:  # noqa: BLE001 - OmegaConf: wrong type, unparsable value
        key = getattr(exc, "full_key", None)
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        msg = lines[0] if lines else type(exc).__name__
        raise ConfigError(f"{group}.{key}: {msg}" if key else
                          f"bad {group} override in {' '.join(overrides)}: {msg}") from None
    return OmegaConf.to_container(cfg, resolve=True)
