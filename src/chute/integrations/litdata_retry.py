"""Riding out an object store that goes away: LitData's reading retried from the loader's own position.

LitData gives up on a chunk its object store does not serve within its own short retries (obstore:
10 tries in about 2 s; a worker waiting on a chunk: up to 120 s), and the epoch ends with whatever
its prefetch thread or worker raised. A server restarting, a gateway failing over or a network blip
last longer than that. :class:`Outage` is the retry budget of one input: while reads keep failing
with a transfer error it waits (0.5 s, doubling to 5 s) and tries again, for up to ``seconds`` since
the last read that worked; past that, a :class:`~chute.errors.DataError` names the URL, the endpoint,
how long it tried and the setting that changes it. Training retries from the loader's position
(:func:`retrying`: LitData's own state, saved after the last batch handed out and loaded again), so
the epoch goes on where it stopped and every sample is still read once; a single sample read by
index (evaluation, the extra batches) is read again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from chute.errors import ChuteError, DataError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors a transfer raises: sockets and files (OSError: LitData's ChunkWaitTimeoutError too), LitData's
# "prefetch thread crashed" and a DataLoader worker's re-raised error (RuntimeError), and the clients'.
_CLIENT_MODULES = ("obstore", "botocore", "urllib3", "aiohttp", "requests", "google", "azure", "litdata")
# Answers that another try will not change: the object or bucket is not there, the credentials are refused.
_FINAL = ("NotFound", "NoSuch", "PermissionDenied", "Unauthenticated", "InvalidPath", "AccessDenied", "Forbidden")


class Outage:
    """How long reads of ``url`` are tried again while they fail (``seconds``), and the error after it.

    Args:
        url: The input the reads come from (named in the error).
        endpoint: The object store's endpoint, if the storage options name one (named in the error).
        seconds: How long to keep trying since the last read that worked; 0 raises at once.
        setting: The setting a user changes for ``seconds`` (named in the error).
    """

    def __init__(self, url: str, endpoint: str | None, seconds: float, setting: str = "data.retry_seconds") -> None:
        self.url, self.endpoint, self.seconds, self.setting = url, endpoint, float(seconds), setting

    @staticmethod
    def transient(err: BaseException) -> bool:
        """Whether ``err`` may be a transfer failing (worth another try), not a fault of the data or code."""
        if isinstance(err, ChuteError) or not isinstance(err, Exception):
            return False
        if any(word in type(err).__name__ for word in _FINAL):
            return False
        status = getattr(err, "response", None)
        status = status.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(status, dict) else None
        if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):  # botocore's ClientError
            return False
        if isinstance(err, (OSError, RuntimeError)):
            return True
        return any(c.__module__.split(".")[0] in _CLIENT_MODULES for c in type(err).__mro__[:-2])

    def wait(self, err: Exception, since: float, tries: int) -> None:
        """Sleep before try ``tries + 1`` of reads failing since ``since`` (``time.monotonic``), or raise
        the :class:`DataError` that ends them when the budget is spent."""
        waited = time.monotonic() - since
        pause = min(5.0, 0.5 * 2 ** (tries - 1))
        if waited + pause > self.seconds:
            raise self.error(err, waited, tries) from err
        if tries == 1:
            log.warning("Reading %s failed (%s); trying again for up to %g s", self.url, _first_line(err), self.seconds)
        time.sleep(pause)

    def error(self, err: Exception, waited: float, tries: int) -> DataError:
        where = f"the endpoint {self.endpoint}" if self.endpoint else "the provider's default endpoint"
        return DataError(
            f"Reading {self.url} from {where} failed {tries} time(s) over {waited:.0f} s: {_first_line(err)}. "
            f"Check that the store is up and reachable from this machine, or give it longer with "
            f"{self.setting} (now {self.seconds:g})."
        )

    def call(self, read: Callable[[], T], reset: Callable[[], None] | None = None) -> T:
        """``read()``, tried again (after ``reset()``) while it fails with a transfer error."""
        since, tries = 0.0, 0
        while True:
            try:
                return read()
            except Exception as err:
                if not self.transient(err):
                    raise
                tries += 1
                since = since or time.monotonic()
                self.wait(err, since, tries)
                if reset is not None:
                    reset()


def retrying(loader: Any, batches: Callable[[], Iterator[Any]], outage: Outage) -> Iterator[Any]:
    """``batches()`` (LitData's loader iterating), resumed from ``loader``'s own state after a transfer
    error: the state after the last batch handed out is loaded again, so no batch is repeated or
    skipped. Any batch handed out resets the budget."""
    since, tries, state = 0.0, 0, None
    while True:
        try:
            for batch in batches():
                since, tries, state = 0.0, 0, None
                yield batch
            return
        except Exception as err:
            if not outage.transient(err):
                raise
            tries += 1
            since = since or time.monotonic()
            if state is None:  # taken once per outage: loading a state moves LitData's worker cursor on
                state = loader.state_dict()
                if not state["num_samples_yielded"]:  # the epoch's first batch never came: begin it again
                    state = {**state, "current_epoch": state["current_epoch"] - 1}
            _drop_workers(loader)
            outage.wait(err, since, tries)
            loader.load_state_dict(state)


def _drop_workers(loader: Any) -> None:
    """Shut down the worker processes of ``loader``'s iteration (persistent ones too): their datasets
    hold LitData's failed prefetch state; the next iteration starts new ones."""
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    loader._iterator = None


def _first_line(err: BaseException) -> str:
    """The line of ``err`` that says what failed: a worker's error re-raised here quotes the original's
    traceback, and LitData's "prefetch thread crashed" quotes the client's error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"[A-Za-z_.]*(Error|Exception): ", line)]
    text = raised[-1] if raised else (lines[0] if lines else "")
    if "Original error: " in text:
        text = text.split("Original error: ", 1)[1]
    elif not raised:
        text = f"{type(err).__name__}: {text}"
    return text[:300]
