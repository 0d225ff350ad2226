"""CachedDataset: the deterministic stage once, the random stage every epoch, stale or damaged caches rebuilt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from chute.datamodules import ImageFolderDataModule
from chute.datasets import CachedDataset, fingerprint
from chute.errors import DataError
from chute.transforms import create_transforms


class Source:
    """A deterministic dataset that counts how often each sample is computed."""

    def __init__(self, n: int = 6, shape: tuple[int, ...] = (1, 4, 4)) -> None:
        self.n, self.shape, self.reads = n, shape, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return torch.full(self.shape, i, dtype=torch.uint8), i


def jitter(sample: tuple[torch.Tensor, int]) -> tuple[torch.Tensor, int]:
    """A random stage: adds torch noise (so it follows torch's per-worker, per-epoch seeds)."""
    image, label = sample
    return image + torch.randint(0, 100, image.shape, dtype=torch.uint8), label


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_cache_holds_the_deterministic_stage_and_reads_each_sample_once(store: str, tmp_path: Path) -> None:
    source = Source()
    cached = CachedDataset(source, store=store, cache_dir=tmp_path / "c", key="k")  # type: ignore[arg-type]
    assert source.reads == 6  # built once
    for i in range(6):
        image, label = cached[i]
        assert label == i
        assert torch.equal(image, torch.full((1, 4, 4), i, dtype=torch.uint8))
    assert source.reads == 6


def test_random_stage_differs_every_epoch_and_worker(tmp_path: Path) -> None:
    cached = CachedDataset(Source(8), transform=jitter, store="memory")
    loader = DataLoader(cached, batch_size=8, num_workers=2, generator=torch.Generator().manual_seed(0))
    first, second = (next(iter(loader))[0] for _ in range(2))
    assert not torch.equal(first, second)  # new augmentations each epoch, same cached inputs underneath
    assert int(cached.arrays[0][3].max()) == 3  # the cache itself is untouched by the random stage


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_workers_share_one_copy(store: str, tmp_path: Path) -> None:
    cached = CachedDataset(Source(), store=store, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert cached.shared


def test_disk_cache_is_reused_until_the_key_changes(tmp_path: Path) -> None:
    CachedDataset(Source(), store="disk", cache_dir=tmp_path, key="v1")  # type: ignore[arg-type]
    again = Source()
    CachedDataset(again, store="disk", cache_dir=tmp_path, key="v1")  # type: ignore[arg-type]
    assert again.reads == 0
    changed = Source()
    CachedDataset(changed, store="disk", cache_dir=tmp_path, key="v2")  # type: ignore[arg-type]
    assert changed.reads == 6


def test_truncated_or_incomplete_disk_cache_is_rebuilt_not_read(tmp_path: Path) -> None:
    CachedDataset(Source(), store="disk", cache_dir=tmp_path, key="k")  # type: ignore[arg-type]
    data = tmp_path / "field0.bin"
    data.write_bytes(data.read_bytes()[:-10])
    source = Source()
    cached = CachedDataset(source, store="disk", cache_dir=tmp_path, key="k")  # type: ignore[arg-type]
    assert source.reads == 6
    assert int(cached[5][0].max()) == 5
    (tmp_path / "cache.json").unlink()  # no manifest: an interrupted build
    source = Source()
    CachedDataset(source, store="disk", cache_dir=tmp_path, key="k")  # type: ignore[arg-type]
    assert source.reads == 6


def test_fingerprint_follows_files_and_config(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("1")
    b.write_text("2")
    base = fingerprint([str(a), str(b)], {"size": 8})
    assert fingerprint([str(a), str(b)], {"size": 8}) == base
    assert fingerprint([str(a), str(b)], {"size": 9}) != base
    assert fingerprint([str(a)], {"size": 8}) != base
    b.write_text("22")
    assert fingerprint([str(a), str(b)], {"size": 8}) != base


def test_fixed_shapes_are_required(tmp_path: Path) -> None:
    class Ragged(Source):
        def __getitem__(self, i: int) -> Any:
            return torch.zeros(i + 1), i

    with pytest.raises(DataError, match="fixed shapes"):
        CachedDataset(Ragged(), store="memory")


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_image_folder_cache_keeps_training_augmentation_per_epoch(
    store: str, digits_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import chute.datasets.folder as folder

    reads = 0
    original = folder.read_image

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        nonlocal reads
        reads += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(folder, "read_image", counting)
    t = create_transforms(image_size=12, crop_pct=1.0, scale=[0.5, 1.0], hflip=0.0, rotation=20)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val, mean=[0.3], std=[0.4],
        cache=store, cache_size=12, cache_dir=str(tmp_path / "cache"), loader={"batch_size": 2000, "shuffle": False},
    )  # fmt: skip
    dm.setup("fit")
    loader = dm.train_dataloader()
    epoch1, epoch2 = next(iter(loader))[0], next(iter(loader))[0]  # two passes: epochs 0 and 1
    n = len(dm.dataset("train"))
    assert reads <= n + 1  # decoded once for the cache (+1: the determinism check), not per epoch
    assert epoch1.shape == (n, 1, 12, 12)
    assert not torch.equal(epoch1, epoch2)
    val = next(iter(dm.val_dataloader()))[0]
    assert torch.equal(val, next(iter(dm.val_dataloader()))[0])


def test_image_folder_disk_cache_rebuilds_when_a_source_image_or_setting_changes(make_tree, tmp_path: Path) -> None:
    from tests.helpers import write_image

    root = make_tree(counts={"cat": 3, "dog": 3}, size=(16, 16))
    t = create_transforms(image_size=8, crop_pct=1.0)

    def first_train_image(cache_size: int = 8) -> torch.Tensor:
        dm = ImageFolderDataModule(
            root, train_transform=None, val_transform=t.val, mean=[0.5] * 3, std=[0.2] * 3, cache="disk",
            cache_size=cache_size, cache_dir=str(tmp_path / "cache"), loader={"shuffle": False},
        )  # fmt: skip
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))[0][0]

    before = first_train_image()
    manifest = tmp_path / "cache" / "train" / "cache.json"
    stamp = manifest.stat().st_mtime_ns
    assert torch.equal(first_train_image(), before)
    assert manifest.stat().st_mtime_ns == stamp  # reused as is
    write_image(root / "train" / "cat" / "0.png", size=(16, 16), seed=999)  # new content, same name
    changed = first_train_image()
    assert manifest.stat().st_mtime_ns != stamp
    assert not torch.equal(changed, before)
    assert first_train_image(cache_size=10).shape[-1] == 10  # a new cache_size is a new cache


@pytest.mark.parametrize("backend", ["torchvision", "albumentations"])
def test_the_evaluation_cache_is_rebuilt_when_its_pipeline_changes(backend: str, make_tree, tmp_path: Path) -> None:
    """The evaluation split caches its whole pipeline, keyed by the pipeline's description; chute
    described an albumentations step by its class alone (``CenterCrop(p=1.0)``), so a new
    ``image_size`` or ``crop_pct`` read the old cache: 32 px images where 48 were asked for."""
    root = make_tree(counts={"cat": 3, "dog": 3}, size=(40, 60))

    def first_val_batch(image_size: int, crop_pct: float) -> torch.Tensor:
        t = create_transforms(image_size=image_size, crop_pct=crop_pct, backend=backend)
        dm = ImageFolderDataModule(
            root, transforms=t, mean=[0.5] * 3, std=[0.2] * 3, cache="disk", cache_size=40,
            cache_dir=str(tmp_path / backend), loader={"batch_size": 4},
        )  # fmt: skip
        dm.setup("fit")
        return next(iter(dm.val_dataloader()))[0]

    assert first_val_batch(32, 0.875).shape[-2:] == (32, 32)
    assert first_val_batch(48, 0.875).shape[-2:] == (48, 48)
    tight = first_val_batch(32, 0.5)
    assert tight.shape[-2:] == (32, 32)
    assert not torch.equal(tight, first_val_batch(32, 0.875))  # another crop of the same images


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_batches_without_a_random_stage_are_gathered_whole(store: str, tmp_path: Path) -> None:
    cached = CachedDataset(Source(10), store=store, cache_dir=tmp_path)  # type: ignore[arg-type]
    images, labels = cached.__getitems__([7, 2, 5])
    assert labels.tolist() == [2, 5, 7]  # ascending: which samples form the batch is the sampler's choice
    assert images.shape == (3, 1, 4, 4)
    assert images[:, 0, 0, 0].tolist() == [2, 5, 7]
    jittered = CachedDataset(Source(10), transform=jitter, store="memory")
    assert isinstance(jittered.__getitems__([1, 2]), list)  # a random stage runs per sample


def test_image_folder_device_augment_ships_cached_squares_and_crops_in_the_hook(digits_root: Path) -> None:
    class Training:
        training = True

    t = create_transforms(image_size=8, crop_pct=1.0, scale=[0.5, 1.0], hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val, train_batch_transform=t.train_batch,
        mean=[0.3], std=[0.4], cache="memory", cache_size=12, device_augment=True, loader={"batch_size": 32},
    )  # fmt: skip
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 12, 12)  # cached squares, no per-sample CPU work
    assert images.dtype == torch.uint8
    dm.trainer = Training()  # type: ignore[assignment]
    ready, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert ready.shape == (32, 1, 8, 8)
    assert ready.is_contiguous(memory_format=torch.channels_last)
    dm.trainer = None
    val, _ = next(iter(dm.val_dataloader()))
    assert val.shape[-1] == 8  # evaluation caches the whole val pipeline


def test_device_augment_needs_a_cache_and_a_batch_transform(digits_root: Path) -> None:
    from chute.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        ImageFolderDataModule(digits_root, device_augment=True)
    assert info.value.key == "device_augment"
