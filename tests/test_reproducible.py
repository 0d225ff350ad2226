"""Same seed, same batches: whatever num_workers (or threads) load them, run after run."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from chute.datamodules import ImageFolderDataModule
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
