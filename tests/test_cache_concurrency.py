"""Several processes building one disk cache at once, as nodes sharing storage do (issue 29).

Lightning runs ``prepare_data`` on local rank 0 of every node, and a cache folder inside a shared
data folder is then built by every node at the same moment. Here the nodes are processes released
together by a barrier, with and without a working file lock (some shared filesystems have none):
none may fail, and every one must read the same complete cache.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from chute.datasets import cache_store
from chute.datasets.cache import CachedDataset

N = 48


class Slow(torch.utils.data.Dataset[Any]):
    """Samples that take a moment each, so the builders overlap."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> Any:
        time.sleep(0.001)
        return torch.full((3, 4, 4), i, dtype=torch.uint8), i


def _no_lock(handle: Any, op: int) -> None:
    raise OSError(errno.ENOLCK, "No locks available")


def _build(cache_dir: str, key: str, locks: bool, barrier: Any, out: Any) -> None:
    try:
        if not locks:  # a filesystem whose locks do not hold across nodes
            cache_store.fcntl.flock = _no_lock  # type: ignore[assignment]
        barrier.wait()
        cached = CachedDataset(Slow(), store="disk", cache_dir=cache_dir, key=key, progress=False)
        images = np.stack([cached[i][0].numpy() for i in range(N)])
        out.put(("ok", int(images.astype(np.int64).sum()), [cached[i][1] for i in range(N)] == list(range(N))))
    except BaseException as err:  # reported to the test, which names it
        out.put(("error", repr(err), False))


def _race(cache_dir: Path, key: str, locks: bool, builders: int = 4) -> list[tuple[str, Any, bool]]:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(builders), ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(cache_dir), key, locks, barrier, out)) for _ in range(builders)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return results


EXPECTED = sum(i * 3 * 4 * 4 for i in range(N))


@pytest.mark.parametrize("locks", [True, False], ids=["with-locks", "without-locks"])
def test_builders_that_start_together_all_read_one_complete_cache(tmp_path: Path, locks: bool) -> None:
    for round_ in range(6):
        cache_dir = tmp_path / f"round{round_}" / ".chute-cache"
        results = _race(cache_dir, "k1", locks)
        assert results == [("ok", EXPECTED, True)] * 4, results
        assert not [p.name for p in cache_dir.parent.iterdir() if ".tmp-" in p.name or ".stale-" in p.name]


def test_builders_replacing_a_stale_cache_leave_its_reader_reading(tmp_path: Path) -> None:
    """A cache built for other settings is moved aside, not deleted under a process that maps it."""
    cache_dir = tmp_path / ".chute-cache"
    old = CachedDataset(Slow(), store="disk", cache_dir=cache_dir, key="old", progress=False)
    results = _race(cache_dir, "new", locks=False)
    assert results == [("ok", EXPECTED, True)] * 4, results
    assert [old[i][1] for i in range(N)] == list(range(N))  # its mapped files are still there to read
    assert int(old[N - 1][0].sum()) == (N - 1) * 3 * 4 * 4
