"""Image-folder trees (``root/<class>/<image>``) as compact, worker-friendly datasets.

Over 300 lines because the index (paths in one NumPy buffer), the dataset that decodes from it and
the batch writer it fills share the index's layout; split apart, each would reach into the others.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from chute.bad_samples import BadSamples, OnError
from chute.errors import ConfigError, DataError
from chute.images import IMG_EXTENSIONS, ImageMode, channels_of, check_image_size, decode_bytes, read_bytes, read_image
from chute.loader import SharedEpoch, sample_seed, seeded_call
from chute.loader.buffers import batch_buffer
from chute.transforms.device_decode import EncodedBatchWriter, EncodedImages
from chute.transforms.fused import CropDecode


@dataclass(frozen=True)
class FolderIndex:
    """The files of one split: relative paths and integer labels, held in numpy arrays.

    Paths are stored as one fixed-width bytes array rather than a list of ``str``: DataLoader
    workers fork the parent, and touching the refcount of millions of Python strings would copy
    every page of the list into every worker (PyTorch issue #13246).
    """

    root: str
    paths: np.ndarray  # dtype "S<n>", paths relative to root, UTF-8
    targets: np.ndarray  # int64
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, index: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.paths[index]))

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.targets, minlength=len(self.class_names)).astype(np.int64)

    def subset(self, indices: np.ndarray) -> FolderIndex:
        return FolderIndex(self.root, self.paths[indices], self.targets[indices], self.class_names)


def scan_folder(
    root: str | os.PathLike[str],
    class_names: Sequence[str] | None = None,
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    what: str = "images",
) -> FolderIndex:
    """Index ``root/<class>/**/<file>`` (classes sorted by name, files sorted by path).

    Args:
        root: Folder holding one sub-folder per class.
        class_names: Classes expected (e.g. the training split's); a differing set raises.
        extensions: File name endings that count (lower case), e.g. ``chute.images.IMG_EXTENSIONS``.
        what: What the files are, for messages (``images``, ``videos``).

    Raises:
        DataError: ``root`` is missing or holds no class folders, a class folder holds no files,
            or the classes differ from ``class_names``.
    """
    root = os.fspath(root)
    kind = what.capitalize()[:-1] if what.endswith("s") else what.capitalize()  # "Image", "Video"
    if not os.path.isdir(root):
        raise DataError(f"{kind} folder '{root}' does not exist or is not a directory.")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not found:
        loose = [e.name for e in os.scandir(root) if e.is_file() and e.name.lower().endswith(extensions)]
        hint = f" It holds {len(loose)} loose {what}; move them into one folder per class." if loose else ""
        raise DataError(f"{kind} folder '{root}' has no class folders: expected '{root}/<class>/<{what[:-1]}>'.{hint}")
    if class_names is not None and list(class_names) != found:
        missing = sorted(set(class_names) - set(found))
        extra = sorted(set(found) - set(class_names))
        raise DataError(
            f"Classes in '{root}' differ from the training split's: missing {missing}, unexpected {extra}. "
            "Every split needs the same class folders."
        )
    paths: list[str] = []
    targets: list[int] = []
    walk = _Walk(root, extensions)
    for label, name in enumerate(found):
        files = walk.files(os.path.join(root, name))
        if not files:
            raise DataError(
                f"Class folder '{os.path.join(root, name)}' contains no {what} "
                f"(looked for {', '.join(extensions)}). Add some or remove the folder."
            )
        paths.extend(os.path.join(name, f) for f in files)
        targets.extend([label] * len(files))
    walk.check()
    # os.fsencode: the file system's own bytes, also for a name that is not valid UTF-8 (Python keeps
    # such bytes as surrogates; os.fsdecode in ``path`` turns them back, so the file still opens).
    encoded = np.array([os.fsencode(p) for p in paths], dtype=np.bytes_)
    return FolderIndex(root, encoded, np.asarray(targets, dtype=np.int64), tuple(found))


class _Walk:
    """The files below a split's class folders, each reached by exactly one path.

    Links are followed (a class folder, or a folder inside one, may be a link to data stored
    elsewhere), but a link that would index a file twice is an error naming it: a link to a folder
    already walked or holding one (``zz -> .`` in a split folder would make a class ``zz`` of every
    image, each under a wrong label; ``cats/again -> ..`` would never end), two links to one file,
    or a link to a file that is also indexed where it lies. Only links cost a system call: a tree
    without any is walked as before.
    """

    def __init__(self, root: str, extensions: tuple[str, ...]) -> None:
        self.extensions = extensions
        self.walked: list[tuple[str, str]] = [(os.path.realpath(root), root)]  # (real folder, path to it)
        self.linked: dict[str, str] = {}  # real file -> the link that reached it

    def files(self, folder: str) -> list[str]:
        """Files below ``folder`` (recursively) with one of the extensions, as sorted relative paths."""
        if os.path.islink(folder):
            self._enter(folder)
        out = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            kept = []
            for name in sorted(dirnames):
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    self._enter(path)
                kept.append(name)
            dirnames[:] = kept
            rel = os.path.relpath(dirpath, folder)
            for name in filenames:
                if self._counts(name):
                    path = os.path.join(dirpath, name)
                    if os.path.islink(path):
                        self._link(path)
                    out.append(name if rel == "." else os.path.join(rel, name))
        return sorted(out)

    def _counts(self, name: str) -> bool:
        return name.lower().endswith(self.extensions) and not name.startswith(".")

    def _enter(self, link: str) -> None:
        real = os.path.realpath(link)
        for walked, path in self.walked:
            if real == walked or real.startswith(walked + os.sep) or walked.startswith(real + os.sep):
                raise DataError(
                    f"'{link}' is a link to '{real}', which overlaps '{path}', a folder indexed already: its "
                    "files would be indexed twice (under two labels, or without end). Remove the link, or "
                    "point it at data that is not in the tree."
                )
        self.walked.append((real, link))

    def _link(self, link: str) -> None:
        real = os.path.realpath(link)
        if real in self.linked:
            raise DataError(
                f"'{link}' and '{self.linked[real]}' are links to the same file '{real}': it would be "
                "indexed twice. Keep one."
            )
        self.linked[real] = link

    def check(self) -> None:
        """After the walk: no linked file lies in a folder that was walked (it is indexed there too)."""
        for real, link in self.linked.items():
            for walked, path in self.walked:
                parts = os.path.relpath(real, walked).split(os.sep)
                indexed = self._counts(parts[-1]) and not any(p.startswith(".") for p in parts)
                if real.startswith(walked + os.sep) and indexed:
                    shown = os.path.join(path, *parts)
                    raise DataError(
                        f"'{link}' is a link to '{real}', which is indexed as '{shown}' too: each file "
                        "must appear once. Remove the link."
                    )


def discover_splits(
    root: str,
    split_dirs: dict[str, str],
    val_fraction: float,
    seed: int,
    extensions: tuple[str, ...] = IMG_EXTENSIONS,
    what: str = "images",
    missing_hint: str = "",
) -> dict[str, FolderIndex | None]:
    """The ``train``, ``val`` and ``test`` splits of a class-folder tree, as every folder DataModule finds them.

    Layouts: ``root/<train_dir>/<class>/*`` with ``root/<val_dir>/...`` (and optionally
    ``root/<test_dir>/...``); or ``root/<class>/*`` (or ``<train_dir>`` alone) with ``val_fraction``,
    a share of each class held out with :func:`stratified_split` seeded by ``seed``. Without a test
    split, ``test`` is the ``val`` index itself (the same object). ``split_dirs`` maps split names
    to folder names; ``missing_hint`` ends the error for a missing root.

    Raises:
        DataError: the root or a class folder is missing or empty, or classes differ between splits.
        ConfigError: ``val_fraction`` is set while a validation folder exists.
    """
    if not os.path.isdir(root):
        raise DataError(f"Dataset root '{root}' does not exist or is not a directory.{missing_hint}")
    split_path = {k: os.path.join(root, d) for k, d in split_dirs.items()}
    layered = os.path.isdir(split_path["train"])
    train = scan_folder(split_path["train"] if layered else root, extensions=extensions, what=what)
    val: FolderIndex | None = None
    has_val_dir = layered and os.path.isdir(split_path["val"])
    if has_val_dir and val_fraction > 0:
        raise ConfigError(
            "val_fraction", val_fraction,
            f"'{split_path['val']}' already is a validation split; set val_fraction=0 to use it",
        )  # fmt: skip
    if has_val_dir:
        val = scan_folder(split_path["val"], class_names=train.class_names, extensions=extensions, what=what)
    elif val_fraction > 0:
        keep, held = stratified_split(train.targets, val_fraction, seed)
        train, val = train.subset(keep), train.subset(held)
    test = val
    if layered and os.path.isdir(split_path["test"]):
        test = scan_folder(split_path["test"], class_names=train.class_names, extensions=extensions, what=what)
    return {"train": train, "val": val, "test": test}


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, holdout) keeping each class's share; seeded, so reproducible.

    Every class keeps at least one training sample; a class with two or more samples gives at least
    one to the holdout set.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction={fraction}: must be between 0 and 1 (exclusive)")
    rng = np.random.default_rng(seed)
    train, holdout = [], []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        members = members[rng.permutation(len(members))]
        n_holdout = min(max(round(len(members) * fraction), 1), len(members) - 1) if len(members) > 1 else 0
        holdout.append(members[:n_holdout])
        train.append(members[n_holdout:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(holdout))


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
            wraps a collate function to do the same with samples.
        encoded: The GPU decode route (:mod:`chute.transforms.device_decode`): ``__getitems__``
            reads the files, checks their headers and draws each crop, and returns
            ``(EncodedImages, labels)`` for the batch hook to decode; files the device does not
            decode are decoded here as on the CPU route. Needs a ``CropDecode`` transform.
        split: The split's name, carried by encoded batches (the hook applies its bad-file policy).
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
            return [self[int(i)] for i in indices]
        if self.encoded:
            return self._encoded_batch(indices)
        rows = np.array(indices, dtype=np.int64)  # a copy: skipped rows are replaced in it
        size, channels = self.transform.size, channels_of(self.image_mode)
        images = batch_buffer((len(rows), size, size, channels))
        pixels = images.numpy()
        epoch = self._epoch()
        kept = 0  # images that read; with drop_bad, bad ones leave no gap
        for i in indices:
            _, used = self._readable(int(i), lambda k: self._crop_decode(k, epoch, pixels[kept]))  # noqa: B023
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
                writer.add_decoded(path, self._crop_decode(k, epoch, writer.scratch()).permute(1, 2, 0).numpy())

        for i in indices:
            _, used = self._readable(int(i), load)
            if used >= 0:
                rows.append(used)
        return writer.finish(), torch.from_numpy(self.index.targets[np.array(rows, dtype=np.int64)])

    def _readable(self, i: int, load: Callable[[int], _T]) -> tuple[_T, int]:
        """``(load(i), i)``; with ``on_error="skip"``, the first index from ``i`` on (wrapping) that loads,
        or with ``drop_bad`` ``(None, -1)`` when ``i`` does not load."""
        bad = self.bad_samples
        if not bad.skipping:
            return load(i), i
        n = len(self.index)
        for step in range(1 if self.drop_bad else n):  # drop_bad: no replacement is tried
            j = (i + step) % n
            bad.seen()
            try:
                return load(j), j
            except DataError as err:
                bad.skip(self.index.path(j), err)  # raises past max_bad_fraction
        if self.drop_bad:
            return None, -1  # type: ignore[return-value]
        raise DataError(
            f"None of the {n} images under '{self.index.root}' can be read (on_error=skip skipped them all); "
            f"first: {', '.join(bad.first)}."
        )

    def _crop_decode(self, i: int, epoch: int | None, out: np.ndarray | None = None) -> torch.Tensor:
        """Image ``i`` of ``epoch`` through the crop-aware transform, into ``out`` (``(H, W, C)``) if given."""
        transform = self.transform
        assert isinstance(transform, CropDecode)
        path = self.index.path(i)
        size, channels = transform.size, channels_of(self.image_mode)
        if out is None:
            out = np.empty((size, size, channels), dtype=np.uint8)
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
        return torch.from_numpy(out).permute(2, 0, 1)

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
