"""Run kinds of data through a real Trainer (fit, validate, test, predict) and record what the model got.

In-process for one process (tests/test_contract.py calls :func:`run`), or as one rank of a DDP world
that the test launches itself, the way torchrun does (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` in the environment; Lightning then starts no processes and every
Trainer of the run reuses the one process group), so one launch per world size checks every kind:

    python tests/contract_run.py OUT_DIR KIND[,KIND...] SETTING[,SETTING...]

Each rank writes OUT_DIR/contract-rank<r>.json: for every ``kind/setting``, the ids of every batch
each stage received (``fit/train``, ``fit/val``, ``validate/val``, ``test/test``, ``predict/predict``)
with the epoch, the training steps and the synced validation loss.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L

from tests.contract_kinds import BATCH, EVAL_BATCH, KINDS, Recorder

SETTINGS: dict[str, dict[str, Any]] = {
    "w0": {"num_workers": 0},
    "w2": {"num_workers": 2},
    "t2": {"backend": "threads", "num_workers": 2},
    "auto": {"num_workers": "auto"},
    "ray2": {"backend": "ray", "num_workers": 2},  # two Ray tasks reading (the Ray kind's w2; shard streams)
    "rd2": {"backend": "ray_data", "num_workers": 2},  # a Ray Data pipeline reading (the Ray kind; streams)
}


def _trainer(world: int, out: Path, **kwargs: Any) -> L.Trainer:
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", 1))  # torchrun --nnodes: several (simulated) nodes
    return L.Trainer(
        accelerator="cpu", devices=world // nodes, num_nodes=nodes, strategy="ddp" if world > 1 else "auto",
        logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
        **kwargs,
    )  # fmt: skip


def run_case(out: Path, kind_name: str, setting: str, world: int) -> dict[str, Any]:
    """One kind with one loader setting through fit (2 epochs), validate, test and predict."""
    kind = KINDS[kind_name]
    loader = {"batch_size": BATCH, "eval_batch_size": EVAL_BATCH, **SETTINGS[setting]}
    dm = kind.make(out / kind_name, loader)
    model = Recorder(kind.ids)
    seen: dict[str, list[list[Any]]] = {}

    def stage(name: str, fn: str) -> None:
        seen[f"{fn}/{name}"] = [[epoch, ids] for epoch, ids in model.seen[name]]
        model.seen[name] = []

    trainer = _trainer(world, out, max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    stage("train", "fit")
    stage("val", "fit")
    val_loss = float(trainer.callback_metrics["val/loss"])
    steps = trainer.global_step
    _trainer(world, out).validate(model, datamodule=dm, verbose=False)
    stage("val", "validate")
    _trainer(world, out).test(model, datamodule=dm, verbose=False)
    stage("test", "test")
    _trainer(world, out).predict(model, datamodule=dm, return_predictions=False)
    stage("predict", "predict")
    return {"seen": seen, "steps": steps, "val_loss": val_loss, "world": trainer.world_size}


def run(out: Path, kinds: list[str], settings: list[str], world: int = 1) -> dict[str, Any]:
    """Every (kind, setting) in this process, for the settings each kind supports."""
    results = {}
    for kind in kinds:
        for setting in settings:
            if setting not in KINDS[kind].settings:
                continue
            results[f"{kind}/{setting}"] = run_case(out, kind, setting, world)
    return results


def main() -> None:
    out, kinds, settings = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(",")
    warnings.filterwarnings("ignore")
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    results = run(out, kinds, settings, world)
    (out / f"contract-rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
