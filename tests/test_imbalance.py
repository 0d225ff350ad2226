"""Imbalance strategies: weights, draws, P x K batches, rank partitions, resume, and errors at setup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from chute.datamodules import ImageFolderDataModule, SequenceDataModule, TabularDataModule
from chute.datasets import DigitsFolder, SklearnTable
from chute.errors import ConfigError, DataError
from chute.imbalance import ImbalanceSettings, class_weights
from chute.loader.distributed import rank_span
from chute.loader.draws import build_sampler
from chute.transforms import create_transforms

COUNTS = np.array([100, 30, 10])
LABELS = np.repeat(np.arange(3), COUNTS)


def sampler_for(strategy: str, rank: int | None = None, world: int | None = None, **kwargs: Any) -> Any:
    settings = ImbalanceSettings(strategy=strategy, **kwargs)
    sampler, _ = build_sampler(settings, LABELS, 3, 12, seed=7, rank=rank, world_size=world)
    return sampler


def flat(items: np.ndarray) -> list[int]:
    return [int(i) for item in items for i in np.atleast_1d(item)]


@pytest.mark.parametrize(
    ("weighting", "expected"),
    [
        ("inverse", 1 / COUNTS),
        ("inverse_sqrt", 1 / np.sqrt(COUNTS)),
        ("effective_number", (1 - 0.99) / (1 - 0.99**COUNTS)),
    ],
)
def test_class_weights_follow_the_weighting_and_keep_the_loss_scale(weighting: str, expected: np.ndarray) -> None:
    weights = class_weights(COUNTS, ImbalanceSettings(strategy="loss_weights", weighting=weighting, beta=0.99))
    np.testing.assert_allclose(weights / weights[0], expected / expected[0])
    assert (weights * COUNTS).sum() == pytest.approx(COUNTS.sum())


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"strategy": "loss_weights", "epoch_length": 640}, "epoch_length"),
        ({"classes_per_batch": 4}, "classes_per_batch"),
        ({"strategy": "weighted_sampler", "target_ratio": 2.0}, "target_ratio"),
        ({"strategy": "balanced_batches", "replacement": False}, "replacement"),
        ({"strategy": "oversample", "weighting": "inverse_sqrt"}, "weighting"),
    ],
)
def test_a_setting_the_strategy_does_not_use_is_refused_naming_both(settings: dict, key: str) -> None:
    """It would be ignored: imbalance=loss_weights imbalance.epoch_length=640 ran epochs of the whole set."""
    strategy = settings.get("strategy", "none")
    with pytest.raises(ConfigError, match=rf"^{key}=.*: is not used by strategy='{strategy}'"):
        ImbalanceSettings(**settings)


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0, -1.0, 1.0], "negative"), ([1.0, float("nan"), 1.0], "NaN"), ([0.0, 0.0, 0.0], "all zero")],
)
def test_bad_class_weights_are_rejected(weights: list[float], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        ImbalanceSettings(strategy="loss_weights", class_weights=weights)
    assert info.value.key == "class_weights"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"strategy": "smote"}, "strategy"),
        ({"weighting": "log"}, "weighting"),
        ({"beta": 1.0}, "beta"),
        ({"target_ratio": 0.5}, "target_ratio"),
        ({"epoch_length": 0}, "epoch_length"),
        ({"classes_per_batch": 0}, "classes_per_batch"),
    ],
)
def test_bad_settings_name_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ImbalanceSettings(**kwargs)
    assert info.value.key == key


def test_weighted_sampler_with_inverse_weights_balances_classes() -> None:
    sampler = sampler_for("weighted_sampler", epoch_length=30_000)
    shares = np.bincount(LABELS[flat(sampler.epoch_items())], minlength=3) / 30_000
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.02)


def test_balanced_batches_hold_p_classes_times_k_samples() -> None:
    sampler = sampler_for("balanced_batches", classes_per_batch=2)
    batches = sampler.epoch_items()
    assert len(batches) == len(LABELS) // 12
    for batch in batches:
        counts = np.bincount(LABELS[batch], minlength=3)
        assert sorted(counts) == [0, 6, 6]
    # Small classes cycle through all their samples before repeating one.
    tens = [i for b in batches for i in b if LABELS[i] == 2]
    assert len(set(tens[:10])) == 10


def test_balanced_batches_explain_a_batch_size_that_does_not_divide() -> None:
    labels = np.repeat(np.arange(5), 10)
    with pytest.raises(ConfigError, match="multiple of the 5 classes") as info:
        build_sampler(ImbalanceSettings(strategy="balanced_batches", classes_per_batch=5), labels, 5, 12, seed=0)
    assert info.value.key == "classes_per_batch"
    with pytest.raises(ConfigError, match="exceeds the 3 classes"):
        build_sampler(ImbalanceSettings(strategy="balanced_batches", classes_per_batch=4), LABELS, 3, 12, seed=0)


@pytest.mark.parametrize(("strategy", "ratio"), [("oversample", 1.0), ("oversample", 2.0), ("undersample", 3.0)])
def test_resampling_reaches_the_target_ratio(strategy: str, ratio: float) -> None:
    sampler = sampler_for(strategy, target_ratio=ratio, epoch_length=10_000)
    pool_counts = sampler.targets
    assert pool_counts.max() / pool_counts.min() <= ratio
    assert len(sampler.epoch_items()) == 10_000


def test_a_class_without_training_samples_is_named() -> None:
    labels = np.array([0, 0, 2, 2])
    with pytest.raises(DataError, match="Class 'b' has no training samples"):
        build_sampler(ImbalanceSettings(strategy="oversample"), labels, 3, 2, seed=0, class_names=("a", "b", "c"))


@pytest.mark.parametrize("strategy", ["weighted_sampler", "balanced_batches", "oversample", "undersample"])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_draw_the_same_epoch_and_split_it_without_overlap(strategy: str, world: int) -> None:
    samplers = [sampler_for(strategy, rank=r, world=world) for r in range(world)]
    draws = [s.epoch_items() for s in samplers]
    assert all(flat(d) == flat(draws[0]) for d in draws)  # identical on every rank
    parts = [list(s) for s in samplers]
    assert len({len(p) for p in parts}) == 1  # equal lengths: no rank waits for another
    as_lists = lambda items: [np.atleast_1d(x).tolist() for x in items]  # noqa: E731
    together, repeats = [], 0
    for r, part in enumerate(parts):  # contiguous shares; a short one repeats its first items
        start, stop = rank_span(len(draws[0]), world, r)
        together += part[: stop - start]
        assert as_lists(part[stop - start :]) == as_lists(part[: len(part) - (stop - start)])
        repeats += len(part) - (stop - start)
    assert as_lists(together) == as_lists(draws[0])
    assert repeats < world
    assert all(isinstance(s, DistributedSampler) for s in samplers)  # Lightning will not wrap them


@pytest.mark.parametrize("strategy", ["weighted_sampler", "balanced_batches", "oversample"])
def test_set_epoch_changes_the_draw(strategy: str) -> None:
    sampler = sampler_for(strategy)
    first = flat(sampler.epoch_items(0))
    sampler.set_epoch(1)
    assert flat(sampler.epoch_items()) != first
    sampler.set_epoch(0)
    assert flat(sampler.epoch_items()) == first


@pytest.mark.parametrize("strategy", ["weighted_sampler", "balanced_batches"])
def test_resume_continues_mid_epoch(strategy: str) -> None:
    """The order's part of a resume (the loader holds the position: tests/test_contract.py)."""
    sampler = sampler_for(strategy, rank=1, world=2)
    sampler.set_epoch(3)
    full = list(sampler)
    partial = iter(sampler)
    seen = [next(partial) for _ in range(5)]
    resumed = sampler_for(strategy, rank=1, world=2)
    resumed.resume(3, 5)
    assert seen + list(resumed) == full
    assert list(resumed) == full  # the following pass is the whole epoch again


# -- DataModules -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def longtail_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return DigitsFolder(imbalance_ratio=20, progress=False)(tmp_path_factory.mktemp("lt") / "digits")


def test_long_tailed_digits_follow_an_exponential_profile(longtail_root: Path) -> None:
    counts = [len(list((longtail_root / "train" / str(c)).iterdir())) for c in range(10)]
    val = [len(list((longtail_root / "val" / str(c)).iterdir())) for c in range(10)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] / counts[-1] == pytest.approx(20, rel=0.05)
    assert max(val) - min(val) <= 2  # validation stays balanced


def digits_dm(root: Path, **imbalance: Any) -> ImageFolderDataModule:
    t = create_transforms(image_size=12, crop_pct=1.0, hflip=0.0)
    return ImageFolderDataModule(
        root, image_mode="L", train_transform=t.train, val_transform=t.val, mean=[0.3], std=[0.4],
        loader={"batch_size": 60}, imbalance=imbalance or None,
    )  # fmt: skip


def test_weighted_sampler_evens_out_what_the_loader_delivers(longtail_root: Path) -> None:
    dm = digits_dm(longtail_root, strategy="weighted_sampler")
    dm.setup("fit")
    labels = torch.cat([b[1] for b in dm.train_dataloader()])
    assert len(labels) == len(dm.dataset("train"))  # epoch length: the training set's size
    received = np.bincount(labels.numpy(), minlength=10)
    assert received.max() / max(received.min(), 1) < 3  # the dataset's ratio is 20


def test_balanced_batches_through_the_loader(longtail_root: Path) -> None:
    dm = digits_dm(longtail_root, strategy="balanced_batches", classes_per_batch=5)
    dm.setup("fit")
    for _, labels in list(dm.train_dataloader())[:3]:
        assert sorted(np.bincount(labels.numpy(), minlength=10).tolist()) == [0] * 5 + [12] * 5


def test_loss_weights_come_from_the_training_split(longtail_root: Path) -> None:
    dm = digits_dm(longtail_root, strategy="loss_weights")
    dm.setup("fit")
    weights = dm.loss_kwargs["class_weights"]
    assert weights == sorted(weights)  # rarer digits weigh more
    assert weights[-1] / weights[0] == pytest.approx(dm.class_counts[0] / dm.class_counts[-1], rel=1e-3)


def test_imbalance_errors_come_at_setup_naming_the_key(longtail_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        digits_dm(longtail_root, strategy="balanced_batches", classes_per_batch=7).setup("fit")
    assert info.value.key == "imbalance.classes_per_batch"
    path = SklearnTable("diabetes")(tmp_path / "d.csv")
    regression = TabularDataModule(
        str(path), target="progression", task="regression", imbalance={"strategy": "oversample"}
    )
    with pytest.raises(ConfigError, match="needs class targets") as info:
        regression.setup("fit")
    assert info.value.key == "imbalance.strategy"


def test_a_class_missing_from_training_fails_at_setup(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"tokens": [1], "label": 0}\n{"tokens": [2], "label": 2}\n')
    (tmp_path / "val.jsonl").write_text('{"tokens": [1], "label": 1}\n')
    dm = SequenceDataModule(tmp_path, imbalance={"strategy": "weighted_sampler"})
    with pytest.raises(DataError, match="Class '1' has no training samples"):
        dm.setup("fit")
