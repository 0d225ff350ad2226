"""Real compressed videos of camera motion over scikit-image's sample photographs, made offline.

Each video films a window moving over one of the photos that ship inside scikit-image (the ones
:mod:`chute.datasets.bundled.photos` uses): a pan left, right, up or down, or a zoom in or out, at a random
speed from a random place. The label is the motion, so no single frame can tell it: a clip model
must compare frames (``docs/benchmarks.md`` records a clip model against a single-frame one).
Lengths, frame sizes, frame rates, containers and codecs vary as they do in real collections.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from chute.datasets.bundled.photos import SOURCES, _source
from chute.datasets.materialize import materialize

MOTIONS = ("pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out")
# (container extension, encoder, options): H.264 in MP4 and Matroska, VP9 in WebM, MPEG-4 Part 2 in AVI.
FORMATS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("mp4", "libx264", {"preset": "veryfast"}),
    ("webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"}),
    ("mkv", "libx264", {"preset": "veryfast"}),
    ("avi", "mpeg4", {}),
)
SIZES = ((64, 64), (80, 64), (96, 72))  # (width, height)
RATES = (12, 15, 24, 30)


class MotionClips:
    """Writes ``root/{train,val}/<motion>/<n>.<ext>``: short videos of a camera moving over a photo.

    Every video: one of :data:`MOTIONS` over a random window of a random sample photo (see
    :func:`film`), ``seconds`` long at one of :data:`RATES` frames per second, one of
    :data:`SIZES`, encoded in one of :data:`FORMATS` with a keyframe every ``keyframe_seconds``.
    Written once (atomically); calling again with the same settings reuses the folder.

    Args:
        num_videos: Videos in total (train + val), spread evenly over the motions.
        val_fraction: Share of each motion written to ``val``.
        seconds: Range of video lengths in seconds.
        keyframe_seconds: Seconds between keyframes (2 s, as streaming encoders commonly use).
        seed: Seed of every random choice.
        only_at: Write only when called with this location (the config's own default path); a
            DataModule pointed elsewhere reads the data found there and writes nothing
            (:meth:`~chute.datamodules.base.ChuteDataModule.run_prepare`). ``None``: write anywhere.

    Example:
        >>> import tempfile
        >>> root = MotionClips(num_videos=6, seconds=(0.5, 0.5))(tempfile.mkdtemp() + "/motion")
        >>> sorted(p.parent.name for p in root.glob("*/*/*.*"))[:2]
        ['pan_down', 'pan_left']
    """

    def __init__(
        self,
        num_videos: int = 360,
        val_fraction: float = 0.2,
        seconds: tuple[float, float] | list[float] = (2.0, 6.0),
        keyframe_seconds: float = 2.0,
        seed: int = 0,
        *,
        only_at: str | None = None,
    ) -> None:
        if num_videos < 1:
            raise ValueError(f"num_videos={num_videos}: need at least 1")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction}: must be in [0, 1)")
        self.num_videos, self.val_fraction, self.seed = int(num_videos), float(val_fraction), int(seed)
        self.seconds = (float(seconds[0]), float(seconds[1]))
        self.keyframe_seconds = float(keyframe_seconds)
        self.only_at = only_at

    @property
    def manifest(self) -> dict[str, object]:
        return {
            "source": "skimage.data sample photos, camera motion", "version": 2, "num_videos": self.num_videos,
            "val_fraction": self.val_fraction, "seconds": list(self.seconds),
            "keyframe_seconds": self.keyframe_seconds, "seed": self.seed, "classes": list(MOTIONS),
        }  # fmt: skip

    def __call__(self, root: str | os.PathLike[str]) -> Path:
        return materialize(root, self.manifest, self._write)

    def _write(self, out: Path) -> None:
        rng = np.random.default_rng(self.seed)
        photos = [_source(name) for name in SOURCES]
        every = round(1 / self.val_fraction) if self.val_fraction > 0 else 0
        for i in tqdm(range(self.num_videos), desc="Writing videos", unit="video", leave=False):
            motion = MOTIONS[i % len(MOTIONS)]
            split = "val" if every and (i // len(MOTIONS)) % every == 0 else "train"
            fps = int(rng.choice(RATES))
            width, height = SIZES[int(rng.integers(len(SIZES)))]
            frames = film(photos[int(rng.integers(len(photos)))], motion, fps, rng.uniform(*self.seconds),
                          (width, height), rng)  # fmt: skip
            ext, codec, options = FORMATS[(i + i // len(MOTIONS)) % len(FORMATS)]  # every motion in each
            folder = out / split / motion
            folder.mkdir(parents=True, exist_ok=True)
            encode(folder / f"{i:05d}.{ext}", frames, fps, codec, options, max(1, round(self.keyframe_seconds * fps)))


def film(
    photo: np.ndarray, motion: str, fps: int, seconds: float, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """``uint8`` ``(frames, height, width, 3)``: a window of ``size``'s aspect moving over ``photo``.

    Pans move the window 0.25-0.5 of its width per second; zooms change its size by 25-45% per
    second. The window is drawn at 35-60% of the photo's short side, made smaller where the whole
    path would not fit, and placed so that it never leaves the photo: a mirrored border would show
    the motion reversed.
    """
    import cv2

    width, height = size
    aspect = height / width  # the window's height over its width
    h, w = photo.shape[:2]
    n = max(2, round(seconds * fps))
    duration = (n - 1) / fps
    pan = rng.uniform(0.25, 0.5)  # windows per second
    rate = rng.uniform(0.25, 0.45)  # zoom: log-size change per second
    reach = np.exp(rate * duration / 2) if motion.startswith("zoom") else 1.0  # largest window / middle one
    across = 1 + pan * duration  # the path's extent along a pan, in windows
    fit_x = w / (reach * (across if motion in ("pan_left", "pan_right") else 1.0))
    fit_y = h / (reach * (aspect + (pan * duration if motion in ("pan_up", "pan_down") else 0.0)))
    side = min(rng.uniform(0.35, 0.6) * min(h, w), 0.98 * fit_x, 0.98 * fit_y)  # window width, mid-video
    dx = {"pan_left": -pan * side, "pan_right": pan * side}.get(motion, 0.0)  # the camera, pixels per second
    dy = {"pan_up": -pan * side, "pan_down": pan * side}.get(motion, 0.0)
    growth = {"zoom_in": -rate, "zoom_out": rate}.get(motion, 0.0)  # zooming in: the window shrinks
    half_x = (side * reach + abs(dx) * duration) / 2  # half the box the whole path covers
    half_y = (side * reach * aspect + abs(dy) * duration) / 2
    cx, cy = rng.uniform(half_x, w - half_x), rng.uniform(half_y, h - half_y)  # the path's middle
    frames = np.empty((n, height, width, 3), dtype=np.uint8)
    for t in range(n):
        offset = t / fps - duration / 2
        window = side * np.exp(growth * offset)
        scale = width / window
        x0, y0 = cx + dx * offset - window / 2, cy + dy * offset - window * aspect / 2
        affine = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
        frames[t] = cv2.warpAffine(
            photo, affine, (width, height), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT_101
        )
    return frames


def encode(path: Path, frames: np.ndarray, fps: int, codec: str, options: dict[str, str], gop: int) -> None:
    """Encode ``frames`` (RGB) to ``path`` with PyAV: yuv420p, ``gop`` frames between keyframes."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        for picture in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
