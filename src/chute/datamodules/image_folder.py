"""``ImageFolderDataModule``: any ``root/<split>/<class>/<image>`` tree.

Over 300 lines because images carry more than other data: the decoded caches (memory, disk),
device-side augmentation and MixUp/CutMix, and setup-time checks of the eval pipeline. Splits,
class targets and measured statistics come from :class:`~chute.datamodules.class_folders.ClassFolderDataModule`
(shared with videos); the datasets themselves live in :mod:`chute.datasets`.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset
from typing_extensions import Unpack

from chute import fastpaths
from chute.collate import collate_images
from chute.datamodules.base import CommonArgs
from chute.datamodules.class_folders import ClassFolderDataModule
from chute.datasets.cache import CachedDataset
from chute.datasets.cache_store import fingerprint
from chute.datasets.folder import DropMissing, ImageFolderDataset
from chute.datasets.folder_index import FolderIndex, scan_unlabeled
from chute.errors import ConfigError, DataError
from chute.images import IMG_EXTENSIONS, ImageMode, channels_of, read_image
from chute.loader import Loader, Stream, derive_seed
from chute.loader.delivered import recorder_in
from chute.loader.distributed import process_group_size
from chute.transforms.checks import check_deterministic
from chute.transforms.decode_choice import choose_decode
from chute.transforms.device import MixBatch
from chute.transforms.device_decode import DecodeImages
from chute.transforms.factory import Transforms, check_batch_augment, create_transforms
from chute.transforms.fused import CropDecode
from chute.transforms.resize import OnFirst, SquareResize

Transform = Callable[[torch.Tensor], Any]
_STATS_SAMPLES = 512


class ImageFolderDataModule(ClassFolderDataModule):
    """Images in class folders, for training, validation, test and prediction.

    Layouts:

    - ``root/train/<class>/*``, ``root/val/<class>/*`` and optionally ``root/test/<class>/*``;
    - ``root/<class>/*`` (or ``root/train/...`` without ``val/``) plus ``val_fraction``: a seeded,
      stratified share of each class becomes the validation split.

    Without a test split, ``test_dataloader`` and ``predict_dataloader`` use the validation split.

    Batches are ``(images, labels)``. Workers return ``uint8`` images; after the batch reaches the
    device, ``on_after_batch_transfer`` converts it to normalized ``float32`` (channels-last), so the
    model never sees ``uint8``. ``mean``/``std`` left as ``None`` are measured on up to 512 training
    images at ``setup`` and kept in ``state_dict``.

    Transforms: by default ``create_transforms()``: for training a random resized crop to 224 px
    (scale 0.08-1, ratio 3/4-4/3) and a horizontal flip, for evaluation a resize of the short side
    to 256 and a 224 px centre crop; JPEGs are decoded straight to the crop (the fast decode path).
    So ``ImageFolderDataModule("photos")`` trains as it is. ``transforms=create_transforms(...)``
    (or its config, ``{_target_: chute.transforms.create_transforms, image_size: 128}``, or a
    mapping of :class:`~chute.transforms.TransformSettings` fields) sets all of them at once;
    ``train_transform``/``val_transform``/``train_batch_transform`` given too take precedence.

    Args:
        root: Dataset root.
        transforms: The train, eval and batch pipelines together (see above); default
            ``create_transforms()``.
        train_transform: Random per-sample pipeline for training (``uint8`` tensor in and out).
        val_transform: Deterministic pipeline for validation, test and predict (checked at setup).
        loader: DataLoader settings (:class:`~chute.LoaderSettings` or a mapping of its fields).
        image_mode: ``"RGB"`` (3 channels) or ``"L"`` (grayscale, 1 channel).
        val_fraction: Share of each class held out for validation when there is no ``val`` folder.
        train_dir: Name of the training split folder.
        val_dir: Name of the validation split folder.
        test_dir: Name of the test split folder.
        predict_root: A folder of images without labels (any layout, searched recursively, the
            same extensions) that ``predict`` reads, through the evaluation pipeline, instead of the
            test split; :attr:`predict_files` lists them in order, :attr:`predicted_files` after
            ``trainer.predict`` those of its predictions (without the unreadable ones under
            ``on_error="skip"``). Their label in the batch is ``-1``.
        mean: Per-channel mean in ``[0, 1]`` units (``None``: measured on the training split).
        std: Per-channel standard deviation in ``[0, 1]`` units (``None``: measured).
        channels_last: Hand batches to the model in channels-last memory format.
        seed: Seed for the split, shuffling and worker seeding.
        prepare: Optional callable ``prepare(root)`` that writes the tree if missing, run by
            ``prepare_data`` (e.g. :class:`~chute.datasets.DigitsFolder`).
        collate_fn: Collate function or its dotted path (default: stack, explaining size mismatches).
        cache: Cache decoded images: ``memory`` (shared by all workers) or ``disk`` (memory-mapped
            files reused across runs) via :class:`~chute.datasets.CachedDataset`. Training caches
            images resized and center-cropped to ``cache_size`` and runs ``train_transform`` on them
            each epoch; evaluation caches the whole (deterministic) ``val_transform`` output.
        cache_size: Side of the cached square training images (needed with ``cache``), e.g. 256
            for 224-pixel crops.
        cache_dir: Where a disk cache lives (default: ``<root>/.chute-cache``).
        imbalance: Class-imbalance strategy (:class:`~chute.imbalance.ImbalanceSettings` or mapping).
        train_batch_transform: Training augmentation for whole float batches on the device, e.g.
            :class:`~chute.transforms.device.RandomResizedCropBatch` (``create_transforms(...).train_batch``).
        mixup_alpha: MixUp for training batches in the device hook (0: off); targets become soft.
        cutmix_alpha: CutMix likewise; with both, each batch gets one of the two.
        device_augment: With ``cache``: training batches are gathered whole from the cache
            (``cache_size`` squares, no per-sample CPU work) and ``train_batch_transform`` crops,
            resizes and flips them on the device after normalization.
        on_error: A file that cannot be read (corrupt, truncated, empty, not an image, over the
            decompression-bomb limit): ``raise`` names it and the reason; ``skip`` counts it (summed
            over workers, see ``bad_samples``), logs it, and in training replaces it by the next
            readable image of the split, while validation, test and predict leave it out of its batch,
            so every readable image is evaluated exactly once.
        max_bad_fraction: With ``skip``, raise once more than this share of a split's images were bad
            (measured over at least 100 images).
        decode: Where JPEGs are decoded. ``"cpu"``: in the loader's workers or threads, straight to
            the crop (``chute.transforms.fused``). ``"gpu"``: on the device in the batch hook (nvJPEG,
            batched; the crop, resize and flip there too), the workers only reading the files,
            checking their headers and drawing the crops, the same boxes per ``(seed, epoch, index)``
            (:mod:`chute.transforms.device_decode`); until the hook runs, batches hold
            ``EncodedImages``. ``"auto"`` (default): ``"gpu"`` under a CUDA trainer when nvJPEG decodes a
            sample of the training JPEGs at least half as fast as the loader's CPUs could at best,
            else ``"cpu"`` (the choice and both rates are logged; :mod:`chute.transforms.decode_choice`).

    Example:
        >>> from chute.datasets import DigitsFolder
        >>> from chute.transforms import create_transforms
        >>> import tempfile
        >>> t = create_transforms(image_size=16, crop_pct=1.0, scale=[0.8, 1.0], hflip=0.0)
        >>> dm = ImageFolderDataModule(tempfile.mkdtemp() + "/digits", image_mode="L", prepare=DigitsFolder(),
        ...                            train_transform=t.train, val_transform=t.val)
        >>> dm.prepare_data(); dm.setup("fit")
        >>> dm.num_classes, dm.class_names[:3]
        (10, ('0', '1', '2'))
        >>> images, labels = next(iter(dm.train_dataloader()))
        >>> images.dtype, tuple(images.shape)
        (torch.uint8, (64, 1, 16, 16))
    """

    sample_collate: str | None = "chute.collate.collate_images"  # for streams of its samples
    sample_what = "image"
    extensions = IMG_EXTENSIONS

    schema_exclude = ("train_transform", "val_transform", "train_batch_transform")  # `transforms` stays

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        transforms: Transforms | Mapping[str, Any] | None = None,
        train_transform: Transform | None = None,
        val_transform: Transform | None = None,
        image_mode: ImageMode = "RGB",
        val_fraction: float = 0.0,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str = "test",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels_last: bool = True,
        cache: Literal["memory", "disk"] | None = None,
        cache_size: int | None = None,
        cache_dir: str | None = None,
        train_batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device_augment: bool = False,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        decode: Literal["cpu", "gpu", "auto"] = "auto",
        predict_root: str | os.PathLike[str] | None = None,
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(
            root, channels=channels_of(image_mode), channels_hint=f" for image_mode={image_mode!r}",
            val_fraction=val_fraction, train_dir=train_dir, val_dir=val_dir, test_dir=test_dir, mean=mean, std=std,
            **common,
        )  # fmt: skip
        if transforms is None and train_transform is None and val_transform is None:
            transforms = create_transforms()  # documented defaults: crop and flip, resize and centre crop
        if isinstance(transforms, Mapping):
            transforms = create_transforms(**dict(transforms))
        if transforms is not None:
            if not isinstance(transforms, Transforms):
                raise ConfigError(
                    "transforms", type(transforms).__name__, "give create_transforms(...) or a mapping of its settings"
                )
            train_transform = train_transform if train_transform is not None else transforms.train
            val_transform = val_transform if val_transform is not None else transforms.val
            if train_batch_transform is None:
                train_batch_transform = transforms.train_batch
            mixup_alpha = mixup_alpha or transforms.mixup_alpha
            cutmix_alpha = cutmix_alpha or transforms.cutmix_alpha
        if device_augment and (cache is None or train_batch_transform is None):
            raise ConfigError(
                "device_augment", device_augment, "needs cache (memory or disk), cache_size and a train_batch_transform"
            )
        if device_augment and transforms is not None and train_batch_transform is transforms.train_batch:
            check_batch_augment(transforms)
        if decode not in ("cpu", "gpu", "auto"):
            raise ConfigError("decode", decode, "must be 'cpu', 'gpu' or 'auto'")
        if decode == "gpu" and (cache is not None or not isinstance(train_transform, CropDecode)):
            raise ConfigError(
                "decode", decode,
                "decodes JPEG files on the device: it needs the crop-aware transforms (create_transforms() with "
                "fast_decode) and no cache (a cache holds decoded images already)",
            )  # fmt: skip
        self.decode = decode
        self.predict_root = predict_root
        self.decode_route: Literal["cpu", "gpu"] = "cpu" if decode == "auto" else decode
        if cache not in (None, "memory", "disk"):
            raise ConfigError("cache", cache, "must be null, 'memory' or 'disk'")
        if cache is not None and (cache_size is None or cache_size < 1):
            raise ConfigError("cache_size", cache_size, "set the side of the cached training images, e.g. 256")
        self.train_transform = train_transform
        self.val_transform = val_transform
        self.image_mode = image_mode
        self.channels_last = channels_last
        self._image_size: tuple[int, int] | None = None  # of evaluation images, found when first asked
        self.cache = cache
        self.device_augment = device_augment
        self.mix_alphas = (float(mixup_alpha), float(cutmix_alpha))
        for key, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if alpha < 0:
                raise ConfigError(key, alpha, "must be >= 0 (0 disables it)")
        self._train_batch = train_batch_transform
        self.cache_size = cache_size
        self.cache_dir = cache_dir or os.path.join(self.root, ".chute-cache")
        self._cached: dict[str, CachedDataset] = {}
        # The dataset of the last predict loader made (a weak reference) and its images, and the files
        # of the predict that read it (predicted_files), or why they are not known.
        self._predict_dataset: weakref.ref[Any] | None = None
        self._predict_images: FolderIndex | None = None
        self._predicted: list[str] | str | None = None
        self._said_cpu_predict = False
        self._expected_classes: tuple[str, ...] | None = None
        self._checked = False
        # The transform settings, when they made both pipelines: a DataModule restored from a checkpoint
        # (to predict) then builds the run's pipelines again, not the defaults.
        made = transforms is not None and train_transform is transforms.train and val_transform is transforms.val
        settings = transforms.settings if made and transforms is not None else None
        self.save_plain_hyperparameters(transforms=dataclasses.asdict(settings) if settings is not None else None)

    # -- Lightning hooks -------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Write the tree if ``prepare`` is set; with ``cache="disk"``, build the train and val caches.

        Lightning runs this once per node (local rank 0) before any process sets up, so ranks
        never build the same disk cache at once; each then memory-maps the finished files.
        """
        self.run_prepare(self.root)
        if self.cache == "disk":
            if self._seed is None and process_group_size() > 1:
                # The cache holds the splits, which a null seed cuts only once every rank agrees on the
                # drawn seed (setup; a draw here, on local rank 0 alone, would wait for the other ranks
                # forever). Setup builds it then, each rank under the cache's build lock.
                rank_zero_info("ImageFolderDataModule: seed is null, so the disk cache is built at setup")
                return
            self.build_cache()

    def build_cache(self, splits: Sequence[str] = ("train", "val")) -> dict[str, str]:
        """Build (or find up to date) the disk cache of ``splits``; returns each split's cache folder.

        What ``scripts/build_cache.py`` and ``prepare_data`` call; a missing ``val`` split is skipped.
        """
        if self.cache != "disk":
            raise ConfigError("cache", self.cache, "build_cache writes a disk cache; set cache=disk and cache_size")
        self.index_splits()
        built = {}
        for split in splits:
            if self._splits.get(split) is None:
                continue
            train = split == "train"
            self._cached_dataset(split, self.train_transform if train else self.val_transform, train)
            built[split] = os.path.join(self.cache_dir, split)
        return built

    def setup(self, stage: str | None = None) -> None:
        fastpaths.say_if_missing()  # once per process: JPEGs decode whole without chute's extension
        self.index_splits()
        self._normalize()
        if self.device_augment and self._train_batch is not None:
            self.train_batch_transform = _InLayout(self._train_batch, self.channels_last)
        if any(a > 0 for a in self.mix_alphas):
            self.train_pair_transform = MixBatch(self.num_classes, *self.mix_alphas)
        if self.decode == "auto":
            self.decode_route = choose_decode(self)
        if self.decode_route == "gpu":
            self.batch_decode = DecodeImages({s: self._bad_samples(s) for s in ("train", "val", "test")})
        if not self._checked and self.val_transform is not None:
            check_deterministic(self.val_transform, self._raw_sample(self._eval_index()))
            self._checked = True
        self.check_imbalance()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            class_names=list(self.class_names) if self._splits else self._expected_classes, image_mode=self.image_mode
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("class_names") is not None:
            self._expected_classes = tuple(state_dict["class_names"])
            if self._splits:
                self._check_expected_classes()

    # -- Public properties -----------------------------------------------------------------------

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """``num_classes`` and ``in_channels``; ``image_size`` (the evaluation images' side, or
        ``[height, width]``) and ``input_size`` (``channels * height * width``: what a model that
        flattens its inputs takes, e.g. lightning-hydra-template's ``SimpleDenseNet``); and
        ``channels_last``, the memory format of the batches, which a model keeps its weights in
        (and which Lightning needs equal where both save it as a hyperparameter)."""
        height, width = self._eval_image_size()
        return {
            "num_classes": self.num_classes, "in_channels": self.num_channels,
            "image_size": height if height == width else [height, width],
            "input_size": self.num_channels * height * width, "channels_last": self.channels_last,
        }  # fmt: skip

    def _eval_image_size(self) -> tuple[int, int]:
        """``(height, width)`` of an evaluation image after its pipeline (one image read, then kept)."""
        if self._image_size is None:
            found = [name for name in ("val", "test", "train") if self._splits.get(name) is not None]
            index = self._split(found[0] if found else "val")  # the eval pipeline on whatever split there is
            plain = ImageFolderDataset(index, self.val_transform, self.image_mode, gather=False, on_error="skip")
            for i in range(len(index)):
                sample = plain[i]
                if sample is not None:
                    image = sample[0]
                    self._image_size = (int(image.shape[-2]), int(image.shape[-1]))
                    break
            else:
                raise DataError(f"{type(self).__name__}: no readable image in the val split to size a model by.")
        return self._image_size

    @property
    def num_channels(self) -> int:
        return channels_of(self.image_mode)

    @property
    def class_counts(self) -> np.ndarray:
        """Training samples per class (index = label)."""
        return self._split("train").class_counts()

    @property
    def predict_root(self) -> str | None:
        """The folder ``predict`` reads (``None``: the test split). Setting it, to another folder or the
        same one to read it again, makes the next predict loader index it anew."""
        return self._predict_root

    @predict_root.setter
    def predict_root(self, folder: str | os.PathLike[str] | None) -> None:
        self._predict_root = os.fspath(folder) if folder is not None else None
        self._splits.pop("predict", None)  # indexed again when next asked for

    @property
    def predict_files(self) -> list[str]:
        """The images ``predict`` reads (``predict_root``'s, else the test split's), in order; after
        ``setup``. Each rank predicts a contiguous share of them; :attr:`predicted_files` names the
        images of this process's predictions."""
        index = self._predict_index()
        return [index.path(i) for i in range(len(index))]

    @property
    def predicted_files(self) -> list[str]:
        """The images of the predictions of the last ``trainer.predict(model, datamodule=dm)``, in order.

        One per sample the model received: the list ``trainer.predict`` returned in this process,
        its batches' rows concatenated, lines up with it. That is :attr:`predict_files` on one
        process; under DDP this rank's share; with ``on_error="skip"`` without the unreadable images
        (counted and logged, :attr:`bad_samples`). Taken when that predict ends from its loader's
        record of the batches it delivered (what a ``BasePredictionWriter`` gets as
        ``batch_indices``), so a later fit, another DataModule's predict or another Trainer leave it
        as it is (also a predict of loaders passed as ``dataloaders=`` to a Trainer that still holds
        this DataModule from an earlier call, and a predict that failed before it read its loader);
        a new predict loader of this DataModule (``dm.predict_dataloader()``) forgets it."""
        if isinstance(self._predicted, list):
            return list(self._predicted)
        raise RuntimeError(
            f"{type(self).__name__}.predicted_files: "
            + (self._predicted or "no trainer.predict(model, datamodule=dm) has ended since this DataModule made its "
               "predict loader (loaders passed as dataloaders= are not followed)")
        )  # fmt: skip

    def teardown(self, stage: str | None = None) -> None:
        super().teardown(stage)
        if stage == "predict" and (names := self._names_of_predictions()) is not None:
            self._predicted = names

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_predict_dataset"] = None  # a weak reference does not pickle
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A DataModule pickled before predicted_files kept predict_root as a plain attribute.
        if "_predict_root" not in state:
            state = {**state, "_predict_root": state.pop("predict_root", None)}
        defaults = {"_predict_dataset": None, "_predict_images": None, "_predicted": None, "_said_cpu_predict": False}
        self.__dict__.update({**defaults, **state})

    def _names_of_predictions(self) -> list[str] | str | None:
        """The files of the predict that has just ended, from its loader's record; why they are not
        known; or ``None`` when that predict did not read this DataModule's last predict loader (loaders
        passed as ``dataloaders=`` to a Trainer that keeps this DataModule from an earlier call)."""
        loaders = self.trainer.predict_dataloaders if self.trainer is not None else None
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        dataset = getattr(loader, "dataset", None)
        ours = self._predict_dataset() if self._predict_dataset is not None else None
        if dataset is None or dataset is not ours or self._predict_images is None:
            return None
        recorder = recorder_in(getattr(loader, "batch_sampler", None))
        if recorder is None:
            return self._unrecorded()
        try:
            return [self._predict_images.path(i) for i in recorder.delivered_indices()]
        except DataError as err:
            return str(err)

    def _unrecorded(self) -> str:
        return (
            f"the loader.backend={self.loader_settings.backend} loader records no indices of the batches it "
            "delivers (or this Lightning version reads them no longer)"
        )

    @property
    def _predict_split(self) -> str:
        return "predict" if self.predict_root is not None else "test"

    def _predict_index(self) -> FolderIndex:
        return self._split(self._predict_split)

    def predict_dataloader(self) -> Loader:
        route = self.decode_route
        if self.on_error == "skip" and route == "gpu":
            # A JPEG the device fails to decode is left out in the batch hook, after the loader
            # recorded the batch's indices: predictions would not line up with predicted_files.
            if self.decode != "auto":
                raise ConfigError(
                    "on_error", self.on_error,
                    "with decode='gpu' an image the device cannot decode is left out after its batch was recorded, "
                    "and the predictions would not line up with predicted_files: predict with decode='cpu' "
                    "(or 'auto', which then predicts on the CPU route), or on_error='raise' (a bad file is named)",
                )  # fmt: skip
            route = "cpu"
            if not self._said_cpu_predict:
                self._said_cpu_predict = True
                rank_zero_info(
                    "Predicting with on_error=skip: JPEGs decode on the CPU route (decode=auto), so that every "
                    "prediction is named in predicted_files; training and evaluation keep the GPU route."
                )
        split = self._predict_split
        loader = self._not_empty(self.split_dataloader(split, train=False, route=route), split)
        if self.on_error == "skip" and recorder_in(getattr(loader, "batch_sampler", None)) is None:
            raise ConfigError(
                "on_error", self.on_error,
                f"{self._unrecorded()}, so with images left out the predictions would not line up with "
                "predict_files: predict with on_error='raise' (a bad file is named)",
            )  # fmt: skip
        # an earlier predict's names are gone; the next one's are of this loader's images
        self._predict_dataset, self._predict_images = weakref.ref(loader.dataset), self._split(split)
        self._predicted = None
        return loader

    def dataset(self, split: str, route: Literal["cpu", "gpu"] | None = None) -> ImageFolderDataset:
        """The ``train``, ``val``, ``test`` or ``predict`` split as a dataset with its pipeline, its
        JPEGs decoded by ``route`` (default: :attr:`decode_route`)."""
        transform = self.train_transform if split == "train" else self.val_transform
        # Whole-batch gathering bypasses collate_fn, so a custom one gets the samples one by one.
        # Training augmentations are keyed by (seed, epoch, index): the same whatever loads them.
        route = route or self.decode_route
        encoded = route == "gpu" and self.collate_fn is None and isinstance(transform, CropDecode)
        return ImageFolderDataset(
            self._split(split), transform, self.image_mode, gather=self.collate_fn is None,
            seed=derive_seed(self.seed, Stream.AUGMENT) if split == "train" else None,
            on_error=self._bad_samples(split),
            drop_bad=split != "train",  # evaluation: a bad image is left out, not replaced by a duplicate
            encoded=encoded, split=split,
        )  # fmt: skip

    def preview_batch(self, split: str, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` seeded random samples of ``split`` after its pipeline, without touching global RNG."""
        dataset = self.dataset(split)
        rng = np.random.default_rng(derive_seed(self.seed, Stream.PREVIEW))
        picks = rng.choice(len(dataset), size=min(n, len(dataset)), replace=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, Stream.PREVIEW_AUGMENT))
            samples = [sample for i in picks if (sample := dataset[int(i)]) is not None]
        images, labels = collate_images(samples)
        return images, labels

    # -- Internals -------------------------------------------------------------------------------

    def split_dataloader(self, split: str, train: bool, route: Literal["cpu", "gpu"] | None = None) -> Loader:
        transform = self.train_transform if train else self.val_transform
        dataset: Dataset[Any] = (
            self._cached_dataset(split, transform, train)
            if self.cache is not None and split != "predict"  # images seen once: nothing to reuse
            else self.dataset(split, route)
        )
        if train and transform is not None and hasattr(transform, "reseed"):
            transform.reseed(derive_seed(self.seed, Stream.AUGMENT))  # main-process loading (num_workers=0)
        collate = self.collate_or(collate_images)
        if not train and self.on_error == "skip":
            collate = DropMissing(collate)  # the bad images an evaluation split left out
        return self.build_dataloader(dataset, train=train, collate_fn=collate)

    def _cached_dataset(self, split: str, transform: Transform | None, train: bool) -> CachedDataset:
        """Build (once, in the main process, before workers start) the split's cache."""
        if split not in self._cached:
            index = self._split(split)
            assert self.cache is not None
            assert self.cache_size is not None
            stage: Transform | None = SquareResize(self.cache_size) if train else transform
            source = ImageFolderDataset(
                index, stage, self.image_mode, on_error=self._bad_samples(split), drop_bad=not train, marks=False
            )
            key = fingerprint((index.path(i) for i in range(len(index))), (self.image_mode, repr(stage)))
            self._cached[split] = CachedDataset(
                source, store=self.cache, cache_dir=os.path.join(self.cache_dir, split), key=key
            )
        cached = self._cached[split]
        random_stage = train and transform is not None and not self.device_augment
        cached.transform = OnFirst(transform) if random_stage else None  # type: ignore[arg-type]
        cached.seed = derive_seed(self.seed, Stream.AUGMENT) if random_stage else None  # keyed by (seed, epoch, index)
        return cached

    def _forget_splits(self) -> None:
        super()._forget_splits()
        self._cached, self._image_size, self._checked = {}, None, False

    def _eval_index(self) -> FolderIndex:
        return self._splits.get("val") or self._split("train")

    def index_splits(self) -> None:
        if not self._splits:
            self._splits = self._find_splits()
            self._check_expected_classes()

    def _split(self, name: str) -> Any:
        if name == "predict" and self.predict_root is not None and self._splits and "predict" not in self._splits:
            # indexed when first asked for: training does not need the folder to exist yet
            self._splits["predict"] = scan_unlabeled(self.predict_root, self.class_names, self.extensions)
        return super()._split(name)

    def _check_expected_classes(self) -> None:
        if self._expected_classes is not None and self._expected_classes != self.class_names:
            raise DataError(
                f"Classes under '{self.root}' {list(self.class_names)} differ from the checkpoint's "
                f"{list(self._expected_classes)}; labels would not mean the same thing."
            )

    def _raw_sample(self, index: FolderIndex) -> torch.Tensor:
        """The first image of ``index`` that reads (``on_error="skip"`` passes over bad ones)."""
        for image in self._readable_images(index, range(len(index))):
            return image
        raise DataError(f"None of the images under '{index.root}' can be read (on_error=skip skipped them all).")

    def _readable_images(self, index: FolderIndex, picks: Iterable[int]) -> Iterator[torch.Tensor]:
        """Decoded images at ``picks`` for setup-time checks and statistics. With ``on_error="skip"``
        unreadable ones are left out here; training counts them when it meets them."""
        for i in picks:
            try:
                yield read_image(index.path(int(i)), self.image_mode)
            except DataError:
                if self.on_error == "raise":
                    raise

    def measure_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of up to 512 training images after the eval pipeline."""
        train = self._split("train")
        picks = self._pick_for_stats(len(train), _STATS_SAMPLES)
        transform = self.val_transform or (lambda image: image)
        images = (transform(image) for image in self._readable_images(train, picks))
        return self._mean_std(images, self.num_channels, len(picks))


class _InLayout:
    """Apply a batch transform, then hand the model the batch in the layout asked for again."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor], channels_last: bool) -> None:
        self.transform = transform
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.takes_uint8 = bool(getattr(transform, "takes_uint8", False))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.transform(images).contiguous(memory_format=self.layout)
