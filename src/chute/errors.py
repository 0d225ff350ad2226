"""Exceptions raised for bad input: each message names the file, key or value at fault."""

from __future__ import annotations


class ChuteError(Exception):
    """Base class for errors chute raises about user input."""


class ConfigError(ChuteError, ValueError):
    """A setting has a bad value.

    Args:
        key: Name of the setting, e.g. ``"num_workers"``; a config group prefix is added when the
            error is reported for a composed Hydra config (``"loader.num_workers"``).
        value: The offending value.
        reason: What is wrong and what to do instead.
    """

    def __init__(self, key: str, value: object, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"{key}={value!r}: {reason}")

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, object, str]]:
        # Pickled whole, so the error rank 0 broadcasts (or a worker raises) arrives as itself.
        return (type(self), (self.key, self.value, self.reason))

    def with_prefix(self, prefix: str) -> ConfigError:
        """The same error with its key qualified by a config group, e.g. ``loader.``."""
        return ConfigError(f"{prefix}.{self.key}", self.value, self.reason)


class DataError(ChuteError, ValueError):
    """The data on disk is missing, malformed or inconsistent (the message names the path)."""
