"""A worker that dies (killed, or crashing in native code) is an error naming it and its samples, not a hang."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from chute.loader import LoaderSettings, WorkerDiedError, build_loader
from tests.helpers import collect_in_a_cycle


class Dies(Dataset[torch.Tensor]):
    """Sample ``fatal`` kills its worker: with SIGKILL (like the OOM killer) or a segfault."""

    def __init__(self, fatal: int, how: str, gather: bool = False) -> None:
        self.fatal, self.how = fatal, how
        if gather:
            self.__getitems__ = self._batch  # type: ignore[method-assign]

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.fatal and torch.utils.data.get_worker_info() is not None:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            ctypes.string_at(0)  # reads address 0: SIGSEGV in native code
        return torch.tensor([i])

    def _batch(self, indices: list[int]) -> list[torch.Tensor]:
        return [self[i] for i in indices]

    def describe(self, i: int) -> str:
        return f"/data/sample-{i}.jpg"


def loader(dataset: Dataset[torch.Tensor]) -> torch.utils.data.DataLoader[torch.Tensor]:
    settings = LoaderSettings(batch_size=4, num_workers=2, shuffle=False, persistent_workers=False)
    return build_loader(dataset, settings, train=True, seed=0)


@pytest.mark.parametrize("how", ["kill", "segfault"])
def test_a_dead_worker_names_itself_and_the_sample(how: str) -> None:
    started = time.monotonic()
    with pytest.raises(WorkerDiedError) as info:
        for _ in loader(Dies(fatal=6, how=how)):
            pass
    message = str(info.value)
    assert "Worker 1 " in message  # batch 1 (samples 4-7) goes to worker 1
    assert "sample 6 (/data/sample-6.jpg)" in message
    assert "DataLoader worker" in message  # torch's own message stays first
    assert time.monotonic() - started < 60  # an error, not a hang


def test_a_worker_dying_in_a_batch_gather_names_the_batch() -> None:
    with pytest.raises(
        WorkerDiedError, match=r"Worker 0 \(pid \d+\) was killed by SIGKILL while loading 4 samples \[8, 9, 10, 11\]"
    ):
        for _ in loader(Dies(fatal=9, how="kill", gather=True)):
            pass


def _kill_a_worker_between_batches(persistent: bool, kill: Callable[[int], object]) -> tuple[Iterator[Any], int]:
    """A loader's iterator after its first batch, with one of its workers killed by ``kill(pid)``
    while the training thread is elsewhere (here: sleeping, as in a model's step); and that pid."""
    settings = LoaderSettings(batch_size=4, num_workers=2, shuffle=False, persistent_workers=persistent)
    batches = build_loader(Dies(fatal=-1, how="kill"), settings, train=True, seed=0)
    earlier = {p.pid for p in multiprocessing.active_children()}  # an earlier test's workers may linger
    iterator = iter(batches)
    next(iterator)
    worker = next(p for p in multiprocessing.active_children() if p.pid not in earlier)  # one of this loader's
    kill(worker.pid)
    time.sleep(1.0)  # the signal arrives here; nothing may be raised in this "step"
    return iterator, worker.pid


@pytest.mark.parametrize("persistent", [False, True])
def test_a_worker_killed_between_batches_is_named_on_the_next_one(persistent: bool) -> None:
    """A death while the training thread is elsewhere does not raise torch's raw error there, from
    its signal handler; the next batch names it."""
    iterator, pid = _kill_a_worker_between_batches(persistent, lambda pid: os.kill(pid, signal.SIGKILL))
    with pytest.raises(WorkerDiedError, match=rf"\(pid {pid}\) was killed by SIGKILL"):
        for _ in iterator:
            pass


def test_a_worker_ended_by_a_stop_signal_is_said_to_be_a_stop_not_a_fault() -> None:
    """A scheduler's SIGTERM reaches every process of the job, the DataLoader's workers too: the
    error says so instead of suggesting memory (what a SIGKILL from the OOM killer is told)."""
    # From another process, as a scheduler's: torch's workers take one from their parent as a
    # request to exit quietly (status 0).
    iterator, pid = _kill_a_worker_between_batches(
        True, lambda pid: subprocess.run(["kill", "-TERM", str(pid)], check=True)
    )
    with pytest.raises(WorkerDiedError) as info:
        for _ in iterator:
            pass
    message = str(info.value)
    assert f"(pid {pid}) was killed by SIGTERM" in message
    assert "a request to stop, not a fault" in message
    assert "out of memory" not in message
    assert ". ." not in message  # torch's sentence ends once


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_of_a_loader_left_in_a_reference_cycle_end_cleanly_when_collected(
    persistent: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loader or a pass left in a reference cycle (a DataModule and a Trainer holding each other, a
    traceback) is finalized by the garbage collector: its workers get the message that ends them and
    exit, rather than being waited for (5 s each) and then terminated."""

    def start() -> tuple[object, ...]:
        settings = LoaderSettings(batch_size=4, num_workers=2, shuffle=False, persistent_workers=persistent)
        batches = build_loader(Dies(fatal=-1, how="kill"), settings, train=True, seed=0)
        iterator = iter(batches)
        next(iterator)
        return batches, iterator

    workers, terminated = collect_in_a_cycle(start, monkeypatch)
    assert len(workers) == 2
    assert terminated == []
    assert [w.exitcode for w in workers] == [0, 0]


def test_healthy_loaders_are_unchanged() -> None:
    seen = [i for b in loader(Dies(fatal=-1, how="kill")) for i in b.flatten().tolist()]
    assert seen == list(range(32))


class Raises(Dataset[torch.Tensor]):
    """Sample 6 raises, as a user's transform might."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 6:
            raise RuntimeError("boom: the transform failed")
        return torch.tensor([i])

    def describe(self, i: int) -> str:
        return f"/data/sample-{i}.jpg"


@pytest.mark.parametrize(("backend", "workers"), [("torch", 0), ("torch", 2), ("threads", 2)])
def test_an_error_raised_while_loading_is_not_a_death(backend: str, workers: int) -> None:
    """A raised error keeps its type and message and names the sample, whatever loads it."""
    import traceback

    settings = LoaderSettings(
        batch_size=4, num_workers=workers, backend=backend, shuffle=False,
        persistent_workers=False if backend == "torch" and workers else None,
    )  # fmt: skip
    with pytest.raises(RuntimeError) as info:
        for _ in build_loader(Raises(), settings, train=True, seed=0):
            pass
    assert not isinstance(info.value, WorkerDiedError)
    text = "".join(traceback.format_exception(info.value))
    assert "boom: the transform failed" in text
    assert "sample 6 (/data/sample-6.jpg)" in text
    assert "out of memory" not in text


def test_a_death_signalled_inside_a_finalizer_during_a_fetch_is_held_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seen once in CI: in the middle of a fetch the garbage collector ran an older iterator's
    ``__del__`` (which joins its workers), the ``SIGCHLD`` of a killed worker arrived there, and the
    handler raised inside the finalizer, where Python only prints it (pytest: an unraisable
    exception, a failed test). Inside a finalizer the death is held for the next batch instead."""
    import sys
    import threading

    from torch.utils.data._utils import signal_handling

    from chute.loader import workers

    died = "DataLoader worker (pid 12345) is killed by signal: Killed."

    def torch_handler(signum: int, frame: object) -> None:
        raise RuntimeError(died)

    monkeypatch.setattr(signal_handling, "_set_SIGCHLD_handler", lambda: None)
    monkeypatch.setattr(workers, "_HELD", [])
    previous = signal.signal(signal.SIGCHLD, torch_handler)
    me = threading.get_ident()
    try:
        workers.hold_worker_deaths()
        held = signal.getsignal(signal.SIGCHLD)
        assert callable(held)

        class Finalized:
            def __del__(self) -> None:
                held(signal.SIGCHLD, sys._getframe())

        workers._FETCHING.add(me)
        Finalized()  # dropped at once: its __del__ runs here, "inside a fetch"
        noted = list(workers._HELD)
        assert noted == [died]
        with pytest.raises(RuntimeError, match="is killed by signal"):  # outside a finalizer: raised at once
            held(signal.SIGCHLD, sys._getframe())
    finally:
        workers._FETCHING.discard(me)
        signal.signal(signal.SIGCHLD, previous)
