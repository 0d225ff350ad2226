"""StreamingDataModule: shards from any DataModule, exact lengths, a new shuffle every epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chute.datamodules import SequenceDataModule, StreamingDataModule, TabularDataModule
from chute.datasets import LengthMajoritySequences, ShardedCopy, SklearnTable
from chute.errors import DataError
from chute.loader import ChuteDataLoader
from tests.datamodules.contract import check_datamodule
from tests.helpers import assert_mentions


@pytest.fixture(scope="module")
def tabular_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("stream")
    source = TabularDataModule(str(tmp / "cancer.csv"), target="diagnosis", prepare=SklearnTable("breast_cancer"))
    return str(ShardedCopy(source, samples_per_shard=40)(tmp / "shards"))


def test_contract(tabular_shards: str) -> None:
    dm = check_datamodule(
        lambda: StreamingDataModule(tabular_shards, loader={"batch_size": 32}), batch_size=32, cpu_dtype=torch.float32
    )
    assert dm.model_kwargs == {"num_features": 30, "num_classes": 2, "task": "classification"}
    assert dm.class_names == ("benign", "malignant")
    assert dm.num_samples("train") + dm.num_samples("val") == 569


@pytest.mark.parametrize("workers", [0, 2])
def test_each_epoch_is_every_sample_once_in_a_new_order(tabular_shards: str, workers: int) -> None:
    dm = StreamingDataModule(tabular_shards, loader={"batch_size": 50, "num_workers": workers})
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, ChuteDataLoader)
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader)
        epochs.append(torch.cat([b[0] for b in batches]))
    n = dm.num_samples("train")
    for features in epochs:
        assert len(features) == n
        assert len(torch.unique(features, dim=0)) == n  # the table has no duplicate rows
    assert not torch.equal(epochs[0], epochs[1])
    assert torch.equal(epochs[0].sort(dim=0).values, epochs[1].sort(dim=0).values)


def test_sequence_shards_keep_their_padding_collate(tmp_path: Path) -> None:
    source = SequenceDataModule(tmp_path / "seq", prepare=LengthMajoritySequences(num_train=100, num_val=20))
    dm = StreamingDataModule(tmp_path / "shards", prepare=ShardedCopy(source, 30), loader={"batch_size": 8})
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch) == ["inputs", "lengths", "mask", "targets"]
    assert dm.model_kwargs["vocab_size"] == 16


def test_prepare_is_idempotent_and_missing_split_is_named(tabular_shards: str) -> None:
    before = sorted(p.stat().st_mtime_ns for p in Path(tabular_shards).iterdir())
    csv = str(Path(tabular_shards).parent / "cancer.csv")
    same_source = TabularDataModule(csv, target="diagnosis", prepare=SklearnTable("breast_cancer"))
    dm = StreamingDataModule(tabular_shards, val_split="holdout", prepare=ShardedCopy(same_source, 40))
    dm.prepare_data()
    assert sorted(p.stat().st_mtime_ns for p in Path(tabular_shards).iterdir()) == before
    with pytest.raises(DataError, match="no 'holdout' split"):
        dm.setup("fit")


def test_a_shard_missing_from_the_folder_fails_at_setup(tmp_path: Path, tabular_shards: str) -> None:
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(tabular_shards, copy)
    victim = sorted(copy.glob("val-*.jsonl"))[0]
    victim.unlink()
    dm = StreamingDataModule(copy)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    assert_mentions(str(info.value), victim.name, "val", "write_shards.py", "prepare_data")
