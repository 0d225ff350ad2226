"""One thread per library inside every loader worker (issue 25), set safely around the fork."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from chute import LoaderSettings
from chute.loader import build_loader, library_threads


class ThreadCounts(Dataset[Any]):
    """Each sample: the thread counts torch, OpenCV and the BLAS/OpenMP pools have where it is loaded."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, int]:
        from threadpoolctl import threadpool_info

        pools = {p["internal_api"]: p["num_threads"] for p in threadpool_info()}
        return {"torch": torch.get_num_threads(), "opencv": cv2.getNumThreads(), **pools}


def _as_list(samples: list[Any]) -> list[Any]:
    return samples


def _counts(workers: int, **settings: Any) -> list[dict[str, int]]:
    loader = build_loader(
        ThreadCounts(), LoaderSettings(batch_size=2, num_workers=workers, **settings), train=False, seed=0,
        collate_fn=_as_list,
    )  # fmt: skip
    return [sample for batch in loader for sample in batch]


def _start_opencv_pool() -> None:
    """Run an OpenCV call large enough to start its thread pool in this (the parent) process."""
    src = np.zeros((2048, 2048, 3), np.uint8)
    cv2.LUT(src, np.zeros((1, 256, 3), np.float32))


def test_every_library_runs_one_thread_in_a_worker() -> None:
    for sample in _counts(2):
        assert sample["torch"] == 1
        assert sample["opencv"] == 1
        assert all(n == 1 for name, n in sample.items() if name not in ("torch", "opencv")), sample


def test_workers_forked_after_the_parent_used_opencvs_pool_start_and_the_parents_setting_is_kept() -> None:
    """``cv2.setNumThreads`` in a child whose parent had started OpenCV's pool waits forever; the
    parent sets it around the fork instead (a hang here times the test out)."""
    before = cv2.getNumThreads()
    _start_opencv_pool()
    assert all(s["opencv"] == 1 for s in _counts(2, multiprocessing_context="fork"))
    assert cv2.getNumThreads() == before


def test_workers_started_afresh_set_their_own() -> None:
    assert all(s["opencv"] == 1 for s in _counts(1, multiprocessing_context="spawn"))


def test_the_limits_can_be_left_to_the_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUTE_LIBRARY_THREADS", "off")
    assert library_threads() is None
    cpus = os.cpu_count() or 1
    if cpus > 1:
        assert all(s["opencv"] == cv2.getNumThreads() for s in _counts(1))
    monkeypatch.setenv("CHUTE_LIBRARY_THREADS", "2")
    assert library_threads() == 2
    monkeypatch.setenv("CHUTE_LIBRARY_THREADS", "many")
    with pytest.raises(ValueError, match="CHUTE_LIBRARY_THREADS"):
        library_threads()


@pytest.mark.parametrize("others", [False, True])
def test_the_parents_garbage_is_collected_before_forking_only_where_other_threads_call_python(
    others: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full collection before every fork costs 0.2-0.3 s of every loader start. It is made where
    native threads call into Python (a CUDA process, a DDP rank, a Ray client): a freed CUDA tensor
    aborts a forked child, and its time keeps the fork from CPython 3.11's thread-state deadlock."""
    from chute.loader import worker_init

    calls: list[int] = []
    monkeypatch.setattr(worker_init, "_threads_call_into_python", lambda: others)
    monkeypatch.setattr(worker_init.gc, "collect", lambda *a: calls.append(1) or 0)
    assert _counts(2)[0]["torch"] == 1  # the workers started and read
    assert calls == ([1] if others else [])


def test_a_ddp_rank_and_a_cuda_process_are_ones_whose_threads_call_python(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import torch.distributed as dist

    from chute.loader.worker_init import _threads_call_into_python

    assert not _threads_call_into_python()  # this test process: one CPU process
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        assert _threads_call_into_python()
    finally:
        dist.destroy_process_group()
    assert not _threads_call_into_python()
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert _threads_call_into_python()


class Finalized:
    """In a reference cycle (garbage only a collection frees); says in a file which process freed it."""

    def __init__(self, record: Path) -> None:
        self.record, self.me = record, self

    def __del__(self) -> None:
        with self.record.open("a") as f:
            f.write(f"{os.getpid()}\n")


class Collects(Dataset[Any]):
    """Each sample: a full collection in whatever process reads it, then that process's pid."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        import gc

        gc.collect()
        return os.getpid()


def test_a_worker_never_frees_the_parents_garbage(tmp_path: Path) -> None:
    """A cycle the parent has not collected yet is inherited by every forked worker; freed there, its
    finalizer runs against the parent's resources (an earlier loader's iterator retired its
    shared memory and killed the new worker with SIGSEGV). Workers freeze what they inherit."""
    import gc

    record = tmp_path / "freed-by"
    gc.disable()  # the cycle stays uncollected in the parent until the workers have started
    try:
        Finalized(record)
        loader = build_loader(
            Collects(), LoaderSettings(batch_size=2, num_workers=2), train=False, seed=0, collate_fn=_as_list
        )
        workers = {pid for batch in loader for pid in batch}
    finally:
        gc.enable()
    gc.collect()
    assert len(workers) == 2  # read in two workers
    assert os.getpid() not in workers
    freed_by = {int(line) for line in record.read_text().split()}
    assert freed_by == {os.getpid()}, f"freed in a worker: {freed_by & workers}"


_PROBE = """
import sys
from typing import Any

from torch.utils.data import Dataset


AT_START: list[bool] = []  # whether OpenCV was loaded when this process read its first sample


class LoadsOpenCV(Dataset[Any]):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[bool, int]:
        AT_START.append("cv2" in sys.modules)
        import cv2  # as an image pipeline imports it on its first resize

        return AT_START[0], cv2.getNumThreads()
"""

_WITHOUT_OPENCV = """
import os, sys
from chute import LoaderSettings
from chute.loader import build_loader
from opencv_probe import LoadsOpenCV

assert "cv2" not in sys.modules
for context in ("fork", "spawn"):
    settings = LoaderSettings(batch_size=2, num_workers=2, multiprocessing_context=context)
    loader = build_loader(LoadsOpenCV(), settings, train=False, seed=0, collate_fn=list)
    print(context, sorted({sample for batch in loader for sample in batch}))
print("parent", "cv2" in sys.modules, os.environ.get("OPENCV_FOR_THREADS_NUM"))
"""


def test_a_worker_where_opencv_is_not_loaded_does_not_load_it_and_gets_one_thread_when_it_does(
    tmp_path: Path,
) -> None:
    """Importing OpenCV to set its threads cost every worker's start ~20 ms (~40 ms on 2 busy cores)
    where nothing of OpenCV's runs; its pool takes its size from the environment at import instead
    (in forked workers and in workers started afresh)."""
    import subprocess
    import sys

    (tmp_path / "opencv_probe.py").write_text(_PROBE)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OPENCV], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": path},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:3] == ["fork [(False, 1)]", "spawn [(False, 1)]", "parent False None"]
