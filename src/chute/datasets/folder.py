"""The image-folder dataset: decodes the images of a :class:`~chute.datasets.folder_index.FolderIndex`
one by one, a batch at a time into shared memory, crop-aware, or as encoded bytes for the GPU."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from chute.bad_samples import BadSamples, LeftOut, OnError
from chute.datasets.folder_index import FolderIndex
from chute.errors import ConfigError, DataError
from chute.images import ImageMode, channels_of, check_image_size, decode_bytes, read_bytes, read_image
from chute.loader import SharedEpoch, sample_seed, seeded_call
from chute.loader.buffers import batch_buffer
from chute.loader.workers import name_samples
from chute.transforms.device_decode import EncodedBatchWriter, EncodedImages
from chute.transforms.fused import CropDecode


class ImageFolderDataset(Dataset[tuple[Any, int] | None]):
    """Decoded, transformed images of a :class:`FolderIndex` as ``(image, label)`` pairs.

    With a crop-aware transform (:class:`~chute.transforms.fused.CropDecode`, what
    ``create_transforms`` builds by default), JPEG files are decoded straight to the crop and
    ``__getitems__`` writes a whole batch into one ``uint8`` tensor (``(N, C, H, W)`` in
    channels-last memory, in shared memory inside a DataLoader worker) with no per-sample collate;
    other files and transforms take the generic path (decode, then the transform).

    Args:
        index: The split's files and labels.
        transform: Callable applied to the ``uint8`` ``(C, H, W)`` tensor (``None``: none).
        image_mode: ``"RGB"`` or ``"L"``.
        gather: Let ``__getitems__`` return collated ``(images, labels)`` batches (needs a
            ``CropDecode`` transform; the DataModule turns it off for a custom ``collate_fn``).
        seed: Key each sample's augmentation by ``(seed, epoch, index)`` (:func:`~chute.loader.sample_seed`)
            instead of the loading process's random state, so batches are the same whatever
            ``num_workers`` (or threads) load them; ``set_epoch`` moves to the next epoch's draws.
            ``None``: the transform's own generators (reseeded per worker).
        on_error: What a file that cannot be read does (corrupt, truncated, empty, not an image, over
            the decompression-bomb limit): ``"raise"`` its :class:`~chute.errors.DataError`, which
            names the file and the reason, or ``"skip"``: use the next index that reads instead (wrapping
            around; its own label and augmentation seed), count and log it, and raise once more than
            1% are bad. A :class:`~chute.bad_samples.BadSamples` sets the fraction and shares its
            counts (across DataLoader workers, and between datasets of one split).
        drop_bad: With ``on_error="skip"``, leave a bad image out instead of replacing it
            (evaluation: every readable image counted exactly once, none twice). ``__getitem__`` then
            returns ``None`` for it, and ``__getitems__`` a batch without it; :class:`DropMissing`
            wraps a collate function to do the same with samples. Each one left out is marked in
            :attr:`left_out`, where the loader finds the indices of a batch's remaining samples.
        encoded: The GPU decode route (:mod:`chute.transforms.device_decode`): ``__getitems__``
            reads the files, checks their headers and draws each crop, and returns
            ``(EncodedImages, labels)`` for the batch hook to decode; files the device does not
            decode are decoded here as on the CPU route. Needs a ``CropDecode`` transform.
        split: The split's name, carried by encoded batches (the hook applies its bad-file policy).
        marks: Keep :attr:`left_out` (``False`` for a cache's source: the cache records what it left out).
    """

    def __init__(
        self,
        index: FolderIndex,
        transform: Callable[[torch.Tensor], Any] | None = None,
        image_mode: ImageMode = "RGB",
        gather: bool = True,
        seed: int | None = None,
        on_error: OnError | BadSamples = "raise",
        drop_bad: bool = False,
        encoded: bool = False,
        split: str = "train",
        marks: bool = True,
    ) -> None:
        if encoded and not isinstance(transform, CropDecode):
            raise ConfigError("decode", "gpu", "needs the crop-aware transforms (create_transforms(fast_decode=True))")
        self.encoded, self.split = encoded, split
        self.index = index
        self.transform = transform
        self.image_mode = image_mode
        self.gather = gather
        self.seed = seed
        self.epoch = SharedEpoch() if seed is not None else None
        self.bad_samples = on_error if isinstance(on_error, BadSamples) else BadSamples(on_error, what="image")
        self.drop_bad = drop_bad
        #: The images left out of the current pass (``drop_bad`` with ``on_error="skip"``; else ``None``).
        self.left_out = LeftOut(len(index)) if drop_bad and self.bad_samples.skipping and marks else None

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentations the next samples get (seen by persistent workers too).

        Also logs how many images were skipped so far (``on_error="skip"``), if more than at the last call.
        """
        if self.epoch is not None:
            self.epoch.set(epoch)
        self.bad_samples.report(f"'{self.index.root}'")

    def _epoch(self) -> int | None:
        """The epoch that keys augmentations (``None``: not keyed); read once per batch."""
        return None if self.seed is None or self.epoch is None else self.epoch.get()

    def _sample_seed(self, i: int, epoch: int | None) -> int | None:
        return None if epoch is None or self.seed is None else sample_seed(self.seed, epoch, i)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Any, int] | None:
        epoch = self._epoch()
        if isinstance(self.transform, CropDecode):
            image, used = self._readable(int(i), lambda j: self._crop_decode(j, epoch))
            return None if used < 0 else (image, int(self.index.targets[used]))
        image, used = self._readable(int(i), lambda j: read_image(self.index.path(j), self.image_mode))
        if used < 0:
            return None
        if self.transform is not None:
            key = self._sample_seed(used, epoch)
            image = self.transform(image) if key is None else seeded_call(self.transform, image, key)
        return image, int(self.index.targets[used])

    def __getitems__(self, indices: Sequence[int]) -> Any:
        """A batch: collated ``(images, labels)`` on the crop-decode path, else a list of samples."""
        if not (self.gather and isinstance(self.transform, CropDecode)):
            samples = []
            for i in indices:
                try:
                    samples.append(self[int(i)])
                except Exception as err:  # a user's transform failing on one image: name that image
                    name_samples(err, self, [int(i)])
                    raise
            return samples
        if self.encoded:
            return self._encoded_batch(indices)
        rows = np.array(indices, dtype=np.int64)  # a copy: skipped rows are replaced in it
        size, channels = self.transform.size, channels_of(self.image_mode)
        images = batch_buffer((len(rows), size, size, channels))
        pixels = images.numpy()
        epoch = self._epoch()
        kept = 0  # images that read; with drop_bad, bad ones leave no gap
        for i in indices:
            _, used = self._readable(int(i), lambda k: self._crop_decode_into(k, epoch, pixels[kept]))  # noqa: B023
            if used >= 0:
                rows[kept] = used
                kept += 1
        images, rows = images[:kept], rows[:kept]
        return images.permute(0, 3, 1, 2), torch.from_numpy(self.index.targets[rows])

    def _encoded_batch(self, indices: Sequence[int]) -> tuple[EncodedImages, torch.Tensor]:
        """The GPU route's batch: bytes and crops of the JPEGs the device decodes, pixels of the rest."""
        transform = self.transform
        assert isinstance(transform, CropDecode)
        writer = EncodedBatchWriter(transform, channels_of(self.image_mode), len(indices), self.split)
        epoch = self._epoch()
        rows = []

        def load(k: int) -> None:
            path, key = self.index.path(k), self._sample_seed(k, epoch)
            data = read_bytes(path)
            header = check_image_size(path, data) if data.startswith(_JPEG_MAGIC) else None
            if writer.takes(data, header):
                assert header is not None
                writer.add_encoded(path, data, header, random.Random(key) if key is not None else None)
            else:  # decoded here, as the CPU route decodes it
                writer.add_decoded(path, self._crop_decode_into(k, epoch, writer.scratch()))

        for i in indices:
            _, used = self._readable(int(i), load)
            if used >= 0:
                rows.append(used)
        return writer.finish(), torch.from_numpy(self.index.targets[np.array(rows, dtype=np.int64)])

    def _readable(self, i: int, load: Callable[[int], _T]) -> tuple[_T, int]:
        """``(load(i), i)``; with ``on_error="skip"``, the first index from ``i`` on (wrapping) that loads,
        or with ``drop_bad`` ``(None, -1)`` when ``i`` does not load.

        Only sample ``i`` is counted (seen, and skipped when bad): a replacement that fails too is
        counted on its own turn, so a run of bad files next to each other counts each file once
        (it counted the k-th of a run k times, and max_bad_fraction stopped runs far under it)."""
        bad = self.bad_samples
        if not bad.skipping:
            return load(i), i
        n = len(self.index)
        bad.seen()
        for step in range(1 if self.drop_bad else n):  # drop_bad: no replacement is tried
            j = (i + step) % n
            try:
                return load(j), j
            except DataError as err:
                if step == 0:
                    bad.skip(self.index.path(j), err)  # raises past max_bad_fraction
        if self.drop_bad:
            if self.left_out is not None:
                self.left_out.mark(i)
            return None, -1  # type: ignore[return-value]
        raise DataError(
            f"None of the {n} images under '{self.index.root}' can be read (on_error=skip skipped them all); "
            f"first: {', '.join(bad.first)}."
        )

    def _crop_decode(self, i: int, epoch: int | None) -> torch.Tensor:
        """Image ``i`` of ``epoch`` through the crop-aware transform, as a ``(C, H, W)`` tensor."""
        transform = self.transform
        assert isinstance(transform, CropDecode)
        out = np.empty((transform.size, transform.size, channels_of(self.image_mode)), dtype=np.uint8)
        return torch.from_numpy(self._crop_decode_into(i, epoch, out)).permute(2, 0, 1)

    def _crop_decode_into(self, i: int, epoch: int | None, out: np.ndarray) -> np.ndarray:
        """Image ``i`` of ``epoch`` through the crop-aware transform, into ``out`` (``(H, W, C)``), which it
        returns (a batch's gather makes no tensor per image: 2-3% of its time)."""
        transform = self.transform
        assert isinstance(transform, CropDecode)
        path = self.index.path(i)
        key = self._sample_seed(i, epoch)
        rng = random.Random(key) if key is not None else None
        data = read_bytes(path)
        # The fast path decodes JPEGs itself: check the bomb limit first. The header read for that
        # also says whether libjpeg can take the file (not CMYK, not cut short) and its size.
        header = check_image_size(path, data) if data.startswith(_JPEG_MAGIC) else None
        if header is None or not transform.decode_into(data, out, self.image_mode == "L", rng, header):
            if key is not None:
                rng = random.Random(key)  # the generic path draws the same region
            out[...] = transform(decode_bytes(path, data, self.image_mode), rng=rng).permute(1, 2, 0).numpy()
        return out

    def reseed(self, seed: int) -> None:
        """Reseed the transform's own generators (called in each worker; see ``WorkerSeeder``)."""
        reseed = getattr(self.transform, "reseed", None)
        if callable(reseed):
            reseed(seed)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.index.class_names

    @property
    def targets(self) -> np.ndarray:
        return self.index.targets


class DropMissing:
    """``collate`` over the samples that are not ``None`` (those a ``drop_bad`` dataset left out).

    A batch whose every sample was left out becomes ``None``, which chute's loaders never hand to
    a model (:mod:`chute.loader.build`).
    """

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, samples: list[Any]) -> Any:
        if isinstance(samples, tuple):  # a batch the dataset gathered whole, already without them
            return self.collate(samples)
        present = [s for s in samples if s is not None]
        return self.collate(present) if present else None


_T = TypeVar("_T")
_JPEG_MAGIC = b"\xff\xd8\xff"
