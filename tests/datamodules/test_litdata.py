"""LitDataModule: chunks from any chute dataset, each sample once across ranks and workers, resumable."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from chute.app import run
from chute.datamodules import TabularDataModule
from chute.datasets import SklearnTable
from chute.errors import DataError
from chute.integrations import LitDataCopy, LitDataModule
from chute.integrations.litdata_cover import _cover_rest
from chute.integrations.litdata_retry import Outage
from tests.conftest import REPO
from tests.datamodules.contract import check_datamodule
from tests.helpers import RecordRows, collect_in_a_cycle, fit_recording, overfit_rows
from tests.test_config import make_config
from tests.test_train import FAST

pytest.importorskip("litdata")


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("to_litdata", REPO / "scripts" / "to_litdata.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table_chunks(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("litdata")
    source = TabularDataModule(str(tmp / "cancer.csv"), target="diagnosis", prepare=SklearnTable("breast_cancer"))
    return str(LitDataCopy(source, chunk_size=40)(tmp / "chunks"))


def test_contract(table_chunks: str) -> None:
    dm = check_datamodule(lambda: LitDataModule(table_chunks, loader={"batch_size": 32}), 32, torch.float32)
    assert dm.model_kwargs == {"num_features": 30, "num_classes": 2, "task": "classification"}
    assert dm.class_names == ("benign", "malignant")
    assert dm.num_samples("train") + dm.num_samples("val") == 569


def _rows(loader: Any) -> torch.Tensor:
    return torch.cat([batch[0] for batch in loader])


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_sample_once_per_epoch_across_two_ranks_and_two_workers(table_chunks: str, split: str) -> None:
    dm = LitDataModule(table_chunks, loader={"batch_size": 16, "num_workers": 2}, seed=3)
    dm.setup("fit")
    train = split == "train"
    loaders = [dm.dataloader(split, train=train, rank=rank, world_size=2) for rank in range(2)]
    epochs = [[[batch[0] for batch in loader] for loader in loaders] for _ in range(2)]
    n = dm.num_samples(split)
    for ranks in epochs:
        rows = torch.cat([torch.cat(batches) for batches in ranks])
        assert len(rows) == n
        assert len(torch.unique(rows, dim=0)) == n  # each row once (the table has no duplicate rows)
        if train:  # 456 rows: LitData deals each rank 14 batches of 16, the loaders read the other 8 in one
            # batch each; DDP needs equal batch counts, and len() must say so (Lightning trusts it)
            assert [len(batches) for batches in ranks] == [len(loader) for loader in loaders] == [15, 15]
    if train:  # a new order every epoch
        assert not torch.equal(epochs[0][0][0], epochs[1][0][0])


def test_workers_left_in_a_reference_cycle_end_cleanly_when_collected(
    table_chunks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LitData's loader too: a loader with persistent workers finalized by the garbage collector (its
    DataModule and Trainer hold each other) ends its workers, rather than terminating them after 5 s
    each (tests/test_worker_failures.py has the mechanism)."""

    def start() -> tuple[object, ...]:
        dm = LitDataModule(table_chunks, loader={"batch_size": 16, "num_workers": 2, "persistent_workers": True})
        dm.setup("fit")
        loader = dm.train_dataloader()
        next(iter(loader))
        return dm, loader

    workers, terminated = collect_in_a_cycle(start, monkeypatch)
    assert len(workers) == 2
    assert terminated == []
    assert [w.exitcode for w in workers] == [0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_nodes_read_every_sample_each_epoch_in_equal_unchanging_steps(table_chunks: str, seed: int) -> None:
    from types import SimpleNamespace

    # A trainer of 2 nodes x 2 devices. LitData's own multi-node plan, from its second epoch, keeps
    # each node on its first epoch's chunks: chunks split between nodes were read twice, others never,
    # and the ranks' batch counts changed, so an epoch outgrew the length Lightning had read (issue 29).
    dm = LitDataModule(table_chunks, loader={"batch_size": 8}, seed=seed)
    dm.setup("fit")
    loaders = []
    for rank in range(4):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=4, num_nodes=2, current_epoch=0)  # type: ignore[assignment]
        loaders.append(dm.dataloader("train", train=True))
    dm.trainer = None  # type: ignore[assignment]
    n, steps = dm.num_samples("train"), len(loaders[0])
    for epoch in range(3):
        ranks = [[batch[0] for batch in loader] for loader in loaders]
        assert [len(batches) for batches in ranks] == [steps] * 4, epoch  # as Lightning read it at the start
        rows = torch.cat([torch.cat(batches) for batches in ranks])
        assert len(torch.unique(rows, dim=0)) == n, epoch  # every sample
        assert len(rows) - n <= 3, epoch  # repeats: fewer than the world size, as the padded samplers


_CHUNKS = [[s, s, min(s + 5, 23), min(s + 5, 23)] for s in range(0, 23, 5)]  # 23 samples in chunks of 5


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        # LitData's plan for 3 ranks, batches of 4: a batch each; the 11 left over make one more each
        ([[[0, 0, 4, 5]], [[0, 4, 5, 5], [5, 5, 8, 10]], [[5, 8, 10, 10], [10, 10, 12, 15]]], (2, [1, 1, 1], 0)),
        # 2 left over for 3 ranks: one repeat (world_size - 1 at most)
        ([[[0, 0, 5, 5], [5, 5, 7, 10]], [[5, 7, 10, 10], [10, 10, 14, 15]], [[10, 14, 15, 15], *_CHUNKS[3:4],
          [20, 20, 21, 23]]], (3, [1, 1, 1], 1)),
        # uneven ranks (LitData's per-node plans): rank 1 first catches up, then one more batch each
        ([[[0, 0, 5, 5], [5, 5, 8, 10]], [[10, 10, 14, 15]]], (3, [1, 2], 0)),
        # one rank reading everything: nothing to add
        ([_CHUNKS], (6, [0], 0)),
    ],
)  # fmt: skip
def test_cover_rest_reads_what_litdata_leaves_and_ends_ranks_on_one_step(
    plan: list[Any], expected: tuple[int, list[int], int]
) -> None:
    steps, extra = _cover_rest(plan, _CHUNKS, world_size=len(plan), batch_size=4)
    read = [i for worker in plan for interval in worker for i in range(interval[1], interval[2])]
    added = [i for batches in extra for batch in batches for i in batch]
    assert sorted(set(read + added)) == list(range(23))  # every sample read
    assert (steps, [len(batches) for batches in extra], len(read) + len(added) - 23) == expected
    assert all(0 < len(batch) <= 4 for batches in extra for batch in batches)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_mid_epoch_state_resumes_the_uninterrupted_epoch(table_chunks: str, workers: int) -> None:
    def loader() -> Any:
        dm = LitDataModule(table_chunks, loader={"batch_size": 16, "num_workers": workers}, seed=5)
        dm.setup("fit")
        return dm.dataloader("train", train=True, rank=0, world_size=1)

    reference = loader()
    list(reference)  # epoch 1; epoch 2 is interrupted below
    uninterrupted = [b[0] for b in reference]

    first = loader()
    list(first)
    iterator = iter(first)
    consumed = [next(iterator)[0] for _ in range(5)]
    state = json.loads(json.dumps(first.state_dict()))  # plain values, as a checkpoint holds them
    del iterator

    resumed = loader()
    resumed.load_state_dict(state)
    rest = [b[0] for b in resumed]
    assert len(consumed) + len(rest) == len(uninterrupted)
    assert all(torch.equal(a, b) for a, b in zip(consumed + rest, uninterrupted, strict=True))


def test_a_second_outage_after_a_retry_resumes_at_the_right_worker(
    table_chunks: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transfer error after 5 batches (an odd count: the next batch is worker 1's), one resume, one
    batch, and another error: the retry loads the loader's state in the same process each time, and
    LitData's load_state_dict advanced its worker cycle from where the failed pass had left it, so the
    second state named worker 0 as the last and the resume began with worker 1: every later pair of
    batches swapped. A server restart can do this once its resumed pass yields a batch before a read
    of the next still fails (the one-off failure of test_fit_rides_out_a_server_restart_with_worker_processes)."""
    from litdata import StreamingDataLoader

    def loader() -> Any:
        dm = LitDataModule(table_chunks, loader={"batch_size": 32, "num_workers": 2}, seed=1)
        dm.setup("fit")
        return dm.dataloader("train", train=True, rank=0, world_size=1)

    uninterrupted = [b[0] for b in loader()]
    iterate, failures = StreamingDataLoader.__iter__, [5, 1]  # batches handed out before each error

    def flaky(self: Any) -> Any:
        stop = failures.pop(0) if failures else -1
        for i, batch in enumerate(iterate(self)):
            yield batch
            if i + 1 == stop:
                raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(StreamingDataLoader, "__iter__", flaky)
    retried = loader()
    retried.outage = Outage(table_chunks, None, seconds=60)  # as for a URL: retried from the loader's state
    rows = [b[0] for b in retried]
    assert not failures  # both errors were raised and ridden out
    assert len(rows) == len(uninterrupted) == 15
    assert [i for i, (a, b) in enumerate(zip(rows, uninterrupted, strict=True)) if not torch.equal(a, b)] == []


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_rank_state_resumes_inside_and_after_the_extra_batches(
    table_chunks: str, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from litdata.utilities.env import _DistributedEnv

    # LitData's window shuffle (its default on NFS and Lustre) leaves several batches per rank unread;
    # its load_state_dict reads the world from torch.distributed, here rank 0 of 2.
    monkeypatch.setenv("LITDATA_POSIX_FAST", "1")
    monkeypatch.setattr(_DistributedEnv, "detect", classmethod(lambda cls: cls(2, 0, 1)))

    def loader() -> Any:
        dm = LitDataModule(table_chunks, loader={"batch_size": 16, "num_workers": workers}, seed=5)
        dm.setup("fit")
        return dm.dataloader("train", train=True, rank=0, world_size=2)

    reference = loader()
    epochs = [[b[0] for b in reference] for _ in range(2)]
    steps, extra = len(epochs[0]), len(reference._plan(1)[1])
    assert extra >= 2
    for stop in (3, steps - extra, steps - 1, steps):  # in LitData's part, at its end, in the extra batches, at the end
        first = loader()
        iterator = iter(first)
        consumed = [next(iterator)[0] for _ in range(stop)]
        state = json.loads(json.dumps(first.state_dict()))
        del iterator
        resumed = loader()
        resumed.load_state_dict(state)
        assert len(resumed) == steps  # the whole epoch, as Lightning counts it
        rest = [b[0] for b in resumed]
        expected = epochs[0] if stop < steps else epochs[0] + epochs[1]  # past the end: the next epoch
        assert all(torch.equal(a, b) for a, b in zip(consumed + rest, expected, strict=True)), stop


def _fit(table_chunks: str, root: Path, ckpt: str | None = None, every: int = 0, max_steps: int = -1) -> Any:
    dm = LitDataModule(table_chunks, loader={"batch_size": 32, "num_workers": 2}, seed=1)
    return fit_recording(dm, root, ckpt, every, max_steps)


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_lightning_checkpoint_resumes_mid_epoch(table_chunks: str, tmp_path: Path) -> None:
    uninterrupted = _fit(table_chunks, tmp_path / "full")
    per_epoch = len(uninterrupted) // 2  # 456 rows / 32 = 15 batches
    stop = per_epoch + 4  # mid-way through epoch 2
    interrupted = _fit(table_chunks, tmp_path / "cut", every=stop, max_steps=stop + 1)[:stop]
    ckpt = next((tmp_path / "cut").glob(f"*step={stop}.ckpt"))
    assert "combined_loader" in torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]
    resumed = _fit(table_chunks, tmp_path / "cut", ckpt=str(ckpt), every=stop)
    assert interrupted + resumed == uninterrupted


@pytest.mark.filterwarnings("ignore:You requested to overfit but enabled")
@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
@pytest.mark.parametrize("drop_last", [False, True])
def test_overfit_batches_replays_litdatas_first_batches_every_epoch(table_chunks: str, drop_last: bool) -> None:
    """LitData's loader is re-made by Lightning for ``overfit_batches`` (it turns shuffling off), and
    LitData went on to a new epoch's order on every pass: each epoch trained on other batches."""
    dm = LitDataModule(table_chunks, loader={"batch_size": 32, "drop_last": drop_last}, seed=1)
    model = RecordRows()
    seen = overfit_rows(dm, model)
    assert seen[0] == seen[1] == seen[2]
    assert len(seen[0]) == 64
    remade = model.trainer.train_dataloader
    assert remade is not dm._train_loader  # Lightning's own, from the constructor's arguments
    assert remade.replay


def test_script_converts_digits_and_app_trains_one_epoch(digits_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "digits-chunks"
    counts = _script().convert(["data=digits", f"paths.data_dir={digits_root.parent}"], out, chunk_size=256)
    assert counts == {"train": 1438, "val": 359}
    meta = json.loads((out / "chute.json").read_text())
    assert meta["model_kwargs"] == {
        "num_classes": 10, "in_channels": 1, "image_size": 12, "input_size": 144, "channels_last": True,
    }  # fmt: skip
    assert "normalize" in meta
    overrides = [
        "data=litdata", f"data.input_dir={out}", "data.prepare=null", "model=small_cnn", "loader.num_workers=2",
        "trainer.max_epochs=1", *FAST[1:], "callbacks.preview=null",
    ]  # fmt: skip
    run_dir = tmp_path / "run"
    run(make_config(*overrides, output_dir=run_dir))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 1
    assert metrics["train_samples"] > 0
    assert 0.0 <= metrics["metrics"]["val/acc"] <= 1.0


def test_pickled_leaves_are_refused(table_chunks: str, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "evil"
    shutil.copytree(table_chunks, copy)
    index = copy / "train" / "index.json"
    payload = json.loads(index.read_text())
    payload["config"]["data_format"] = ["pickle", "tensor"]
    index.write_text(json.dumps(payload))
    dm = LitDataModule(str(copy), loader={"batch_size": 8})
    dm.setup("fit")
    with pytest.raises(DataError, match="'pickle' serializer"):
        next(iter(dm.train_dataloader()))


def test_bad_metadata_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"to_litdata\.py"):
        LitDataModule(str(tmp_path)).setup("fit")
    (tmp_path / "chute.json").write_text(json.dumps({"format": "chute-litdata/1", "splits": {"../x": 3}}))
    with pytest.raises(DataError, match="split name"):
        LitDataModule(str(tmp_path)).setup("fit")
