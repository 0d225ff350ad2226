"""num_workers=auto: candidates, the fastest probe wins, the DataModule keeps and reports the choice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from chute.autotune import autotune, candidates
from chute.datamodules import TabularDataModule
from chute.datasets import SklearnTable
from chute.errors import ConfigError
from chute.loader import LoaderSettings


def test_candidates_cover_worker_counts_and_prefetch_depths() -> None:
    found = [
        (c.backend, c.num_workers, c.prefetch_factor) for c in candidates(LoaderSettings(num_workers="auto"), cpus=4)
    ]
    processes = [(1, 2), (1, 4), (2, 2), (2, 4), (3, 2), (3, 4)]  # all CPUs but one for training
    assert found == [("torch", 0, None), *[("torch", w, p) for w, p in processes], ("threads", 1, 2), ("threads", 3, 2)]
    many = candidates(LoaderSettings(num_workers="auto"), cpus=16)
    assert sorted({c.num_workers for c in many if c.backend == "torch"}) == [0, 1, 2, 4, 8, 15]
    assert sorted({c.num_workers for c in candidates(LoaderSettings(num_workers="auto"), cpus=2)}) == [0, 1, 2]
    kept = candidates(LoaderSettings(num_workers="auto"), cpus=2)  # workers kept between passes, as in training
    assert [c.persistent_workers for c in kept if c.backend == "torch"] == [False, True, True, True, True]
    assert all(c.persistent_workers is None for c in kept if c.backend == "threads")
    ended = candidates(LoaderSettings(num_workers="auto", persistent_workers=False), cpus=2)
    assert not any(c.persistent_workers for c in ended)
    no_threads = candidates(LoaderSettings(num_workers="auto"), cpus=4, threads=False)  # e.g. streams
    assert {c.backend for c in no_threads} == {"torch"}


def test_the_fastest_probe_wins() -> None:
    def make(settings: LoaderSettings) -> Any:
        # Factors of two between settings: sleep jitter on a busy machine must not reorder them.
        delay = {0: 0.008, 1: 0.004, 2: 0.002}[settings.num_workers] * (1 if settings.prefetch_factor != 4 else 0.5)

        def batches() -> Any:
            for _ in range(50):
                time.sleep(delay)
                yield [0] * 8

        return batches()

    chosen, report = autotune(make, LoaderSettings(num_workers="auto"), seconds=0.05, cpus=2, threads=False)
    assert (chosen.num_workers, chosen.prefetch_factor) == (2, 4)
    assert len(report) == 5


def test_threads_win_where_they_measure_faster() -> None:
    def make(settings: LoaderSettings) -> Any:
        delay = 0.0005 if settings.backend == "threads" and settings.num_workers == 2 else 0.003

        def batches() -> Any:
            for _ in range(50):
                time.sleep(delay)
                yield [0] * 8

        return batches()

    chosen, report = autotune(make, LoaderSettings(num_workers="auto", persistent_workers=True), seconds=0.05, cpus=2)
    assert (chosen.backend, chosen.num_workers, chosen.prefetch_factor) == ("threads", 2, 2)
    assert chosen.persistent_workers is None  # meaningless for threads, and refused by the settings
    assert [r["backend"] for r in report].count("threads") == 2
    assert max(report, key=lambda r: r["samples_per_s"])["num_workers"] == 2


def test_auto_is_validated() -> None:
    assert LoaderSettings(num_workers="auto").auto
    with pytest.raises(ConfigError) as info:
        LoaderSettings(num_workers="many")
    assert info.value.key == "num_workers"
    with pytest.raises(ConfigError) as info:
        LoaderSettings(num_workers="auto", prefetch_factor=4)
    assert info.value.key == "prefetch_factor"


def test_datamodule_tunes_once_and_reports(tmp_path: Path) -> None:
    path = SklearnTable("wine")(tmp_path / "wine.csv")
    dm = TabularDataModule(str(path), target="cultivar", loader={"num_workers": "auto", "batch_size": 16})
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert dm.tuned_loader is not None
    threaded = dm.tuned_loader.backend == "threads"
    assert loader.num_workers == (0 if threaded else dm.tuned_loader.num_workers)
    assert type(loader).__name__ == ("ChuteThreadedLoader" if threaded else "ChuteDataLoader")
    assert len(dm.autotune_report) == len(candidates(LoaderSettings(num_workers="auto")))
    report = list(dm.autotune_report)
    dm.val_dataloader()
    assert dm.autotune_report == report  # not tuned again


def test_a_loader_that_starves_the_training_thread_is_not_chosen() -> None:
    """Threads that hold the interpreter (pure-Python work) load fast alone but would leave the
    training loop no time: the stand-in training thread keeps under half its pace, so the slower
    candidate that leaves the interpreter free is chosen."""
    import threading

    def make(settings: LoaderSettings) -> Any:
        greedy = settings.backend == "threads" and settings.num_workers == 2

        def batches() -> Any:
            stop = threading.Event()

            def hog() -> None:
                while not stop.is_set():
                    sum(range(1000))

            hogs = [threading.Thread(target=hog, daemon=True) for _ in range(3 if greedy else 0)]
            for h in hogs:
                h.start()
            try:
                for _ in range(400):
                    if not greedy:
                        time.sleep(0.004)
                    yield [0] * 8
            finally:
                stop.set()

        return batches()

    chosen, report = autotune(make, LoaderSettings(num_workers="auto"), seconds=0.3, cpus=2)
    greedy = next(r for r in report if r["backend"] == "threads" and r["num_workers"] == 2)
    assert greedy["training_pace"] < 0.5
    assert greedy["samples_per_s"] > max(r["samples_per_s"] for r in report if r is not greedy)
    assert (chosen.backend, chosen.num_workers) != ("threads", 2)


def _spin(seconds: float) -> None:
    """Hold this thread (and the interpreter) for ``seconds`` of its own CPU time."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _loaders(in_thread_s: float, beside_wait_s: float, beside_read_s: float) -> Any:
    """Fake loaders: with ``num_workers=0`` each batch is made in the reading thread (CPU); any other
    setting makes the reader wait for a batch (made elsewhere) and then read it (CPU)."""

    def make(settings: LoaderSettings) -> Any:
        def batches() -> Any:
            for _ in range(2000):
                if settings.num_workers == 0:
                    _spin(in_thread_s)
                else:
                    time.sleep(beside_wait_s)
                    _spin(beside_read_s)
                yield [0] * 8

        return batches()

    return make


def test_loading_in_the_training_thread_is_weighed_by_what_it_costs_the_step() -> None:
    """With ``num_workers=0`` batches are made between the steps: no stand-in measures a pace for it
    (its pace there was noise, so it was chosen by chance). It wins where making a batch costs the
    training thread less than what the loaders beside it cost (a table in memory: 0.03 ms a batch,
    against 0.2-0.4 ms to read one from a worker; here 0.02 against 1 ms, a margin that a busy
    machine's stretching of the in-thread wall time does not close), and loses where the work it
    would move off the training thread is larger (decoding images)."""
    settings = LoaderSettings(num_workers="auto")
    table = _loaders(in_thread_s=0.00002, beside_wait_s=0.004, beside_read_s=0.001)
    chosen, report = autotune(table, settings, seconds=0.15, cpus=2)
    alone = next(r for r in report if r["num_workers"] == 0)
    assert alone["training_pace"] is None
    assert all(r["training_pace"] is not None for r in report if r is not alone)
    assert alone["reader_us_per_sample"] > 0
    assert (chosen.backend, chosen.num_workers) == ("torch", 0)
    images = _loaders(in_thread_s=0.003, beside_wait_s=0.001, beside_read_s=0.00002)
    chosen, _ = autotune(images, settings, seconds=0.15, cpus=2)
    assert chosen.num_workers > 0


def test_the_in_thread_rule_on_measured_figures() -> None:
    """``in_thread_wins`` on what the 2-core machine's probes measured (samples/s, the stand-in's pace
    beside the best other loader, the reading thread's microseconds a sample)."""
    from chute.autotune import in_thread_wins

    def loader(rate: float, pace: float | None = None, reading: float = 0.0) -> dict[str, Any]:
        return {"samples_per_s": rate, "training_pace": pace, "reader_us_per_sample": reading}

    # the bundled table: 450,000 samples/s in the thread, 11,000 from a worker (5 us a sample to read)
    assert in_thread_wins(loader(450_000), loader(11_000, pace=0.83, reading=5.0))
    assert in_thread_wins(loader(450_000), loader(11_000, pace=1.0, reading=5.0))  # even with no pace lost
    # photos: 600 images/s decoded in the thread, 2,400 from two workers
    assert not in_thread_wins(loader(600), loader(2_400, pace=0.8, reading=0.5))
    # a loader beside the thread that costs it nothing and keeps up always wins
    assert not in_thread_wins(loader(50_000), loader(40_000, pace=1.0))
    # the stand-in's pace (49%) already lost the probe's reading thread's 1 ms a batch (1 sample):
    # counted once, the worker wins (a timed loop at S = 1/R: 316 samples/s against 280 in the thread)
    assert not in_thread_wins(loader(664), loader(484, pace=0.49, reading=1027))
    assert not in_thread_wins(loader(0), loader(1_000, pace=0.6))  # nothing came in the thread
    assert in_thread_wins(loader(1_000), loader(0, pace=0.9))  # nothing came from the others
    assert in_thread_wins(loader(0), loader(0, pace=0.9))  # an empty loader: no workers for it


class _Pool:
    """A fake loader of 6 batches a pass whose workers start one after another (40 ms each) when a pass
    starts, unless they are kept from the last pass (``persistent_workers``); then 2 workers bring a
    batch every 1 ms and 1 worker every 4 ms. Without workers each batch is 5 ms of the reader's CPU."""

    def __init__(self, settings: LoaderSettings) -> None:
        self.workers, self.keep, self.started = settings.num_workers, bool(settings.persistent_workers), False

    def __iter__(self) -> Any:
        starting = not (self.keep and self.started)
        self.started = True
        for i in range(6):
            if self.workers == 0:
                _spin(0.005)
            elif starting and i < self.workers:
                time.sleep(0.04)
            else:
                time.sleep(0.004 / self.workers**2)
            yield [0] * 8


def test_a_short_pass_is_probed_over_several_as_its_epochs_will_run() -> None:
    """A loader of a few batches a pass: after its first batch, what one pass has left is mostly its
    workers still starting (a stream of 8 batches read 3,500-15,000 samples/s with the same setting, run
    to run), which favoured fewer workers. Probed over several passes with the workers kept between
    them, as training keeps them, the steady pace decides; with ``persistent_workers=False`` every epoch
    starts its workers again, and so does every pass of the probe."""
    chosen, report = autotune(_Pool, LoaderSettings(num_workers="auto"), seconds=1.0, cpus=2, threads=False)
    assert chosen.num_workers == 2, report
    two = [r["samples_per_s"] for r in report if r["num_workers"] == 2]
    one = [r["samples_per_s"] for r in report if r["num_workers"] == 1]
    assert min(two) > max(one)
    ended = LoaderSettings(num_workers="auto", persistent_workers=False)
    chosen, report = autotune(_Pool, ended, seconds=1.0, cpus=2, threads=False)
    assert chosen.num_workers == 1, report
    assert chosen.persistent_workers is False


def test_a_loader_that_is_its_own_iterator_is_probed_over_its_one_pass() -> None:
    """A generator has one pass: asked for another, it brings nothing and the probe ends there (a first
    version of the probe over several passes asked the exhausted generator again forever)."""

    def make(settings: LoaderSettings) -> Any:
        return iter([[0] * 8] * 3)

    _, report = autotune(make, LoaderSettings(num_workers="auto"), seconds=5.0, cpus=2)
    assert all(r["samples_per_s"] > 0 for r in report)


def test_settings_of_worker_processes_are_dropped_where_the_training_thread_wins() -> None:
    """``persistent_workers``, ``timeout`` and ``multiprocessing_context`` given with ``auto`` apply to
    worker processes: where loading in the training thread wins they are dropped, not refused (the
    chosen settings raised a ConfigError on ``persistent_workers=True`` with ``num_workers=0``)."""
    settings = LoaderSettings(
        num_workers="auto", persistent_workers=True, timeout=30.0, multiprocessing_context="spawn"
    )
    table = _loaders(in_thread_s=0.00002, beside_wait_s=0.004, beside_read_s=0.001)
    chosen, _ = autotune(table, settings, seconds=0.15, cpus=2, threads=False)
    assert (chosen.num_workers, chosen.persistent_workers, chosen.timeout) == (0, None, 0.0)
    assert chosen.multiprocessing_context is None
    images = _loaders(in_thread_s=0.003, beside_wait_s=0.001, beside_read_s=0.00002)
    chosen, _ = autotune(images, settings, seconds=0.15, cpus=2, threads=False)
    assert chosen.num_workers > 0
    assert (chosen.persistent_workers, chosen.timeout, chosen.multiprocessing_context) == (True, 30.0, "spawn")
