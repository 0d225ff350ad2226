"""Links in class-folder trees (issue 26): followed, but never a file indexed twice."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from chute.datamodules import ImageFolderDataModule
from chute.datasets.folder_index import scan_folder
from chute.errors import DataError
from chute.images import IMG_EXTENSIONS
from tests.helpers import assert_mentions, write_image


def _index(root: Path) -> list[str]:
    found = scan_folder(root, extensions=IMG_EXTENSIONS)
    return [os.fsdecode(p) for p in found.paths]


def test_a_link_to_the_split_folder_is_not_a_class_of_every_image(make_tree: Callable[..., Path]) -> None:
    """``zz -> .`` inside a split would make a class ``zz`` holding every image again, under a wrong label."""
    train = make_tree() / "train"
    (train / "zz").symlink_to(".")
    with pytest.raises(DataError) as err:
        _index(train)
    assert_mentions(str(err.value), str(train / "zz"), "indexed twice", "Remove the link")


def test_a_link_loop_inside_a_class_is_refused(make_tree: Callable[..., Path]) -> None:
    train = make_tree() / "train"
    (train / "cat" / "again").symlink_to("..")
    with pytest.raises(DataError) as err:
        _index(train)
    assert_mentions(str(err.value), str(train / "cat" / "again"))


def test_a_link_to_an_image_of_another_class_is_refused(make_tree: Callable[..., Path]) -> None:
    train = make_tree() / "train"
    (train / "cat" / "borrowed.png").symlink_to(train / "dog" / "0.png")
    with pytest.raises(DataError) as err:
        _index(train)
    assert_mentions(str(err.value), str(train / "cat" / "borrowed.png"), str(train / "dog" / "0.png"))


def test_two_links_to_one_file_elsewhere_are_refused(make_tree: Callable[..., Path], tmp_path: Path) -> None:
    train = make_tree() / "train"
    outside = write_image(tmp_path / "elsewhere" / "x.png")
    (train / "cat" / "x.png").symlink_to(outside)
    (train / "dog" / "x.png").symlink_to(outside)
    with pytest.raises(DataError) as err:
        _index(train)
    assert_mentions(str(err.value), str(train / "cat" / "x.png"), str(train / "dog" / "x.png"))


def test_links_to_data_stored_elsewhere_are_followed(make_tree: Callable[..., Path], tmp_path: Path) -> None:
    """A class folder, a folder inside one and a file may each link out of the tree: indexed once."""
    train = make_tree() / "train"
    store = tmp_path / "store"
    for i in range(3):
        write_image(store / "fox" / f"{i}.png", seed=100 + i)
        write_image(store / "more_cats" / f"{i}.png", seed=200 + i)
    write_image(store / "single.png", seed=300)
    (train / "fox").symlink_to(store / "fox")
    (train / "cat" / "more").symlink_to(store / "more_cats")
    (train / "dog" / "single.png").symlink_to(store / "single.png")
    paths = _index(train)
    assert len(paths) == 6 + 5 + 4 + 3 + 3 + 1
    assert len(set(paths)) == len(paths)
    assert {"fox/0.png", "cat/more/2.png", "dog/single.png"} <= set(paths)


@pytest.mark.parametrize(("workers", "backend"), [(0, "torch"), (2, "torch"), (2, "threads")])
def test_a_trainer_fails_on_a_link_back_into_the_tree_naming_it(
    make_tree: Callable[..., Path], workers: int, backend: str
) -> None:
    root = make_tree()
    (root / "train" / "zz").symlink_to(".")
    dm = ImageFolderDataModule(
        root, transforms={"image_size": 16}, loader={"batch_size": 4, "num_workers": workers, "backend": backend}
    )
    model = _Tiny()
    trainer = L.Trainer(
        max_epochs=1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(DataError) as err:
        trainer.fit(model, datamodule=dm)
    assert_mentions(str(err.value), str(root / "train" / "zz"))


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.LazyLinear(3)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self.layer(batch[0].flatten(1).float()), batch[1])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)
