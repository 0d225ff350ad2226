"""Exceptions raised for bad input: each message names the file, key or value at fault."""

from __future__ import annotations


class ChuteError(Exception):
    """Base class for errors chute raises about user input.

    A message is made printable first (:func:`printable`): a file name that is not UTF-8 reaches
    Python as lone surrogates, which a UTF-8 log file, terminal or report cannot write.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(printable(a) if isinstance(a, str) else a for a in args))


def printable(text: str) -> str:
    r"""``text`` with the bytes of a file name that is not UTF-8 written as ``\xNN`` escapes.

    Python keeps such bytes as lone surrogates (PEP 383: ``os.fsdecode(b"caf\xe9")`` is
    ``"caf\udce9"``), which no UTF-8 stream can encode: a log file's handler fails with "Logging
    error" and the warning is lost. Here they become ``caf\xe9``, the name's own bytes.

    Example:
        >>> printable("caf\udce9.png")
        'caf\\xe9.png'
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


# torch's copy of an exception a DataLoader worker raised (torch.utils.data._utils.ExceptionWrapper):
# "Caught <Type> in DataLoader worker process <n>." then the worker's whole formatted traceback.
_WORKER_COPY = "Original Traceback (most recent call last):"


def original_message(error: BaseException) -> str:
    """``error``'s message; for torch's copy of an error a DataLoader worker raised, the worker's own
    message (torch's copy holds the worker's whole traceback, ending with that message and its notes),
    without chute's note of which samples were loading (the message names them)."""
    text = str(error)
    if not text.startswith("Caught ") or _WORKER_COPY not in text.split("\n", 2)[1]:
        return text
    kind = type(error)
    start = text.rfind(f"\n{kind.__module__}.{kind.__qualname__}: ")
    if start < 0:
        return text
    lines = text[start:].split(": ", 1)[1].rstrip("\n").split("\n")
    while len(lines) > 1 and lines[-1].startswith("chute: raised while loading"):
        lines.pop()
    return "\n".join(lines)


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


def check_bool(key: str, value: object, optional: bool = False) -> None:
    """Refuse a switch that is not ``True``/``False`` (or ``None`` where ``optional``), naming ``key``.

    A string is truthy whatever it says: ``drop_last: no`` in YAML that no schema converts, or an
    ``${oc.env:...}`` value, would turn the setting on."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)) or (optional and value is None):
        return
    hint = " (or null)" if optional else ""
    if isinstance(value, str):
        hint += "; a string is not read as one (in a config, write true or false unquoted, or ${oc.decode:...})"
    raise ConfigError(key, value, f"must be true or false{hint}")


class DataError(ChuteError, ValueError):
    """The data on disk is missing, malformed or inconsistent (the message names the path)."""


class UnknownArgumentError(ConfigError, TypeError):
    """An argument a constructor does not take (a misspelt ``categoricl=``): a :class:`ConfigError`
    naming it and the closest argument there is, and a ``TypeError`` as Python's own would be."""
