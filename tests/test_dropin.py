"""A Lightning user's own project: plain arguments, plain Trainer, their own LightningModule. No Hydra."""

from __future__ import annotations

import os
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from chute import LoaderSettings
from chute.datamodules import ImageFolderDataModule
from chute.transforms import create_transforms
from tests.conftest import REPO


class UserModel(L.LightningModule):
    """Knows nothing about chute: expects (float images, int labels) on its own device."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12 * 12, 10))
        self.seen: list[tuple[torch.dtype, torch.device, float]] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        self.seen.append((images.dtype, images.device, float(images.mean())))
        assert labels.dtype == torch.int64
        return nn.functional.cross_entropy(self.net(images), labels)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        self.log("val_acc", (self.net(images).argmax(1) == labels).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_plain_lightning_project(digits_root: Path, tmp_path: Path) -> None:
    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root,
        image_mode="L",
        train_transform=t.train,
        val_transform=t.val,
        loader=LoaderSettings(batch_size=32, num_workers=0),
    )
    model = UserModel()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=5,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 5
    for dtype, device, mean in model.seen:
        assert dtype == torch.float32
        assert device == model.device
        assert abs(mean) < 1.0  # normalized with statistics measured on the train split
    assert "val_acc" in trainer.callback_metrics


def readme_snippet(name: str) -> str:
    """The example marked ``<!-- readme-test: name -->`` in the README or the DataModule reference."""
    text = (REPO / "README.md").read_text() + (REPO / "docs" / "datamodules.md").read_text()
    match = re.search(rf"<!-- readme-test: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"README.md and docs/datamodules.md have no snippet marked '{name}'"
    return match.group(1)


def test_readme_dropin_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's drop-in example, executed as written (in an empty working directory)."""
    monkeypatch.chdir(tmp_path)
    code = readme_snippet("dropin")
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    assert os.path.isdir(tmp_path / "data" / "digits" / "train")
    trainer = namespace["trainer"]
    assert isinstance(trainer, L.Trainer)
    assert trainer.state.finished


@pytest.mark.parametrize("name", ["tabular", "sequence", "multitask", "streaming", "video", "sql"])
def test_readme_datamodule_snippets_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each DataModule's example (docs/datamodules.md), executed as written (in an empty working directory)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    exec(compile(readme_snippet(name), "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert isinstance(trainer, L.Trainer)
    assert trainer.state.finished
    assert trainer.global_step > 0


def test_outside_lightning_training_batches_get_their_augmentation_from_batch_hook(
    digits_root: Path, tmp_path: Path
) -> None:
    """Without a trainer, ``on_after_batch_transfer`` (the README's advice outside Lightning) cannot
    tell a training batch: cached 8 px images went to the model uncropped, silently. It now says so
    once, and ``batch_hook(batch, train=True)`` runs the random crops on the device."""
    transforms = create_transforms(image_size=6, crop_pct=1.0, scale=[0.5, 1.0], hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", transforms=transforms, mean=[0.0], std=[1.0], cache="memory", cache_size=8,
        cache_dir=tmp_path / "cache", device_augment=True, loader={"batch_size": 4},
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 1, 8, 8)
    with pytest.warns(UserWarning, match=r"call dm\.batch_hook\(batch, train=True\)"):
        assert dm.on_after_batch_transfer((images, labels), 0)[0].shape == (4, 1, 8, 8)
    trained, _ = dm.batch_hook((images, labels), train=True)
    assert trained.shape == (4, 1, 6, 6)
    assert trained.dtype == torch.float32
    evaluated, _ = dm.batch_hook(next(iter(dm.val_dataloader())), train=False)
    assert evaluated.shape == (4, 1, 6, 6)


@pytest.mark.parametrize(("workers", "backend"), [(0, "torch"), (2, "torch"), (2, "threads")])
def test_a_datamodule_pickles_after_fit_and_the_copy_trains(
    digits_root: Path, tmp_path: Path, workers: int, backend: str
) -> None:
    """As a plain LightningDataModule does, though its trainer keeps chute's loaders (which asked
    the trainer's epoch through a closure: ``Can't pickle local object '_epoch_of.<locals>.<lambda>'``)."""
    import pickle

    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val,
        loader=LoaderSettings(batch_size=32, num_workers=workers, backend=backend),
    )  # fmt: skip

    def fit(datamodule: ImageFolderDataModule) -> UserModel:
        model = UserModel()
        trainer = L.Trainer(
            max_epochs=1, limit_train_batches=3, limit_val_batches=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(model, datamodule=datamodule)
        return model

    fit(dm)
    copy = pickle.loads(pickle.dumps(dm))
    assert copy.seed == dm.seed
    assert copy.class_names == dm.class_names
    assert len(fit(copy).seen) == 3


def test_the_seed_is_refused_after_setup_because_the_splits_were_cut_with_the_old_one(digits_root: Path) -> None:
    """It was taken: the splits stayed seed 0's while checkpoints saved the new seed, so a resumed or
    evaluated run cut other splits than the ones trained on."""
    from chute.errors import ConfigError

    dm = ImageFolderDataModule(digits_root, image_mode="L", seed=0)
    dm.seed = 3  # before setup: taken
    dm.setup("fit")
    dm.seed = 3  # the same seed: nothing changes
    with pytest.raises(ConfigError, match=r"seed=5: ImageFolderDataModule has cut its splits with seed=3 already"):
        dm.seed = 5
    assert dm.seed == 3
    restored = ImageFolderDataModule(digits_root, image_mode="L", seed=0)
    restored.setup("fit")
    restored.load_state_dict(dm.state_dict())  # a checkpoint's seed still replaces it (and re-cuts)
    assert restored.seed == 3
    assert restored.state_dict()["seed"] == 3


@pytest.mark.parametrize("cache", [None, "disk"])
def test_the_resolvers_datamodule_does_not_say_a_seed_that_is_not_the_runs(
    digits_root: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path, cache: str | None
) -> None:
    """``${chute.data:num_classes}`` with a null seed: the DataModule built to size the model draws a
    seed of its own, which the old code logged as the one to repeat the run with, before the run's."""
    import logging

    from omegaconf import OmegaConf

    from chute.resolvers import register_resolvers

    register_resolvers()
    cfg = OmegaConf.create(
        {
            "data": {"_target_": "chute.datamodules.ImageFolderDataModule", "root": str(digits_root), "seed": None,
                     "image_mode": "L", "cache": cache, "cache_size": 8, "cache_dir": str(tmp_path)},
            "classes": "${chute.data:num_classes}",
        }
    )  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert cfg.classes == 10
        dm = ImageFolderDataModule(digits_root, image_mode="L", seed=None)
        dm.setup("fit")
    said = [r.getMessage() for r in caplog.records if "drew seed" in r.getMessage()]
    assert said == [f"ImageFolderDataModule: seed is null, so this run drew seed={dm.seed} (set it to repeat the run)."]


def test_the_data_path_is_refused_after_setup(digits_root: Path, tmp_path: Path) -> None:
    """``dm.root = other`` after setup was taken and ignored: the classes and splits stayed the old
    folder's, and a fit then failed on a label out of range (or trained on the old data)."""
    from chute.errors import ConfigError

    dm = ImageFolderDataModule(digits_root, image_mode="L")
    dm.root = str(digits_root)  # before setup: taken
    dm.setup("fit")
    dm.root = digits_root  # the same folder (a Path): nothing changes
    with pytest.raises(ConfigError, match=r"^root='.*other': ImageFolderDataModule was already set up with root="):
        dm.root = str(tmp_path / "other")
    assert dm.root == str(digits_root)


def test_a_disk_cache_built_by_prepare_data_fixes_the_seed_too(digits_root: Path, tmp_path: Path) -> None:
    """``prepare_data`` with ``cache="disk"`` cuts the splits (the cache holds them): a seed set after
    it was taken, and the splits stayed the old seed's."""
    from chute.errors import ConfigError

    dm = ImageFolderDataModule(digits_root, image_mode="L", seed=0, cache="disk", cache_size=8, cache_dir=str(tmp_path))
    dm.prepare_data()
    with pytest.raises(ConfigError, match=r"^seed=5: ImageFolderDataModule has cut its splits with seed=0 already"):
        dm.seed = 5


def test_under_several_ranks_a_null_seed_leaves_the_disk_cache_to_setup(
    digits_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``prepare_data`` runs on local rank 0 alone: drawing the null seed there (a collective) would
    wait for the other ranks. With several ranks it builds no cache; setup builds it."""
    from chute.datamodules import image_folder

    dm = ImageFolderDataModule(
        digits_root, image_mode="L", seed=None, cache="disk", cache_size=8, cache_dir=str(tmp_path)
    )
    monkeypatch.setattr(image_folder, "process_group_size", lambda: 2)
    dm.prepare_data()
    assert dm._seed is None
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(image_folder, "process_group_size", lambda: 1)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[0].shape[0] == 64
    assert list(tmp_path.iterdir())


class _OwnWorkers(ImageFolderDataModule):
    """Subclasses with an attribute of their own named ``num_workers``, set before or after the base's
    __init__ (``None``): both constructed before ``dm.num_workers = 2`` reached the loader settings."""

    def __init__(self, root: Path, workers: int | None = None, before: bool = True) -> None:
        if before:
            self.num_workers = 3
        super().__init__(root, image_mode="L")
        if not before:
            self.num_workers = workers


@pytest.mark.parametrize("before", [True, False])
def test_a_subclass_with_its_own_num_workers_attribute_still_constructs(digits_root: Path, before: bool) -> None:
    dm = _OwnWorkers(digits_root, before=before)
    assert dm.loader_settings.num_workers == 0
    dm.num_workers = 2
    assert dm.loader_settings.num_workers == 2
