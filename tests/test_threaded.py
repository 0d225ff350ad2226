"""ThreadedLoader: every batch once, in sampler order, errors surface, Lightning-style epochs."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from chute.datasets import TabularDataset
from chute.loader import threaded
from chute.loader.orders import BatchIndexSampler
from chute.loader.threaded import ThreadedLoader


def dataset(n: int = 100) -> TabularDataset:
    return TabularDataset(np.arange(n, dtype=np.float32)[:, None], np.arange(n) % 3)


@pytest.mark.parametrize(("prefetch", "threads"), [(1, 1), (1, 3), (4, 2)])
def test_batches_come_in_sampler_order_exactly_once(prefetch: int, threads: int) -> None:
    sampler = BatchIndexSampler(100, 7, seed=1)
    sampler.set_epoch(2)
    loader = ThreadedLoader(dataset(), sampler, prefetch=prefetch, threads=threads)
    expected = [list(b) for b in sampler]
    got = [batch[0][:, 0].long().tolist() for batch in loader]
    assert got == expected
    assert len(loader) == len(expected) == 15


def test_breaking_early_and_errors() -> None:
    loader = ThreadedLoader(dataset(), BatchIndexSampler(100, 10), prefetch=2)
    for i, _ in enumerate(loader):
        if i == 1:
            break  # background threads stop without hanging

    class Broken:
        def __getitems__(self, batch: list[int]) -> None:
            raise ValueError("bad row 3")

    with pytest.raises(ValueError, match="bad row 3"):
        list(ThreadedLoader(Broken(), BatchIndexSampler(10, 5)))


def test_lightning_finds_the_sampler_for_set_epoch() -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch

    sampler = BatchIndexSampler(20, 5)
    loader = ThreadedLoader(dataset(20), sampler)
    _set_sampler_epoch(loader, 4)
    assert sampler.epoch == 4
    first = [b[0][:, 0].tolist() for b in loader]
    assert first == [b[0][:, 0].tolist() for b in loader]  # the same epoch twice: the same batches
    assert torch.cat([torch.tensor(x) for x in first]).sort().values.tolist() == list(range(20))


def test_datamodules_use_it_with_backend_threads(tmp_path, digits_root) -> None:
    from chute.datamodules import ImageFolderDataModule, TabularDataModule
    from chute.datasets import SklearnTable
    from chute.transforms import create_transforms

    path = SklearnTable("wine")(tmp_path / "wine.csv")
    loader_settings = {"backend": "threads", "num_workers": 2, "batch_size": 16}
    dm = TabularDataModule(str(path), target="cultivar", loader=loader_settings)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ThreadedLoader)
    features = torch.cat([b[0] for b in loader])
    assert len(features) == len(dm.dataset("train"))
    assert len(torch.unique(features, dim=0)) == len(features)  # every row once

    t = create_transforms(image_size=8, crop_pct=1.0)
    images = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val, mean=[0.3], std=[0.4],
        loader={"backend": "threads", "num_workers": 2, "batch_size": 32}, imbalance={"strategy": "weighted_sampler"},
    )  # fmt: skip
    images.setup("fit")
    batch = next(iter(images.train_dataloader()))
    assert batch[0].shape == (32, 1, 8, 8)


def test_backend_settings_are_checked() -> None:
    from chute.errors import ConfigError
    from chute.loader import LoaderSettings

    assert LoaderSettings(backend="threads", num_workers=2, prefetch_factor=8).prefetch_factor == 8
    for bad, key in (
        ({"persistent_workers": True}, "persistent_workers"),  # threads start each epoch for free
        ({"multiprocessing_context": "spawn"}, "multiprocessing_context"),
        ({"num_workers": 0, "prefetch_factor": 2}, "prefetch_factor"),  # nothing runs ahead
    ):
        with pytest.raises(ConfigError) as info:
            LoaderSettings(backend="threads", **{"num_workers": 2, **bad})
        assert info.value.key == key
    with pytest.raises(ConfigError) as info:
        LoaderSettings(backend="rays")
    assert info.value.key == "backend"


def test_zero_threads_fetch_in_the_calling_thread() -> None:
    import threading

    seen = set()

    class Recording:
        def __getitems__(self, batch: list[int]) -> list[int]:
            seen.add(threading.get_ident())
            return list(batch)

    sampler = BatchIndexSampler(10, 4, shuffle=False)
    assert list(ThreadedLoader(Recording(), sampler, threads=0)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert seen == {threading.get_ident()}


def test_a_stuck_batch_times_out_naming_its_indices() -> None:
    import threading

    release = threading.Event()

    class Stuck:
        def __getitems__(self, batch: list[int]) -> list[int]:
            if 5 in batch:
                release.wait(10)
            return list(batch)

    loader = ThreadedLoader(Stuck(), BatchIndexSampler(10, 5, shuffle=False), threads=1, timeout=0.2)
    with pytest.raises(RuntimeError, match=r"timed out after 0.2 s waiting for batch 1 \(indices \[5, 6, 7, 8, 9\]\)"):
        list(loader)
    release.set()


def test_staging_pool_reuses_buffers_per_shape_and_layout() -> None:
    from chute.loader.threaded import StagingPool

    pool = StagingPool(pin=False)  # pinning needs CUDA; the reuse logic does not
    batch = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    first = pool.stage(batch)
    assert torch.equal(first, batch)
    assert first.stride() == batch.stride()  # channels-last stays channels-last
    pool.give_back([first])
    second = pool.stage(batch + 1)
    assert second.data_ptr() == first.data_ptr()  # the same memory, refilled
    assert torch.equal(second, batch + 1)
    other = pool.stage(torch.zeros(5))
    assert other.data_ptr() != second.data_ptr()
    assert pool.allocated == 2


def test_the_sampler_is_read_as_batches_are_taken_and_its_errors_surface() -> None:
    taken: list[int] = []

    def lazy() -> Iterator[list[int]]:  # an order that streams its batches (a SQL table's key ranges)
        for start in range(0, 100, 10):
            taken.append(start)
            yield list(range(start, start + 10))

    class Order:
        def __iter__(self) -> Iterator[list[int]]:
            return lazy()

        def __len__(self) -> int:
            return 10

    loader = ThreadedLoader(dataset(), Order(), prefetch=1, threads=2)
    batches = iter(loader)
    first = next(batches)
    assert first[0][:, 0].long().tolist() == list(range(10))
    assert len(taken) <= 1 + 2 + 1  # the first, one in flight per thread, one more: not all ten
    assert [b[0][0, 0].item() for b in batches] == [float(s) for s in range(10, 100, 10)]

    def failing() -> Iterator[list[int]]:
        yield [0, 1]
        raise ValueError("the order failed at its second batch")

    class Failing(Order):
        def __iter__(self) -> Iterator[list[int]]:
            return failing()

    failing_batches = iter(ThreadedLoader(dataset(), Failing(), threads=2))
    assert next(failing_batches)[0][:, 0].long().tolist() == [0, 1]
    with pytest.raises(ValueError, match="second batch"):
        next(failing_batches)


def test_a_pass_abandoned_at_the_end_of_a_script_exits_cleanly(tmp_path: Path) -> None:
    # Daemon threads still inside torch when Python finalizes used to end the process with
    # "terminate called without an active exception"; loader threads are stopped at exit instead.
    script = tmp_path / "abandon.py"
    script.write_text(
        "import numpy as np, torch\n"
        "from chute.datasets import TabularDataset\n"
        "from chute.loader.threaded import ThreadedLoader\n"
        "from chute.loader.orders import BatchIndexSampler\n"
        "class Slow(TabularDataset):\n"
        "    def __getitems__(self, batch):\n"
        "        torch.randn(400, 400) @ torch.randn(400, 400)\n"
        "        return super().__getitems__(batch)\n"
        "data = Slow(np.arange(10_000, dtype=np.float32)[:, None], np.arange(10_000) % 3)\n"
        "batches = iter(ThreadedLoader(data, BatchIndexSampler(10_000, 8), prefetch=4, threads=2))\n"
        "next(batches)\n"
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]  # it died in 6 runs of 6 before the fix
    assert "terminate called" not in run.stderr


def _assert_the_new_pass_ends(before: set[tuple[Any, ...]]) -> None:
    """The one pass started since ``before`` (a copy of ``threaded._RUNNING``): its threads end."""
    (entry,) = set(threaded._RUNNING) - before
    for thread in entry[1]:
        thread.join(timeout=10)
        assert not thread.is_alive()


class _CountedCadence(threaded.Cadence):
    """A Cadence that counts the pauses the loader's threads ask for while the consumer's next batch
    is ready (``lead`` >= 1), and pauses for none."""

    asked = 0

    def pause(self, lead: int) -> float:
        type(self).asked += lead >= 1
        return 0.0

    def until_due(self, lead: int) -> float:
        return 0.0  # no sleeping until the take is due: every take wakes the thread


def test_a_thread_ahead_of_its_consumer_gives_way_after_each_hand_off(monkeypatch) -> None:
    monkeypatch.setattr(threaded, "Cadence", type("Counted", (_CountedCadence,), {"asked": 0}))
    blocked = threading.Condition()
    waited_at: list[int] = []  # positions whose start found the prefetch depth full (the one thread)

    class Watched(threading.Semaphore):
        acquired = 0

        def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
            if blocking:
                with blocked:
                    waited_at.append(self.acquired)
                    blocked.notify_all()
            got = super().acquire(blocking, timeout)
            self.acquired += got
            return got

    monkeypatch.setattr(threaded, "threading", SimpleNamespace(**{**vars(threading), "Semaphore": Watched}))
    sampler = BatchIndexSampler(100, 10)
    loader = ThreadedLoader(dataset(), sampler, prefetch=2, threads=1)
    got = []
    for k, batch in enumerate(loader):
        got.append(batch[0][:, 0].long().tolist())
        if k + 3 <= 10:  # a slow consumer: the thread is ahead and waits to start batch k + 3 (10: the end)
            with blocked:
                assert blocked.wait_for(lambda k=k: k + 3 in waited_at, timeout=10)
    # Each of batches 3..9 starts after a hand-off while the consumer's next batch is ready: 7
    # pauses asked for. Batch 2 and the pass's end may add one each: where the thread had read batch
    # 1 before the consumer took batch 0, and where it looks before the consumer takes batch 9.
    assert waited_at[-8:] == list(range(3, 11))
    assert 7 <= threaded.Cadence.asked <= 9
    assert got == [list(b) for b in sampler]


def _watch_the_semaphore(monkeypatch) -> tuple[list[int], list[int]]:
    """Positions whose start found the prefetch depth full (a non-blocking acquire failed), and those
    whose thread then waited to be woken by a take (a blocking acquire), for a one-thread loader."""
    failed: list[int] = []
    blocked: list[int] = []

    class Watched(threading.Semaphore):
        acquired = 0

        def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
            got = super().acquire(blocking, timeout)
            (failed if not blocking and not got else blocked if blocking else []).append(self.acquired)
            self.acquired += got
            return got

    monkeypatch.setattr(threaded, "threading", SimpleNamespace(**{**vars(threading), "Semaphore": Watched}))
    return failed, blocked


def test_a_thread_that_sleeps_until_the_take_is_due_is_not_woken_by_it(monkeypatch) -> None:
    slept: list[int] = []
    received: list[list[int]] = []
    took = threading.Condition()

    class Once(threaded.Cadence):
        def until_due(self, lead: int) -> float:
            slept.append(lead)
            if len(slept) > 1:
                return 0.0
            with took:  # the first time the prefetch depth is full: asleep until the consumer takes one
                seen = len(received)
                assert took.wait_for(lambda: len(received) > seen, timeout=10)
            return 0.001

        def pause(self, lead: int) -> float:
            return 0.0

    monkeypatch.setattr(threaded, "Cadence", Once)
    failed, blocked = _watch_the_semaphore(monkeypatch)
    sampler = BatchIndexSampler(100, 10)
    for batch in ThreadedLoader(dataset(), sampler, prefetch=2, threads=1):
        with took:
            received.append(batch[0][:, 0].long().tolist())
            took.notify_all()
        time.sleep(0.005)  # a slow consumer: the thread fills the prefetch depth
    assert received == [list(b) for b in sampler]
    assert slept
    # The consumer took a batch during that sleep: the thread then took its position without
    # waiting to be woken.
    assert failed[0] not in blocked


def test_a_take_earlier_than_planned_wakes_the_sleeping_thread(monkeypatch) -> None:
    class Long(threaded.Cadence):
        def until_due(self, lead: int) -> float:
            self._plan = (float("inf"), float("inf"), self.takes)  # whenever the consumer takes a batch, it is early
            return 60.0

    monkeypatch.setattr(threaded, "Cadence", Long)
    failed, blocked = _watch_the_semaphore(monkeypatch)
    sampler = BatchIndexSampler(100, 10)
    loader = ThreadedLoader(dataset(), sampler, prefetch=2, threads=1, timeout=20)
    got = []
    for batch in loader:  # a slow consumer: the thread fills the prefetch depth and goes to sleep
        time.sleep(0.02)
        got.append(batch[0][:, 0].long().tolist())
    # Asleep for a minute each time, it was woken by the early take every time (without that the
    # pass would have timed out after 20 s waiting for batch 2), after the take's release: so it
    # never waited on the semaphore.
    assert got == [list(b) for b in sampler]
    assert failed
    assert not blocked


def test_a_thread_asleep_until_the_take_is_due_ends_with_its_pass(monkeypatch) -> None:
    asleep = threading.Event()

    class Long(threaded.Cadence):
        def until_due(self, lead: int) -> float:
            asleep.set()
            return 60.0  # and nothing planned: no take wakes it

    monkeypatch.setattr(threaded, "Cadence", Long)
    before = set(threaded._RUNNING)
    for _ in ThreadedLoader(dataset(), BatchIndexSampler(100, 10), prefetch=2, threads=1):
        if asleep.wait(timeout=10):
            break
    assert asleep.is_set()
    _assert_the_new_pass_ends(before)  # not a minute: the pass's end woke it


def test_threads_that_slept_to_the_same_take_do_not_fall_back_to_being_woken(monkeypatch) -> None:
    took = threading.Condition()
    finished = threading.Event()

    class UntilTheTake(threaded.Cadence):
        """Each sleep ends just after the consumer's next take (so both threads wake for it)."""

        def until_due(self, lead: int) -> float:
            seen = self.takes
            with took:
                took.wait_for(lambda: self.takes > seen or finished.is_set(), timeout=10)
            return 0.0001

        def pause(self, lead: int) -> float:
            return 0.0

    monkeypatch.setattr(threaded, "Cadence", UntilTheTake)
    failed, blocked = _watch_the_semaphore(monkeypatch)
    sampler = BatchIndexSampler(100, 5)
    got = []
    for batch in ThreadedLoader(dataset(), sampler, prefetch=1, threads=2):
        with took:
            got.append(batch[0][:, 0].long().tolist())
            took.notify_all()
        time.sleep(0.005)  # a slow consumer: both threads find the prefetch depth full
    finished.set()
    with took:
        took.notify_all()
    assert got == [list(b) for b in sampler]
    assert failed
    # One of the two takes the place each take frees; the other plans its next sleep instead of
    # waiting on the semaphore for the take after (which would then have a thread to wake).
    assert not blocked


def test_an_early_take_wakes_one_sleeping_thread_and_the_others_sleep_on(monkeypatch) -> None:
    class Long(threaded.Cadence):
        def until_due(self, lead: int) -> float:
            self._plan = (float("inf"), float("inf"), self.takes)  # every take is early
            return 60.0

    monkeypatch.setattr(threaded, "Cadence", Long)
    failed, blocked = _watch_the_semaphore(monkeypatch)
    sampler = BatchIndexSampler(100, 5)
    got = []
    for batch in ThreadedLoader(dataset(), sampler, prefetch=1, threads=2, timeout=20):
        time.sleep(0.01)  # a slow consumer: both threads find the prefetch depth full and sleep
        got.append(batch[0][:, 0].long().tolist())
    assert got == [list(b) for b in sampler]
    assert failed
    # Each early take woke one thread, which found the place the take freed (or, if the other had
    # taken it, planned again): no thread was woken for nothing and left waiting on the semaphore.
    assert not blocked


def test_no_batch_is_drawn_from_the_order_after_the_pass_ends(monkeypatch) -> None:
    about_to_draw, closed = threading.Event(), threading.Event()

    class Held(threaded.Cadence):
        def until_due(self, lead: int) -> float:
            return 0.0  # wait on the semaphore: the thread gives way after it, then draws

        def pause(self, lead: int) -> float:
            if not about_to_draw.is_set():  # past its last look at the stop, before the draw
                about_to_draw.set()
                assert closed.wait(10)
            return 0.0

    monkeypatch.setattr(threaded, "Cadence", Held)
    drawn: list[list[int]] = []

    class Counted:
        def __len__(self) -> int:
            return 10

        def __iter__(self) -> Iterator[list[int]]:
            for k in range(10):
                drawn.append(list(range(10 * k, 10 * k + 10)))
                yield drawn[-1]

    before = set(threaded._RUNNING)
    batches = iter(ThreadedLoader(dataset(), Counted(), prefetch=2, threads=1))
    for _ in batches:
        if about_to_draw.wait(timeout=0.5):
            break
    assert about_to_draw.is_set()
    batches.close()  # type: ignore[attr-defined]
    drawn_then = len(drawn)
    closed.set()
    _assert_the_new_pass_ends(before)
    assert len(drawn) == drawn_then  # a draw after the end would land in the next pass's record


def test_a_pass_that_ends_while_a_thread_is_about_to_sleep_ends_the_thread(monkeypatch) -> None:
    class Long(threaded.Cadence):
        def until_due(self, lead: int) -> float:
            return 60.0  # and nothing planned: no take wakes it

    clearing, closed = threading.Event(), threading.Event()

    class Alarm(threading.Event):
        def clear(self) -> None:  # the thread is between its failed acquire and its plan
            if not clearing.is_set():
                clearing.set()
                assert closed.wait(10)  # the pass ends here: its wake-up comes before the clear
            super().clear()

    monkeypatch.setattr(threaded, "Cadence", Long)
    monkeypatch.setattr(threaded, "threading", SimpleNamespace(**{**vars(threading), "Event": Alarm}))
    reads: list[list[int]] = []

    def fetch(batch: list[int]) -> list[int]:
        reads.append(list(batch))
        return list(batch)

    before = set(threaded._RUNNING)
    batches = iter(ThreadedLoader(dataset(), BatchIndexSampler(100, 10), prefetch=2, threads=1, fetch=fetch))
    for _ in batches:
        if clearing.wait(timeout=10):
            break
    batches.close()  # type: ignore[attr-defined]
    read_then = len(reads)
    closed.set()
    _assert_the_new_pass_ends(before)  # not a minute: it sees the stop after clearing its alarm
    assert len(reads) == read_then  # and it read nothing after the pass ended


def test_a_thread_its_consumer_waits_for_never_gives_way(monkeypatch) -> None:
    monkeypatch.setattr(threaded, "Cadence", type("Counted", (_CountedCadence,), {"asked": 0}))
    received = [threading.Event() for _ in range(11)]

    reads = itertools.count()

    def fetch(batch: list[int]) -> list[int]:
        k = next(reads)  # the one thread reads the batches in order
        if k > 0:  # batch k is read only once the consumer holds batch k - 1: the thread is never ahead
            assert received[k - 1].wait(10)
        return list(batch)

    loader = ThreadedLoader(dataset(), BatchIndexSampler(100, 10), prefetch=2, threads=1, fetch=fetch)
    for k, _ in enumerate(loader):
        received[k].set()
    assert threaded.Cadence.asked == 0


def test_the_pause_is_a_share_of_the_consumers_pace_bounded_and_only_where_there_is_time(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(threaded, "perf_counter", lambda: now[0])
    cadence = threaded.Cadence(0.1)

    def take_after(seconds: float) -> None:
        now[0] += seconds
        cadence.taken()

    assert cadence.pause(1) == 0.0  # nothing taken yet
    cadence.taken()
    assert cadence.pause(1) == 0.0  # one take: no interval yet
    take_after(0.008)
    assert cadence.pause(1) == pytest.approx(0.0008)  # a tenth of the 8 ms pace
    assert cadence.pause(0) == 0.0  # the consumer is waiting for its next batch: never
    take_after(0.040)  # a slow step: the pace stays the shortest of the last 8 intervals
    assert cadence.pause(1) == pytest.approx(0.0008)
    cadence.fetched(0.004)
    take_after(0.001)  # a burst: 1 ms, too short to read a batch in
    assert cadence.pause(1) == 0.0
    assert cadence.pause(5) == pytest.approx(0.0001)  # five batches before this one: 5 ms > 4 + 0.1 ms
    for _ in range(threaded.Cadence.window):  # 30 ms steps: the burst has left the window
        take_after(0.030)
    assert cadence.pause(1) == threaded.Cadence.longest  # a tenth of 30 ms, capped at 2 ms
    # Asleep until the next take is due (the typical 30 ms after the last) and the pause after it:
    now[0] += 0.010
    assert cadence.until_due(1) == pytest.approx(0.030 + 0.002 - 0.010)
    assert cadence.until_due(0) == 0.0  # the consumer is waiting: never
    now[0] += 0.020
    assert cadence.taken() is False  # on time: the sleeping thread is not woken
    assert cadence.until_due(1) == pytest.approx(0.032)
    now[0] += 0.029
    assert cadence.taken() is False  # 1 ms early, within the 2 ms pause: not woken either
    assert cadence.until_due(1) == pytest.approx(0.032)
    now[0] += 0.027
    assert cadence.taken() is True  # 3 ms early, more than the pause: the loader wakes the thread
    assert cadence.until_due(1) == pytest.approx(0.032)
    now[0] += 0.029
    assert cadence.taken() is False  # within the pause ...
    now[0] += 0.001
    assert cadence.taken() is True  # ... but a second take before the sleep ends: a burst
    now[0] += 0.001
    assert cadence.taken() is True  # each take of the burst wakes one more sleeping thread
    now[0] += 0.002
    assert cadence.taken() is False  # after the planned sleep's end: no thread sleeps on that plan
    assert cadence.until_due(1) == 0.0  # 1 ms takes: no time to read a batch before it is asked for
    uneven = threaded.Cadence(0.1)  # ... but no later than leaves its reading time before its batch is due
    uneven.taken()
    for interval in (0.030,) * 5 + (0.010,) * 3:  # typically 30 ms, at times 10 ms: the pace is 10 ms
        now[0] += interval
        uneven.taken()
    uneven.fetched(0.009)
    assert uneven.pause(1) == pytest.approx(0.001)  # 10 ms >= 9 ms of reading + 1 ms
    assert uneven.until_due(1) == pytest.approx(2 * 0.010 - 0.009)  # not 30 + 1 ms
    now[0] += 0.011
    assert uneven.until_due(1) == 0.0  # already past it: read now
    cadence.fetched(0.5)
    assert cadence.pause(1) == 0.0  # reading takes most of a step: no time to give
    assert cadence.until_due(1) == 0.0
    assert threaded.Cadence(0.0).pause(3) == 0.0
    with pytest.raises(ValueError, match="give_way=1"):
        ThreadedLoader(dataset(), BatchIndexSampler(10, 5), give_way=1)


def test_a_thread_stopped_while_giving_way_reads_nothing_more(monkeypatch) -> None:
    pausing = threading.Event()

    class Long(threaded.Cadence):
        def pause(self, lead: int) -> float:
            if lead < 1:
                return 0.0
            pausing.set()
            return 30.0

    monkeypatch.setattr(threaded, "Cadence", Long)
    reads: list[list[int]] = []

    def fetch(batch: list[int]) -> list[int]:
        reads.append(list(batch))
        return list(batch)

    before = set(threaded._RUNNING)
    loader = ThreadedLoader(dataset(), BatchIndexSampler(100, 10), prefetch=2, threads=1, fetch=fetch)
    taken = []
    for batch in loader:  # a slow consumer: the thread gets ahead, and a hand-off wakes it to give way
        taken.append(batch)
        if pausing.wait(timeout=0.2):
            break
    assert pausing.is_set()
    read_then = len(reads)
    _assert_the_new_pass_ends(before)  # the 30 s pause ends when the pass stops
    assert len(reads) == read_then  # the batch it was giving way for was never read
    assert reads[: len(taken)] == taken


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_that_give_way_keep_the_order(threads: int) -> None:
    sampler = BatchIndexSampler(100, 7, seed=3)
    loader = ThreadedLoader(dataset(), sampler, prefetch=2, threads=threads, give_way=0.5)
    got = []
    for batch in loader:
        time.sleep(0.002)  # a consumer slower than the loader: its threads wait ahead and give way
        got.append(batch[0][:, 0].long().tolist())
    assert got == [list(b) for b in sampler]
