"""Reading video files: a stream's packet table without decoding (:func:`probe_video`), and only the
frames a clip uses (:func:`decode_frames`), with PyAV (FFmpeg in its wheel) or TorchCodec (FFmpeg's
system libraries). Every failure is a :class:`~chute.errors.DataError` naming the file; frames come
out upright (the display matrix that phones write is applied) and within the decompression-bomb
limit of images.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from typing import Any, Literal, get_args

import numpy as np

from chute.errors import DataError
from chute.images import check_pixel_limit


def probe_video(path: str) -> tuple[np.ndarray, float, int, int]:
    """``(frame timestamps, fps, width, height)`` of ``path``'s first video stream, from its packets.

    Reads the container's packet table (demuxing, no decoding). Raises :class:`DataError` naming
    the file for anything a clip could not be read from: not a media file, no video stream (audio
    only), a codec this FFmpeg cannot decode, no frames, fewer frames than its header states (a
    file cut short: below 90% of them, or of the stream's stated duration), or a frame size over
    the decompression-bomb limit images have (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    return probe_with_time_base(path)[:4]


def probe_with_time_base(path: str) -> tuple[np.ndarray, float, int, int, float]:
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
            stated_frames, (stated, stated_end) = stream.frames, _stated_seconds(container, stream)
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
    held = float(pts[-1] - (0 if stated_end else pts[0])) * time_base + 1.0 / fps
    if not stated_frames and stated and held < 0.9 * stated - 1.0 / fps:
        raise DataError(f"Video '{path}' is cut short: its header states {stated:.2f} s, its data holds {held:.2f} s.")
    return pts, fps, int(width), int(height), time_base


def _stated_seconds(container: Any, stream: Any) -> tuple[float, bool]:
    """The video stream's own stated duration in seconds (0: none stated), and whether it is where
    the stream ends rather than how long it lasts.

    Never the container's: that covers its longest stream, so a shorter second video stream (or
    one shorter than the audio) would look cut short. Matroska states no duration per stream, but
    FFmpeg's and mkvmerge's muxers write a ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``) for each: the
    time of the stream's end, so a clip cut from a longer recording (``ffmpeg -ss ... -c copy``,
    its first frame at 2.5 s) states 2.5 s more than it holds. The container's duration is taken
    as an end time too (the lenient reading).
    """
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base), False
    tag = str(stream.metadata.get("DURATION", ""))
    if tag.count(":") == 2:
        hours, minutes, seconds = tag.split(":")
        try:
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds), True
        except ValueError:
            return 0.0, False
    return ((container.duration or 0) / 1e6 if len(container.streams) == 1 else 0.0), True  # microseconds


def _check_frame_size(path: str, width: int, height: int) -> None:
    """Refuse frames over the decompression-bomb limit images have, before decoding one.

    A header may declare any size: a 60 KB file claiming 9500x9500 decodes to 270 MB of garbage a
    frame. The limit is Pillow's ``PIL.Image.MAX_IMAGE_PIXELS``, as for images (``None`` turns it off).
    """
    check_pixel_limit(path, width, height, what="Video", frames=True)


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
