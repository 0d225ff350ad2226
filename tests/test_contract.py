"""The contract every chute DataModule keeps, checked from what a real Trainer's model received.

For every kind of data (tests/contract_kinds.py; a new DataModule joins with one line there), every
loader setting (worker processes 0 and 2, loader threads, ``num_workers=auto``) and world sizes 1,
2 and 3 (real DDP over gloo, one launch per world size for every kind):

- each evaluation sample (fit's validation, ``validate``, ``test``, ``predict``) exactly once across
  ranks, rank shares within one sample, and the synced validation loss is the single-process one;
- every training sample each epoch, repeats only to even out ranks, equal step counts on every rank;
- the same batches whatever loads them (for one world size);
- no empty batch ever reaches the model (the recorder asserts it).

Mid-epoch resume after a SIGKILL is checked per kind in tests/test_resume.py.
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

from chute.loader.orders import Order, SnapshotOrder
from tests.conftest import REPO
from tests.contract_kinds import BATCH, KINDS, SAMPLES, expected_val_loss
from tests.contract_run import run

ALL_KINDS = list(KINDS)


def check(results: list[dict[str, Any]], kind: str) -> None:
    """The contract for one ``kind/setting`` from every rank's record."""
    world = len(results)
    spec = KINDS[kind]
    for key in ("fit/val", "validate/val", "test/test", "predict/predict"):
        by_epoch: dict[int, list[list[int]]] = {}
        for rank in results:
            for epoch, ids in rank["seen"][key]:
                by_epoch.setdefault(epoch, [[] for _ in range(world)])[results.index(rank)] += ids
        assert by_epoch, f"{key}: no batches"
        for epoch, shares in by_epoch.items():
            assert sorted(i for share in shares for i in share) == list(range(SAMPLES)), (key, epoch)
            sizes = [len(share) for share in shares]
            assert max(sizes) - min(sizes) <= 1, (key, epoch, sizes)
    for rank in results:
        assert rank["val_loss"] == pytest.approx(expected_val_loss(), rel=1e-5)
    assert len({rank["steps"] for rank in results}) == 1, "ranks took different numbers of steps"
    epochs = {epoch for rank in results for epoch, _ in rank["seen"]["fit/train"]}
    assert epochs == {0, 1}
    orders = []
    for epoch in sorted(epochs):
        steps = {sum(1 for e, _ in rank["seen"]["fit/train"] if e == epoch) for rank in results}
        assert len(steps) == 1, f"epoch {epoch}: ranks took {steps} steps"
        trained = [i for rank in results for e, ids in rank["seen"]["fit/train"] if e == epoch for i in ids]
        assert set(trained) == set(range(spec.train_samples)), f"epoch {epoch} missed samples"
        repeats = len(trained) - spec.train_samples
        assert repeats < world * BATCH if kind in ("stream", "litdata") else repeats <= world - 1
        orders.append(trained)
    assert orders[0] != orders[1], "the training order must change between epochs"


def train_batches(results: list[dict[str, Any]]) -> list[Any]:
    return [rank["seen"]["fit/train"] for rank in results]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_contract_single_process(kind: str, tmp_path: Path) -> None:
    settings = ["w0", "w2", "t2", "auto", "ray2", "rd2"]
    results = run(tmp_path, [kind], settings)
    for key, result in results.items():
        check([result], kind)
        assert key.split("/")[1] in settings
    if KINDS[kind].same_batches_any_workers:  # the same batches whatever loads them
        first = f"{kind}/{KINDS[kind].settings[0]}"
        reference = train_batches([results[first]])
        for key, result in results.items():
            assert train_batches([result]) == reference, f"{key} trained on other batches than {first}"


def launch(out: Path, world: int, kinds: list[str], settings: list[str]) -> list[dict[str, Any]]:
    """Start ``world`` ranks the way torchrun does; each runs every (kind, setting) in order."""
    for kind in kinds:
        writer = KINDS[kind].write
        if writer is not None:
            writer(out / kind)  # before any rank starts: no rank reads a half-written file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = {
            **os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
            "NODE_RANK": "0",
        }  # fmt: skip
        args = [sys.executable, str(REPO / "tests" / "contract_run.py"), str(out), ",".join(kinds), ",".join(settings)]
        procs.append(subprocess.Popen(args, cwd=out, env=env, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=1200)[1] for p in procs]
    for p, err in zip(procs, errors, strict=True):
        assert p.returncode == 0, err[-4000:]
    return [json.loads((out / f"contract-rank{r}.json").read_text()) for r in range(world)]


# One launch per world size checks every kind; the full settings matrix runs with -m slow.
DDP_CASES = [
    pytest.param(2, ["w0", "t2"], id="2ranks-w0-t2"),
    pytest.param(3, ["w2"], id="3ranks-w2"),
    pytest.param(2, ["w2"], id="2ranks-w2", marks=pytest.mark.slow),
    pytest.param(3, ["w0", "t2"], id="3ranks-w0-t2", marks=pytest.mark.slow),
    pytest.param(2, ["rd2"], id="2ranks-ray-data", marks=pytest.mark.slow),  # the Ray kind and streams read so
    pytest.param(3, ["ray2"], id="3ranks-ray-tasks", marks=pytest.mark.slow),  # streams on Ray tasks
]


@pytest.mark.ddp
@pytest.mark.parametrize(("world", "settings"), DDP_CASES)
def test_contract_under_ddp(world: int, settings: list[str], tmp_path: Path) -> None:
    ranks = launch(tmp_path, world, ALL_KINDS, settings)
    assert [r[next(iter(r))]["world"] for r in ranks] == [world] * world
    for key in ranks[0]:
        kind = key.split("/")[0]
        check([r[key] for r in ranks], kind)
        if KINDS[kind].same_batches_any_workers and f"{kind}/{settings[0]}" in ranks[0]:
            reference = train_batches([r[f"{kind}/{settings[0]}"] for r in ranks])
            assert train_batches([r[key] for r in ranks]) == reference, key


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_loader_is_complete_to_lightning_and_resumes_from_its_state(kind: str, tmp_path: Path) -> None:
    """What Lightning and torch tooling read off a loader, and the position round trip, for every
    split and loader setting: a fresh loader given a mid-epoch ``state_dict`` yields the rest."""
    from lightning.fabric.utilities.data import has_len
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled

    from tests.contract_run import SETTINGS

    spec = KINDS[kind]
    for setting in spec.settings:
        if setting == "auto":
            continue  # a tuned loader is one of the others
        loader_settings: dict[str, Any] = {"batch_size": BATCH, **SETTINGS[setting]}
        if setting == "w2":  # persistent workers of the many loaders here would each wait to be joined
            loader_settings["persistent_workers"] = False
        dm = spec.make(tmp_path / kind, loader_settings)
        dm.prepare_data()
        dm.setup("fit")
        for name in ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader"):
            loader = getattr(dm, name)()
            assert has_len(loader), (kind, setting, name)
            assert hasattr(loader, "sampler"), (kind, setting, name)
            assert hasattr(loader, "batch_sampler"), (kind, setting, name)
            _is_dataloader_shuffled(loader)  # Lightning's inspection must not fail
            if kind != "litdata":  # LitData's own loader and order (tests/datamodules/test_litdata.py)
                assert isinstance(loader.order, Order), (kind, setting, name, type(loader.order))
                if kind.startswith("sql") and name == "train_dataloader":  # each epoch reads the rows of its start
                    assert isinstance(loader.order, SnapshotOrder), (kind, setting)
            assert len(list(loader)) == len(loader), (kind, setting, name)
        if kind == "litdata":
            continue  # LitData's own loader: its resume is tested in tests/datamodules/test_litdata.py
        whole = [spec.ids(b).tolist() for b in dm.train_dataloader()]  # epoch 0, uninterrupted
        first = dm.train_dataloader()
        it = iter(first)
        head = [spec.ids(next(it)).tolist() for _ in range(2)]
        state = first.state_dict()
        assert {k: state[k] for k in ("epoch", "batches")} == {"epoch": 0, "batches": 2}  # sql: + its snapshot
        rest_loader = spec.make(tmp_path / kind, loader_settings)
        rest_loader.prepare_data()
        rest_loader.setup("fit")
        fresh = rest_loader.train_dataloader()
        fresh.load_state_dict(state)
        rest = [spec.ids(b).tolist() for b in fresh]
        assert head + rest == whole, (kind, setting)


def test_an_empty_evaluation_split_is_an_error_naming_the_setting(tmp_path: Path, make_tree) -> None:
    """Too little training data to hold out a validation split: said at the loader, naming val_fraction."""
    from chute.datamodules import ImageFolderDataModule, SequenceDataModule
    from chute.errors import DataError
    from chute.transforms import create_transforms

    (tmp_path / "seq").mkdir()
    (tmp_path / "seq" / "train.jsonl").write_text('{"tokens": [1, 2], "label": 0}\n{"tokens": [3], "label": 1}\n')
    t = create_transforms(image_size=8)
    modules = [
        SequenceDataModule(tmp_path / "seq", val_fraction=0.1),
        ImageFolderDataModule(
            make_tree(splits=None, counts={"a": 1, "b": 1}), val_fraction=0.1, train_transform=t.train,
            val_transform=t.val, mean=[0.5] * 3, std=[0.2] * 3,
        ),
    ]  # fmt: skip
    for dm in modules:
        dm.prepare_data()
        dm.setup("fit")
        with pytest.raises(DataError, match=r"the val split has no samples.*val_fraction"):
            dm.val_dataloader()
