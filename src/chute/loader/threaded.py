"""``ThreadedLoader``: a minimal loader for batched reads, without worker processes.

Where making a batch releases the GIL (a gather from an in-memory or memory-mapped array, crop-aware
JPEG decoding, tables), worker processes spend more on shipping the batch through IPC (a fresh
shared-memory segment per batch) than they save. This loader runs ``dataset.__getitems__`` for
whole batches in background threads, keeps ``prefetch`` batches per thread ready, in order, and on
a CUDA machine copies each batch to the device itself: through pinned staging buffers that are
reused batch after batch, on a side CUDA stream, so the copy overlaps the training step and the
consumer's stream only waits for it on the GPU; work given as ``after_copy`` (a DataModule's batch
hook: normalization, random crops) runs there too, on the same side stream, so the training
thread receives finished batches. A thread well ahead of its consumer sleeps until the consumer's
next take is due and gives way for a moment after it (:class:`Cadence`), so the take wakes no
thread and the thread's Python does not contend with the trainer's between steps. It keeps the
DataModule contract: ``len``, ``sampler`` (Lightning calls its ``set_epoch``), the sampler's
distributed split and its ``state_dict``.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any

import torch

_DONE = object()

# Passes whose threads may still run: (stop, threads, wake: wakes every thread waiting). At exit
# they are stopped and joined before Python finalizes, because a daemon thread caught inside C++
# code (torch, a database driver) when the interpreter freezes it ends the process with "terminate
# called without an active exception" (an abandoned pass: ``next(iter(loader))`` at the end of a
# script, or a run stopped by SIGTERM). A pass stays listed after it ends until its threads have
# finished (a batch may still be loading).
_RUNNING: set[tuple[threading.Event, tuple[threading.Thread, ...], Callable[[], None]]] = set()


def _forget_finished() -> None:
    for entry in list(_RUNNING):
        if not any(thread.is_alive() for thread in entry[1]):
            _RUNNING.discard(entry)


@atexit.register
def stop_running() -> None:
    """Stop every running pass's threads and wait for them (at exit; a batch being read is finished)."""
    for stop, _, wake in list(_RUNNING):
        stop.set()
        wake()
    for _, threads, _ in list(_RUNNING):
        for thread in threads:
            thread.join(timeout=10)


class ThreadedLoader:
    """Iterate ``sampler`` (index batches) and yield ``collate_fn(dataset.__getitems__(batch))``.

    Args:
        dataset: A dataset with ``__getitems__`` (or ``__getitem__``) that gathers a whole batch.
        sampler: Yields one list/tensor of indices per batch (e.g. :class:`~chute.loader.orders.BatchIndexSampler`).
        collate_fn: Applied to what the dataset returns (default: as is).
        prefetch: Batches prepared ahead, per thread.
        threads: Background threads fetching batches (order is kept); 0 fetches each batch in the
            calling thread when it is asked for.
        pin_memory: Pin batches (only useful with CUDA).
        timeout: Seconds to wait for a batch before raising (0 waits forever).
        device: A CUDA device: batches arrive there (see the module docstring); ``None`` keeps
            them on the CPU (pinned with ``pin_memory``).
        after_copy: Applied to each batch on ``device`` after its copy, in the loader's thread and
            on the copy's stream (ignored without ``device``).
        fetch: Reads one batch of indices (chute passes a :class:`~chute.loader.BatchFetch`, which
            names the samples of an error); default: ``__getitems__``, else item by item.
        give_way: Share of the consumer's interval between batches that a thread which is well
            ahead of the consumer lets pass after a take before it reads its next batch (see
            :class:`Cadence`; at most :attr:`Cadence.longest`); 0 never waits, nor sleeps until a
            take is due.
    """

    def __init__(
        self,
        dataset: Any,
        sampler: Any,
        collate_fn: Callable[[Any], Any] | None = None,
        *,
        prefetch: int = 2,
        threads: int = 2,
        pin_memory: bool = False,
        timeout: float = 0.0,
        device: torch.device | str | None = None,
        fetch: Callable[[Any], Any] | None = None,
        after_copy: Callable[[Any], Any] | None = None,
        give_way: float = 0.1,
    ) -> None:
        if prefetch < 1 or threads < 0:
            raise ValueError(f"prefetch={prefetch} must be >= 1 and threads={threads} >= 0")
        if not 0 <= give_way < 1:
            raise ValueError(f"give_way={give_way}: a share of the consumer's interval, in [0, 1)")
        self.dataset = dataset
        self.sampler = sampler
        self.collate_fn = collate_fn
        self.prefetch = prefetch
        self.threads = threads
        self.pin_memory = pin_memory
        self.timeout = timeout
        self.device = torch.device(device) if device is not None else None
        self.fetch = fetch  # reads one batch of indices (default: ``__getitems__``, else item by item)
        self.after_copy = after_copy
        self.give_way = give_way
        self._copier: DeviceCopy | None = None
        # What Lightning and torch tooling read off a loader: no worker processes, and the sampler
        # (of index batches) in the DataLoader's ``sampler`` slot, as chute's DataLoaders have it.
        self.num_workers = 0
        self.batch_sampler: Any = None  # a subclass may offer one (chute.loader.build.ChuteThreadedLoader)
        self.batch_size = getattr(sampler, "batch_size", None)
        self.drop_last = bool(getattr(sampler, "drop_last", False))

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def _index_sampler(self) -> Any:
        """What a pass draws its batches of indices from (a subclass may note them as drawn)."""
        return self.sampler

    def _fetch(self, batch: Any) -> Any:
        if self.fetch is not None:
            data = self.fetch(batch)
        else:
            getitems = getattr(self.dataset, "__getitems__", None)
            data = getitems(batch) if callable(getitems) else [self.dataset[int(i)] for i in batch]
        data = self.collate_fn(data) if self.collate_fn is not None else data
        if self.device is not None and self.device.type == "cuda":
            if self._copier is None:
                self._copier = DeviceCopy(self.device, after=self.after_copy)
            return self._copier(data)
        return _pin(data) if self.pin_memory else data

    def _ready(self, item: Any) -> Any:
        """What the consumer gets: a device batch once its copy is ordered before the consumer's work."""
        return item.wait() if isinstance(item, _InFlight) else item

    def __iter__(self) -> Iterator[Any]:
        # The sampler is read as batches are taken, not listed up front: an order that streams its
        # keys (a SQL table's, index="stream") then holds only what is in flight. Its first batch is
        # taken here, in the caller's thread, so a pass begins (epoch, resume offset) where it was asked.
        order = iter(self._index_sampler)
        first = next(order, _DONE)
        if first is _DONE:
            return
        batches = itertools.chain([first], order)
        if self.threads == 0:
            yield from (self._ready(self._fetch(batch)) for batch in batches)
            return
        positions = itertools.count()
        slots: dict[int, queue.Queue[Any]] = {}
        taken: dict[int, Any] = {}  # batches being fetched, by position: named if one times out
        ahead = threading.Semaphore(self.prefetch * self.threads)
        stop = threading.Event()
        lock = threading.Lock()
        cadence = Cadence(self.give_way)
        # One per thread: set by a take that comes earlier than a sleeping thread planned (Cadence),
        # one sleeper per take (the longest asleep first), or by the pass's end (all of them).
        alarms = tuple(threading.Event() for _ in range(self.threads))
        asleep: collections.deque[threading.Event] = collections.deque()
        handed = 0  # batches the consumer has taken: the position it asks for next
        blocked = 0  # threads waiting on ``ahead``: a take's freed place goes to one of them
        issued = 0  # positions taken by the threads: the next one goes out next

        def lead(later: int = 0) -> int:
            """Batches the consumer takes before the next position to go out, or 0 if it waits for
            its next batch now; ``later=1``: the same once it has taken its next batch, if the one
            after that is ready by then too."""
            with lock:
                waiting = slots.get(handed + later)
                return issued - handed - later if waiting is not None and waiting.full() else 0

        def slot(i: int) -> queue.Queue[Any]:
            with lock:
                found = slots.get(i)
                if found is None:  # made once per position (a Queue is four locks: not made to be dropped)
                    found = slots[i] = queue.Queue(maxsize=1)
                return found

        def take() -> tuple[int, Any] | None:
            """The next position and its batch (``_DONE`` past the end), one thread at a time, in order;
            None once the pass has stopped (checked under the lock the pass's end sets it under, so no
            draw from the order follows the end of the pass)."""
            nonlocal issued
            with lock:
                if stop.is_set():
                    return None
                try:
                    batch = next(batches)
                except StopIteration:
                    batch = _DONE
                except BaseException as err:  # the sampler's own error: the consumer raises it
                    batch = _Failure(err)
                i = next(positions)
                issued = i + 1
                taken[i] = batch
                return i, batch

        def turn(alarm: threading.Event) -> bool | None:
            """Take a place in the prefetch depth. True if the thread had to wait for the consumer (it
            gives way then), False if there was one at once, None if the pass stopped meanwhile.

            A thread that has to wait first sleeps until the consumer's next take is due and a pause
            after it (see Cadence), so that take has no thread to wake. A take earlier than planned
            sets its alarm; if another thread took the place the take freed, it plans for the next
            one; if the consumer is late, its take wakes the thread, between steps.
            """
            if ahead.acquire(blocking=False):
                return False
            while True:
                alarm.clear()  # before the plan: a take from now on that is early wakes the thread
                if stop.is_set():  # the pass's end may have set the alarm just before the clear
                    return None
                takes = cadence.takes
                if (sleep := cadence.until_due(lead(later=1))) <= 0:
                    break
                if ahead.acquire(blocking=False):  # a take came while it planned
                    return True
                asleep.append(alarm)
                early = alarm.wait(sleep)
                with contextlib.suppress(ValueError):  # not there if a take woke it
                    asleep.remove(alarm)
                if stop.is_set():
                    return None
                if ahead.acquire(blocking=False):
                    return early  # asleep past the take, it has given way already, unless woken early
                if cadence.takes == takes:  # the consumer is late: its take wakes the thread
                    break
                # Another thread took the place the take freed (they slept to the same moment).
            nonlocal blocked
            with lock:
                blocked += 1
            ahead.acquire()
            with lock:
                blocked -= 1
            return True

        def work(alarm: threading.Event) -> None:
            while not stop.is_set():
                # Before taking a batch: positions go out in order, so no deadlock.
                if (woken := turn(alarm)) is None or stop.is_set():
                    return
                # Give way before drawing from the order (a stop meanwhile leaves it untouched).
                if woken and (pause := cadence.pause(lead())) > 0 and stop.wait(pause):
                    return  # stopped while giving way (see Cadence): the pass is over
                if (drawn := take()) is None:
                    return
                i, batch = drawn
                if batch is _DONE or isinstance(batch, _Failure):
                    slot(i).put(batch)
                    return
                try:
                    started = perf_counter()
                    data = self._fetch(batch)
                    cadence.fetched(perf_counter() - started)
                    slot(i).put(data)
                except BaseException as err:  # surface in the consumer, with its traceback
                    slot(i).put(_Failure(err))
                    return

        workers = tuple(threading.Thread(target=work, args=(alarm,), daemon=True) for alarm in alarms)
        _forget_finished()

        def wake() -> None:
            for alarm in alarms:
                alarm.set()
            for _ in workers:
                ahead.release()

        _RUNNING.add((stop, workers, wake))
        for thread in workers:
            thread.start()
        try:
            for n in itertools.count():
                try:
                    item = slot(n).get(timeout=self.timeout or None)
                except queue.Empty:
                    raise RuntimeError(
                        f"ThreadedLoader timed out after {self.timeout} s waiting for batch {n} "
                        f"(indices {_head(taken.get(n, []))}); raise loader.timeout or find the slow sample."
                    ) from None
                with lock:
                    slots.pop(n, None)
                    taken.pop(n, None)
                    handed = n + 1
                early = cadence.taken()
                ahead.release()
                if early and not blocked:  # else the place goes to a thread the release wakes
                    with contextlib.suppress(IndexError):  # none asleep
                        asleep.popleft().set()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield self._ready(item)
        finally:
            with lock:
                stop.set()
            wake()


class Cadence:
    """When a loader thread that is well ahead of its consumer reads its next batch: a short while
    after the consumer takes one, not at once.

    A trainer takes a batch between two steps, and what follows the hand-off (the copy to the device,
    the batch hook, Lightning's hooks and logging) is Python, as is the start of reading a batch: a
    thread that began at once would take the GIL and a core in turns with that work, and stretch the
    wait between steps. The default experiment (8 ms steps, one loader thread, 2 cores) waited 7.2%
    of its step time with threads starting at once and 5.4-5.6% with a pause of 0.3-1 ms, at the same
    samples/s (docs/benchmarks.md).

    A thread gives way only when it had to wait for the consumer, the batch the consumer asks for
    next is ready, and at the consumer's pace (the shortest of its last :attr:`window` intervals
    between takes) the batches before the thread's own last longer than the thread takes to read
    one (its recent reading time) plus the pause. So a consumer that waits for the loader waits
    longer only if it takes batches faster than it did in any of those intervals.

    Waking a thread is itself work in the hand-off: the consumer's ``release`` took 25-44 us beside
    an 8 ms step. So a thread that finds the whole prefetch depth waiting sleeps until the consumer's
    next take is due, plus the pause (:meth:`until_due`), and that take has no thread to wake; the
    thread starts inside the step. A take earlier than planned by more than the pause, or a second
    take before the sleep ends (a burst of short steps), wakes a sleeping thread, one per take (the
    consumer then waits at most about a pause more than with ``share`` 0); a late take wakes them as
    before. Threads that slept to the same take and found its place taken plan for the next one.
    The default experiment's wait went from 4.1-4.4% to 3.6-4.0% (docs/benchmarks.md).

    Args:
        share: The pause as a share of the consumer's pace; 0 never pauses.
    """

    longest = 0.002  # seconds: no pause is longer, however slow the steps
    window = 8  # intervals between takes the consumer's pace is the shortest of

    def __init__(self, share: float = 0.1) -> None:
        self.share = share
        self._last: float | None = None  # when the consumer last took a batch
        self._intervals: collections.deque[float] = collections.deque(maxlen=self.window)
        self._reading = 0.0  # a thread's recent time to read one batch (moving average)
        self.takes = 0  # batches the consumer has taken
        # The last sleep planned: (a take before this is early, its end, takes when planned).
        self._plan: tuple[float, float, int] | None = None

    def taken(self) -> bool:
        """The consumer took a batch (called in the consumer's thread). True if it came early, while a
        thread sleeps (see :meth:`until_due`): before the take it planned on by more than its pause,
        or any later take before its sleep ends (a burst); the caller then wakes a sleeping thread."""
        now = perf_counter()
        if self._last is not None:
            self._intervals.append(now - self._last)
        self._last = now
        self.takes += 1
        plan = self._plan
        if plan is None:
            return False
        if now >= plan[1]:
            self._plan = None  # that sleep has ended
            return False
        return now < plan[0] or self.takes > plan[2] + 1

    def until_due(self, lead: int) -> float:
        """Seconds for a thread that found the prefetch depth full to sleep rather than be woken by
        the consumer's next take: until that take is due (the median of the recent intervals after the
        last one) and a pause after it, but no later than leaves the thread its reading time before
        the consumer could ask for its batch, ``lead`` takes after that next one at the consumer's
        pace. 0 where :meth:`pause` would not pause. A take that comes earlier than planned, by more
        than the pause, reports it (:meth:`taken`), and the loader wakes a sleeping thread."""
        pause = self.pause(lead)
        if pause <= 0 or self._last is None:
            return 0.0
        last, pace = self._last, min(self._intervals)
        typical = sorted(self._intervals)[len(self._intervals) // 2]
        due = min(last + typical + pause, last + (lead + 1) * pace - self._reading)
        sleep = due - perf_counter()
        if sleep <= 0:
            return 0.0
        self._plan = (last + typical - pause, due, self.takes)
        return sleep

    def fetched(self, seconds: float) -> None:
        """A thread read one batch in ``seconds``."""
        self._reading = seconds if self._reading == 0.0 else 0.8 * self._reading + 0.2 * seconds

    def pause(self, lead: int) -> float:
        """Seconds for a woken thread to wait before reading the batch ``lead`` takes after the
        consumer's next one (``lead`` 0: the consumer is waiting now): 0 where it should not."""
        if self.share <= 0 or lead < 1 or not self._intervals:
            return 0.0
        pace = min(self._intervals)
        pause = min(self.share * pace, self.longest)
        return pause if lead * pace >= self._reading + pause else 0.0


def _head(batch: Any, n: int = 8) -> str:
    items = [int(i) for i in list(batch)[:n]]
    return f"{items}{' ...' if len(batch) > n else ''}"


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _pin(data: Any) -> Any:
    return _map_tensors(data, lambda t: t.pin_memory())


class StagingPool:
    """Page-locked host buffers reused across batches, one free list per (shape, strides, dtype).

    ``tensor.pin_memory()`` allocates (and page-locks) a new buffer for every batch; page-locking
    is a system call per buffer and the CUDA caching host allocator holds on to what it returned.
    Here a batch is copied into a buffer from the pool and the buffer comes back once the
    host-to-device copy that reads it has finished.
    """

    def __init__(self, pin: bool = True) -> None:
        self.pin = pin
        self._free: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        self._lock = threading.Lock()
        self.allocated = 0

    def stage(self, tensor: torch.Tensor) -> torch.Tensor:
        """A buffer holding a copy of ``tensor`` (same shape, strides and dtype)."""
        key = (tuple(tensor.shape), tensor.stride(), tensor.dtype)
        with self._lock:
            free = self._free.get(key)
            buffer = free.pop() if free else None
        if buffer is None:
            buffer = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, pin_memory=self.pin)
            self.allocated += 1
        return buffer.copy_(tensor)

    def give_back(self, buffers: list[torch.Tensor]) -> None:
        with self._lock:
            for buffer in buffers:
                self._free.setdefault((tuple(buffer.shape), buffer.stride(), buffer.dtype), []).append(buffer)


class DeviceCopy:
    """Copy batches (nested tuples, lists, dicts of tensors) to a CUDA device on a side stream,
    then apply ``after`` to each there (same stream, so it runs on the GPU after the copy)."""

    def __init__(
        self, device: torch.device, pool: StagingPool | None = None, after: Callable[[Any], Any] | None = None
    ) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.pool = pool or StagingPool()
        self.after = after

    def __call__(self, data: Any) -> _InFlight:
        staged: list[torch.Tensor] = []
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            # Objects that move themselves (``to``, as Lightning moves them: the GPU decode route's
            # encoded images) do; tensors go through the staging buffers.
            out = _map_tensors(data, lambda t: self._copy(t, staged), lambda o: o.to(self.device, non_blocking=True))
            if self.after is not None and out is not None:
                out = self.after(out)
            event = torch.cuda.Event()
            event.record(self.stream)
        event.synchronize()  # in the loader thread: the staging buffers have been read
        self.pool.give_back(staged)
        return _InFlight(out, event, self.device)

    def _copy(self, tensor: torch.Tensor, staged: list[torch.Tensor]) -> torch.Tensor:
        if tensor.device.type != "cpu":
            return tensor
        if tensor.is_pinned():  # pinned already (a DataLoader's pin-memory thread): read until the event below
            return tensor.to(self.device, non_blocking=True)
        buffer = self.pool.stage(tensor)
        staged.append(buffer)
        return buffer.to(self.device, non_blocking=True)


class _InFlight:
    """A device batch and the event after which it is complete."""

    def __init__(self, data: Any, event: Any, device: torch.device) -> None:
        self.data, self.event, self.device = data, event, device

    def wait(self) -> Any:
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(self.event)  # on the GPU: the consumer's kernels run after the copy

        def keep(tensor: torch.Tensor) -> torch.Tensor:
            tensor.record_stream(stream)  # memory made on the side stream, used on the consumer's
            return tensor

        return _map_tensors(self.data, keep)


def _map_tensors(
    data: Any, fn: Callable[[torch.Tensor], torch.Tensor], movable: Callable[[Any], Any] | None = None
) -> Any:
    """``fn`` on every tensor of a nested batch; ``movable`` (if given) on other objects with a ``to`` method."""
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # named tuple
        return type(data)(*(_map_tensors(d, fn, movable) for d in data))
    if isinstance(data, (tuple, list)):
        return type(data)(_map_tensors(d, fn, movable) for d in data)
    if isinstance(data, dict):
        return {k: _map_tensors(v, fn, movable) for k, v in data.items()}
    if movable is not None and callable(getattr(data, "to", None)):
        return movable(data)
    return data


class DeviceFeed:
    """Take batches from ``batches`` (a DataLoader's iterator: worker processes, pinned memory) in a
    background thread, copy each to the device on a side stream and apply ``after`` there (the batch
    hook), so the training thread receives finished batches, as loader threads hand them.

    Worker processes cannot touch the GPU, so without this the hook (normalization; the GPU decode
    route's nvJPEG call and crops) would run in the training thread between steps. ``depth`` batches
    wait ready on the device. Errors (a worker's, the hook's) reach the consumer in order.
    """

    def __init__(self, batches: Iterator[Any], copier: DeviceCopy, depth: int = 2) -> None:
        self.batches, self.copier, self.depth = batches, copier, depth

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        ready: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for batch in self.batches:
                    if stop.is_set() or not put(self.copier(batch)):
                        return
                put(_DONE)
            except BaseException as err:  # surface in the consumer, with its traceback
                put(_Failure(err))

        thread = threading.Thread(target=work, daemon=True, name="chute-device-feed")
        _forget_finished()
        _RUNNING.add((stop, (thread,), lambda: None))  # its waits re-check ``stop`` every 0.1 s
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item.wait()
        finally:
            stop.set()
