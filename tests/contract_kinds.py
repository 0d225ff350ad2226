"""Every kind of data chute ships, as the contract suite (tests/test_contract.py) runs it.

Each kind writes small real files whose samples carry their own id (a table's only feature is the
row id, an image's first pixels encode it, a sequence's first token), builds its DataModule for
given loader settings, and reads the ids back from what the model received. A new DataModule
joins the suite with one line in :data:`KINDS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from chute.models.eval_loss import EvalLoss

SAMPLES = 23  # validation samples (and training rows): not a multiple of 2 or 3, so rank shares differ
TRAIN_IMAGES = 10
BATCH = 4
EVAL_BATCH = 16  # fewer evaluation batches than 3 ranks: a split by whole batches would starve a rank


def write_table(out: Path) -> Path:
    table = out / "table.csv"
    if not table.exists():
        out.mkdir(parents=True, exist_ok=True)
        table.write_text("id,label,value\n" + "".join(f"{i},c{i % 3},{i * 0.5}\n" for i in range(SAMPLES)))
    return table


def _table(out: Path, loader: Mapping[str, Any]) -> L.LightningDataModule:
    from chute.datamodules import TabularDataModule

    table = str(write_table(out))
    return TabularDataModule(table, target="label", numeric=["id"], standardize=False, val_path=table, loader=loader)


def _multitask(out: Path, loader: Mapping[str, Any]) -> L.LightningDataModule:
    from chute.datamodules import MultiTaskDataModule

    table = str(write_table(out))
    tasks = {"cls": {"column": "label", "type": "classification"}, "reg": {"column": "value", "type": "regression"}}
    return MultiTaskDataModule(table, tasks=tasks, numeric=["id"], standardize=False, val_path=table, loader=loader)


def _stream(out: Path, loader: Mapping[str, Any]) -> L.LightningDataModule:
    from chute.datamodules import StreamingDataModule
    from chute.datasets import ShardedCopy

    source = _table(out, {})
    return StreamingDataModule(out / "shards", prepare=ShardedCopy(source, 5), loader=loader, shuffle_buffer=8)


def import_litdata(out: Path, loader: Mapping[str, Any]) -> L.LightningDataModule:
    from chute.integrations import LitDataCopy, LitDataModule

    return LitDataModule(out / "chunks", prepare=LitDataCopy(_table(out, {}), chunk_size=5), loader=loader)


def write_sequences(out: Path) -> Path:
    root = out / "sequences"
    if not (root / "val.jsonl").exists():
        root.mkdir(parents=True, exist_ok=True)
        lines = "".join(
            json.dumps({"tokens": [i + 2] + [3] * (1 + i % 5), "label": i % 3}) + "\n" for i in range(SAMPLES)
        )
        (root / "train.jsonl").write_text(lines)
        (root / "val.jsonl").write_text(lines)
    return root


def _sequence(out: Path, loader: Mapping[str, Any]) -> L.LightningDataModule:
    from chute.datamodules import SequenceDataModule

    return SequenceDataModule(write_sequences(out), loader=loader)


def _each_sample(root: Path, ext: str, write: Callable[[Path, int], None]) -> Path:
    """``write(path, id)`` for every sample of the class-folder kinds: ``root/{train,val}/c<id % 3>/<id>.<ext>``."""
    if not (root / "val").exists():
        for split, n in (("train", TRAIN_IMAGES), ("val", SAMPLES)):
            for i in range(n):
                folder = root / split / f"c{i % 3}"
                folder.mkdir(parents=True, exist_ok=True)
                write(folder / f"{i:03d}.{ext}", i)
    return root


def write_images(out: Path) -> Path:
    """8x8 grey PNGs whose first two pixels hold the id."""
    from PIL import Image

    def write(path: Path, i: int) -> None:
        pixels = np.zeros((8, 8), dtype=np.uint8)
        pixels[0, 0], pixels[0, 1] = i // 256, i % 256
        Image.fromarray(pixels, mode="L").save(path)

    return _each_sample(out / "images", "png", write)


def _image(out: Path, loader: Mapping[str, Any], cls: type | None = None, **extra: Any) -> L.LightningDataModule:
    """The id-carrying PNGs with no random crop (``cls``: an ImageFolderDataModule subclass)."""
    from chute.datamodules import ImageFolderDataModule
    from chute.transforms import create_transforms

    t = create_transforms(image_size=8, crop_pct=1.0, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0)
    return (cls or ImageFolderDataModule)(
        write_images(out), image_mode="L", train_transform=t.train, val_transform=t.val, mean=[0.0], std=[1.0],
        channels_last=False, loader=loader, **extra,
    )  # fmt: skip


def _ray_images(out: Path, loader: Mapping[str, Any]) -> L.LightningDataModule:
    """The image kind read by Ray tasks on a local Ray instance (under DDP: rank 0's, joined by all)."""
    from chute.datamodules import RayImagesDataModule

    return _image(out, loader, RayImagesDataModule, num_cpus=2)


def write_jpegs(out: Path) -> Path:
    """16x16 RGB JPEGs of one grey level each, ``10 * id + 5``: the id survives JPEG coding."""
    from PIL import Image

    def write(path: Path, i: int) -> None:
        Image.fromarray(np.full((16, 16, 3), 10 * i + 5, dtype=np.uint8)).save(path, quality=95)

    return _each_sample(out / "jpegs", "jpg", write)


def _image_gpu_decode(out: Path, loader: Mapping[str, Any]) -> L.LightningDataModule:
    """The GPU decode route (workers read bytes, the hook decodes); on a CPU trainer the same code
    decodes on the CPU."""
    from chute.datamodules import ImageFolderDataModule

    return ImageFolderDataModule(
        write_jpegs(out), mean=[0.0] * 3, std=[1.0] * 3, channels_last=False, loader=loader, decode="gpu",
        transforms={"image_size": 8, "crop_pct": 1.0, "scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 0.0},
    )  # fmt: skip


def write_videos(out: Path) -> Path:
    """Six-frame videos whose every pixel is ``10 * id + 5``: the id survives lossy coding."""
    from chute.datasets.bundled.motion_clips import encode

    def write(path: Path, i: int) -> None:
        frames = np.full((6, 16, 16, 3), 10 * i + 5, dtype=np.uint8)
        encode(path, frames, 10, "libx264", {"preset": "veryfast", "crf": "0"}, 3)

    return _each_sample(out / "videos", "mkv", write)


def _video(out: Path, loader: Mapping[str, Any]) -> L.LightningDataModule:
    from chute.datamodules import VideoDataModule

    return VideoDataModule(
        write_videos(out), frames_per_clip=2, mean=[0.0] * 3, std=[1.0] * 3, loader=loader,
        transforms={"image_size": 8, "crop_pct": 1.0, "scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 0.0},
    )  # fmt: skip


def write_sql(out: Path) -> Path:
    """The contract table in a SQLite file (key ``id`` is the row id, as in the CSV)."""
    from chute.datasets.sql_ingest import load_table

    database = out / "table.db"
    if not database.exists():
        load_table(str(write_table(out)), f"sqlite:///{database}", "rows")
    return database


def _sql(out: Path, loader: Mapping[str, Any]) -> L.LightningDataModule:
    from chute.datamodules import SqlDataModule

    url = f"sqlite:///{write_sql(out)}"
    return SqlDataModule(
        url, table="rows", target="label", key="id", numeric=["id"], standardize=False, val_table="rows", loader=loader
    )


def _sql_stream(out: Path, loader: Mapping[str, Any]) -> L.LightningDataModule:
    from chute.datamodules import SqlDataModule

    url = f"sqlite:///{write_sql(out)}"
    return SqlDataModule(
        url, table="rows", target="label", key="id", numeric=["id"], standardize=False, val_table="rows", loader=loader,
        index="stream", shuffle_buffer=64,  # ranges of 4 rows (the batch size): 6 ranges, shuffled 16 at a time
    )  # fmt: skip


def _clip_ids(batch: Any) -> torch.Tensor:
    level = batch[0].float().flatten(1).mean(dim=1) * 255  # mean 0, std 1: the model sees x / 255
    return ((level - 5) / 10).round().long()


def _jpeg_ids(batch: Any) -> torch.Tensor:
    """Ids of decoded images (as the model gets them), or, from a loader alone, of the encoded files."""
    from chute.transforms.device_decode import EncodedImages

    if isinstance(batch[0], EncodedImages):
        return torch.tensor([int(Path(p).stem) for p in batch[0].paths])
    return _clip_ids(batch)


def _row_ids(batch: Any) -> torch.Tensor:
    inputs = batch["inputs"] if isinstance(batch, dict) else batch[0]
    return inputs[:, 0].round().long()


def _image_ids(batch: Any) -> torch.Tensor:
    pixels = (batch[0][:, 0, 0, :2].float() * 255).round().long()  # mean 0, std 1: the model sees x / 255
    return pixels[:, 0] * 256 + pixels[:, 1]


def _token_ids(batch: Any) -> torch.Tensor:
    return batch["inputs"][:, 0].long() - 2


@dataclass(frozen=True)
class Kind:
    """How the suite makes a kind's DataModule and reads sample ids off its batches."""

    make: Callable[[Path, Mapping[str, Any]], L.LightningDataModule]
    ids: Callable[[Any], torch.Tensor]
    train_samples: int = SAMPLES
    # Loader settings it supports (tests/contract_run.py SETTINGS): streams yield whole batches
    # themselves (no threads backend); LitData shards by worker (no autotuning).
    settings: tuple[str, ...] = ("w0", "w2", "t2", "auto")
    same_batches_any_workers: bool = True  # LitData's own order depends on the worker count
    write: Callable[[Path], Any] | None = None  # files written before any rank starts


KINDS: dict[str, Kind] = {
    "image": Kind(_image, _image_ids, train_samples=TRAIN_IMAGES, write=write_images),
    "table": Kind(_table, _row_ids, write=write_table),
    "multitask": Kind(_multitask, _row_ids, write=write_table),
    "sequence": Kind(_sequence, _token_ids, write=write_sequences),
    # read by worker processes, or on Ray by two Ray tasks (ray2) or a Ray Data pipeline of two (rd2)
    "stream": Kind(_stream, _row_ids, settings=("w0", "w2", "auto", "ray2", "rd2"), write=write_table),
    "litdata": Kind(import_litdata, _row_ids, settings=("w0", "w2"), same_batches_any_workers=False, write=write_table),
    "video": Kind(_video, _clip_ids, train_samples=TRAIN_IMAGES, write=write_videos),
    "image_gpu_decode": Kind(_image_gpu_decode, _jpeg_ids, train_samples=TRAIN_IMAGES, write=write_jpegs),
    "sql": Kind(_sql, _row_ids, write=write_sql),
    "sql_stream": Kind(_sql_stream, _row_ids, settings=("w0", "w2", "t2", "auto", "ray2"), write=write_sql),
    # Ray tasks read at once: 2, or as many as the cluster allows, or a Ray Data pipeline with 2
    # (no threads backend: Ray reads)
    "ray_images": Kind(
        _ray_images, _image_ids, train_samples=TRAIN_IMAGES, settings=("w2", "auto", "rd2"), write=write_images
    ),
}


def logits_of(ids: torch.Tensor) -> torch.Tensor:
    """Per-sample logits that depend on the id, so each sample has its own loss."""
    x = ids.float() / SAMPLES
    return torch.stack([x, 1 - x, 0.5 * torch.ones_like(x)], dim=1)


def expected_val_loss() -> float:
    ids = torch.arange(SAMPLES)
    return float(nn.functional.cross_entropy(logits_of(ids), ids % 3))


class Recorder(L.LightningModule):
    """Records the sample ids of every batch it receives, per stage; trains nothing."""

    def __init__(self, ids: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.read_ids = ids
        self.layer = nn.Linear(1, 1)
        self.eval_loss = EvalLoss()
        self.seen: dict[str, list[tuple[int, list[int]]]] = {"train": [], "val": [], "test": [], "predict": []}

    def _record(self, stage: str, batch: Any) -> torch.Tensor:
        ids = self.read_ids(batch)
        assert len(ids) > 0, f"an empty {stage} batch reached the model"
        self.seen[stage].append((self.current_epoch, ids.tolist()))
        return ids

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._record("train", batch)
        return sum(p.sum() for p in self.parameters()) * 0.0  # every step all-reduces: equal steps or a hang

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        ids = self._record("val", batch)
        loss = nn.functional.cross_entropy(logits_of(ids), ids % 3)
        self.eval_loss.log(self, "val", loss, len(ids), prog_bar=False, batch_idx=batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._record("test", batch)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._record("predict", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)
