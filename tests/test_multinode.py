"""Two nodes simulated on one machine: two ``torchrun`` launches (``--nnodes=2 --nproc-per-node=2``)
form one 4-rank Lightning job (``Trainer(num_nodes=2, devices=2)``), as on a cluster (issue 29).

Every kind of data runs fit (2 epochs), validate, test and predict through the contract suite's
runner, and the contract is checked from what the model on each of the 4 ranks received: each
evaluation sample once, every training sample each epoch with equal steps, the same batches for
0 and 2 workers. Then every kind but Ray's is trained, every process of both
nodes (the torchrun agents, the ranks, their DataLoader workers) is SIGKILLed after the second step
of epoch 1, and two new launches resume from the checkpoint after its first step: every rank sees
the batches of the uninterrupted job. Slow: four ranks on the development machine's two cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.contract_kinds import KINDS
from tests.test_contract import check, train_batches

MULTINODE_KINDS = list(KINDS)


def start_nodes(
    out: Path, script: str, args: list[str], nodes: int = 2, per_node: int = 2, session: bool = False
) -> list[subprocess.Popen[str]]:
    """``nodes`` torchrun launches on localhost, as a multi-node job's nodes, each running ``script args``
    (``script``: a path in the repository; ``session``: each launch in its own session, so that the
    test can kill it whole)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    procs = []
    for node in range(nodes):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={per_node}",
            f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
            str(REPO / script), *args,
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(cmd, cwd=out, env=env, stderr=subprocess.PIPE, text=True, start_new_session=session)
        )
    return procs


def finish(procs: list[subprocess.Popen[str]]) -> None:
    errors = [p.communicate(timeout=1800)[1] for p in procs]
    for p, err in zip(procs, errors, strict=True):
        assert p.returncode == 0, err[-4000:]


def launch_nodes(out: Path, kinds: list[str], settings: list[str], nodes: int = 2, per_node: int = 2) -> list[Any]:
    """The contract suite's runner on every rank of ``nodes`` simulated nodes; returns every rank's record."""
    for kind in kinds:
        if KINDS[kind].write is not None:
            KINDS[kind].write(out / kind)  # type: ignore[misc]
    finish(start_nodes(out, "tests/contract_run.py", [str(out), ",".join(kinds), ",".join(settings)], nodes, per_node))
    return [json.loads((out / f"contract-rank{r}.json").read_text()) for r in range(nodes * per_node)]


@pytest.mark.slow
@pytest.mark.ddp
def test_two_simulated_nodes_read_every_sample_once(tmp_path: Path) -> None:
    ranks = launch_nodes(tmp_path, MULTINODE_KINDS, ["w0", "w2"])
    assert len(ranks) == 4
    for key in ranks[0]:
        kind = key.split("/")[0]
        check([r[key] for r in ranks], kind)
        first = f"{kind}/{KINDS[kind].settings[0]}"
        if KINDS[kind].same_batches_any_workers and first in ranks[0]:
            assert train_batches([r[key] for r in ranks]) == train_batches([r[first] for r in ranks]), key


# Every kind but the Ray kind (whose reading runs on a Ray instance outside the killed processes:
# its resume is tests/test_resume.py's), with worker processes.
RESUME_KINDS = [kind for kind in KINDS if kind != "ray_images"]
RESUME_BATCH = 2  # 10 images over 4 ranks: two batches a rank, so epoch 1 has a middle to resume from


def _resume_fit(out: Path, kinds: list[str], mode: str, session: bool = False) -> list[subprocess.Popen[str]]:
    args = [str(out), ",".join(kinds), "w2", mode, str(RESUME_BATCH)]
    return start_nodes(out, "tests/resume_fit.py", args, session=session)


def _kill_when_held(procs: list[subprocess.Popen[str]], out: Path, world: int = 4) -> None:
    """Wait until every rank holds after the second step of epoch 1, then SIGKILL every process of every
    node: the torchrun agents and each rank with its DataLoader workers (each rank leads its own group)."""
    held = [out / f"held-rank{r}" for r in range(world)]
    deadline = time.monotonic() + 900
    while not all(path.exists() and path.read_text() for path in held):
        ended = [p for p in procs if p.poll() is not None]
        assert not ended, ended[0].communicate()[1][-4000:]
        assert time.monotonic() < deadline, "the ranks never reached the kill point"
        time.sleep(0.5)
    for pid in [int(path.read_text()) for path in held] + [p.pid for p in procs]:
        os.killpg(pid, signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=60)
        assert p.returncode == -signal.SIGKILL


def _steps(path: Path) -> list[tuple[int, list[int]]]:
    return [(r["epoch"], r["ids"]) for r in map(json.loads, path.read_text().splitlines())]


@pytest.mark.slow
@pytest.mark.ddp
def test_killing_every_process_of_both_nodes_resumes_exactly(tmp_path: Path) -> None:
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    for kind in RESUME_KINDS:
        for run_dir in (full_dir / kind, cut_dir / kind):
            run_dir.mkdir(parents=True)
            KINDS[kind].write(run_dir / kind)  # type: ignore[misc]
    finish(_resume_fit(full_dir, RESUME_KINDS, "full"))
    for kind in RESUME_KINDS:  # one killed job per kind: its processes die in it
        _kill_when_held(_resume_fit(cut_dir / kind, [kind], "killed", session=True), cut_dir / kind)
    finish(_resume_fit(cut_dir, RESUME_KINDS, "resume"))

    for kind in RESUME_KINDS:
        resume_step = int((cut_dir / kind / "resume-step").read_text())
        epochs: list[list[int]] = [[], []]
        for rank in range(4):
            full = _steps(full_dir / kind / f"ids-full-rank{rank}.jsonl")
            before = _steps(cut_dir / kind / f"ids-killed-rank{rank}.jsonl")
            after = _steps(cut_dir / kind / f"ids-resume-rank{rank}.jsonl")
            assert len(full) == 2 * (resume_step - 1) >= 4, kind  # two epochs of >= 2 steps: resumed mid-epoch
            assert len(before) == resume_step + 1, kind  # held one step after the checkpoint: seen again
            assert before[:resume_step] + after == full, (kind, rank)  # the same batches in the same order
            for epoch, ids in full:
                epochs[epoch] += ids
        for ids in epochs:  # and each epoch is every training sample, repeats fewer than the ranks
            assert set(ids) == set(range(KINDS[kind].train_samples)), kind
            assert len(ids) - KINDS[kind].train_samples < 4, kind


@pytest.mark.slow
@pytest.mark.ddp
def test_the_documented_two_node_recipe_starts_and_restarts_a_job(tmp_path: Path) -> None:
    # README "Beyond one machine": train.py on every node, one job folder, ckpt_path=last; the second
    # run of the same command (a requeue after a scheduler's SIGTERM) resumes the first where it stopped.
    job = tmp_path / "job"
    recipe = [
        "data=tabular", "trainer.num_nodes=2", "trainer.devices=2", "trainer.strategy=ddp",
        "trainer.accelerator=cpu", f"hydra.run.dir={job}", "ckpt_path=last", f"paths.data_dir={tmp_path / 'data'}",
        "loader.num_workers=2", "callbacks.preview=null", "trainer.enable_progress_bar=false", "trainer.max_epochs=2",
    ]  # fmt: skip
    stop = ["+callbacks.sigterm._target_=tests.helpers.SigtermAt", "+callbacks.sigterm.step=1"]
    stopped = start_nodes(tmp_path, "train.py", [*recipe, *stop])
    for proc in stopped:
        err = proc.communicate(timeout=1800)[1]
        assert proc.returncode != 0, err[-4000:]
        assert "chute: stopped by SIGTERM" in err, err[-4000:]
    first = json.loads((job / "metrics.json").read_text())
    assert (first["resumed_from"], first["global_step"], first["stopped_by_sigterm"]) == (None, 1, True)
    finish(start_nodes(tmp_path, "train.py", recipe))
    metrics = json.loads((job / "metrics.json").read_text())
    assert (metrics["world_size"], metrics["num_nodes"], metrics["epochs"]) == (4, 2, 2)
    assert metrics["resumed_from"] == str(job / "checkpoints" / "last.ckpt")
    assert metrics["global_step"] > 1
