"""RandomResizedCropBatch: RandomResizedCrop + flip semantics for whole batches on their device."""

from __future__ import annotations

import pytest
import torch

from chute.transforms.device import RandomResizedCropBatch


def test_full_crop_without_flip_is_the_image_and_flip_mirrors_it() -> None:
    images = torch.rand(3, 2, 8, 8)
    keep = RandomResizedCropBatch(8, scale=(1, 1), ratio=(1, 1), hflip=0.0)
    torch.testing.assert_close(keep(images), images)
    mirror = RandomResizedCropBatch(8, scale=(1, 1), ratio=(1, 1), hflip=1.0)
    torch.testing.assert_close(mirror(images), images.flip(-1))


def test_boxes_respect_scale_ratio_and_bounds() -> None:
    crop = RandomResizedCropBatch(16, scale=(0.2, 0.6), ratio=(0.5, 2.0), generator=torch.Generator().manual_seed(0))
    boxes = crop.boxes(2000, 100, 80)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all()
    assert (boxes[:, 2] <= 80).all()
    assert (boxes[:, 3] <= 100).all()
    area = w * h / 8000
    assert area.min() >= 0.19
    assert area.max() <= 0.61
    assert (w / h).min() >= 0.49
    assert (w / h).max() <= 2.05


def test_impossible_ratio_falls_back_to_a_center_crop() -> None:
    crop = RandomResizedCropBatch(4, scale=(0.99, 1.0), ratio=(3.0, 3.0))
    boxes = crop.boxes(5, 10, 10)  # a 3:1 crop of 99% of a square cannot fit
    assert torch.equal(boxes, torch.tensor([[0.0, 3.0, 10.0, 6.0]]).expand(5, 4))


def test_each_image_gets_its_own_crop_and_the_generator_reproduces_them() -> None:
    images = torch.arange(64.0).reshape(1, 1, 8, 8).expand(6, 1, 8, 8).contiguous()
    a = RandomResizedCropBatch(4, generator=torch.Generator().manual_seed(1))(images)
    b = RandomResizedCropBatch(4, generator=torch.Generator().manual_seed(1))(images)
    torch.testing.assert_close(a, b)
    assert len({tuple(x.flatten().tolist()) for x in a}) > 1


@pytest.mark.parametrize(("kwargs", "match"), [({"scale": (0.0, 1.0)}, "scale"), ({"hflip": 2.0}, "hflip")])
def test_bad_arguments_are_named(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RandomResizedCropBatch(8, **kwargs)  # type: ignore[arg-type]


def test_other_integer_batches_are_rejected() -> None:
    with pytest.raises(ValueError, match="float or uint8"):
        RandomResizedCropBatch(4)(torch.zeros(1, 3, 8, 8, dtype=torch.int32))


@pytest.mark.parametrize("channels", [1, 3])
def test_uint8_batches_on_the_cpu_get_the_same_crops_as_floats(channels: int) -> None:
    """The CPU loader crops uint8 batches with OpenCV: the same boxes and flips, channels-last uint8
    out. The pixels agree to within rounding inside the crop; on its edge OpenCV repeats the crop's
    last pixel (as crop-then-resize does) where grid_sample blends in the one beyond it, hence a
    smooth picture here."""
    coarse = torch.randint(0, 256, (6, channels, 4, 5)).float()
    smooth = torch.nn.functional.interpolate(coarse, size=(24, 30), mode="bilinear", align_corners=False)
    images = smooth.round().to(torch.uint8).contiguous(memory_format=torch.channels_last)
    as_uint8 = RandomResizedCropBatch(12, generator=torch.Generator().manual_seed(3))(images)
    as_float = RandomResizedCropBatch(12, generator=torch.Generator().manual_seed(3))(images.float())
    assert as_uint8.dtype == torch.uint8
    assert as_uint8.shape == (6, channels, 12, 12)
    assert as_uint8.is_contiguous(memory_format=torch.channels_last)
    assert (as_uint8.float() - as_float).abs().mean() <= 1.0
    assert (as_uint8.float() - as_float).abs().max() <= 12.0


def test_mix_batch_gives_soft_targets_only_in_training(digits_root) -> None:
    from chute.datamodules import ImageFolderDataModule
    from chute.transforms import create_transforms
    from chute.transforms.device import MixBatch

    _, soft = MixBatch(num_classes=4, cutmix_alpha=1.0)(torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1]))
    assert soft.shape == (6, 4)
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(6))

    class Stage:
        training = True

    t = create_transforms(image_size=8, crop_pct=1.0)
    dm = ImageFolderDataModule(
        digits_root, image_mode="L", train_transform=t.train, val_transform=t.val, mean=[0.3], std=[0.4],
        mixup_alpha=0.4, loader={"batch_size": 16},
    )  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = Stage()  # type: ignore[assignment]
    _, targets = dm.on_after_batch_transfer(batch, 0)
    assert targets.shape == (16, 10)
    Stage.training = False
    _, targets = dm.on_after_batch_transfer(batch, 0)
    assert targets.dtype == torch.int64  # validation and test batches keep hard labels


def test_negative_mix_alpha_names_the_key() -> None:
    from chute.errors import ConfigError
    from chute.transforms import TransformSettings

    with pytest.raises(ConfigError) as info:
        TransformSettings(mixup_alpha=-0.1)
    assert info.value.key == "mixup_alpha"
