"""Video folders as clip datasets that decode only the frames a clip uses.

The index (:func:`index_videos`) reads each file's packet table once at setup, without decoding:
every frame's presentation timestamp, the frame rate and the frame size, kept in NumPy arrays. A
clip is then a set of frame numbers (:class:`ClipSpec`), and :func:`decode_frames` seeks to the
keyframe before the first of them and decodes forward only until the last: never the whole video.
PyAV is the default decoder (its wheels carry FFmpeg, so ``pip install`` is the whole set-up);
TorchCodec's, which needs FFmpeg's shared libraries on the system, is the other. A clip's crop,
flip and colour change are drawn once and applied to all its frames in one batched resize
(:class:`ClipTransform`), keyed by ``(seed, epoch, index)`` like images.

Over 300 lines because the index layout, the frame-number policy and the dataset that reads
through both are read together.
"""

from __future__ import annotations

import math
import os
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch.utils.data import Dataset

from chute.bad_samples import BadSamples, OnError
from chute.datasets.folder import FolderIndex
from chute.errors import ConfigError, DataError
from chute.images import check_pixel_limit
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
            targets = times[0] + np.fmod(targets - times[0], length)
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


def probe_video(path: str) -> tuple[np.ndarray, float, int, int]:
    """``(frame timestamps, fps, width, height)`` of ``path``'s first video stream, from its packets.

    Reads the container's packet table (demuxing, no decoding). Raises :class:`DataError` naming
    the file for anything a clip could not be read from: not a media file, no video stream (audio
    only), a codec this FFmpeg cannot decode, no frames, fewer frames than its header states (a
    file cut short: below 90% of them, or of the stream's stated duration), or a frame size over
    the decompression-bomb limit images have (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    return _probe(path)[:4]


def _probe(path: str) -> tuple[np.ndarray, float, int, int, float]:
    """:func:`probe_video` and the stream's time base (seconds per timestamp tick)."""
    import av

    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.video:
                kinds = ", ".join(sorted({str(s.type) for s in container.streams})) or "no streams"
                raise DataError(f"Video '{path}' has no video stream (it holds {kinds}).")
            stream = container.streams.video[0]
            name = stream.codec_context.name if stream.codec_context is not None else "unknown"
            try:
                av.codec.Codec(name, "r")
            except Exception:  # av.codec.codec.UnknownCodecError and kin
                raise DataError(f"Video '{path}': its codec '{name}' cannot be decoded by this FFmpeg.") from None
            width, height = stream.codec_context.width, stream.codec_context.height
            if width and height:
                _check_frame_size(path, width, height)  # before reading on: the header alone tells
            stamps = [p.pts if p.pts is not None else p.dts for p in container.demux(stream) if p.size > 0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            time_base = float(stream.time_base) if stream.time_base else 0.0
            stated_frames, stated = stream.frames, _stated_seconds(container, stream)
    except DataError:
        raise
    except av.error.EOFError:
        raise DataError(f"Video '{path}' ends before its first frame: it holds no video data.") from None
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise DataError(f"Video '{path}' cannot be read: {err}") from None
    if not stamps:
        raise DataError(f"Video '{path}' has no video frames.")
    if stated_frames and len(stamps) < 0.9 * stated_frames - 1:
        raise DataError(
            f"Video '{path}' is cut short: its header states {stated_frames} frames, its data holds {len(stamps)}."
        )
    if any(s is None for s in stamps):
        raise DataError(f"Video '{path}': its packets carry no timestamps, so frames cannot be found by seeking.")
    if not width or not height:
        raise DataError(f"Video '{path}' has no frame size in its stream header.")
    fps = float(rate) if rate else 0.0
    if not math.isfinite(fps) or fps <= 0 or not time_base:
        raise DataError(f"Video '{path}' has no frame rate in its stream header.")
    pts = np.sort(np.asarray(stamps, dtype=np.int64))
    # By time, not frames times the average rate: a variable-rate video's rate says little of its count.
    held = float(pts[-1] - pts[0]) * time_base + 1.0 / fps
    if not stated_frames and stated and held < 0.9 * stated - 1.0 / fps:
        raise DataError(f"Video '{path}' is cut short: its header states {stated:.2f} s, its data holds {held:.2f} s.")
    return pts, fps, int(width), int(height), time_base


def _stated_seconds(container: Any, stream: Any) -> float:
    """The video stream's own stated duration in seconds (0: none stated).

    Never the container's: that covers its longest stream, so a shorter second video stream (or
    one shorter than the audio) would look cut short. Matroska states no duration per stream, but
    FFmpeg's and mkvmerge's muxers write a ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``) for each.
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = str(stream.metadata.get("DURATION", ""))
    if tag.count(":") == 2:
        hours, minutes, seconds = tag.split(":")
        try:
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            return 0.0
    return (container.duration or 0) / 1e6 if len(container.streams) == 1 else 0.0  # microseconds


def _check_frame_size(path: str, width: int, height: int) -> None:
    """Refuse frames over the decompression-bomb limit images have, before decoding one.

    A header may declare any size: a 60 KB file claiming 9500x9500 decodes to 270 MB of garbage a
    frame. The limit is Pillow's ``PIL.Image.MAX_IMAGE_PIXELS``, as for images (``None`` turns it off).
    """
    check_pixel_limit(path, width, height, what="Video", frames=True)


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
            pts, fps, width, height, time_base = _probe(path)
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


Decoder = Literal["pyav", "torchcodec"]
DECODERS: tuple[str, ...] = get_args(Decoder)


def decode_frames(
    path: str, pts: np.ndarray, frames: np.ndarray, threads: int = 1, decoder: Decoder = "pyav"
) -> np.ndarray:
    """Frames ``frames`` (numbers into ``pts``, any order, repeats allowed) of ``path`` as ``uint8``
    ``(len(frames), H, W, 3)`` RGB.

    ``pyav``: seeks once to the keyframe at or before the earliest frame wanted and decodes forward
    until the latest; only the wanted frames are converted to RGB (PyAV hands decoded frames to
    Python one at a time, so this loop compares one timestamp per decoded frame). ``torchcodec``:
    TorchCodec's ``get_frames_at`` does the same seeking and decoding in C++ (exact frame
    positions; it needs FFmpeg's shared libraries on the system). Raises :class:`DataError` naming
    the file and frame when the data is damaged or ends early.
    """
    if decoder == "torchcodec":
        return _decode_torchcodec(path, frames, threads)
    import av

    wanted, order = np.unique(frames, return_inverse=True)
    targets = pts[wanted]
    out: np.ndarray | None = None
    got = 0
    try:
        with av.open(path, metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            stream.thread_count = threads
            stream.thread_type = "AUTO" if threads != 1 else "SLICE"
            # FFmpeg conceals damaged data by default: flipped bytes decode, with no error, to a wrong
            # picture. "explode" turns the errors it detects into exceptions; what it conceals without
            # one it marks corrupt (checked below). Not "bitstream": a mere deviation from the spec
            # in a file that decodes fine would then refuse it.
            stream.codec_context.options = {"err_detect": "crccheck+explode"}
            container.seek(int(targets[0]), stream=stream, backward=True, any_frame=False)
            for frame in _decode_until(container, stream, targets):
                stamp = frame.pts
                if stamp is None or stamp < targets[got]:
                    continue
                if frame.is_corrupt:
                    raise DataError(
                        f"Video '{path}' is damaged near frame {int(wanted[got])}: the decoder could only conceal "
                        "its errors. Re-encode or replace the file."
                    )
                _check_frame_size(path, frame.width, frame.height)  # a size change inside the stream
                picture = _upright(_rgb(frame), frame)
                if out is None:
                    out = np.empty((len(targets), *picture.shape), dtype=np.uint8)
                while got < len(targets) and stamp >= targets[got]:  # a frame missing from the stream: the next
                    out[got] = picture
                    got += 1
                if got == len(targets):
                    break
    except DataError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise DataError(f"Video '{path}' cannot be decoded near frame {int(wanted[got])}: {err}") from None
    if out is None or got < len(targets):
        raise DataError(
            f"Video '{path}' ends before frame {int(wanted[got])} of the {len(pts)} its packet table lists "
            "(damaged or cut short)."
        )
    return out[order]


def _decode_until(container: Any, stream: Any, targets: np.ndarray) -> Iterator[Any]:
    """``stream``'s frames from where ``container`` was sought to, sending the decoder no packet after
    the last of ``targets``' own (then draining the frames it holds back to reorder them).

    A decoder that reports damage (see ``explode`` above) would otherwise fail a clip on a damaged
    packet it only read because of its output delay, which no frame of the clip refers to.
    """
    unsent = set(targets.tolist())
    for packet in container.demux(stream):  # ends with an empty packet, which drains the decoder
        unsent.discard(packet.pts if packet.pts is not None else packet.dts)  # as the index took them
        yield from packet.decode()
        if not unsent:
            yield from stream.codec_context.decode(None)
            return


def _decode_torchcodec(path: str, frames: np.ndarray, threads: int) -> np.ndarray:
    from torchcodec.decoders import VideoDecoder

    try:
        video = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=threads, dimension_order="NHWC")
        return video.get_frames_at(frames.tolist()).data.numpy()
    except (RuntimeError, ValueError, IndexError) as err:
        raise DataError(f"Video '{path}' cannot be decoded at frames {frames.tolist()}: {err}") from None


def torchcodec_video_error() -> str | None:
    """Why TorchCodec's video decoder cannot run here (``None``: it can)."""
    try:
        from torchcodec._core import ops

        if not getattr(ops, "_FFMPEG_AVAILABLE", False):
            ops.load_core_libraries()  # raises, saying which FFmpeg libraries it looked for
    except Exception as err:  # RuntimeError, OSError: no FFmpeg 4-7 shared libraries found
        if "Could not load libtorchcodec" in str(err):
            return "no FFmpeg shared libraries (4-7) found for libtorchcodec"
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{type(err).__name__}: {first}"
    return None


_local = threading.local()


def _rgb(frame: Any) -> np.ndarray:
    """``frame`` as ``uint8`` ``(H, W, 3)`` RGB through this thread's reformatter.

    ``VideoFrame.to_ndarray(format="rgb24")`` sets up a new swscale context on every call: ~0.55 ms
    a frame here, against ~0.02 ms reusing one with one thread (2-core machine, 96x72 frames; with
    swscale's automatic threads it took 1.6 ms, and hung in a forked DataLoader worker).
    """
    from av.video.reformatter import VideoReformatter

    # One per thread and process: a context is not shared between threads, nor inherited by a fork.
    owner, reformatter = getattr(_local, "reformatter", (None, None))
    if owner != os.getpid() or reformatter is None:
        reformatter = VideoReformatter()
        _local.reformatter = (os.getpid(), reformatter)
    return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


def _upright(picture: np.ndarray, frame: Any) -> np.ndarray:
    """``picture`` (``frame`` as RGB) turned as its display matrix says, as FFmpeg's own players do.

    Phones film portrait video as landscape frames plus a matrix that turns them (images' EXIF
    orientation, for video). The cases follow ``ffmpeg``'s autorotate (fftools): a quarter turn, a
    half turn or none by the matrix's angle, mirrored as the signs of its entries say; odd angles
    round to the nearest quarter turn.
    """
    side = frame.side_data.get("DISPLAYMATRIX")
    if side is None:
        return picture
    m = np.frombuffer(bytes(side), dtype=np.int32)
    quarters = round(-frame.rotation / 90) % 4  # clockwise quarter turns to show it upright
    if quarters == 1:
        return picture.transpose(1, 0, 2) if m[3] > 0 else np.rot90(picture, -1)
    if quarters == 3:
        return np.rot90(picture.transpose(1, 0, 2), 2) if m[3] < 0 else np.rot90(picture, 1)
    if quarters == 2:
        return picture[:: -1 if m[4] < 0 else 1, :: -1 if m[0] < 0 else 1]
    return picture[::-1] if m[4] < 0 else picture


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
            (``None`` in its place) and count it.
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch.set(epoch)
        self.bad_samples.report(f"'{self.index.root}'")

    def __len__(self) -> int:
        return len(self.index) * self.clips

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
