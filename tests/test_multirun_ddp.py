"""Hydra multirun combined with DDP: each job launches its own ranks, and the sweep finishes.

Lightning starts ranks > 0 by re-running ``train.py`` with the parent's argv. Under ``-m`` that argv
is the whole sweep, so without chute's handling (``chute.app._one_job_per_ddp_launch``) every child
ran a sweep of its own and later jobs reused the first job's process group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SWEEP = [
    "seed=1,2", "data=tabular", "trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu",
    "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "callbacks.preview=null",
]  # fmt: skip


@pytest.mark.ddp
def test_multirun_with_ddp_runs_each_job_on_two_ranks(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "CHUTE_DATA_DIR": str(tmp_path / "data"), "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", *SWEEP, f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert out.count("Launching 2 jobs") == 1, out[-3000:]  # the child ranks ran no sweep of their own
    for rank in (0, 1):  # each job set up its own 2-process group
        assert out.count(f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2") == 2, out[-3000:]
    for job, seed in ((0, 1), (1, 2)):
        metrics = json.loads((sweep_dir / str(job) / "metrics.json").read_text())
        assert metrics["seed"] == seed
        assert metrics["epochs"] == 1
        assert 0.0 <= metrics["metrics"]["val/acc"] <= 1.0
        assert (sweep_dir / str(job) / "train_ddp_process_1.log").is_file()  # rank 1 ran in this job's folder


def test_slurm_launcher_asks_for_what_the_trainer_expects() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from chute.config import compose_config

    cfg = compose_config("hydra/launcher=slurm", "trainer.num_nodes=2", "trainer.devices=8")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)
