"""The GPU decode route (issue 25), run on the CPU: the same code decodes where the batch is.

Workers read bytes and draw the crops, the batch hook decodes and cuts them. On a CUDA machine the
hook calls nvJPEG and a Triton kernel (tests/test_gpu.py); here it calls the strict CPU decoder and
the kernel's reference arithmetic, and the kernel itself runs under Triton's interpreter.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from chute.datamodules import ImageFolderDataModule
from chute.datasets.folder import ImageFolderDataset
from chute.datasets.folder_index import scan_folder
from chute.errors import ConfigError, DataError
from chute.loader import sample_seed
from chute.transforms import create_transforms
from chute.transforms.crop_resize import crop_resize_reference, pack, table
from chute.transforms.device_decode import DecodeImages, EncodedImages
from chute.transforms.fused import RandomResizedCropDecode
from tests.helpers import assert_mentions
from tests.test_bad_samples import truncated
from tests.test_exif import encode

REPO = Path(__file__).resolve().parents[2]
SIZE = 24


def _photo(path: Path, seed: int, size: tuple[int, int] = (72, 56), **save: object) -> Path:
    """A smooth photo-like image (gradients: JPEG keeps them, so decoders agree closely)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.5, 3, 3)
    pixels = np.stack([xx * a, yy * b, (xx + yy) * c], axis=-1) % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = save.pop("mode", "RGB")
    Image.fromarray(pixels.astype(np.uint8)).convert(str(mode)).save(path, **save)
    return path


def _tree(root: Path) -> Path:
    """Plain, progressive, EXIF-turned, grayscale and CMYK JPEGs and a PNG, in two classes."""
    for i in range(6):
        _photo(root / "train" / f"c{i % 2}" / f"plain{i}.jpg", i, quality=92)
    _photo(root / "train" / "c0" / "progressive.jpg", 7, quality=92, progressive=True)
    _photo(root / "train" / "c1" / "gray.jpg", 8, quality=92, mode="L")
    _photo(root / "train" / "c0" / "cmyk.jpg", 9, quality=92, mode="CMYK")
    _photo(root / "train" / "c1" / "lossless.png", 10)
    (root / "train" / "c1" / "turned.jpg").write_bytes(encode(6))
    for c in (0, 1):
        _photo(root / "val" / f"c{c}" / "plain.jpg", 20 + c, quality=92)
    return root


def _module(root: Path, decode: str, **extra: object) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(
        root, mean=[0.0] * 3, std=[1.0] * 3, decode=decode, seed=5,  # type: ignore[arg-type]
        transforms={"image_size": SIZE, "scale": [0.3, 1.0]}, loader={"batch_size": 16}, **extra,  # type: ignore[arg-type]
    )  # fmt: skip
    dm.setup("fit")
    return dm


def _decoded(dm: ImageFolderDataModule, batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    return dm.batch_decode(batch) if dm.batch_decode is not None else batch  # type: ignore[return-value]


def test_the_workers_draw_the_cpu_routes_boxes_and_the_hook_cuts_the_same_images(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    cpu, gpu = _module(root, "cpu"), _module(root, "gpu")
    assert (cpu.decode_route, gpu.decode_route) == ("cpu", "gpu")
    for epoch in (0, 1):
        cpu_loader, gpu_loader = cpu.train_dataloader(), gpu.train_dataloader()
        cpu_loader.set_epoch(epoch)
        gpu_loader.set_epoch(epoch)
        (expected, labels), encoded = next(iter(cpu_loader)), next(iter(gpu_loader))
        assert isinstance(encoded[0], EncodedImages)
        assert torch.equal(encoded[1], labels)  # the same samples, in the same order
        # Crops drawn per (seed, epoch, index) exactly as the CPU route draws them.
        dataset = gpu.dataset("train")
        paths = [dataset.index.path(i) for i in range(len(dataset))]
        transform = gpu.train_transform
        assert isinstance(transform, RandomResizedCropDecode)
        for row, path in enumerate(encoded[0].paths):
            if bool(encoded[0].decoded[row]):
                continue
            i = paths.index(path)
            data = Path(path).read_bytes()
            from chute import exif
            from chute.images import check_image_size

            size = check_image_size(path, data)
            assert size is not None
            rng = random.Random(sample_seed(dataset.seed, epoch, i))  # type: ignore[arg-type]
            cut = transform.stored_region(*size, exif.orientation(data), rng)
            assert encoded[0].crops[row].tolist() == [cut.x, cut.y, cut.width, cut.height]
            assert encoded[0].turns[row].tolist() == [cut.transpose, cut.mirror, cut.upside_down]
        images, got = _decoded(gpu, encoded)
        assert torch.equal(got, labels)
        assert images.shape == expected.shape
        assert images.dtype == torch.uint8
        assert images.is_contiguous(memory_format=torch.channels_last)
        # Two resamplers (DCT-scaled decode + OpenCV, against a full decode + K x K taps): close,
        # image by image (the photos' gradients within a few levels; the EXIF-turned test card has
        # hard edges), turned and mirrored alike (a wrong turn differs several times more).
        diff = (images.float() - expected.float()).abs().mean(dim=(1, 2, 3))
        names = [Path(p).name for p in encoded[0].paths]
        for row, name in enumerate(names):
            assert diff[row] < (8.0 if name == "turned.jpg" else 2.0), (name, diff.tolist())
        turned = names.index("turned.jpg")
        for wrong in (expected[turned].flip(-1), expected[turned].flip(-2), expected[turned].transpose(-1, -2)):
            assert (images[turned].float() - wrong.float()).abs().mean() > 3 * diff[turned]


def test_files_the_device_does_not_decode_travel_decoded(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    gpu = _module(root, "gpu")
    encoded, _ = gpu.dataset("train").__getitems__(list(range(len(gpu.dataset("train")))))
    by_name = {Path(p).name: bool(d) for p, d in zip(encoded.paths, encoded.decoded, strict=True)}
    assert by_name["cmyk.jpg"]  # nvJPEG's RGB output has no CMYK
    assert by_name["lossless.png"]  # not a JPEG
    assert not any(by_name[n] for n in ("progressive.jpg", "gray.jpg", "turned.jpg", "plain0.jpg"))
    assert encoded.pixels.shape == (2, SIZE, SIZE, 3)


def test_a_damaged_jpeg_is_named_or_skipped_and_counted(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    truncated(root / "train" / "c0" / "damaged.jpg", eoi=True)  # header and end marker intact: the decode finds it
    gpu = _module(root, "gpu")
    batches = list(gpu.train_dataloader())  # the worker takes it: its header and end marker are sound
    with pytest.raises(DataError) as err:
        [_decoded(gpu, batch) for batch in batches]
    assert_mentions(str(err.value), "damaged.jpg")

    skipping = _module(root, "gpu", on_error="skip", max_bad_fraction=0.5)
    n = len(skipping.dataset("train"))
    batches = [_decoded(skipping, b) for b in skipping.train_dataloader()]
    assert sum(len(images) for images, _ in batches) == n  # training: the step stays full
    assert skipping.bad_samples["train"]["skipped"] == 1
    assert any("damaged.jpg" in name for name in skipping.bad_samples["train"]["first"])
    # evaluation leaves it out: every readable image once
    evaluation = DecodeImages({"val": skipping._bad_samples("val")})
    dataset = ImageFolderDataset(
        scan_folder(root / "train"), skipping.val_transform, encoded=True, split="val", on_error="skip", drop_bad=True
    )
    images, labels = evaluation(dataset.__getitems__(list(range(n))))
    assert len(images) == len(labels) == n - 1


def test_the_settings_are_checked_naming_decode(tmp_path: Path) -> None:
    root = _tree(tmp_path / "tree")
    with pytest.raises(ConfigError, match="decode"):
        ImageFolderDataModule(root, decode="nvjpeg")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="decode"):
        ImageFolderDataModule(root, decode="gpu", cache="memory", cache_size=32)
    with pytest.raises(ConfigError, match="decode"):
        ImageFolderDataModule(root, decode="gpu", transforms=create_transforms(fast_decode=False))


def test_predicting_with_skip_takes_the_cpu_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JPEG the device fails to decode would be left out after the loader recorded its batch, and
    ``predicted_files`` would not line up: ``decode="gpu"`` with ``on_error="skip"`` is refused for
    predict, and ``auto``, having picked the GPU, predicts on the CPU route (training keeps the GPU's)."""
    root = _tree(tmp_path / "tree")
    refused = r"^on_error='skip': with decode='gpu' an image the device cannot.*decode='cpu'"
    with pytest.raises(ConfigError, match=refused):
        _module(root, "gpu", on_error="skip").predict_dataloader()
    monkeypatch.setattr("chute.datamodules.image_folder.choose_decode", lambda dm: "gpu")
    dm = _module(root, "auto", on_error="skip")
    assert dm.decode_route == "gpu"
    assert isinstance(next(iter(dm.train_dataloader()))[0], EncodedImages)
    images, _ = next(iter(dm.predict_dataloader()))
    assert isinstance(images, torch.Tensor)
    assert images.dtype == torch.uint8
    assert isinstance(next(iter(_module(root, "auto").predict_dataloader()))[0], EncodedImages)  # raise: the GPU


def test_auto_decodes_on_the_cpu_without_a_cuda_trainer(tmp_path: Path) -> None:
    dm = _module(_tree(tmp_path / "tree"), "auto")
    assert dm.decode_route == "cpu"
    assert dm.batch_decode is None
    assert not isinstance(next(iter(dm.train_dataloader()))[0], EncodedImages)


def test_the_resampler_cuts_turns_and_mirrors_exactly_at_equal_size() -> None:
    image = torch.randint(0, 256, (3, 30, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    flat, starts = pack([image])
    cases = {
        (0, 0, 0): image,
        (1, 0, 0): image.transpose(1, 2),
        (0, 1, 0): image.flip(2),
        (0, 0, 1): image.flip(1),
        (1, 1, 0): image.transpose(1, 2).flip(2),  # transposed first, then mirrored (as StoredRegion says)
    }
    for turns, expected in cases.items():
        rows = table([image], starts, torch.tensor([[0, 0, 30, 30]]), torch.tensor([turns]))
        assert torch.equal(crop_resize_reference(flat, rows, 30, 3)[0].permute(2, 0, 1), expected), turns
    rows = table([image], starts, torch.tensor([[4, 7, 12, 12]]), torch.tensor([(0, 0, 0)]))
    assert torch.equal(crop_resize_reference(flat, rows, 12, 3)[0].permute(2, 0, 1), image[:, 7:19, 4:16])


def test_the_triton_kernel_computes_the_reference_arithmetic() -> None:
    """Under ``TRITON_INTERPRET=1`` (Triton's CPU interpreter), in a process of its own: the same
    kernel the GPU runs, against ``crop_resize_reference``, crops enlarged and shrunk, every turn
    (a value may round the other way where float sums differ in their last bit)."""
    pytest.importorskip("triton")
    script = (
        "import torch\n"
        "from chute.transforms.crop_resize import pack, table, crop_resize_reference\n"
        "from chute.transforms._crop_resize_kernel import launch\n"
        "g = torch.Generator().manual_seed(0)\n"
        "shapes = [(40, 60), (33, 21), (64, 64), (17, 90), (50, 50)]\n"
        "imgs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for h, w in shapes]\n"
        "crops = torch.tensor([[0, 0, 60, 40], [3, 5, 10, 20], [10, 2, 50, 61], [5, 1, 80, 16], [1, 1, 48, 48]])\n"
        "turns = torch.tensor([[0, 0, 0], [1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]])\n"
        "flat, starts = pack(imgs)\n"
        "rows = table(imgs, starts, crops, turns)\n"
        "for size in (16, 7):\n"
        "    out = torch.empty((5, size, size, 3), dtype=torch.uint8)\n"
        "    launch(flat, rows, out, size, 3, 4)\n"
        "    diff = (out.int() - crop_resize_reference(flat, rows, size, 3).int()).abs()\n"
        "    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, (size, diff.max())  # float rounding\n"
        "print('same')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same" in done.stdout
