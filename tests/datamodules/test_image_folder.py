from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from chute import ConfigError, DataError, LoaderSettings
from chute.datamodules import ImageFolderDataModule
from chute.datasets import DigitsFolder
from chute.transforms import Pipeline, create_transforms
from tests.datamodules.contract import check_datamodule
from tests.helpers import write_image

TRANSFORMS = create_transforms(image_size=16, crop_pct=1.0, scale=[0.5, 1.0])


def _dm(root: Path, **kwargs) -> ImageFolderDataModule:
    kwargs.setdefault("train_transform", TRANSFORMS.train)
    kwargs.setdefault("val_transform", TRANSFORMS.val)
    kwargs.setdefault("loader", LoaderSettings(batch_size=8))
    return ImageFolderDataModule(root, **kwargs)


def test_contract_digits(tmp_path: Path) -> None:
    make = lambda: _dm(tmp_path / "digits", image_mode="L", prepare=DigitsFolder(progress=False))  # noqa: E731
    dm = check_datamodule(make, batch_size=8)
    assert dm.num_classes == 10
    assert dm.class_names == tuple(str(i) for i in range(10))
    assert dm.num_channels == 1
    assert dm.class_counts.sum() == len(dm.dataset("train"))
    # prepare_data wrote 80/20 stratified splits of the 1,797 bundled digits.
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 1797
    val_share = len(dm.dataset("val")) / 1797
    assert 0.19 < val_share < 0.21


def test_contract_jpeg_tree_with_workers(make_tree) -> None:
    root = make_tree(splits=None, ext="jpg")
    make = lambda: _dm(root, val_fraction=0.34, loader=LoaderSettings(batch_size=4, num_workers=2))  # noqa: E731
    check_datamodule(make, batch_size=4)


def test_metadata_lives_in_numpy_arrays(make_tree) -> None:
    dm = _dm(make_tree())
    dm.setup("fit")
    index = dm.dataset("train").index
    assert isinstance(index.paths, np.ndarray)
    assert index.paths.dtype.kind == "S"
    assert index.targets.dtype == np.int64
    assert not any(isinstance(v, list) for v in vars(index).values())


def test_split_layout_counts_and_classes(make_tree) -> None:
    dm = _dm(make_tree(splits=("train", "val", "test"), counts={"a": 3, "b": 2}))
    dm.setup("fit")
    assert dm.class_names == ("a", "b")
    assert dm.class_counts.tolist() == [3, 2]
    assert len(dm.dataset("val")) == 5
    assert len(dm.dataset("test")) == 5
    labels = torch.cat([y for _, y in dm.train_dataloader()])
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1]


def test_val_fraction_is_stratified_and_seeded(make_tree) -> None:
    root = make_tree(splits=None, counts={"a": 20, "b": 10, "c": 5})

    def val_paths(seed: int) -> list[bytes]:
        dm = _dm(root, val_fraction=0.2, seed=seed)
        dm.setup("fit")
        val = dm.dataset("val")
        assert val.index.class_counts().tolist() == [4, 2, 1]
        train_paths = set(dm.dataset("train").index.paths.tolist())
        assert not train_paths & set(val.index.paths.tolist())
        return sorted(val.index.paths.tolist())

    assert val_paths(0) == val_paths(0)
    assert val_paths(0) != val_paths(1)


def test_test_and_predict_fall_back_to_val(make_tree) -> None:
    dm = _dm(make_tree(splits=("train", "val")))
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == len(dm.dataset("val"))
    assert len(dm.predict_dataloader().dataset) == len(dm.dataset("val"))


def test_missing_val_split_is_explained(make_tree) -> None:
    dm = _dm(make_tree(splits=("train",)))
    dm.setup("fit")
    with pytest.raises(DataError, match=r"No val split.*val_fraction"):
        dm.val_dataloader()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "has no class folders"),
        (lambda root: (root / "train" / "cat").mkdir(parents=True), r"Class folder '.*cat' contains no images"),
        (lambda root: write_image(root / "loose.png"), "no class folders.*1 loose images"),
    ],
    ids=["missing-root", "empty-root", "empty-class", "no-class-folders"],
)
def test_bad_trees_fail_at_setup(tmp_path: Path, build, match: str) -> None:
    root = tmp_path / "root"
    build(root)
    with pytest.raises(DataError, match=match):
        _dm(root).setup("fit")


def test_val_classes_must_match_train(make_tree) -> None:
    root = make_tree(splits=("train",), counts={"a": 2, "b": 2})
    make_tree(splits=("val",), counts={"a": 2, "c": 2}, root=root)
    with pytest.raises(DataError, match=r"missing \['b'\], unexpected \['c'\]"):
        _dm(root).setup("fit")


def test_val_dir_and_val_fraction_conflict(make_tree) -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        _dm(make_tree(), val_fraction=0.1).setup("fit")


def test_corrupt_image_error_names_the_file(make_tree) -> None:
    root = make_tree(splits=("train", "val"), counts={"a": 2, "b": 2})
    bad = root / "train" / "a" / "0.png"
    bad.write_bytes(b"this is not a png")
    # Measuring normalization stats at setup reads training images: the error surfaces there...
    with pytest.raises(DataError, match=r"Cannot decode image '.*a/0\.png'.*corrupt or not an image"):
        _dm(root).setup("fit")
    # ...and, with stats given, in the loader (a worker's error is re-raised in the main process).
    dm = _dm(root, loader=LoaderSettings(batch_size=4, shuffle=False, num_workers=1), mean=[0.5] * 3, std=[0.2] * 3)
    dm.setup("fit")
    with pytest.raises(DataError, match=r"Cannot decode image '.*a/0\.png'"):
        next(iter(dm.train_dataloader()))


def test_random_val_transform_is_rejected_naming_the_step(make_tree) -> None:
    val = Pipeline([v2.Resize(16), v2.RandomHorizontalFlip(0.5), v2.CenterCrop(16)])
    with pytest.raises(ConfigError, match=r"val_transform='RandomHorizontalFlip\(p=0.5\)': step 2 of 3"):
        _dm(make_tree(), val_transform=val).setup("fit")


def test_random_albumentations_val_transform_is_rejected(make_tree) -> None:
    import albumentations as A

    val = Pipeline([A.Resize(16, 16), A.RandomBrightnessContrast(p=1.0)], backend="albumentations")
    with pytest.raises(ConfigError, match=r"RandomBrightnessContrast.*step 2 of 2"):
        _dm(make_tree(), val_transform=val).setup("fit")


def test_normalization_stats_are_measured_on_train_and_restored(make_tree) -> None:
    dm = _dm(make_tree())
    dm.setup("fit")
    assert dm.mean is not None
    assert len(dm.mean) == 3
    images, _ = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert abs(float(images.mean())) < 0.5  # roughly standardized
    assert images.is_contiguous(memory_format=torch.channels_last)

    fresh = _dm(make_tree.__wrapped__ if False else dm.root)
    fresh.load_state_dict(dm.state_dict())
    assert fresh.mean == dm.mean
    assert fresh.std == dm.std


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pipelines_ending_in_floats_are_measured_and_normalized_once(make_tree, num_workers: int) -> None:
    """torchvision's recipe ends in ``ToDtype(float32, scale=True)``: images in [0, 1]. The measured
    mean and std, and the model's batches, equal those of the same pipeline giving uint8 (mean and
    std were divided by 255 once more, and the batches came out ~1,000 times too large)."""
    root = make_tree()
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    batches, stats = [], []
    for extra in ([], tail):
        dm = ImageFolderDataModule(
            root, train_transform=Pipeline([v2.RandomResizedCrop(16, antialias=True), *extra]),
            val_transform=Pipeline([v2.Resize(16, antialias=True), v2.CenterCrop(16), *extra]),
            loader=LoaderSettings(batch_size=4, num_workers=num_workers),
        )  # fmt: skip
        dm.setup("fit")
        stats.append((dm.mean, dm.std))
        batches.append(torch.cat([dm.on_after_batch_transfer(b, 0)[0] for b in dm.val_dataloader()]))
    assert stats[0][0] == pytest.approx(stats[1][0], abs=1e-5)
    assert stats[0][1] == pytest.approx(stats[1][1], abs=1e-5)
    assert torch.allclose(batches[0], batches[1], atol=1e-4)
    assert abs(float(batches[1].mean())) < 0.5
    assert 0.5 < float(batches[1].std()) < 2.0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_transform_failing_on_one_image_names_that_image(make_tree, num_workers: int) -> None:
    """A user's crop larger than one image: the error says which file (it said "a batch of 4 samples")."""
    root = make_tree(counts={"cat": 3, "dog": 3})
    write_image(root / "train" / "dog" / "tiny.png", size=(8, 8), seed=99)
    dm = ImageFolderDataModule(root, train_transform=Pipeline([v2.RandomCrop(20)]),
                               val_transform=Pipeline([v2.CenterCrop(20)]),
                               loader=LoaderSettings(batch_size=7, num_workers=num_workers))  # fmt: skip
    dm.setup("fit")
    with pytest.raises(ValueError, match="larger than input image size") as info:
        list(dm.train_dataloader())
    said = str(info.value) + "\n".join(getattr(info.value, "__notes__", []))
    assert re.search(r"raised while loading sample \d+ \(.*tiny\.png\)", said), said


def test_device_augment_refuses_what_its_batch_crop_leaves_out(make_tree) -> None:
    """device_augment crops and flips whole batches; asked also for a rotation, a vertical flip, colour
    jitter or another interpolation, it says so rather than train without them."""
    root = make_tree()
    for setting in ({"rotation": 15}, {"vflip": 0.5}, {"color_jitter": 0.2}, {"interpolation": "bicubic"}):
        with pytest.raises(ConfigError, match=rf"device_augment=True: .*transforms\.{next(iter(setting))}="):
            ImageFolderDataModule(root, transforms=create_transforms(image_size=16, **setting), cache="memory",
                                  cache_size=20, device_augment=True)  # fmt: skip
        ImageFolderDataModule(
            root, transforms=create_transforms(image_size=16, **setting), cache="memory", cache_size=20
        )
    ImageFolderDataModule(root, transforms=create_transforms(image_size=16, hflip=0.2), cache="memory",
                          cache_size=20, device_augment=True)  # fmt: skip


def test_device_augment_says_the_albumentations_backend_builds_evaluation_only(
    make_tree, caplog: pytest.LogCaptureFixture
) -> None:
    """``transforms=albumentations`` in the default experiment (device_augment on) cropped training
    batches with chute's torch batch transform, without a word; a backend comparison measured torch twice."""
    root = make_tree()
    warned = {}
    for backend in ("albumentations", "torchvision"):
        caplog.clear()
        ImageFolderDataModule(root, transforms=create_transforms(image_size=16, backend=backend), cache="memory",
                              cache_size=20, device_augment=True)  # fmt: skip
        warned[backend] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned["torchvision"] == []
    assert len(warned["albumentations"]) == 1
    assert "transforms.backend=albumentations builds the evaluation pipeline only" in warned["albumentations"][0]


def test_checkpoint_classes_must_match(make_tree) -> None:
    dm = _dm(make_tree())
    dm.load_state_dict({"class_names": ["x", "y", "z"], "mean": None})
    with pytest.raises(DataError, match="differ from the checkpoint"):
        dm.setup("fit")


def test_mean_std_must_match_channels(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mean.*needs 1 values"):
        ImageFolderDataModule(tmp_path, image_mode="L", mean=[0.5, 0.5, 0.5], std=[0.2])


@pytest.mark.parametrize("larger_first", [False, True])
@pytest.mark.parametrize(("backend", "workers"), [("torch", 0), ("torch", 2), ("threads", 2)])
def test_mismatched_sizes_without_resize_are_explained(
    tmp_path: Path, backend: str, workers: int, larger_first: bool
) -> None:
    """The same explanation whatever loads the batch: in a worker process it is not a worker death,
    nor torch's "Trying to resize storage that is not resizable" (a larger image after a smaller)."""
    small, large = (10, 10), (12, 10)
    write_image(tmp_path / "a" / "0.png", size=large if larger_first else small)
    write_image(tmp_path / "a" / "1.png", size=small if larger_first else large)
    write_image(tmp_path / "b" / "0.png", size=(10, 10))
    loader = LoaderSettings(batch_size=3, shuffle=False, num_workers=workers, backend=backend)
    # A pipeline of one's own that does not resize (the default transforms would).
    dm = ImageFolderDataModule(tmp_path, train_transform=v2.Identity(), loader=loader, mean=[0.5] * 3, std=[0.2] * 3)
    dm.setup("fit")
    with pytest.raises(DataError, match=r"(?s)different shapes.*image_size") as info:
        next(iter(dm.train_dataloader()))
    assert "out of memory" not in str(info.value)


def test_hparams_and_pickle(make_tree) -> None:
    dm = _dm(make_tree(), seed=3)
    assert dm.hparams["seed"] == 3
    assert "train_transform" not in dm.hparams
    pickle.loads(pickle.dumps(dm))


@pytest.mark.parametrize(
    ("ext", "generic", "cache", "backend"),
    [
        ("jpg", False, None, "torch"),  # crop-aware decode: the loader writes channels-last batches
        ("jpg", False, None, "threads"),
        ("png", True, None, "torch"),  # generic decode, then the transforms
        ("jpg", False, "memory", "torch"),
        ("jpg", False, "disk", "threads"),
        ("jpg", False, "device", "torch"),  # the crop runs in the batch hook
    ],
)
def test_channels_last_false_gives_contiguous_nchw_floats_on_every_path(
    make_tree, tmp_path: Path, ext: str, generic: bool, cache: str | None, backend: str
) -> None:
    """A model written for plain NCHW tensors (``x.view(B, -1)``) gets them, whatever path made the batch."""
    import lightning as L

    from chute.transforms.device import RandomResizedCropBatch

    root = make_tree(ext=ext, size=(48, 40))
    transforms = create_transforms(image_size=16, rotation=10 if generic else 0)
    kwargs: dict = {"cache": cache, "cache_size": 24, "cache_dir": str(tmp_path / "cache")} if cache else {}
    if cache == "device":
        kwargs = {"cache": "memory", "cache_size": 24, "device_augment": True,
                  "train_batch_transform": RandomResizedCropBatch(16)}  # fmt: skip
    dm = _dm(
        root, channels_last=False, loader={"batch_size": 4, "backend": backend, "num_workers": 0},
        train_transform=transforms.train, val_transform=transforms.val, **kwargs,
    )  # fmt: skip
    seen: list[torch.Tensor] = []

    class Flat(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3 * 16 * 16, 3)

        def step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            images = batch[0]
            seen.append(images)
            return torch.nn.functional.cross_entropy(self.layer(images.view(len(images), -1)), batch[1])

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            return self.step(batch)

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
            self.step(batch)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Flat(), datamodule=dm)
    assert seen
    for images in seen:
        assert images.dtype == torch.float32
        assert images.shape[1:] == (3, 16, 16)
        assert images.is_contiguous()  # plain NCHW, not channels-last strides


def test_a_folder_alone_trains_with_the_documented_default_transforms(make_tree) -> None:
    """``ImageFolderDataModule(root)`` with nothing else: random resized crop and flip for training,
    resize and centre crop for evaluation, 224 px, JPEGs decoded straight to the crop."""
    import lightning as L

    from chute.transforms.fused import CenterCropDecode, RandomResizedCropDecode

    root = make_tree(ext="jpg", counts={"a": 5, "b": 4}, size=(300, 260))
    dm = ImageFolderDataModule(root, loader={"batch_size": 4})
    assert isinstance(dm.train_transform, RandomResizedCropDecode)
    assert isinstance(dm.val_transform, CenterCropDecode)

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(3, 2)
            self.shapes: list[tuple[int, ...]] = []

        def training_step(self, batch, batch_idx):
            self.shapes.append(tuple(batch[0].shape))
            return torch.nn.functional.cross_entropy(self.layer(batch[0].mean(dim=(2, 3))), batch[1])

        def validation_step(self, batch, batch_idx):
            self.shapes.append(tuple(batch[0].shape))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Tiny()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert model.shapes
    assert all(shape[1:] == (3, 224, 224) for shape in model.shapes)


def test_transforms_come_whole_from_a_config_node_or_a_mapping(make_tree) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from chute.transforms.fused import RandomResizedCropDecode

    root = make_tree(ext="jpg", counts={"a": 3, "b": 3}, size=(64, 48))
    node = OmegaConf.create(
        {
            "_target_": "chute.datamodules.ImageFolderDataModule",
            "root": str(root),
            "transforms": {"_target_": "chute.transforms.create_transforms", "image_size": 32, "scale": [0.5, 1.0]},
        }
    )
    dm = instantiate(node)
    assert isinstance(dm.train_transform, RandomResizedCropDecode)
    dm.setup("fit")
    images, _ = next(iter(dm.val_dataloader()))
    assert tuple(images.shape[1:]) == (3, 32, 32)
    from_mapping = ImageFolderDataModule(root, transforms={"image_size": 40, "mixup_alpha": 0.2})
    assert from_mapping.mix_alphas == (0.2, 0.0)
    from_mapping.setup("fit")
    assert tuple(next(iter(from_mapping.val_dataloader()))[0].shape[1:]) == (3, 40, 40)
    with pytest.raises(ConfigError, match="transforms"):
        ImageFolderDataModule(root, transforms=[1, 2])  # type: ignore[arg-type]


# -- Predicting on images without labels ------------------------------------------------------


def _shade(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (value, value, value)).save(path)


@pytest.mark.parametrize("workers", [0, 2])
def test_predict_reads_a_folder_of_images_without_labels(make_tree, tmp_path: Path, workers: int) -> None:
    """``predict_root``: any layout, searched recursively, each image predicted once, prediction ``i``
    of the file ``predict_files[i]`` (predict read the labelled test split only)."""
    import lightning as L

    root = make_tree(counts={"cat": 4, "dog": 4})
    unlabeled = tmp_path / "new"
    names = ["a.png", "b.png", "deep/d.png", "deep/er/c.png", "e.png"]  # predict_files' order
    for k, name in enumerate(names):
        _shade(unlabeled / name, 40 * (k + 1))  # brighter along the listing
    (unlabeled / "notes.txt").write_text("not an image")

    class MeanPixel(L.LightningModule):
        def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return batch[0].float().mean(dim=(1, 2, 3))

    dm = ImageFolderDataModule(
        root, predict_root=unlabeled, transforms={"image_size": 16}, loader={"batch_size": 2, "num_workers": workers}
    )
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    predictions = trainer.predict(MeanPixel(), datamodule=dm)
    assert predictions is not None
    means = torch.cat(predictions).tolist()  # type: ignore[arg-type]
    assert dm.predict_files == [str(unlabeled / name) for name in names]
    assert len(means) == 5
    assert means == sorted(means)  # prediction i is of predict_files[i]
    assert len(set(means)) == 5
    batch = next(iter(dm.predict_dataloader()))
    assert batch[1].tolist() == [-1, -1]
    assert dm.class_names == ("cat", "dog")  # the model's classes, from the training split


def test_the_predict_folder_is_needed_only_to_predict(make_tree, tmp_path: Path) -> None:
    """Training does not look at it (it may not exist yet); a missing or empty one is named when
    predicting; a link to a folder is followed."""
    root = make_tree(counts={"cat": 2, "dog": 2})
    dm = ImageFolderDataModule(root, predict_root=tmp_path / "nowhere")
    dm.setup("fit")
    with pytest.raises(DataError, match=r"Folder to predict on '.*nowhere' does not exist"):
        dm.predict_dataloader()
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    dm = ImageFolderDataModule(root, predict_root=tmp_path / "empty")
    dm.setup("predict")
    with pytest.raises(DataError, match=r"Folder to predict on '.*empty' holds no images"):
        dm.predict_dataloader()
    write_image(tmp_path / "real" / "x.png")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    dm = ImageFolderDataModule(root, predict_root=tmp_path / "link")
    dm.setup("predict")
    assert dm.predict_files == [str(tmp_path / "link" / "x.png")]


def test_a_datamodule_restored_from_its_hyperparameters_builds_the_same_pipelines(make_tree) -> None:
    """A checkpoint's DataModule (``load_from_checkpoint``, to predict) built the default 224 px
    pipelines whatever the run used: the transform settings were not among its hyperparameters (and
    train.py passed the pipelines themselves)."""
    root = make_tree(counts={"cat": 2, "dog": 2})
    dm = ImageFolderDataModule(root, transforms={"image_size": 16, "hflip": 0.0})
    assert dm.hparams["transforms"]["image_size"] == 16
    again = ImageFolderDataModule(**dict(dm.hparams))
    assert repr(again.val_transform) == repr(dm.val_transform)
    assert repr(again.train_transform) == repr(dm.train_transform)
    own = ImageFolderDataModule(root, train_transform=dm.train_transform, val_transform=v2.Identity())
    assert "transforms" not in own.hparams  # pipelines given by hand: no settings describe them


def test_jfif_photos_are_read_and_other_files_left_out_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``.jfif`` (JPEGs as browsers on Windows save them) were left out without a word; a class of
    them alone was "contains no images", a mixed one lost them silently."""
    for split in ("train", "val"):
        for label, exts in (("cat", ("jpg",) * 3), ("dog", ("jfif", "jfif", "jpe"))):
            for i, ext in enumerate(exts):
                write_image(tmp_path / "tree" / split / label / f"{i}.{ext}", seed=i)  # JPEG, by Pillow's name table
        (tmp_path / "tree" / split / "cat" / "notes.txt").write_text("taken in May")
        (tmp_path / "tree" / split / "cat" / "IMG_1.HEIC").write_bytes(b"\0" * 16)
    write_image(tmp_path / "tree" / "train" / "stray.png")  # beside the class folders: in no class
    dm = _dm(tmp_path / "tree")
    dm.setup("fit")
    assert dm.class_counts.tolist() == [3, 3]
    assert next(iter(dm.val_dataloader()))[0].shape[0] == 6
    said = [r.getMessage() for r in caplog.records if r.name == "chute.datasets.folder_index"]
    assert any("'" + str(tmp_path / "tree" / "train") + "': 2 file(s) are not images chute reads" in m for m in said)
    assert any(".heic x1, .txt x1" in m for m in said)
    assert any("1 file(s) lie beside the class folders, in none of them, and were left out (first: stray.png)" in m
               for m in said)  # fmt: skip


def test_a_class_folder_named_in_another_unicode_form_is_the_same_class(tmp_path: Path) -> None:
    """``café`` composed in train, decomposed in val (a copy through macOS): "missing ['café'],
    unexpected ['café']", two names that print alike."""
    import unicodedata

    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    for split, name in (("train", composed), ("val", decomposed)):
        for label in (name, "tea"):
            for i in range(3):
                write_image(tmp_path / "tree" / split / label / f"{i}.png", seed=i + (10 if label == "tea" else 0))
    dm = _dm(tmp_path / "tree", loader={"batch_size": 6, "shuffle": False})
    dm.setup("fit")
    assert dm.class_names == (composed, "tea")
    labels = next(iter(dm.val_dataloader()))[1]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_statistics_on_the_0_to_255_scale_are_refused(make_tree) -> None:
    """mmcv's ``mean=[123.675, ...]`` were taken as they were: every batch's values around -2."""
    root = make_tree()
    with pytest.raises(ConfigError, match=r"^mean=\[123\.7, 116\.3, 103\.5\]: .*look like 0\.\.255 ones: divide both"):
        ImageFolderDataModule(root, mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4])
    with pytest.raises(ConfigError, match=r"^std=\[0\.2, 0\.0, 0\.2\]: every channel's std must be > 0"):
        ImageFolderDataModule(root, mean=[0.5] * 3, std=[0.2, 0.0, 0.2])
    ImageFolderDataModule(root, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
