"""Mid-epoch resume: a run killed mid-epoch and resumed from its mid-epoch checkpoint sees, over
both parts, exactly the batches of the uninterrupted run, in the same order (real SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def run(out: Path, kind: str, workers: int, mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "tests" / "resume_fit.py"), str(out), kind, str(workers), mode],
        cwd=out, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def batches(path: Path) -> list[tuple[int, list[int]]]:
    return [(r["epoch"], r["ids"]) for r in map(json.loads, path.read_text().splitlines())]


@pytest.mark.parametrize(("kind", "workers"), [("image", 2), ("table", 0), ("stream", 2)])
def test_killed_and_resumed_run_sees_the_uninterrupted_epochs(kind: str, workers: int, tmp_path: Path) -> None:
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full_dir.mkdir()
    cut_dir.mkdir()
    assert run(full_dir, kind, workers, "full").returncode == 0
    killed = run(cut_dir, kind, workers, "killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (cut_dir / "ckpt" / "step=15.ckpt").exists()
    resumed = run(cut_dir, kind, workers, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    full = batches(full_dir / "ids-full.jsonl")
    before = batches(cut_dir / "ids-killed.jsonl")
    after = batches(cut_dir / "ids-resume.jsonl")
    assert len(before) == 17  # killed after step 17; steps 16 and 17 are seen again after resume
    assert before[:15] + after == full  # the same batches, in the same order, epoch by epoch
    per_epoch = len(full) // 2
    first, second = full[:per_epoch], full[per_epoch:]
    for epoch in (first, second):  # and each epoch is every training sample once
        ids = sorted(i for _, batch in epoch for i in batch)
        assert len(ids) == len(set(ids))
    assert [b for _, b in first] != [b for _, b in second]  # reshuffled between epochs
