"""Mid-epoch resume: a run killed mid-epoch and resumed from its mid-epoch checkpoint sees, over
both parts, exactly the batches of the uninterrupted run, in the same order (real SIGKILL), for
every kind of data of the contract suite (tests/contract_kinds.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.contract_kinds import KINDS
from tests.resume_fit import steps_per_epoch


def run(out: Path, kind: str, setting: str, mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "tests" / "resume_fit.py"), str(out), kind, setting, mode],
        cwd=out, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def batches(path: Path) -> list[tuple[int, list[int]]]:
    return [(r["epoch"], r["ids"]) for r in map(json.loads, path.read_text().splitlines())]


# One real kill by default (threads: the sequence kind); every other kind and setting with -m slow
# (the contract suite resumes every kind from its loader state in-process by default).
FAST = {("sequence", "t2")}
KILLED_SETTINGS = ("w0", "w2", "t2", "ray2", "rd2")
CASES = [(kind, setting) for kind in KINDS for setting in KILLED_SETTINGS if setting in KINDS[kind].settings]


@pytest.mark.parametrize(
    ("kind", "setting"), [c if c in FAST else pytest.param(*c, marks=pytest.mark.slow) for c in CASES]
)
def test_killed_and_resumed_run_sees_the_uninterrupted_epochs(kind: str, setting: str, tmp_path: Path) -> None:
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full_dir.mkdir()
    cut_dir.mkdir()
    assert run(full_dir, kind, setting, "full").returncode == 0
    killed = run(cut_dir, kind, setting, "killed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resume_step = steps_per_epoch(kind) + 1
    assert (cut_dir / "ckpt" / f"step={resume_step}.ckpt").exists()
    resumed = run(cut_dir, kind, setting, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    full = batches(full_dir / "ids-full.jsonl")
    before = batches(cut_dir / "ids-killed.jsonl")
    after = batches(cut_dir / "ids-resume.jsonl")
    assert len(before) == resume_step + 1  # killed one step after the checkpoint: that step is seen again
    assert before[:resume_step] + after == full  # the same batches, in the same order, epoch by epoch
    per_epoch = len(full) // 2
    first, second = full[:per_epoch], full[per_epoch:]
    for epoch in (first, second):  # and each epoch is every training sample once
        ids = sorted(i for _, batch in epoch for i in batch)
        assert ids == list(range(KINDS[kind].train_samples))
    assert [b for _, b in first] != [b for _, b in second]  # reshuffled between epochs
