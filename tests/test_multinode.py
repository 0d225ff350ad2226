"""Two nodes simulated on one machine: two ``torchrun`` launches (``--nnodes=2 --nproc-per-node=2``)
form one 4-rank Lightning job (``Trainer(num_nodes=2, devices=2)``), as on a cluster (issue 29).

Every kind of data runs fit (2 epochs), validate, test and predict through the contract suite's
runner, and the contract is checked from what the model on each of the 4 ranks received: each
evaluation sample once, every training sample each epoch with equal steps, the same batches for
0 and 2 workers. Slow: four ranks on the development machine's two cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.contract_kinds import KINDS
from tests.test_contract import check, train_batches

MULTINODE_KINDS = list(KINDS)


def launch_nodes(out: Path, kinds: list[str], settings: list[str], nodes: int = 2, per_node: int = 2) -> list[Any]:
    """``nodes`` torchrun launches on localhost, as a multi-node job's nodes; returns every rank's record."""
    for kind in kinds:
        if KINDS[kind].write is not None:
            KINDS[kind].write(out / kind)  # type: ignore[misc]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    procs = []
    for node in range(nodes):
        args = [
            sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={per_node}",
            f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
            str(REPO / "tests" / "contract_run.py"), str(out), ",".join(kinds), ",".join(settings),
        ]  # fmt: skip
        procs.append(subprocess.Popen(args, cwd=out, env=env, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=1800)[1] for p in procs]
    for p, err in zip(procs, errors, strict=True):
        assert p.returncode == 0, err[-4000:]
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
