"""The GPU decode route: workers read JPEG bytes and draw the crops; the device decodes and cuts them.

Where the CPUs cannot decode as fast as the GPU trains, ``ImageFolderDataModule(decode="gpu")``
moves the decoding to the device: its workers (or loader threads) only read each file, check its
header (size, decompression-bomb limit, end-of-image marker) and draw the crop, the same box per
``(seed, epoch, index)`` as the CPU route (:meth:`~chute.transforms.fused.CropDecode.stored_region`).
A batch travels as :class:`EncodedImages`; :class:`DecodeImages`, the first step of the batch hook,
decodes it where the batch is: nvJPEG on CUDA (``decode_jpeg`` of a list: one batched call, on the
hardware JPEG engines of A100/H100-class GPUs), chute's strict libjpeg-turbo decoder on the CPU
(the same code path, so the tests exercise it without a GPU); then one resampling pass cuts,
resizes and turns every crop (:mod:`chute.transforms.crop_resize`).

Files nvJPEG does not take are decoded by the worker as the CPU route decodes them and travel as
pixels: other formats (PNG, WebP, ...), CMYK JPEGs, and grayscale output (``image_mode="L"``).
A JPEG nvJPEG refuses in the batch is tried alone, then by the strict CPU decoder; if that fails
too the file is bad: ``on_error="raise"`` names it, ``skip`` counts it and, in training, uses
another image of the batch in its place (in evaluation leaves it out).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from chute import exif
from chute.bad_samples import BadSamples
from chute.errors import DataError
from chute.transforms.crop_resize import crop_resize, pack, table
from chute.transforms.fused import _JPEG_MAGIC, CropDecode


class EncodedImages:
    """A batch of images still encoded, as the GPU decode route moves it.

    Attributes:
        data: The JPEG files' bytes end to end (``uint8``, stays on the CPU: nvJPEG reads host memory).
        offsets: ``(N + 1,)`` start of each file in ``data`` (rows decoded by the worker: empty).
        crops: ``(N, 4)`` ``x, y, width, height`` of each crop in the stored pixels.
        turns: ``(N, 3)`` transpose, mirror, upside-down of each output square.
        pixels: ``(M, S, S, C)`` ``uint8``: the rows the worker decoded itself, in order.
        decoded: ``(N,)`` ``bool``: which rows those are.
        paths: Each row's file, for errors.
        size: ``S``, the output side.
        split: The split the batch is of (its bad-sample policy decides what a bad file does).

    ``to(device)`` moves what the decoder reads on the device (the crops, the worker-decoded pixels)
    and keeps the bytes where nvJPEG wants them; Lightning calls it when it moves a batch.
    """

    def __init__(
        self,
        data: torch.Tensor,
        offsets: torch.Tensor,
        crops: torch.Tensor,
        turns: torch.Tensor,
        pixels: torch.Tensor,
        decoded: torch.Tensor,
        paths: list[str],
        size: int,
        split: str = "train",
        device: torch.device | None = None,
    ) -> None:
        self.data, self.offsets, self.crops, self.turns = data, offsets, crops, turns
        self.pixels, self.decoded, self.paths, self.size = pixels, decoded, paths, size
        self.split = split
        self.device = device or pixels.device

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def batch_rows(self) -> int:
        """The images it holds: what the loader counts as the batch's rows when it hands it out."""
        return len(self)

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[-1])

    def to(self, device: torch.device | str, non_blocking: bool = False, **_: Any) -> EncodedImages:
        device = torch.device(device)
        return EncodedImages(
            self.data, self.offsets, self.crops, self.turns, self.pixels.to(device, non_blocking=non_blocking),
            self.decoded, self.paths, self.size, self.split, device,
        )  # fmt: skip

    def pin_memory(self, *_: Any) -> EncodedImages:
        pixels = self.pixels.pin_memory() if self.pixels.numel() else self.pixels
        return EncodedImages(
            self.data, self.offsets, self.crops, self.turns, pixels, self.decoded, self.paths, self.size, self.split
        )

    def __repr__(self) -> str:
        return f"EncodedImages({len(self)} images, {int(self.decoded.sum())} decoded by the worker, size={self.size})"


class EncodedBatchWriter:
    """Builds an :class:`EncodedImages` batch in a worker, one file at a time (see ``ImageFolderDataset``)."""

    def __init__(self, transform: CropDecode, channels: int, capacity: int, split: str = "train") -> None:
        self.transform, self.channels, self.split = transform, channels, split
        size = transform.size
        self.files: list[bytes] = []
        self.crops = np.zeros((capacity, 4), dtype=np.int32)
        self.turns = np.zeros((capacity, 3), dtype=np.uint8)
        self.decoded = np.zeros(capacity, dtype=bool)
        self.pixels: list[np.ndarray] = []
        self.paths: list[str] = []
        self._scratch = np.empty((size, size, channels), dtype=np.uint8)

    def takes(self, data: bytes, header: tuple[int, int] | None) -> bool:
        """Whether the device decodes this file (a JPEG nvJPEG reads, to RGB)."""
        return header is not None and self.channels == 3 and data.startswith(_JPEG_MAGIC)

    def add_encoded(self, path: str, data: bytes, header: tuple[int, int], rng: random.Random | None) -> None:
        row = len(self.paths)
        cut = self.transform.stored_region(header[0], header[1], exif.orientation(data), rng)
        self.crops[row] = (cut.x, cut.y, cut.width, cut.height)
        self.turns[row] = (cut.transpose, cut.mirror, cut.upside_down)
        self.files.append(data)
        self.paths.append(path)

    def add_decoded(self, path: str, pixels: np.ndarray) -> None:
        self.decoded[len(self.paths)] = True
        self.pixels.append(pixels.copy())
        self.files.append(b"")
        self.paths.append(path)

    def scratch(self) -> np.ndarray:
        return self._scratch

    def finish(self) -> EncodedImages:
        n = len(self.paths)
        sizes = np.array([len(f) for f in self.files], dtype=np.int64)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        data = (
            torch.frombuffer(bytearray(b"".join(self.files)), dtype=torch.uint8)
            if offsets[-1]
            else torch.empty(0, dtype=torch.uint8)
        )
        size = self.transform.size
        pixels = (
            torch.from_numpy(np.stack(self.pixels))
            if self.pixels
            else torch.empty((0, size, size, self.channels), dtype=torch.uint8)
        )
        return EncodedImages(
            data, torch.from_numpy(offsets), torch.from_numpy(self.crops[:n].copy()),
            torch.from_numpy(self.turns[:n].copy()), pixels, torch.from_numpy(self.decoded[:n].copy()),
            self.paths, size, self.split,
        )  # fmt: skip


class DecodeImages:
    """The batch hook's first step on the GPU route: ``(EncodedImages, targets)`` -> ``(uint8 images, targets)``.

    Images come out ``(N, C, S, S)`` ``uint8`` in channels-last memory, as the CPU route's batches, on
    the batch's device; the rest of the hook (normalization, device augmentation) follows as usual.
    Batches that are not encoded pass through.

    Args:
        policies: Each split's bad-sample policy (counts shared with its workers), by name; a split
            not named raises at its first bad file. Training uses another image of the batch in a
            bad one's place; other splits leave it out.
    """

    def __init__(self, policies: dict[str, BadSamples] | None = None) -> None:
        self.policies = dict(policies or {})
        self._raise = BadSamples("raise", what="image")

    def __call__(self, batch: Any) -> Any:
        if not (isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], EncodedImages)):
            return batch
        encoded: EncodedImages = batch[0]
        images, good = self.decode(encoded)
        rest = list(batch[1:])
        if not bool(good.all()):
            keep = torch.nonzero(good).flatten()
            if encoded.split != "train" or len(keep) == 0:
                rows = keep
            else:  # training: each bad row takes a good row's image and target (the step stays full)
                rows = torch.arange(len(good))
                bad_rows = torch.nonzero(~good).flatten()
                rows[bad_rows] = keep[torch.arange(len(bad_rows)) % len(keep)]
            images = images[rows.to(images.device)]
            rest = [_take(r, rows) for r in rest]
        return type(batch)([images.permute(0, 3, 1, 2), *rest])

    def decode(self, encoded: EncodedImages) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, S, S, C)`` ``uint8`` images on ``encoded.device`` and which rows decoded."""
        device, size, channels = encoded.device, encoded.size, encoded.channels
        n = len(encoded)
        out = torch.empty((n, size, size, channels), dtype=torch.uint8, device=device)
        good = [True] * n
        decoded_here = encoded.decoded.tolist()
        rows = [r for r in range(n) if not decoded_here[r]]
        if encoded.pixels.shape[0]:
            out[encoded.decoded.to(device)] = encoded.pixels
        if rows:
            decoded = self._decode_files(encoded, rows, device, good)
            kept = [r for r in rows if good[r]]
            if kept:
                pixels = [decoded[r] for r in kept]
                flat, starts = pack(pixels)
                meta = table(pixels, starts, encoded.crops[kept], encoded.turns[kept])
                at = torch.tensor(kept).pin_memory() if device.type == "cuda" else torch.tensor(kept)
                out[at.to(device, non_blocking=True)] = crop_resize(flat, meta, size, channels)
        return out, torch.tensor(good)

    def _decode_files(
        self, encoded: EncodedImages, rows: list[int], device: torch.device, good: list[bool]
    ) -> dict[int, torch.Tensor]:
        offsets = encoded.offsets.tolist()
        files = [encoded.data[offsets[r] : offsets[r + 1]] for r in rows]
        if device.type == "cuda":
            try:
                return dict(zip(rows, _nvjpeg(files, device), strict=True))
            except RuntimeError:
                pass  # one file spoils the batch call: find it (and decode the rest) one by one
        out: dict[int, torch.Tensor] = {}
        for row, data in zip(rows, files, strict=True):
            try:
                out[row] = self._decode_one(encoded, row, data, device)
            except DataError as err:
                good[row] = False
                self.policies.get(encoded.split, self._raise).skip(encoded.paths[row], err)  # raises unless skipping
        return out

    @staticmethod
    def _decode_one(encoded: EncodedImages, row: int, data: torch.Tensor, device: torch.device) -> torch.Tensor:
        if device.type == "cuda":
            try:
                return _nvjpeg([data], device)[0]
            except RuntimeError:
                pass  # nvJPEG cannot take it: the strict CPU decoder says whether it is damaged
        from chute.images import _decode_jpeg, check_image_size

        path, raw = encoded.paths[row], data.numpy().tobytes()
        size = check_image_size(path, raw)
        if size is None:
            raise DataError(f"Cannot decode image '{path}': not a JPEG the decoders take. The file is corrupt.")
        try:
            return _decode_jpeg(raw, "RGB", *size).to(device)
        except Exception as err:  # the decoder's DecodeError / ValueError
            raise DataError(f"Cannot decode image '{path}': {err}. The file is corrupt or not an image.") from err

    def __repr__(self) -> str:
        return "DecodeImages()"


def _take(value: Any, rows: torch.Tensor) -> Any:
    if isinstance(value, torch.Tensor):
        return value[rows.to(value.device)]
    if isinstance(value, (list, tuple)):
        return type(value)(value[int(i)] for i in rows)
    return value


def _nvjpeg(files: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Decode ``files`` (CPU ``uint8`` tensors of JPEG bytes) to RGB on ``device`` in one batched call."""
    return _jpeg_decoder()(list(files), device)


_DECODER: Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]] | None = None


def _jpeg_decoder() -> Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]:
    """TorchCodec's ``decode_jpeg`` where it has one (0.16+), else torchvision's (deprecated since 0.29)."""
    global _DECODER
    if _DECODER is None:
        try:
            from torchcodec.decoders import decode_jpeg as codec

            def decode(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
                return list(codec(files, mode="RGB", device=device))

        except ImportError:
            from torchvision.io import ImageReadMode
            from torchvision.io import decode_jpeg as vision

            def decode(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # the deprecation notice, once per call
                    return list(vision(files, mode=ImageReadMode.RGB, device=device))

        _DECODER = decode
    return _DECODER
