"""``VideoDataModule``: any ``root/<split>/<class>/<video>`` tree, as clips decoded on demand."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import Unpack

from chute.datamodules.base import CommonArgs
from chute.datamodules.class_folders import ClassFolderDataModule
from chute.datasets.folder import DropMissing
from chute.datasets.video import (
    VIDEO_EXTENSIONS,
    ClipSpec,
    ClipTransform,
    Sampling,
    Short,
    VideoClipDataset,
    VideoIndex,
    collate_clips,
    index_videos,
)
from chute.datasets.video_decode import DECODERS, Decoder, torchcodec_video_error
from chute.errors import ConfigError, DataError
from chute.loader import Loader, Stream, derive_seed
from chute.transforms.fused import CenterCropDecode, RandomResizedCropDecode
from chute.transforms.settings import TransformSettings

_STATS_VIDEOS = 64
#: What a video DataModule's transforms are when none are given: 112-px clips, as small video models take.
DEFAULT_TRANSFORMS = {"image_size": 112, "scale": [0.25, 1.0]}


class VideoDataModule(ClassFolderDataModule):
    """Videos in class folders, as clips of ``frames_per_clip`` frames, decoded on demand.

    Layouts, as for images: ``root/train/<class>/*``, ``root/val/<class>/*`` (and optionally
    ``root/test/<class>/*``); or ``root/<class>/*`` (or ``train/`` alone) plus ``val_fraction``, a
    seeded stratified hold-out. Containers: mp4, m4v, mov, mkv, webm, avi, with any codec the
    bundled FFmpeg decodes (H.264, HEVC, VP8/9, AV1, MPEG-4, ...), any length, size and frame rate.

    At ``setup`` every video's packet table is read (no decoding) for its frame timestamps; a
    clip then decodes from the keyframe before its first frame to its last, never the whole video.
    Frames are turned upright as the stream's display matrix says (phones' portrait video), as
    images follow their EXIF orientation.

    Batches are ``(clips, labels, videos)``: ``clips`` ``uint8`` ``(B, T, C, H, W)`` on the wire,
    normalized to ``float32`` on the device by the batch hook; ``videos`` the number of each
    clip's video in its split, so a model can average a video's clips (``clips_per_video``).

    Frames (:class:`~chute.datasets.video.ClipSpec`): training takes one random clip per video
    and epoch, keyed by ``(seed, epoch, video)``; evaluation takes ``clips_per_video`` fixed clips
    spread over each video (one: the centre). ``sampling="uniform"`` takes T frames spread over
    the whole video instead. A video shorter than a clip loops by default (``short``).

    Transforms (:class:`~chute.transforms.TransformSettings`, a mapping of its fields, or ``None``
    for ``DEFAULT_TRANSFORMS``): training draws one random resized crop, flip and colour change
    per clip and applies it to every frame; evaluation resizes and centre-crops. Rotation,
    vertical flips, the albumentations backend and MixUp/CutMix are refused for clips.

    Args:
        root: Dataset root.
        frames_per_clip: Frames per clip (T), at most 4,096 (``chute.datasets.video.MAX_FRAMES_PER_CLIP``).
        stride: Frames of video between a clip's frames (``sampling="random"``).
        fps: Sample this many frames per second of video instead of every ``stride``-th frame: by
            the frames' timestamps, so a variable frame rate gives the frame on screen at each time.
        sampling: ``random`` (a clip at a random or central start) or ``uniform`` (over the whole video).
        clips_per_video: Clips per video for validation and test.
        short: Videos shorter than a clip: ``loop`` (default), ``pad`` (repeat the last frame) or
            ``skip`` (left out at setup, with a count logged).
        transforms: Clip transforms (see above).
        loader: DataLoader settings (:class:`~chute.LoaderSettings` or a mapping of its fields).
        val_fraction: Share of each class held out for validation when there is no ``val`` folder.
        train_dir: Name of the training split folder.
        val_dir: Name of the validation split folder.
        test_dir: Name of the test split folder.
        mean: Per-channel mean in ``[0, 1]`` units (``None``: measured on training clips at setup).
        std: Per-channel standard deviation (``None``: measured).
        decoder_threads: FFmpeg threads per clip decode (1: the loader's workers give the parallelism).
        decoder: ``pyav`` (default: FFmpeg comes in its wheel) or ``torchcodec`` (decodes a clip's
            frames in C++; needs FFmpeg's shared libraries on the system, checked here).
        seed: Seed for the split, the clips and shuffling.
        prepare: Optional callable ``prepare(root)`` that writes the data if missing
            (e.g. :class:`~chute.datasets.MotionClips`).
        collate_fn: Collate function or its dotted path (default :func:`~chute.datasets.video.collate_clips`).
        imbalance: Class-imbalance strategy (:class:`~chute.imbalance.ImbalanceSettings` or mapping).
        on_error: A video that cannot be read (not a video, damaged data the decoder detects, cut
            short, no video stream, no frames, a codec FFmpeg cannot decode, frames over the
            decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS``): ``raise`` names the file;
            ``skip`` leaves it out (at setup when its headers or packet table show it, else its
            clip when decoding fails) and counts it (``bad_samples``).
        max_bad_fraction: With ``skip``, raise once more than this share of a split's videos were bad.

    Example:
        >>> import tempfile
        >>> from chute.datasets import MotionClips
        >>> dm = VideoDataModule(tempfile.mkdtemp() + "/motion", prepare=MotionClips(12, seconds=(1, 1)),
        ...                      frames_per_clip=4, transforms={"image_size": 32}, loader={"batch_size": 2})
        >>> dm.prepare_data(); dm.setup("fit")
        >>> clips, labels, videos = next(iter(dm.train_dataloader()))
        >>> clips.dtype, tuple(clips.shape)
        (torch.uint8, (2, 4, 3, 32, 32))
    """

    sample_what = "video"
    extensions = VIDEO_EXTENSIONS

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        frames_per_clip: int = 8,
        stride: int = 2,
        fps: float | None = None,
        sampling: Sampling = "random",
        clips_per_video: int = 1,
        short: Short = "loop",
        transforms: TransformSettings | Mapping[str, Any] | None = None,
        val_fraction: float = 0.0,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str = "test",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        decoder_threads: int = 1,
        decoder: Decoder = "pyav",
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(
            root, channels=3, val_fraction=val_fraction, train_dir=train_dir, val_dir=val_dir, test_dir=test_dir,
            mean=mean, std=std, **common,
        )  # fmt: skip
        self.spec = ClipSpec(frames_per_clip, stride, fps, sampling, clips_per_video, short)
        self.transforms = _clip_settings(transforms)
        if isinstance(decoder_threads, bool) or not isinstance(decoder_threads, int) or decoder_threads < 0:
            raise ConfigError("decoder_threads", decoder_threads, "must be an integer >= 0 (0: FFmpeg decides)")
        self.decoder_threads = decoder_threads
        if decoder not in DECODERS:
            raise ConfigError("decoder", decoder, f"must be one of {list(DECODERS)}")
        if decoder == "torchcodec" and (why := torchcodec_video_error()) is not None:
            raise ConfigError(
                "decoder", decoder,
                f"TorchCodec's video decoder cannot load ({why}); it needs FFmpeg's shared libraries (4-7), "
                "e.g. `apt install ffmpeg`; or use decoder=pyav, which brings its own",
            )  # fmt: skip
        self.decoder: Decoder = decoder
        self.save_plain_hyperparameters(transforms=dataclasses.asdict(self.transforms))

    # -- Lightning hooks -------------------------------------------------------------------------

    def prepare_data(self) -> None:
        self.run_prepare(self.root)

    def setup(self, stage: str | None = None) -> None:
        self.index_splits()
        self._normalize()
        self.check_imbalance()

    # -- Public properties -----------------------------------------------------------------------

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "in_channels": 3, "frames_per_clip": self.spec.frames_per_clip}

    def dataset(self, split: str) -> VideoClipDataset:
        """The ``train``, ``val`` or ``test`` split's clips, with its transform."""
        return self._clips(split, self.spec, train=split == "train")

    def preview_batch(self, split: str, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``n`` (at most 8: a picture row each) seeded clips of ``split`` after its pipeline:
        ``uint8`` ``(n, T, C, H, W)`` and labels."""
        dataset = self.dataset(split)
        rng = np.random.default_rng(derive_seed(self.seed, Stream.PREVIEW))
        picks = rng.choice(len(dataset), size=min(n, 8, len(dataset)), replace=False)
        batch = DropMissing(collate_clips)([dataset[int(i)] for i in picks])
        if batch is None:
            raise DataError(f"None of the {len(picks)} clips drawn from the {split} split for a preview can be read.")
        return batch[0], batch[1]

    # -- Internals -------------------------------------------------------------------------------

    def _clips(self, split: str, spec: ClipSpec, train: bool) -> VideoClipDataset:
        """``split``'s clips by ``spec``: random ones with the training transform, or fixed ones with
        the evaluation transform."""
        settings = self.transforms
        region = (
            RandomResizedCropDecode(settings.image_size, settings.scale, settings.ratio, settings.hflip)
            if train else CenterCropDecode(settings.image_size, settings.eval_resize)
        )  # fmt: skip
        transform = ClipTransform(region, settings.color_jitter if train else 0.0, settings.interpolation)
        return VideoClipDataset(
            self._split(split), spec, transform, train=train, seed=derive_seed(self.seed, Stream.AUGMENT),
            on_error=self._bad_samples(split), threads=self.decoder_threads, decoder=self.decoder,
        )  # fmt: skip

    def split_dataloader(self, split: str, train: bool) -> Loader:
        # A bad video's clip is None under on_error=skip: left out of its batch before any collate sees it.
        collate = DropMissing(self.collate_or(collate_clips))
        return self.build_dataloader(self.dataset(split), train=train, collate_fn=collate)

    def index_splits(self) -> None:
        if self._splits:
            return
        folders = self._find_splits()
        spec = self.spec
        indexed: dict[int, VideoIndex] = {}
        for name, folder in folders.items():
            if folder is None or id(folder) in indexed:
                continue
            bad = self.bad_policy(name, self.sample_what, fresh=True)
            index, too_short = index_videos(folder, bad, keep=spec.fits if spec.short == "skip" else None)
            if too_short:
                rank_zero_info(
                    f"short=skip: left out {len(too_short)} of the {len(folder)} {name} videos under "
                    f"'{folder.root}' shorter than a clip, e.g. '{too_short[0]}'."
                )
            indexed[id(folder)] = index
        self._splits = {name: indexed[id(f)] if f is not None else None for name, f in folders.items()}
        if not len(self._split("train")):
            raise DataError(f"No training video under '{self.root}' can be used (see the messages above).")

    def measure_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean/std of up to 64 training videos' first evaluation clip (evaluation crop)."""
        dataset = self._clips("train", self.spec, train=False)
        picks = self._pick_for_stats(len(dataset.index), _STATS_VIDEOS)
        samples = (dataset[int(v) * dataset.clips] for v in picks)
        clips = (sample[0].transpose(0, 1) for sample in samples if sample is not None)  # (C, T, H, W)
        return self._mean_std(clips, 3, len(picks))


def _clip_settings(transforms: TransformSettings | Mapping[str, Any] | None) -> TransformSettings:
    """The clip transforms' settings, refusing what cannot apply to a whole clip at once."""
    if transforms is None:
        settings = TransformSettings(**DEFAULT_TRANSFORMS)  # type: ignore[arg-type]
    elif isinstance(transforms, Mapping):
        try:
            settings = TransformSettings(**{str(k): v for k, v in transforms.items() if k != "_target_"})
        except ConfigError as err:
            raise err.with_prefix("transforms") from None
        except TypeError as err:
            raise ConfigError("transforms", dict(transforms), f"not TransformSettings fields: {err}") from None
    elif isinstance(transforms, TransformSettings):
        settings = transforms
    else:
        raise ConfigError("transforms", type(transforms).__name__, "give TransformSettings or a mapping of its fields")
    refused = {
        "backend": settings.backend != "torchvision", "rotation": settings.rotation != 0, "vflip": settings.vflip != 0,
        "mixup_alpha": settings.mixup_alpha != 0, "cutmix_alpha": settings.cutmix_alpha != 0,
    }  # fmt: skip
    for key, bad in refused.items():
        if bad:
            raise ConfigError(
                f"transforms.{key}", getattr(settings, key),
                "is not supported for video clips (crop, resize, horizontal flip and colour jitter are)",
            )  # fmt: skip
    return settings
