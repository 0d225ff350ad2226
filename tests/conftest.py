"""Shared fixtures: real image files written into tmp dirs, RNG hygiene, marker handling."""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from chute.datasets import DigitsFolder
from tests.helpers import write_image

REPO = Path(__file__).resolve().parents[1]

# A Ray API called while Ray is down starts a local instance, from whatever thread calls it; Ray Data's
# prefetching threads of a pass left early do so after a test has shut Ray down, and when such a
# thread ends, the instance's processes are killed with it (PR_SET_PDEATHSIG) and the pytest process,
# connected to it, exits. The suite always joins Ray explicitly (chute's connect), so: no auto-start.
os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_rng() -> Iterator[None]:
    """Tests may seed or draw freely; global RNG state is put back afterwards."""
    py, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)


@pytest.fixture(autouse=True)
def _no_ray_left() -> Iterator[None]:
    """A test that joined or started Ray leaves it: later tests fork DataLoader workers, and a fork
    of a process with Ray's gRPC threads running may hang."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        gc.collect()  # close the passes a test left (their Ray Data iterators stop their threads)
        deadline = time.monotonic() + 10
        for thread in threading.enumerate():  # Ray Data's prefetching threads finish what they wait for
            if thread.name == "iter_threaded":
                thread.join(timeout=max(deadline - time.monotonic(), 0))
        ray.shutdown()


@pytest.fixture
def ray_local() -> None:
    """A local Ray instance of 2 CPUs for the test (``_no_ray_left`` shuts it down after it)."""
    pytest.importorskip("ray")
    from chute.integrations.ray_tasks import connect

    connect(num_cpus=2)


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default experiment's data: scikit-learn's digits as a PNG tree (written once per session)."""
    return DigitsFolder(progress=False)(tmp_path_factory.mktemp("data") / "digits")


@pytest.fixture
def make_tree(tmp_path: Path) -> Callable[..., Path]:
    """Write ``root/<split>/<class>/<i>.<ext>`` with real encoded images; returns root.

    ``splits=None`` writes the flat ``root/<class>/...`` layout. ``counts`` maps class -> images.
    """

    def make(
        splits: tuple[str, ...] | None = ("train", "val"),
        counts: dict[str, int] | None = None,
        ext: str = "png",
        size: tuple[int, int] = (40, 30),
        root: Path | None = None,
    ) -> Path:
        root = root or tmp_path / "tree"
        counts = counts or {"cat": 6, "dog": 5, "eel": 4}
        seed = 0
        for split in splits or (None,):
            base = root / split if split else root
            for name, n in counts.items():
                for i in range(n):
                    seed += 1
                    write_image(base / name / f"{i}.{ext}", size=size, seed=seed)
        return root

    return make


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A throwaway PostgreSQL server for the session (Debian's ``postgresql``: initdb + pg_ctl on a Unix
    socket in a temporary folder). Skipped where PostgreSQL is not installed, unless
    ``CHUTE_REQUIRE_POSTGRES=1`` (``.ci/run`` sets it after installing the package): then it fails."""
    import os

    from tests.postgres import INSTALL_HINT, TemporaryPostgres, postgres_bin

    if postgres_bin() is None:
        if os.environ.get("CHUTE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CHUTE_REQUIRE_POSTGRES=1 and PostgreSQL is not installed: {INSTALL_HINT}")
        pytest.skip(f"PostgreSQL is not installed: {INSTALL_HINT}")
    with TemporaryPostgres() as server:
        yield server
