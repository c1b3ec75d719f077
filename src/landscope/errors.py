"""User-facing error types.

Every exception derived from :class:`LandscopeError` carries a message that is
complete on one line: the runner prints ``error: <message>`` and exits non-zero
without a traceback.
"""


class LandscopeError(Exception):
    """A problem the user can fix (bad config, missing data, bad checkpoint)."""


class ConfigError(LandscopeError, ValueError):
    """A config value that composes but is impossible (lr <= 0, width 0, ...)."""


class DataError(LandscopeError):
    """A dataset that cannot be loaded (not on disk with download off, bad files)."""


class CheckpointError(LandscopeError):
    """A checkpoint that is truncated, corrupted or from another config."""
