"""User-facing error types.

Every exception derived from :class:`LandscopeError` carries a message that is
complete on one line: the runner prints ``error: <message>`` and exits non-zero
without a traceback. :func:`one_line` writes any exception as such a line.
"""

from __future__ import annotations

import errno
import re


class LandscopeError(Exception):
    """A problem the user can fix (bad config, missing data, bad checkpoint)."""


class ConfigError(LandscopeError, ValueError):
    """A config value that composes but is impossible (lr <= 0, width 0, ...)."""


class DataError(LandscopeError):
    """A dataset that cannot be loaded (not on disk with download off, bad files)."""


class CheckpointError(LandscopeError):
    """A checkpoint that is truncated, corrupted or from another config."""


# Hydra's hints that suggest ``+key=value`` / ``++key=value``: keys the schema lacks are
# refused (landscope.config), so these would only mislead.
_PLUS_HINTS = ("To append to your", "Either remove + prefix", "Or add a second +")
_UNKNOWN = re.compile(r"Could not override '([\w.]+)'\.\s*\nTo append to your config use")
_PRESENT = re.compile(r"An item is already at '([\w.]+)'\.\s*\nEither remove \+ prefix: '([^']*)'")
_MERGING = re.compile(r"Error merging override [+~]*([\w.]+)=(.*)")


def _plus_free(text: str) -> str:
    """Hydra's composition message without its ``+``/``++`` advice (one known case reworded)."""
    m = _UNKNOWN.match(text)
    if m and not m.group(1).startswith("hydra."):
        from landscope.config_checks import unknown_option

        return unknown_option(m.group(1))
    m = _MERGING.match(text) or _PRESENT.search(text)
    if m:  # an old switch that names a group now (probe.pacbayes=true): its new name
        from landscope.config_checks import group_now

        key, value = (m.group(1), m.group(2)) if m.re is _MERGING else (
            m.group(1), m.group(2).split("=", 1)[-1])
        line = group_now(key, value)
        if line is not None:
            return line
    m = _PRESENT.search(text)
    if m:
        return f"{m.group(1)} is already an option: set it with {m.group(2)}"
    return text


def _condensed(exc: BaseException) -> str:
    """Hydra/OmegaConf multi-line messages condensed into one line (never advising ``+``)."""
    parts, options = [], []
    first = _plus_free(str(exc))
    if first != str(exc):
        return first
    for exc_i in (exc, exc.__cause__):
        if exc_i is None:
            continue
        for raw in str(exc_i).splitlines():
            line = raw.strip()
            if line.startswith("Config search path"):
                break
            if not line or line.startswith(("Set the environment variable", "object_type=",
                                            "reference_type=", *_PLUS_HINTS)):
                continue
            if raw.startswith("\t"):  # Hydra lists available options tab-indented
                options.append(line)
            elif line not in parts:
                parts.append(line)
    text = "; ".join(p.rstrip(":") if options and i == len(parts) - 1 else p
                     for i, p in enumerate(parts))
    if options:
        text += ": " + ", ".join(options)
    return text or type(exc).__name__


def one_line(exc: BaseException, typed: bool = False, plain: bool = False) -> str:
    """``exc`` as one line of a message: the one formatter of the commands and the jobs.

    By default a Hydra/OmegaConf composition message keeps its meaningful lines, joined by
    ``; `` (hints to use ``+`` and the config search path dropped, the options Hydra lists
    appended). ``plain`` (the messages a job records): a full disk says what to do, any other
    message has its whitespace, newlines included, collapsed. ``typed``: the exception's type
    name leads, except for a :class:`LandscopeError` (whose message is written for the user).

    >>> one_line(ValueError("bad\\n   value"), typed=True, plain=True)
    'ValueError: bad value'
    >>> one_line(LandscopeError("no jobs\\nfound"), typed=True, plain=True)
    'no jobs found'
    """
    if plain and isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"no space left on device{where}; free some and run the same command again"
    text = " ".join(str(exc).split()) if plain else _condensed(exc)
    return text if not typed or isinstance(exc, LandscopeError) else f"{type(exc).__name__}: {text}"
