"""What to do with a sample that cannot be read: ``raise`` naming it, or ``skip`` it, count it and go on.

:class:`BadSamples` is the policy one dataset (or one table file, one stream) follows. With
``on_error="raise"`` the :class:`~chute.errors.DataError` that names the file (or row, or line) and
the reason propagates unchanged. With ``on_error="skip"`` the caller replaces or drops the sample,
the policy counts it, logs it (the first ``keep`` per process, with the reason) and raises once more
than ``max_fraction`` of the samples attempted so far were bad.

Counting works across DataLoader worker processes: the counts and the first offenders' names live in
shared-memory tensors created in the main process (so forked and spawned workers write to the same
memory), one row per process (row 0 for the main process and its loader threads, row ``1 + id`` for
worker ``id``), so no two processes write the same row and the totals are exact sums. Each
distributed rank counts its own samples.

:class:`LeftOut` is the record an evaluation dataset keeps of the samples it left out of its batches
(``on_error="skip"`` leaves a bad sample out rather than repeat another), so the loader can say which
samples a short batch holds (:mod:`chute.loader.delivered`).
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import torch
from torch.utils.data import get_worker_info

from chute.errors import ConfigError, DataError

OnError = Literal["raise", "skip"]
ON_ERROR: tuple[str, ...] = get_args(OnError)

log = logging.getLogger(__name__)

_NAME_BYTES = 240  # room for one offender's name (path, or file and row) in shared memory


class BadSamples:
    """The ``on_error`` policy for one source of samples, with counts shared by all its workers.

    Args:
        on_error: ``"raise"``: a bad sample raises its :class:`~chute.errors.DataError`. ``"skip"``:
            the caller replaces or drops it and this object counts and logs it.
        max_fraction: With ``skip``, raise once ``skipped / seen`` exceeds this. The fraction is never
            taken over fewer than ``min_seen`` samples, so one bad file among the first few does not
            abort a run (1 of 100 is 1%, allowed by the default 0.01).
        what: What a sample is, for messages (``"image"``, ``"row"``, ``"line"``).
        min_seen: Smallest number of samples the fraction is measured over.
        keep: Offenders named per process (logged, and kept for :attr:`first`).
        slots: Processes that count separately: the main process plus ``slots - 1`` workers (a
            worker id beyond that shares a row with another and may be undercounted).

    Example:
        >>> bad = BadSamples("skip", max_fraction=0.5, what="image")
        >>> bad.seen(3)
        >>> bad.skip("cat/1.jpg", DataError("Cannot decode image 'cat/1.jpg': truncated"))
        >>> bad.counts, bad.first
        ((3, 1), ['cat/1.jpg'])
    """

    def __init__(
        self,
        on_error: OnError = "raise",
        max_fraction: float = 0.01,
        *,
        what: str = "sample",
        min_seen: int = 100,
        keep: int = 10,
        slots: int = 65,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ConfigError("on_error", on_error, "must be 'raise' (stop at the first bad sample) or 'skip'")
        if isinstance(max_fraction, bool) or not 0.0 <= float(max_fraction) <= 1.0:
            raise ConfigError("max_bad_fraction", max_fraction, "must be a fraction in [0, 1], e.g. 0.01 for 1%")
        self.on_error: OnError = on_error
        self.max_fraction = float(max_fraction)
        self.what = what
        self.min_seen = int(min_seen)
        self.keep = int(keep)
        # Per process: (seen, skipped) and the names of its first `keep` bad samples. Only ``skip``
        # counts, so ``raise`` allocates no shared memory.
        slots = slots if on_error == "skip" else 1
        # Made during trainer.validate the counters would be inference tensors, which loader threads
        # (outside inference mode, a per-thread setting) could not update.
        with torch.inference_mode(False):
            self._counts = torch.zeros((slots, 2), dtype=torch.int64)
            self._names = torch.zeros((slots, keep, _NAME_BYTES), dtype=torch.uint8)
        if on_error == "skip":
            self._counts.share_memory_()
            self._names.share_memory_()
        self._reported = 0
        #: Samples this process reads in one pass over the split (set by the DataModule; 0: unknown).
        #: From the second pass on the share is judged over whole passes (see :meth:`skip`).
        self.per_pass = 0
        self._lock = threading.Lock()  # the main process's loader threads share row 0
        # Reading elsewhere (a Ray task: chute.integrations.ray_tasks) counts into ``journal``
        # (``[seen, [(name, reason), ...]]``), which the loader brings back to the policy of this
        # ``token`` in the training process (:meth:`absorb`).
        self.token = uuid.uuid4().hex
        self.journal: list[Any] | None = None
        _LIVE[self.token] = self

    @property
    def skipping(self) -> bool:
        return self.on_error == "skip"

    def seen(self, n: int = 1) -> None:
        """Count ``n`` samples attempted (good or bad) in this process."""
        with self._lock:
            self._counts[self._slot(), 0] += n
            if self.journal is not None:
                self.journal[0] += n

    def skip(self, name: str, error: DataError) -> None:
        """Handle bad sample ``name`` (a path, or file and row) that failed with ``error``.

        Raises:
            DataError: ``error`` itself with ``on_error="raise"``; with ``skip``, a summary once the
                share of bad samples exceeds ``max_fraction``.
        """
        if not self.skipping:
            raise error
        self._record(name, error)
        self._judge(error)

    def skip_all(self, bad: Sequence[tuple[str, DataError]]) -> None:
        """:meth:`skip` for the bad samples of a whole file read at once, judged together: the share
        reported is of the file, not of the first few past the limit ("4 of 300 read so far" where
        all 300 were bad)."""
        if bad and not self.skipping:
            raise bad[0][1]
        for name, error in bad:
            self._record(name, error)
        if bad:
            self._judge(bad[-1][1])

    def _record(self, name: str, error: DataError) -> None:
        slot = self._slot()
        with self._lock:
            if self.journal is not None:
                self.journal[1].append((name, _reason(error)))
            self._counts[slot, 1] += 1
            local = int(self._counts[slot, 1])
            if local <= self.keep:
                encoded = name.encode("utf-8", "surrogateescape")[:_NAME_BYTES]  # a file name may not be UTF-8
                self._names[slot, local - 1].zero_()
                self._names[slot, local - 1, : len(encoded)] = torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
        if local <= self.keep:
            log.warning("Skipping a bad %s (on_error=skip): %s", self.what, _reason(error))

    def _judge(self, error: DataError) -> None:
        """Raise once the bad share of what was read exceeds ``max_fraction``; ``error``: the last bad one."""
        seen, skipped = self.counts
        # Counts add up over the passes (epochs, validation runs). A bad sample early in a later pass
        # would be judged against only the part of that pass read so far (1 bad in 113 lines: 2 of 114
        # at the next pass's start, over 1%); from the second pass on, count that pass as whole (and
        # each pass as at least ``min_seen``, the first pass's rule).
        floor = self.min_seen
        if self.per_pass > 0 and seen >= self.per_pass:
            floor = (seen // self.per_pass + 1) * max(self.per_pass, self.min_seen)
        if skipped > self.max_fraction * max(seen, floor):
            raise DataError(
                f"{skipped} of {seen} {self.what}s read so far were bad ({skipped / max(seen, 1):.1%}), more than "
                f"data.max_bad_fraction={self.max_fraction:g} allows. First: {'; '.join(self.first)}. Last: "
                f"{_reason(error).rstrip('.')}. Fix or remove them, raise data.max_bad_fraction, or set "
                "data.on_error=raise to stop at the first one."
            ) from error

    def absorb(self, seen: int, skipped: list[tuple[str, str]]) -> None:
        """Count ``seen`` samples and the ``(name, reason)`` skips read by a copy of this policy
        elsewhere (its ``journal``), as if read here: logged, and the fraction checked."""
        self.seen(seen)
        for name, reason in skipped:
            self.skip(name, DataError(reason))

    @staticmethod
    def by_token(token: str) -> BadSamples | None:
        """The live policy of this process whose copy carries ``token``."""
        return _LIVE.get(token)

    #: Called with each policy unpickled (a reader collects the copies it received).
    on_unpickle: Callable[[BadSamples], None] | None = None

    @property
    def counts(self) -> tuple[int, int]:
        """``(seen, skipped)`` summed over every process that loaded samples."""
        seen, skipped = self._counts.sum(dim=0).tolist()
        return int(seen), int(skipped)

    @property
    def first(self) -> list[str]:
        """Names of the first bad samples (up to ``keep``, gathered process by process, each once)."""
        names: dict[str, None] = {}  # ordered; a file met again in a later epoch is named once
        for slot, skipped in enumerate(self._counts[:, 1].tolist()):
            for j in range(min(int(skipped), self.keep)):
                raw = bytes(self._names[slot, j].numpy()).rstrip(b"\0")
                names[raw.decode("utf-8", errors="replace")] = None
                if len(names) == self.keep:
                    return list(names)
        return list(names)

    def summary(self) -> dict[str, Any]:
        """``{"seen", "skipped", "first"}``: what was skipped so far, e.g. for logging."""
        seen, skipped = self.counts
        return {"seen": seen, "skipped": skipped, "first": self.first}

    def report(self, where: str = "") -> None:
        """Log the count and the first offenders if more were skipped since the last report."""
        seen, skipped = self.counts
        if skipped == self._reported:
            return
        self._reported = skipped
        source = f" in {where}" if where else ""
        log.warning(
            "Skipped %d of %d %ss%s (on_error=skip, %.2f%%); first: %s",
            skipped, seen, self.what, source, 100.0 * skipped / max(seen, 1), "; ".join(self.first),
        )  # fmt: skip

    def _slot(self) -> int:
        info = get_worker_info()
        return 0 if info is None or len(self._counts) == 1 else 1 + info.id % (len(self._counts) - 1)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        if BadSamples.on_unpickle is not None:
            BadSamples.on_unpickle(self)

    def __repr__(self) -> str:
        seen, skipped = self.counts
        settings = f"on_error={self.on_error!r}, max_fraction={self.max_fraction:g}"
        return f"BadSamples({settings}, seen={seen}, skipped={skipped})"


_LIVE: weakref.WeakValueDictionary[str, BadSamples] = weakref.WeakValueDictionary()


_ALWAYS = -1  # a LeftOut mark that holds in every pass (passes count up from 1)


class LeftOut:
    """Which samples a dataset left out of the batches of the loader's current pass.

    The dataset calls :meth:`mark` where it leaves a sample out (in whichever worker process or loader
    thread reads it); the loader calls :meth:`begin` in the main process before each pass, and
    :meth:`kept` when it hands out a batch that holds fewer samples than its indices. A mark is one
    ``int32`` per sample in shared memory made in the main process (so forked and spawned workers
    write the same memory, as :class:`BadSamples`' counts), stamped with the pass it was made in: a
    sample left out in an earlier pass and read in this one is not taken as left out, and nothing is
    ever cleared. A worker finishing the previous pass's batches after :meth:`begin` stamps its marks
    with the new pass; the loader's check (``len(kept) == rows``) then fails and it records nothing for
    that batch rather than wrong indices. :meth:`always` marks samples left out of every pass (those
    a cache could not read when it was built).

    Example:
        >>> left = LeftOut(6)
        >>> left.begin()
        >>> left.mark(2)
        >>> left.kept([0, 1, 2, 3])
        [0, 1, 3]
        >>> left.begin()  # the next pass: sample 2 read this time
        >>> left.kept([0, 1, 2, 3])
        [0, 1, 2, 3]
    """

    def __init__(self, n: int) -> None:
        # Not inference tensors (see BadSamples): loader threads outside inference mode write them.
        with torch.inference_mode(False):
            self._marks = torch.zeros(max(int(n), 1), dtype=torch.int32).share_memory_()
            self._pass = torch.ones(1, dtype=torch.int32).share_memory_()

    def begin(self) -> None:
        """A new pass (main process, before its batches are drawn): earlier marks no longer count."""
        self._pass += 1

    def mark(self, index: int) -> None:
        """Sample ``index`` is left out of this pass's batch."""
        self._marks[int(index)] = self._pass[0]

    def always(self, indices: Sequence[int]) -> None:
        """Samples ``indices`` are left out of every pass."""
        self._marks[torch.as_tensor(list(indices), dtype=torch.int64)] = _ALWAYS

    def kept(self, indices: Sequence[int]) -> list[int]:
        """``indices`` without those left out in this pass, in their order."""
        now = int(self._pass[0])
        marks = self._marks[torch.as_tensor(list(indices), dtype=torch.int64)].tolist()
        return [int(i) for i, mark in zip(indices, marks, strict=True) if mark not in (now, _ALWAYS)]

    def __repr__(self) -> str:
        return f"LeftOut(samples={len(self._marks)}, pass={int(self._pass[0])})"


def _reason(error: BaseException) -> str:
    return str(error).strip() or type(error).__name__
