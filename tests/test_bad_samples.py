"""Bad samples (issue 6.4): ``on_error: raise | skip`` for images, table rows and shard lines.

Every broken input is a real file written into ``tmp_path``: a truncated JPEG (with and without an
end-of-image marker), a zero-byte file, a text file named ``.jpg``, an image over the
decompression-bomb limit, a CSV row with the wrong number of fields, a JSONL line that is not JSON.
CMYK, grayscale, palette and RGBA images are not bad: they must come out as Pillow converts them.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from chute.bad_samples import BadSamples
from chute.collate import collate_images
from chute.datamodules import ImageFolderDataModule, MultiTaskDataModule, StreamingDataModule, TabularDataModule
from chute.datasets.folder import DropMissing, ImageFolderDataset
from chute.datasets.folder_index import scan_folder
from chute.datasets.shard_format import write_index, write_shards
from chute.errors import ConfigError, DataError
from chute.images import read_image
from chute.transforms import create_transforms
from chute.transforms.fused import CenterCropDecode
from tests.helpers import assert_mentions, write_image

RGB_CROP = create_transforms(image_size=16, crop_pct=1.0, hflip=0.0)  # crop-aware: JPEGs decode to the crop
GENERIC = create_transforms(image_size=16, rotation=10)  # not crop-aware: decode, then transform


def _pixels(seed: int, size: tuple[int, int] = (40, 30)) -> np.ndarray:
    w, h = size
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg(path: Path, seed: int = 0, size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed, size)).save(path, quality=90)
    return path


def truncated(path: Path, eoi: bool = False) -> Path:
    """A JPEG cut in half, optionally closed again with an end-of-image marker (decoders then warn only)."""
    data = _jpeg(path, size=(64, 64)).read_bytes()
    path.write_bytes(data[: len(data) // 2] + (b"\xff\xd9" if eoi else b""))
    return path


def zero_bytes(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def text_as_jpg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is a note, not a photograph\n")
    return path


BROKEN = {  # how each broken file is written, and what the error says about it
    "truncated": (truncated, "truncated"),
    "truncated_with_eoi": (lambda p: truncated(p, eoi=True), "premature end"),
    "zero_bytes": (zero_bytes, "empty (0 bytes)"),
    "text_named_jpg": (text_as_jpg, "not an image"),
}


# -- Images: reading ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(BROKEN))
@pytest.mark.parametrize("transform", ["generic", "crop", "none"])
def test_broken_image_raises_naming_file_and_reason(tmp_path: Path, case: str, transform: str) -> None:
    write, reason = BROKEN[case]
    write(tmp_path / "tree" / "a" / "0.jpg")
    _jpeg(tmp_path / "tree" / "a" / "1.jpg")
    chosen = {"generic": GENERIC.val, "crop": CenterCropDecode(16), "none": None}[transform]
    dataset = ImageFolderDataset(scan_folder(tmp_path / "tree"), chosen)
    with pytest.raises(DataError) as err:
        dataset[0]
    assert_mentions(str(err.value), "a/0.jpg", reason)
    if transform == "crop":  # the batch path too
        with pytest.raises(DataError, match=r"a/0\.jpg"):
            dataset.__getitems__([1, 0])


def test_truncated_jpeg_is_an_error_not_a_half_grey_image(tmp_path: Path) -> None:
    # TorchCodec decodes a cut-short JPEG that ends in an EOI marker without complaint (the lost half grey).
    path = truncated(tmp_path / "t.jpg", eoi=True)
    with pytest.raises(DataError, match="Corrupt JPEG data: premature end"):
        read_image(str(path))
    with pytest.raises(DataError, match="truncated"):
        read_image(str(truncated(tmp_path / "u.jpg")))
    padded = tmp_path / "z.jpg"  # cut short, then zero-filled to the original size (a preallocated download)
    data = _jpeg(padded, size=(64, 64)).read_bytes()
    padded.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
    with pytest.raises(DataError, match="truncated"):
        read_image(str(padded))


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))
    return path


def _pillow(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert(mode))


CONVERTED = {
    "cmyk.jpg": lambda a: Image.fromarray(a).convert("CMYK"),
    "gray.jpg": lambda a: Image.fromarray(a).convert("L"),
    "gray.png": lambda a: Image.fromarray(a).convert("L"),
    "palette.png": lambda a: Image.fromarray(a).convert("P"),
    "rgba.png": lambda a: Image.fromarray(np.dstack([a, a[:, :, :1]]), "RGBA"),
    "palette.gif": lambda a: Image.fromarray(a).convert("P"),
    "gray.bmp": lambda a: Image.fromarray(a).convert("L"),
}


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_other_colour_modes_convert_to_rgb_as_pillow_does(tmp_path: Path, name: str) -> None:
    path = _save(tmp_path / name, CONVERTED[name](_pixels(3)))
    image = read_image(str(path))
    assert image.shape == (3, 30, 40)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), _pillow(path, "RGB"))  # RGBA: alpha dropped
    gray = read_image(str(path), "L")
    assert gray.shape == (1, 30, 40)
    assert np.abs(gray[0].numpy().astype(int) - _pillow(path, "L").astype(int)).max() <= 1  # rounding


def test_cmyk_jpeg_through_the_crop_path_matches_pillow(tmp_path: Path) -> None:
    # The fast path declines CMYK; the dataset then decodes it generically and crops the same region.
    path = _save(tmp_path / "tree" / "a" / "cmyk.jpg", Image.fromarray(_pixels(4)).convert("CMYK"))
    dataset = ImageFolderDataset(scan_folder(tmp_path / "tree"), CenterCropDecode(30, resize=30))
    image, _ = dataset[0]
    expected = _pillow(path, "RGB")[:, 5:35]
    assert np.array_equal(image.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".webp"])
@pytest.mark.parametrize("crop", [False, True])
def test_decompression_bomb_limit_is_checked_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, crop: bool
) -> None:
    path = write_image(tmp_path / "tree" / "a" / f"big{suffix}", size=(40, 30))
    dataset = ImageFolderDataset(scan_folder(tmp_path / "tree"), RGB_CROP.train if crop else None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 pixels is over
    with pytest.raises(DataError) as err:
        dataset[0]
    assert_mentions(str(err.value), str(path), "1,200 pixels", "limit of 1,000", "MAX_IMAGE_PIXELS")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # over twice the limit: Pillow itself refuses to open it
    with pytest.raises(DataError, match="decompression-bomb limit of 500"):
        dataset[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # None: no limit
    assert dataset[0][0].shape[0] == 3


# -- Images: skipping --------------------------------------------------------------------------


def _mixed_tree(root: Path) -> tuple[Path, list[str]]:
    """``root/a`` and ``root/b``: good JPEGs and PNGs with one broken file of each kind in between."""
    bad = []
    for label in ("a", "b"):
        for i in range(8):
            _jpeg(root / label / f"{i}.jpg", seed=10 * (label == "b") + i)
    for n, (write, _) in enumerate(BROKEN[case] for case in sorted(BROKEN)):
        label, i = ("a", 2 * n) if n < 2 else ("b", 2 * n - 4)
        name = f"{i}x.jpg"  # sorts after i.jpg, before i+1.jpg: never two bad files in a row
        write(root / label / name)
        bad.append(f"{label}/{name}")
    return root, bad


@pytest.mark.parametrize("crop", [False, True])
def test_skip_replaces_a_bad_image_by_the_next_readable_one(tmp_path: Path, crop: bool) -> None:
    root, bad = _mixed_tree(tmp_path / "tree")
    index = scan_folder(root)
    transform = RGB_CROP.train if crop else GENERIC.train
    dataset = ImageFolderDataset(index, transform, seed=7, on_error=BadSamples("skip", max_fraction=0.5))
    reference = ImageFolderDataset(index, transform, seed=7)
    paths = [index.paths[i].decode() for i in range(len(index))]
    for name in bad:
        i = paths.index(name)
        image, label = dataset[i]
        expected_image, expected_label = reference[i + 1]  # the next file, with its own label and seed
        assert torch.equal(image, expected_image)
        assert label == expected_label
    assert dataset.bad_samples.counts == (len(bad), len(bad))  # each drawn once; replacements are not draws
    assert [p.removeprefix(str(root) + "/") for p in dataset.bad_samples.first] == bad
    if crop:  # a whole batch: the bad rows hold their replacements, labels included
        rows = [paths.index(name) for name in bad]
        images, labels = dataset.__getitems__(rows)
        for j, i in enumerate(rows):
            assert torch.equal(images[j], reference[i + 1][0])
            assert int(labels[j]) == reference[i + 1][1]


def test_skip_logs_the_first_bad_paths_and_the_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, bad = _mixed_tree(tmp_path / "tree")
    dataset = ImageFolderDataset(scan_folder(root), on_error=BadSamples("skip", 0.5, what="image", keep=2))
    with caplog.at_level(logging.WARNING, logger="chute.bad_samples"):
        for i in range(len(dataset)):
            dataset[i]
        dataset.set_epoch(1)  # the epoch boundary reports what the last epoch skipped
        dataset.set_epoch(2)  # nothing new: no second report
    messages = [r.getMessage() for r in caplog.records]
    skipping = [m for m in messages if m.startswith("Skipping a bad image")]
    assert len(skipping) == 2  # only the first `keep` are logged one by one
    assert bad[0] in skipping[0]
    (summary,) = [m for m in messages if m.startswith("Skipped")]
    assert_mentions(summary, f"Skipped {len(bad)} of {len(dataset)} images", bad[0], bad[1])


def test_skip_raises_once_the_bad_fraction_is_exceeded(tmp_path: Path) -> None:
    root, bad = _mixed_tree(tmp_path / "tree")
    # 1% of at least 100 images: the first bad one is tolerated, the second one is over the limit.
    # Seen counts the samples drawn (not the replacements tried): the two bad files.
    dataset = ImageFolderDataset(scan_folder(root), on_error="skip")
    paths = [dataset.index.paths[i].decode() for i in range(len(dataset))]
    dataset[paths.index(bad[0])]
    with pytest.raises(DataError) as err:
        dataset[paths.index(bad[1])]
    assert_mentions(str(err.value), "2 of 2 images", "max_bad_fraction=0.01", "data.on_error", bad[0], bad[1])


def test_skip_with_nothing_readable_raises(tmp_path: Path) -> None:
    for i in range(3):
        text_as_jpg(tmp_path / "tree" / "a" / f"{i}.jpg")
    dataset = ImageFolderDataset(scan_folder(tmp_path / "tree"), on_error=BadSamples("skip", max_fraction=1.0))
    with pytest.raises(DataError, match="None of the 3 images"):
        dataset[1]


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="on_error='ignore'"):
        BadSamples("ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"max_bad_fraction=1\.5"):
        ImageFolderDataModule("unused", max_bad_fraction=1.5)
    with pytest.raises(ConfigError, match="on_error"):
        TabularDataModule("unused.csv", target="y", on_error="drop")  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [0, 2])
def test_datamodule_skip_counts_sum_over_workers(tmp_path: Path, workers: int) -> None:
    root, bad = _mixed_tree(tmp_path / "tree" / "train")
    for label in ("a", "b"):
        _jpeg(tmp_path / "tree" / "val" / label / "0.jpg")
    dm = ImageFolderDataModule(
        tmp_path / "tree", train_transform=RGB_CROP.train, val_transform=RGB_CROP.val, on_error="skip",
        max_bad_fraction=0.5, loader={"batch_size": 4, "num_workers": workers},
    )  # fmt: skip
    dm.setup("fit")  # the statistics and the determinism check pass over bad files without counting them
    assert dm.bad_samples == {}
    loader = dm.train_dataloader()
    for epoch in range(2):
        images, _ = zip(*list(loader), strict=True)
        n = len(dm.dataset("train"))
        assert sum(len(x) for x in images) == n
        report = dm.bad_samples["train"]
        assert report["skipped"] == len(bad) * (epoch + 1)  # each bad file is met once per epoch
        assert report["seen"] == n * (epoch + 1)  # each sample once (a replacement is not a sample drawn)
    assert sorted(p.removeprefix(str(root) + "/") for p in report["first"]) == sorted(bad)
    assert pickle.loads(pickle.dumps(dm)).bad_samples["train"]["skipped"] == 2 * len(bad)
    dm.teardown("fit")


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_next_to_each_other_are_each_counted_once(tmp_path: Path, workers: int) -> None:
    """Six empty files in a row (a copy cut short): each is one skip per epoch, and max_bad_fraction
    judges the true share, 9% (the k-th of the run was counted k times: 21 skips of 81 "seen", 26%,
    and the run stopped at max_bad_fraction=0.2)."""
    for label in ("a", "b"):
        for i in range(30):
            _jpeg(tmp_path / "tree" / "train" / label / f"{i:02d}.jpg", seed=i + 40 * (label == "b"))
        _jpeg(tmp_path / "tree" / "val" / label / "0.jpg")
    for name in "abcdef":
        (tmp_path / "tree" / "train" / "a" / f"05{name}.jpg").write_bytes(b"")  # in a row: after 05.jpg, before 06.jpg
    dm = ImageFolderDataModule(
        tmp_path / "tree", train_transform=RGB_CROP.train, val_transform=RGB_CROP.val, on_error="skip",
        max_bad_fraction=0.2, loader={"batch_size": 4, "num_workers": workers},
    )  # fmt: skip
    dm.setup("fit")
    for epoch in range(2):
        images = sum(len(x) for x, _ in dm.train_dataloader())
        assert images == 66
        assert dm.bad_samples["train"]["skipped"] == 6 * (epoch + 1)
        assert dm.bad_samples["train"]["seen"] == 66 * (epoch + 1)
    dm.teardown("fit")


def test_datamodule_raise_names_the_file(tmp_path: Path) -> None:
    root, _ = _mixed_tree(tmp_path / "tree")
    dm = ImageFolderDataModule(
        root, train_transform=RGB_CROP.train, val_transform=RGB_CROP.val, val_fraction=0.2, mean=[0.5] * 3,
        std=[0.2] * 3, loader={"batch_size": 64, "shuffle": False},
    )  # fmt: skip
    dm.setup("fit")
    with pytest.raises(DataError, match=r"Cannot decode image '.*/(a|b)/\d+x\.jpg'"):
        next(iter(dm.train_dataloader()))
    assert dm.hparams["on_error"] == "raise"
    assert dm.hparams["max_bad_fraction"] == 0.01


# -- Images: evaluation leaves bad files out ----------------------------------------------------


def _eval_tree(root: Path) -> tuple[Path, Path]:
    """``root/with_bad`` (train and val, val with the broken files) and ``root/clean`` (the same without them)."""
    for tree in ("with_bad", "clean"):
        for label in ("a", "b"):
            for i in range(6):
                _jpeg(root / tree / "train" / label / f"{i}.jpg", seed=i)
        _mixed_tree(root / tree / "val")
    for name in ("with_bad", "clean"):
        if name == "clean":
            for path in sorted((root / name / "val").rglob("*x.jpg")):
                path.unlink()
    return root / "with_bad", root / "clean"


def _val_batches(dm: ImageFolderDataModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dm.setup("fit")
    return list(dm.val_dataloader())


@pytest.mark.parametrize("crop", [False, True])
def test_drop_bad_leaves_a_bad_image_out_of_its_batch(tmp_path: Path, crop: bool) -> None:
    root, bad = _mixed_tree(tmp_path / "tree")
    index = scan_folder(root)
    transform = RGB_CROP.val if crop else create_transforms(image_size=16, fast_decode=False).val
    dataset = ImageFolderDataset(index, transform, on_error=BadSamples("skip", 0.5), drop_bad=True)
    reference = ImageFolderDataset(index, transform, on_error=BadSamples("skip", 0.5))
    paths = [index.paths[i].decode() for i in range(len(index))]
    good = [i for i, p in enumerate(paths) if p not in bad]
    assert all(dataset[paths.index(name)] is None for name in bad)
    batch = dataset.__getitems__(range(len(index)))
    if crop:  # gathered whole: the good images in order, no gaps, no replacements
        images, labels = batch
    else:
        images, labels = DropMissing(collate_images)(batch)
    assert len(images) == len(good)
    for j, i in enumerate(good):
        assert torch.equal(images[j], reference[i][0])
        assert int(labels[j]) == int(index.targets[i])
    assert dataset.bad_samples.counts[1] == 2 * len(bad)  # once per dataset[i] above, once in the batch


@pytest.mark.parametrize(
    ("cache", "backend", "workers"),
    [(None, "torch", 0), (None, "torch", 2), (None, "threads", 2), ("memory", "torch", 0), ("disk", "torch", 2)],
)
def test_evaluation_counts_each_readable_image_once(
    tmp_path: Path, cache: str | None, backend: str, workers: int
) -> None:
    with_bad, clean = _eval_tree(tmp_path)

    def module(root: Path) -> ImageFolderDataModule:
        return ImageFolderDataModule(
            root, train_transform=RGB_CROP.train, val_transform=RGB_CROP.val, on_error="skip",
            max_bad_fraction=0.5, cache=cache, cache_size=24 if cache else None,
            cache_dir=str(tmp_path / "cache" / root.name),
            loader={"batch_size": 4, "num_workers": workers, "backend": backend},
        )  # fmt: skip

    dm = module(with_bad)
    got = _val_batches(dm)
    expected = _val_batches(module(clean))
    images = torch.cat([b[0] for b in got])
    assert torch.equal(images, torch.cat([b[0] for b in expected]))  # the readable ones, once each, in order
    assert torch.equal(torch.cat([b[1] for b in got]), torch.cat([b[1] for b in expected]))
    assert dm.bad_samples["val"]["skipped"] == len(BROKEN)
    if cache == "disk":  # reloaded from disk, the cache still knows which images were left out
        again = module(with_bad)
        assert torch.equal(torch.cat([b[0] for b in _val_batches(again)]), images)
        assert again.bad_samples["val"]["skipped"] == 0  # nothing decoded: read from the cache


def test_validation_metrics_are_those_of_the_readable_images(tmp_path: Path) -> None:
    import lightning as L

    from chute.models import ImageClassifier

    with_bad, clean = _eval_tree(tmp_path)
    results = []
    for root in (with_bad, clean):
        dm = ImageFolderDataModule(
            root, train_transform=RGB_CROP.train, val_transform=RGB_CROP.val, on_error="skip", max_bad_fraction=0.5,
            loader={"batch_size": 3, "num_workers": 0}, mean=[0.5] * 3, std=[0.25] * 3,
        )  # fmt: skip
        torch.manual_seed(0)
        model = ImageClassifier(num_classes=2, backbone="small_cnn")
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        results.append(trainer.validate(model, datamodule=dm, verbose=False)[0])
    assert results[0] == pytest.approx(results[1])


@pytest.mark.parametrize("collate", [None, "chute.collate.collate_images"])  # gathered whole, or per sample
@pytest.mark.parametrize(("backend", "workers"), [("torch", 0), ("torch", 2), ("threads", 2)])
def test_no_empty_batch_reaches_the_model(tmp_path: Path, collate: str | None, backend: str, workers: int) -> None:
    """A validation batch whose every image is unreadable is left out by the loader: a user's own
    model, which knows nothing of bad samples, never receives a batch without samples."""
    import lightning as L

    for i in range(2):  # sorted first: with batch 2, the first validation batch is all bad
        text_as_jpg(tmp_path / "tree" / "val" / "a" / f"0{i}.jpg")
    for i in range(3):
        _jpeg(tmp_path / "tree" / "val" / "a" / f"1{i}.jpg", seed=i)
        _jpeg(tmp_path / "tree" / "train" / "a" / f"{i}.jpg", seed=i)

    class Strict(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.sizes: list[int] = []

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
            images, labels = batch
            assert images.shape[0] > 0, tuple(images.shape)
            assert images.shape[2:] == (16, 16), tuple(images.shape)
            self.sizes.append(len(labels))

    dm = ImageFolderDataModule(
        tmp_path / "tree", train_transform=RGB_CROP.train, val_transform=RGB_CROP.val, on_error="skip",
        max_bad_fraction=1.0, collate_fn=collate, mean=[0.5] * 3, std=[0.25] * 3,
        loader={"batch_size": 2, "num_workers": workers, "backend": backend},
    )  # fmt: skip
    model = Strict()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(model, datamodule=dm, verbose=False)
    assert sorted(model.sizes) == [1, 2]  # the three readable images, the all-bad batch left out


def test_good_jpegs_decode_to_the_same_pixels_as_torchcodec(tmp_path: Path) -> None:
    from torchcodec.decoders import decode_image

    # read_image decodes JPEGs with chute's strict libjpeg-turbo path: it must not change any pixel.
    for subsampling in (0, 1, 2):
        path = tmp_path / f"{subsampling}.jpg"
        Image.fromarray(_pixels(subsampling, (61, 47))).save(path, quality=85, subsampling=subsampling)
        for mode, codec in (("RGB", "RGB"), ("L", "GRAY")):
            expected = decode_image(path.read_bytes(), mode=codec)
            assert torch.equal(read_image(str(path), mode), expected)  # type: ignore[arg-type]


# -- Tables ------------------------------------------------------------------------------------


def _csv(path: Path, rows: list[str]) -> str:
    path.write_text("\n".join(["x,label", *rows]) + "\n")
    return str(path)


def _rows(n: int, bad: dict[int, str]) -> list[str]:
    """``n`` data rows ``i,a|b``; row ``r`` (1-based) replaced by ``bad[r]``."""
    return [bad.get(r, f"{r},{'ab'[r % 2]}") for r in range(1, n + 1)]


def test_csv_row_with_wrong_field_count_raises_naming_file_line_and_counts(tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", _rows(20, {7: "7,a,extra"}))
    with pytest.raises(DataError) as err:
        TabularDataModule(path, target="label").setup("fit")
    assert_mentions(str(err.value), "t.csv", "line 8", "expected 2 fields", "found 3", "'7,a,extra'", "on_error=skip")


@pytest.mark.parametrize("module", ["tabular", "multitask"])
def test_csv_skip_drops_bad_rows_counts_them_and_keeps_row_numbers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, module: str
) -> None:
    path = _csv(tmp_path / "t.csv", _rows(200, {7: "7,a,extra", 50: "50"}))
    kwargs = {"on_error": "skip", "val_path": path}
    dm = (
        TabularDataModule(path, target="label", **kwargs)  # type: ignore[arg-type]
        if module == "tabular"
        else MultiTaskDataModule(path, tasks={"label": {"type": "classification"}}, **kwargs)  # type: ignore[arg-type]
    )
    with caplog.at_level(logging.WARNING, logger="chute.bad_samples"):
        dm.setup("fit")
    assert len(dm.dataset("train")) == 198
    report = dm.bad_samples["train"]
    assert (report["seen"], report["skipped"]) == (200, 2)
    assert report["first"] == [f"'{path}', line 8", f"'{path}', line 51"]
    assert any("Skipped 2 of 200 rows" in r.getMessage() for r in caplog.records)
    # Later errors still name the row's own number in the file, not its position after skipping.
    later = _csv(tmp_path / "u.csv", _rows(200, {7: "7,a,extra", 60: "abc,b"}))
    with pytest.raises(DataError, match=r"'abc' at '.*u\.csv', row 60"):
        TabularDataModule(later, target="label", numeric=["x"], on_error="skip", val_path=later).setup("fit")


def test_csv_skip_raises_past_the_bad_fraction(tmp_path: Path) -> None:
    path = _csv(tmp_path / "t.csv", _rows(200, {r: f"{r},a,x" for r in (3, 9, 27)}))
    with pytest.raises(DataError) as err:
        TabularDataModule(path, target="label", on_error="skip").setup("fit")
    assert_mentions(str(err.value), "3 of 200 rows", "max_bad_fraction=0.01", "line 4", "line 10")
    dm = TabularDataModule(path, target="label", on_error="skip", max_bad_fraction=0.02)
    dm.setup("fit")
    assert dm.bad_samples["train"]["skipped"] == 3


# -- Streams -----------------------------------------------------------------------------------


def _shards(root: Path, n: int = 60, per_shard: int = 20) -> Path:
    samples = [(torch.tensor([float(i)]), i % 2) for i in range(n)]
    splits = {name: write_shards(samples, root, name, per_shard) for name in ("train", "val")}
    write_index(root, splits)
    return root


def _corrupt(path: Path, line: int, text: str = "{not json") -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_jsonl_line_that_is_not_json_raises_naming_shard_and_line(tmp_path: Path) -> None:
    root = _shards(tmp_path / "shards")
    _corrupt(root / "train-00001.jsonl", 5)
    dm = StreamingDataModule(root, loader={"batch_size": 8})
    dm.setup("fit")
    with pytest.raises(DataError) as err:
        list(dm.train_dataloader())
    assert_mentions(str(err.value), "train-00001.jsonl", "line 5", "is not JSON", "on_error=skip")


@pytest.mark.parametrize("workers", [0, 2])
def test_jsonl_skip_drops_the_line_counts_it_and_raises_past_the_fraction(tmp_path: Path, workers: int) -> None:
    root = _shards(tmp_path / "shards")
    _corrupt(root / "train-00000.jsonl", 3)
    _corrupt(root / "train-00002.jsonl", 20, '{"tensor": [1], "dtype": "no_such_dtype"}')
    dm = StreamingDataModule(
        root, on_error="skip", max_bad_fraction=0.05, loader={"batch_size": 8, "num_workers": workers}
    )
    dm.setup("fit")
    features = torch.cat([batch[0] for batch in dm.train_dataloader()])
    assert len(features) == 58  # two samples fewer than the index counts
    assert 2.0 not in features  # line 3 of the first shard
    assert 59.0 not in features  # line 20 of the last
    report = dm.bad_samples["train"]
    assert (report["seen"], report["skipped"]) == (60, 2)
    assert sorted(report["first"]) == sorted(
        [f"'{root / 'train-00000.jsonl'}', line 3", f"'{root / 'train-00002.jsonl'}', line 20"]
    )
    strict = StreamingDataModule(root, on_error="skip", loader={"batch_size": 8, "num_workers": workers})
    strict.setup("fit")
    _corrupt(root / "train-00001.jsonl", 1)  # 2 or 3 (each reader raises at its own) of at least 100 is over 1%
    with pytest.raises(DataError, match=r"[23] of \d+ lines read so far were bad .*max_bad_fraction=0.01"):
        list(strict.train_dataloader())


def _table_shards(root: Path) -> Path:
    """A tabular copy's shards: 30 features and a label per line, 150 lines of train in 3 shards."""
    samples = [(torch.full((30,), float(i)), i % 2) for i in range(150)]
    splits = {name: write_shards(samples, root, name, 50) for name in ("train", "val")}
    write_index(root, splits)
    return root


_THREE_FEATURES = '{"tuple":[{"tensor":[1.0,2.0,3.0],"dtype":"float32"},1]}'


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no `validation_step`")
def test_a_shard_row_with_fewer_features_stops_training_naming_it(tmp_path: Path) -> None:
    """A row of 3 features among rows of 30 was zero-padded to 30 by the collate function (which pads
    variable-length fields) and trained on, silently; now it is named like a line that is not JSON."""
    from tests.helpers import fit_recording

    root = _table_shards(tmp_path / "shards")
    _corrupt(root / "train-00001.jsonl", 7, _THREE_FEATURES)
    with pytest.raises(DataError) as err:
        fit_recording(StreamingDataModule(root, loader={"batch_size": 16}), tmp_path)
    assert_mentions(
        str(err.value), "train-00001.jsonl", "line 7", "sample[0] has shape (3,) where the split's samples have (30,)"
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_a_shard_row_unlike_the_others_is_skipped_and_counted(tmp_path: Path, workers: int) -> None:
    root = _table_shards(tmp_path / "shards")
    _corrupt(root / "train-00000.jsonl", 4, _THREE_FEATURES)
    _corrupt(root / "train-00002.jsonl", 9, '{"tuple":[{"tensor":' + str([0] * 30) + ',"dtype":"int64"},1]}')
    loader = {"batch_size": 16, "num_workers": workers}
    dm = StreamingDataModule(root, on_error="skip", max_bad_fraction=0.05, loader=loader)
    dm.setup("fit")
    features = torch.cat([batch[0] for batch in dm.train_dataloader()])
    assert features.shape == (148, 30)
    assert 3.0 not in features[:, 0]  # the two lines replaced
    assert 108.0 not in features[:, 0]
    report = dm.bad_samples["train"]
    assert (report["seen"], report["skipped"]) == (150, 2)
    assert sorted(report["first"]) == sorted(
        [f"'{root / 'train-00000.jsonl'}', line 4", f"'{root / 'train-00002.jsonl'}', line 9"]
    )


@pytest.mark.parametrize("compress", ["gzip", "bz2"])
def test_a_compressed_shard_is_named_as_compressed(tmp_path: Path, compress: str) -> None:
    """A gzipped shard under the index's name was "line 1 is not UTF-8 text (byte 0x8b ...)"."""
    import importlib

    root = _table_shards(tmp_path / "shards")
    shard = root / "train-00001.jsonl"
    shard.write_bytes(importlib.import_module(compress).compress(shard.read_bytes()))
    dm = StreamingDataModule(root, on_error="skip", loader={"batch_size": 16})
    dm.setup("fit")
    with pytest.raises(DataError) as err:
        list(dm.train_dataloader())
    name = {"gzip": "gzip", "bz2": "bzip2"}[compress]
    assert_mentions(str(err.value), "train-00001.jsonl", f"is {name}-compressed", "plain JSONL", "decompress")


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_a_dangling_symlink_is_a_bad_sample_in_the_disk_cache_build(tmp_path: Path, on_error: str) -> None:
    """A file that cannot even be stat'ed (a link to nothing) is named and, with skip, counted."""
    for label in ("a", "b"):
        for i in range(4):
            _jpeg(tmp_path / "tree" / "train" / label / f"{i}.jpg", seed=i)
            _jpeg(tmp_path / "tree" / "val" / label / f"{i}.jpg", seed=i)
    dangling = tmp_path / "tree" / "train" / "a" / "gone.jpg"
    dangling.symlink_to(tmp_path / "nowhere.jpg")
    dm = ImageFolderDataModule(
        tmp_path / "tree", train_transform=RGB_CROP.train, val_transform=RGB_CROP.val, cache="disk", cache_size=24,
        cache_dir=str(tmp_path / "cache"), on_error=on_error, max_bad_fraction=0.5, loader={"batch_size": 4},
    )  # fmt: skip

    def build_and_read() -> list[Any]:
        dm.setup("fit")
        return list(dm.train_dataloader())

    if on_error == "raise":
        with pytest.raises(DataError, match=r"gone\.jpg"):
            build_and_read()
        return
    build_and_read()
    labels = torch.cat([b[1] for b in dm.train_dataloader()])
    assert len(labels) == 9  # every image of the split; the bad one replaced by a readable one
    assert dm.bad_samples["train"]["skipped"] == 1
    assert any("gone.jpg" in name for name in dm.bad_samples["train"]["first"])


def test_a_bad_sample_early_in_a_later_pass_is_judged_over_the_whole_pass() -> None:
    """1 bad line in 113, read pass after pass (each validation run): the second pass's bad line came
    at its start and was judged as 2 of 114 (over 1%), which stopped runs at epoch 0's validation
    (the sanity check is the first pass). Each pass is judged as a whole now; a share over the limit
    still stops."""
    from chute.bad_samples import BadSamples
    from chute.errors import DataError

    def read(policy: BadSamples, bad_at: set[int], passes: int = 4, size: int = 113) -> None:
        for _ in range(passes):
            for i in range(size):
                policy.seen()
                if i in bad_at:
                    policy.skip(f"line {i}", DataError(f"line {i} is bad"))

    policy = BadSamples("skip", 0.01, what="line")
    policy.per_pass = 113
    read(policy, {10})
    assert policy.counts == (452, 4)
    small = BadSamples("skip", 0.01, what="row")  # a split under min_seen: 1 bad per pass, as the first
    small.per_pass = 39
    read(small, {8}, size=39)
    assert small.counts == (156, 4)
    worse = BadSamples("skip", 0.01, what="line")
    worse.per_pass = 113
    with pytest.raises(DataError, match=r"more than data\.max_bad_fraction=0\.01 allows"):
        read(worse, {10, 50})  # 2 in 113: over 1% in every pass


def test_sql_validation_with_a_bad_row_passes_every_epoch(tmp_path: Path) -> None:
    """The same through SqlDataModule's loaders: three validation passes over 39 rows, one NULL label."""
    import sqlite3

    from chute.datamodules import SqlDataModule

    with sqlite3.connect(tmp_path / "t.db") as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x REAL, label TEXT)")
        db.executemany(
            "INSERT INTO t VALUES (?, ?, ?)",
            [(i, float(i), None if i == 9 else ("a" if i % 2 else "b")) for i in range(1, 196)],
        )
    dm = SqlDataModule(
        f"sqlite:///{tmp_path / 't.db'}", table="t", target="label", on_error="skip", loader={"batch_size": 64}
    )
    dm.setup("fit")
    counts = [sum(len(batch[1]) for batch in dm.val_dataloader()) for _ in range(3)]
    assert counts[1:] == counts[:-1]
    assert dm.bad_samples["val"]["skipped"] == 3  # key 9 falls in the validation split, counted each pass
