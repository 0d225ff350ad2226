"""Same seed, same batches: whatever num_workers (or threads) load them, run after run; streams too."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from chute.datamodules import ImageFolderDataModule, StreamingDataModule
from chute.datasets.shard_format import write_index, write_shards
from chute.loader import sample_seed
from chute.transforms import create_transforms


def epoch_digest(loader: Any) -> str:
    """A hash of every batch of one pass: inputs and targets, in order."""
    digest = hashlib.sha256()
    for images, labels in loader:
        digest.update(images.contiguous().numpy().tobytes())
        digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


def module(root: Path, loader: dict[str, Any], cache: str | None = None, **transform: Any) -> ImageFolderDataModule:
    t = create_transforms(**{"image_size": 24, "crop_pct": 1.0, **transform})
    dm = ImageFolderDataModule(
        root, train_transform=t.train, val_transform=t.val, mean=[0.5] * 3, std=[0.25] * 3, seed=7,
        loader={"batch_size": 16, **loader}, cache=cache, cache_size=32 if cache else None,  # type: ignore[arg-type]
    )  # fmt: skip
    dm.setup("fit")
    return dm


LOADERS = [
    {"num_workers": 0},
    {"num_workers": 1},
    {"num_workers": 4},
    {"num_workers": 2, "persistent_workers": False},
    {"num_workers": 2, "backend": "threads"},
]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes:UserWarning")
@pytest.mark.parametrize(
    "transform",
    [
        pytest.param({}, id="crop-aware-jpeg"),  # RandomResizedCropDecode: region from the per-sample rng
        pytest.param({"rotation": 15.0, "color_jitter": 0.2}, id="torchvision-v2"),  # torch's generator
        pytest.param({"cache": "memory"}, id="cached-squares"),  # the random stage on top of a cache
    ],
)
def test_first_two_epochs_hash_the_same_for_any_loader(make_tree: Any, transform: dict[str, Any]) -> None:
    root = make_tree(ext="jpg", counts={"a": 13, "b": 12}, size=(40, 32))
    digests = []
    for settings in LOADERS:
        loader = module(root, settings, **transform).train_dataloader()
        digests.append((epoch_digest(loader), epoch_digest(loader)))  # epochs 0 and 1
    assert len(set(digests)) == 1, digests
    first, second = digests[0]
    assert first != second  # a new epoch draws a new order and new augmentations
    again = module(root, {"num_workers": 0}, **transform).train_dataloader()
    assert epoch_digest(again) == first  # and a new run repeats them


def test_sample_seed_separates_seeds_epochs_and_indices() -> None:
    keys = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(keys) == 3 * 3 * 50
    assert all(0 <= k < 2**64 for k in keys)


def test_num_workers_zero_leaves_global_random_state_alone(make_tree: Any) -> None:
    root = make_tree(ext="png", counts={"a": 4, "b": 4}, size=(20, 20))
    dm = module(root, {"num_workers": 0}, rotation=10.0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    next(iter(dm.train_dataloader()))
    assert torch.equal(torch.rand(3), expected)


# -- Streams: one batch sequence per rank, whichever worker makes each batch ------------------------

STREAM_LOADERS = [
    {"num_workers": 0},
    {"num_workers": 1},
    {"num_workers": 2},
    {"num_workers": 4},
    {"num_workers": 2, "persistent_workers": False},
]


def shard_folder(root: Path) -> Path:
    """150 samples (features = id, id / 2; target id % 3) in shards of 23, one of them a bad line."""
    samples = [(torch.tensor([float(i), i / 2]), i % 3) for i in range(150)]
    write_index(root, {name: write_shards(samples, root, name, 23) for name in ("train", "val")})
    lines = (root / "train-00003.jsonl").read_text().splitlines(keepends=True)
    lines[5] = "{not json\n"  # skipped: its batch is one sample smaller, the others stay put
    (root / "train-00003.jsonl").write_text("".join(lines))
    return root


def stream_module(root: Path, loader: dict[str, Any]) -> StreamingDataModule:
    dm = StreamingDataModule(root, shuffle_buffer=16, seed=7, on_error="skip", loader={"batch_size": 8, **loader})
    dm.setup("fit")
    return dm


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker processes:UserWarning")
def test_stream_epochs_hash_the_same_for_any_worker_count(tmp_path: Path) -> None:
    root = shard_folder(tmp_path / "shards")
    digests = []
    for settings in STREAM_LOADERS:
        loader = stream_module(root, settings).train_dataloader()
        digests.append((epoch_digest(loader), epoch_digest(loader)))  # epochs 0 and 1
    assert len(set(digests)) == 1, digests
    first, second = digests[0]
    assert first != second  # a new epoch draws a new shard order and a new shuffle
    again = stream_module(root, {"num_workers": 2}).train_dataloader()
    assert epoch_digest(again) == first  # and a new run repeats them
