from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from chute import ConfigError, LoaderSettings
from chute.loader import build_loader
from chute.transforms import Pipeline, TransformSettings, check_deterministic, create_transforms

BACKENDS = ["torchvision", "albumentations"]


def _image(c: int = 3, h: int = 48, w: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_pipelines_keep_uint8_and_size(backend: str, channels: int) -> None:
    t = create_transforms(backend=backend, image_size=32, rotation=10, color_jitter=0.2, vflip=0.1)
    for pipeline in (t.train, t.val):
        out = pipeline(_image(channels))
        assert out.dtype == torch.uint8
        assert tuple(out.shape) == (channels, 32, 32)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_a_rotation_works_with_every_interpolation(interpolation: str) -> None:
    """torchvision rotates tensors with nearest or bilinear sampling only: bicubic raised at the first image."""
    t = create_transforms(image_size=32, rotation=15, interpolation=interpolation)
    assert tuple(t.train(_image()).shape) == (3, 32, 32)


@pytest.mark.parametrize("channels", [1, 3])
def test_an_albumentations_pipeline_ending_in_to_tensor_keeps_its_layout(channels: int) -> None:
    """``ToTensorV2`` returns a ``(C, H, W)`` tensor: taken as it is (it was permuted again, to ``(H, C, W)``)."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    pipeline = Pipeline([A.Resize(16, 24), ToTensorV2()], backend="albumentations")
    plain = Pipeline([A.Resize(16, 24)], backend="albumentations")
    image = _image(channels)
    assert tuple(pipeline(image).shape) == (channels, 16, 24)
    assert torch.equal(pipeline(image), plain(image))


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_is_random_and_val_deterministic(backend: str) -> None:
    t = create_transforms(backend=backend, image_size=32)
    check_deterministic(t.val, _image())
    with pytest.raises(ConfigError, match="RandomResizedCrop"):
        check_deterministic(t.train, _image(), key="train")


def test_eval_geometry_follows_crop_pct() -> None:
    val = create_transforms(image_size=32, crop_pct=0.5).val
    # short side resized to 64, then the central 32x32: the center of a gradient image survives
    image = torch.arange(64, dtype=torch.uint8).repeat(3, 64, 1)
    out = val(image)
    assert out.shape == (3, 32, 32)
    assert out[0, 0, 0] == 16
    assert out[0, 0, -1] == 47


def test_backends_agree_on_eval_output() -> None:
    image = _image(3, 64, 64)
    tv = create_transforms(backend="torchvision", image_size=64, crop_pct=1.0).val(image)
    al = create_transforms(backend="albumentations", image_size=64, crop_pct=1.0).val(image)
    assert torch.equal(tv, al)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"backend": "kornia"}, "backend"),
        ({"image_size": 0}, "image_size"),
        ({"crop_pct": 1.5}, "crop_pct"),
        ({"scale": [0.9, 0.1]}, "scale"),
        ({"ratio": [1.0]}, "ratio"),
        ({"hflip": 2.0}, "hflip"),
        ({"rotation": -5}, "rotation"),
        ({"color_jitter": -0.1}, "color_jitter"),
        ({"interpolation": "lanczos9"}, "interpolation"),
    ],
)
def test_bad_settings_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}="):
        TransformSettings(**kwargs)


def test_settings_or_kwargs_not_both() -> None:
    with pytest.raises(TypeError):
        create_transforms(TransformSettings(), image_size=3)


def test_pipeline_repr_lists_steps() -> None:
    text = repr(create_transforms(backend="albumentations", image_size=8).train)
    assert "RandomResizedCrop" in text
    assert "albumentations" in text


class _Same(Dataset):
    """The same image every time: only the pipeline's randomness makes samples differ."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.pipeline(_image())

    def reseed(self, seed: int) -> None:
        self.pipeline.reseed(seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_draw_different_augmentations(backend: str) -> None:
    """Forked workers start from a copy of the parent's generators; chute's worker seeding splits them."""
    pipeline = create_transforms(backend=backend, image_size=16, scale=[0.05, 1.0]).train
    settings = LoaderSettings(batch_size=1, num_workers=2, shuffle=False)
    outs = [b[0] for b in build_loader(_Same(pipeline), settings, train=True, seed=0, rank=0)]
    worker0, worker1 = outs[0::2], outs[1::2]  # batches alternate between the two workers
    assert not any(torch.equal(a, b) for a, b in zip(worker0, worker1, strict=True))


def test_a_misspelt_transforms_setting_names_the_closest_one() -> None:
    """``data.transforms.imag_size=4`` was Python's "TransformSettings.__init__() got an unexpected
    keyword argument", with no hint; a switch given as a string is refused too (it is truthy)."""
    from chute.errors import UnknownArgumentError

    with pytest.raises(UnknownArgumentError, match=r"^imag_size=4: is not a transforms setting: did you mean image_"):
        create_transforms(imag_size=4)
    with pytest.raises(ConfigError, match=r"^fast_decode='no': must be true or false"):
        create_transforms(fast_decode="no")
