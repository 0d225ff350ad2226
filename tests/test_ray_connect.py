"""How chute joins Ray or starts a local instance (``chute.integrations.ray_tasks.connect``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


def test_a_local_instance_starts_beside_a_cluster_ray_start_left_on_this_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``address=None`` without ``RAY_ADDRESS`` is a local instance started here (the documented
    rule); Ray's own ``init()`` joins instead the cluster a ``ray start`` on this machine last
    recorded, and refused chute's settings for a new one: "When connecting to an existing cluster,
    _system_config must not be provided" (a run beside a `ray start`, or beside a test's cluster)."""
    ray = pytest.importorskip("ray")
    from chute.integrations.ray_tasks import connect

    folder = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths have a length limit
    try:
        (folder / "ray").mkdir()
        (folder / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")  # where `ray start` records it
        monkeypatch.setenv("RAY_TMPDIR", str(folder))
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        address = connect(num_cpus=1)
        assert address != "127.0.0.1:9"
        assert ray.cluster_resources()["CPU"] == 1
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
