"""Video folders as clip datasets that decode only the frames a clip uses.

The index (:func:`index_videos`) reads each file's packet table once at setup, without decoding:
every frame's presentation timestamp, the frame rate and the frame size, kept in NumPy arrays. A
clip is then a set of frame numbers (:class:`ClipSpec`), and
:func:`~chute.datasets.video_decode.decode_frames` seeks to the keyframe before the first of them and
decodes forward only until the last: never the whole video. PyAV is the default decoder (its
wheels carry FFmpeg, so ``pip install`` is the whole set-up); TorchCodec's, which needs FFmpeg's
shared libraries on the system, is the other. A clip's crop,
flip and colour change are drawn once and applied to all its frames in one batched resize
(:class:`ClipTransform`), keyed by ``(seed, epoch, index)`` like images. Probing and decoding the
files themselves is :mod:`chute.datasets.video_decode`.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch.utils.data import Dataset

from chute.bad_samples import BadSamples, LeftOut, OnError
from chute.datasets.folder_index import FolderIndex
from chute.datasets.video_decode import Decoder, decode_frames, probe_with_time_base
from chute.errors import ConfigError, DataError
from chute.loader import SharedEpoch, sample_seed
from chute.transforms.fused import CropDecode

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
Sampling = Literal["random", "uniform"]
Short = Literal["loop", "pad", "skip"]
SAMPLINGS: tuple[str, ...] = get_args(Sampling)
SHORTS: tuple[str, ...] = get_args(Short)
_INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
#: The most frames a clip may hold: they are decoded into memory together, at the video's own size.
MAX_FRAMES_PER_CLIP = 4096
_SAME_TIME = 1e-6  # seconds: timestamps closer than this are one instant (far below any frame's duration)


def _times_or_constant(times: np.ndarray | None, num_frames: int, video_fps: float) -> np.ndarray:
    """``times``, or those of ``num_frames`` frames at a constant ``video_fps``."""
    return np.arange(num_frames) / video_fps if times is None else times


@dataclass(frozen=True)
class ClipSpec:
    """Which frames make a clip.

    Args:
        frames_per_clip: Frames in a clip (T).
        stride: Take every ``stride``-th frame (``sampling="random"``).
        fps: Instead of ``stride``, sample at this many frames per second of video, whatever the
            video's own rate, constant or variable: target times ``1 / fps`` apart, and for each the
            frame on screen at that time (by the frames' timestamps).
        sampling: ``random``: T frames ``stride`` apart from a random start in training, from the
            centre in evaluation. ``uniform``: the video cut into T equal segments, one frame from
            each (random within its segment in training, its middle in evaluation): the whole
            video at any length.
        clips_per_video: Clips per video in evaluation, spread evenly over it (each one a sample;
            models average them for a video-level prediction).
        short: A video with fewer frames than a ``random`` clip spans: ``loop`` (start again from
            its first frame, the default: motion stays motion), ``pad`` (repeat its last frame) or
            ``skip`` (leave the video out at setup, counted and logged).
    """

    frames_per_clip: int = 8
    stride: int = 2
    fps: float | None = None
    sampling: Sampling = "random"
    clips_per_video: int = 1
    short: Short = "loop"

    def __post_init__(self) -> None:
        for key in ("frames_per_clip", "stride", "clips_per_video"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(key, value, "must be an integer >= 1")
        if self.frames_per_clip > MAX_FRAMES_PER_CLIP:
            # Refused here rather than as numpy's bare MemoryError when the first clip is allocated.
            raise ConfigError(
                "frames_per_clip", self.frames_per_clip,
                f"must be at most {MAX_FRAMES_PER_CLIP:,} (chute.datasets.video.MAX_FRAMES_PER_CLIP): a clip's "
                "frames are decoded into memory together; take fewer frames, further apart (stride or fps)",
            )  # fmt: skip
        fps = self.fps
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < math.inf):
            raise ConfigError("fps", fps, "must be a finite number > 0 of frames per second, or null to use stride")
        if self.sampling not in SAMPLINGS:
            raise ConfigError("sampling", self.sampling, f"must be one of {list(SAMPLINGS)}")
        if self.short not in SHORTS:
            raise ConfigError("short", self.short, f"must be one of {list(SHORTS)}")

    def step(self, video_fps: float) -> float:
        """Frames of video between two frames of a clip."""
        return video_fps / self.fps if self.fps is not None else float(self.stride)

    def span(self, video_fps: float) -> int:
        """Frames of video a ``random`` clip covers, first to last."""
        return round((self.frames_per_clip - 1) * self.step(video_fps)) + 1

    def fits(self, num_frames: int, video_fps: float, times: np.ndarray | None = None) -> bool:
        """Whether a video this long gives a whole clip without looping or padding (``times``: its
        frames' timestamps in seconds, for ``fps``; a constant ``video_fps`` when not given)."""
        if self.sampling == "uniform":
            return True
        if self.fps is None:
            return num_frames >= self.span(video_fps)
        times = _times_or_constant(times, num_frames, video_fps)
        return bool(times[-1] - times[0] >= (self.frames_per_clip - 1) / self.fps - _SAME_TIME)

    def frames(
        self,
        num_frames: int,
        video_fps: float,
        rng: random.Random | None,
        clip: int = 0,
        times: np.ndarray | None = None,
    ) -> np.ndarray:
        """The clip's frame numbers (``int64``, length T): random with ``rng``, else clip ``clip`` of
        :attr:`clips_per_video` spread over the video. With ``fps``, frames are chosen by ``times``
        (each frame's timestamp in seconds, ascending; a constant ``video_fps`` when not given)."""
        t, k = self.frames_per_clip, self.clips_per_video
        if self.fps is not None and self.sampling == "random":
            return self._frames_by_time(_times_or_constant(times, num_frames, video_fps), video_fps, rng, clip)
        if self.sampling == "uniform":
            edges = np.linspace(0.0, num_frames, t + 1)
            offset = np.array([rng.random() for _ in range(t)]) if rng is not None else (clip + 0.5) / k
            return np.minimum((edges[:-1] + offset * (edges[1:] - edges[:-1])).astype(np.int64), num_frames - 1)
        span = self.span(video_fps)
        room = max(num_frames - span, 0)
        centre = round(room * (clip + 0.5) / k) if k > 1 else room // 2
        start = rng.randint(0, room) if rng is not None else centre
        picks = start + np.round(np.arange(t) * self.step(video_fps)).astype(np.int64)
        if span <= num_frames:
            return picks
        return picks % num_frames if self.short == "loop" else np.minimum(picks, num_frames - 1)

    def _frames_by_time(self, times: np.ndarray, video_fps: float, rng: random.Random | None, clip: int) -> np.ndarray:
        """``fps`` sampling: T target times ``1 / fps`` apart from a start frame, and for each the frame
        on screen then (the last one shown at or before it). Stepping by frame numbers at the
        average rate would drift wherever a variable-rate video's frames come faster or slower."""
        assert self.fps is not None
        offsets = np.arange(self.frames_per_clip) / self.fps  # seconds after the clip's first frame
        # Start frames whose clip ends inside the video; none when the video is shorter than a clip.
        room = max(int(np.searchsorted(times, times[-1] - offsets[-1] + _SAME_TIME, side="right")) - 1, 0)
        k = self.clips_per_video
        centre = round(room * (clip + 0.5) / k) if k > 1 else room // 2
        start = rng.randint(0, room) if rng is not None else centre
        targets = times[start] + offsets
        if self.short == "loop":  # past the end: from the first frame again, the last one shown 1/fps long
            length = times[-1] - times[0] + 1.0 / video_fps
            # A target a rounding error short of a whole number of loops is the loop's start: fmod
            # would put it at the loop's very end (0.3 s in loops of 0.1 s: the last frame, not the first).
            targets = times[0] + np.fmod(targets - times[0] + _SAME_TIME, length) - _SAME_TIME
        # A target a rounding error before a frame's timestamp means that frame (a 30 fps video at
        # fps=10 must give every third frame): hence the tolerance, far below any frame's duration.
        picks = np.searchsorted(times, targets + _SAME_TIME, side="right") - 1
        return np.clip(picks, 0, len(times) - 1).astype(np.int64)


@dataclass(frozen=True)
class VideoIndex:
    """The videos of one split: paths and labels (as :class:`~chute.datasets.folder.FolderIndex`
    keeps them) and every frame's timestamp, in flat NumPy arrays (nothing per video in Python
    objects, so forked workers share the pages).

    ``pts[offsets[v]:offsets[v + 1]]`` are video ``v``'s frame timestamps in presentation order, in
    its stream's time base.
    """

    root: str
    paths: np.ndarray  # "S<n>", relative to root
    targets: np.ndarray  # int64
    class_names: tuple[str, ...]
    offsets: np.ndarray  # int64, len(videos) + 1
    pts: np.ndarray  # int64, every frame of every video
    fps: np.ndarray  # float64, average frame rate per video
    sizes: np.ndarray  # int64 (n, 2): width, height as coded (before the display matrix turns them)
    time_bases: np.ndarray  # float64, seconds per tick of each video's timestamps

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, video: int) -> str:
        return os.path.join(self.root, os.fsdecode(self.paths[video]))

    def num_frames(self, video: int) -> int:
        return int(self.offsets[video + 1] - self.offsets[video])

    def frame_pts(self, video: int) -> np.ndarray:
        return self.pts[self.offsets[video] : self.offsets[video + 1]]

    def frame_times(self, video: int) -> np.ndarray:
        """Video ``video``'s frame timestamps in seconds, from its first frame."""
        pts = self.frame_pts(video)
        return (pts - pts[0]) * self.time_bases[video]

    @property
    def frame_counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def index_videos(
    folder: FolderIndex, bad: BadSamples, keep: Callable[[int, float, np.ndarray], bool] | None = None
) -> tuple[VideoIndex, list[str]]:
    """Probe every video of ``folder``; a bad one raises or (``on_error=skip``) is left out and counted.

    ``keep(num_frames, fps, times)`` (``times``: the frames' timestamps in seconds) may leave out
    good videos too (``short="skip"``); their paths are returned with the index.
    """
    kept, stamps, rates, sizes, bases, left_out = [], [], [], [], [], []
    for i in range(len(folder)):
        path = folder.path(i)
        bad.seen()
        try:
            pts, fps, width, height, time_base = probe_with_time_base(path)
        except DataError as err:
            bad.skip(path, err)  # raises under on_error=raise
            continue
        if keep is not None and not keep(len(pts), fps, (pts - pts[0]) * time_base):
            left_out.append(path)
            continue
        kept.append(i)
        stamps.append(pts)
        rates.append(fps)
        sizes.append((width, height))
        bases.append(time_base)
    rows = np.asarray(kept, dtype=np.int64)
    counts = np.array([len(s) for s in stamps], dtype=np.int64)
    index = VideoIndex(
        folder.root, folder.paths[rows], folder.targets[rows], folder.class_names,
        np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        np.concatenate(stamps).astype(np.int64) if stamps else np.empty(0, np.int64),
        np.asarray(rates, dtype=np.float64), np.asarray(sizes, dtype=np.int64).reshape(-1, 2),
        np.asarray(bases, dtype=np.float64),
    )  # fmt: skip
    return index, left_out


class ClipTransform:
    """One crop, resize, flip and colour change per clip, the same for all its frames.

    ``region`` is a crop policy of the image transforms (:class:`~chute.transforms.fused.RandomResizedCropDecode`
    for training, :class:`~chute.transforms.fused.CenterCropDecode` for evaluation): its region is
    drawn once from the clip's generator; the frames are cropped (a view) and resized together in
    one antialiased ``uint8`` resize (torchvision), not frame by frame.

    Args:
        region: The crop policy; its ``size`` is the output side.
        color_jitter: Brightness, contrast and saturation change strength (0: none), one draw per clip.
        interpolation: ``bilinear``, ``nearest`` or ``bicubic`` (antialiased when shrinking, but nearest).

    Example:
        >>> from chute.transforms.fused import CenterCropDecode
        >>> t = ClipTransform(CenterCropDecode(16))
        >>> t(np.zeros((4, 30, 40, 3), np.uint8), None).shape
        (4, 16, 16, 3)
    """

    def __init__(self, region: CropDecode, color_jitter: float = 0.0, interpolation: str = "bilinear") -> None:
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r}: must be one of {list(_INTERPOLATIONS)}")
        self.region = region
        self.size = region.size
        self.color_jitter = float(color_jitter)
        self.interpolation = interpolation

    def __call__(self, frames: np.ndarray, rng: random.Random | None) -> np.ndarray:
        from torchvision.transforms.v2 import functional as F

        height, width = frames.shape[1:3]
        r = self.region.region(width, height, rng or random.Random(0))
        crop = torch.from_numpy(frames)[:, r.y : r.y + r.height, r.x : r.x + r.width].permute(0, 3, 1, 2)
        mode = {"nearest": F.InterpolationMode.NEAREST, "bicubic": F.InterpolationMode.BICUBIC}.get(
            self.interpolation, F.InterpolationMode.BILINEAR
        )
        # One call for the whole clip: torch's uint8 antialiased resize takes the frames as a batch.
        resized = F.resize(
            crop, [self.size, self.size], interpolation=mode, antialias=mode != F.InterpolationMode.NEAREST
        )
        out = resized.permute(0, 2, 3, 1).numpy()
        if r.flip:
            out = out[:, :, ::-1]
        if self.color_jitter > 0 and rng is not None:
            out = self._jitter(out, rng)
        return np.ascontiguousarray(out)

    def _jitter(self, clip: np.ndarray, rng: random.Random) -> np.ndarray:
        s = self.color_jitter
        brightness, contrast, saturation = (rng.uniform(max(0.0, 1 - s), 1 + s) for _ in range(3))
        x = clip.astype(np.float32)
        gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        x = gray[..., None] + saturation * (x - gray[..., None])
        x = (x - x.mean()) * contrast + x.mean()
        return np.clip(x * brightness, 0, 255).astype(np.uint8)

    def __repr__(self) -> str:
        return f"ClipTransform({self.region!r}, color_jitter={self.color_jitter}, interpolation={self.interpolation!r})"


class VideoClipDataset(Dataset[Any]):
    """Clips of a :class:`VideoIndex` as ``(clip, label, video)``: ``clip`` ``uint8`` ``(T, C, H, W)``
    (stored ``(T, H, W, C)``: channels-last frames), ``video`` the video's number in the index.

    Training (``train=True``): one sample per video, a random clip keyed by ``(seed, epoch, video)``.
    Evaluation: ``clips_per_video`` samples per video (sample ``i`` is clip ``i % K`` of video
    ``i // K``), fixed.

    Args:
        index: The videos.
        spec: Which frames make a clip.
        transform: The clip transform (``None``: frames as decoded; they must then share a size).
        train: Random clips (training) or fixed ones (evaluation).
        seed: Keys the random draws, with the epoch and the video.
        on_error: Policy for a video that cannot be decoded: raise naming it, or leave the clip out
            (``None`` in its place) and count it; in evaluation also mark it in :attr:`left_out`.
        threads: FFmpeg decoding threads per clip (1: parallelism comes from the loader's workers).
        decoder: ``pyav`` or ``torchcodec`` (see :func:`decode_frames`).
    """

    def __init__(
        self,
        index: VideoIndex,
        spec: ClipSpec,
        transform: ClipTransform | None = None,
        *,
        train: bool,
        seed: int = 0,
        on_error: OnError | BadSamples = "raise",
        threads: int = 1,
        decoder: Decoder = "pyav",
    ) -> None:
        self.index = index
        self.spec = spec
        self.transform = transform
        self.train = train
        self.seed = seed
        self.epoch = SharedEpoch()
        self.bad_samples = on_error if isinstance(on_error, BadSamples) else BadSamples(on_error, what="video")
        self.threads = threads
        self.decoder: Decoder = decoder
        self.clips = 1 if train else spec.clips_per_video
        #: The clips left out of the current pass (evaluation with ``on_error="skip"``; else ``None``).
        self.left_out = LeftOut(len(self)) if not train and self.bad_samples.skipping else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch.set(epoch)
        self.bad_samples.report(f"'{self.index.root}'")

    def __len__(self) -> int:
        return len(self.index) * self.clips

    def describe(self, i: int) -> str:
        """Sample ``i``'s video (and clip, where a video gives several), for error notes."""
        video, clip = divmod(int(i), self.clips)
        path = self.index.path(video)
        return f"{path}, clip {clip + 1} of {self.clips}" if self.clips > 1 else str(path)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | None:
        video, clip = divmod(int(i), self.clips)
        epoch = self.epoch.get() if self.train else 0
        rng = random.Random(sample_seed(self.seed, epoch, video)) if self.train else None
        path = self.index.path(video)
        if self.bad_samples.skipping:
            self.bad_samples.seen()
        try:
            times = self.index.frame_times(video) if self.spec.fps is not None else None
            frames = self.spec.frames(self.index.num_frames(video), float(self.index.fps[video]), rng, clip, times)
            pixels = decode_frames(path, self.index.frame_pts(video), frames, self.threads, self.decoder)
        except DataError as err:
            if not self.bad_samples.skipping:
                raise
            self.bad_samples.skip(path, err)
            if self.left_out is not None:
                self.left_out.mark(i)
            return None
        if self.transform is not None:
            pixels = self.transform(pixels, rng if self.train else None)
        return torch.from_numpy(pixels).permute(0, 3, 1, 2), int(self.index.targets[video]), video

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.index.class_names

    @property
    def targets(self) -> np.ndarray:
        return np.repeat(self.index.targets, self.clips)


def collate_clips(samples: Sequence[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(clips, labels, videos)`` from samples; clips ``(B, T, C, H, W)`` with channels-last frames.

    Clips a bad video left out (``None``) are dropped first by
    :class:`~chute.datasets.folder.DropMissing`, which the DataModule wraps around it.
    """
    first = samples[0][0]
    t, c, h, w = first.shape
    clips = torch.empty((len(samples), t, h, w, c), dtype=first.dtype)
    for b, (clip, _, _) in enumerate(samples):
        clips[b] = clip.permute(0, 2, 3, 1)
    labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)
    videos = torch.tensor([s[2] for s in samples], dtype=torch.int64)
    return clips.permute(0, 1, 4, 2, 3), labels, videos
