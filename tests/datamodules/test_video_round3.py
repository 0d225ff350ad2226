"""VideoDataModule, issue 26: damaged streams, frame-size bombs, display rotation, several video
streams, clip settings out of range and variable frame rate, each through the DataModule."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from chute import ConfigError, DataError
from chute.datamodules import VideoDataModule
from tests.datamodules.test_video import _frame_number, _frames

SMALL = {"image_size": 16, "crop_pct": 1.0, "scale": [0.5, 1.0], "hflip": 0.0}
WORKERS = [{"num_workers": 0}, {"num_workers": 2}]
# Bursts of frames 20 ms apart, then 100 ms apart: 16 frames over one second (the average is 16-18 fps).
VFR_MS = [0, 20, 40, 60, 80, 100, 120, 140, 300, 400, 500, 600, 700, 800, 900, 1000]


def _write(path: Path, frames: np.ndarray, times_ms: list[int] | None = None, rotation: int = 0, gop: int = 10) -> Path:
    """Encode ``frames`` (RGB) as H.264 with timestamps in milliseconds (default 25 fps) and, with
    ``rotation``, a display matrix turning them that many degrees counter-clockwise (as phones do)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    times = times_ms if times_ms is not None else [40 * i for i in range(len(frames))]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", options={"preset": "veryfast", "crf": "10"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        for picture, ms in zip(frames, times, strict=True):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of good 20-frame videos: two each for training, one each for validation."""
    root = tmp_path_factory.mktemp("good")
    for label in ("a", "b"):
        for split, n in (("train", 2), ("val", 1)):
            for i in range(n):
                _write(root / split / label / f"{label}{i}.mp4", _frames(20))
    return root


def _tree(good: Path, tmp_path: Path) -> Path:
    """A copy (links) of the good videos, to add one bad video to."""
    root = tmp_path / "root"
    for video in good.glob("*/*/*.mp4"):
        target = root / video.relative_to(good)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(video)
    return root


def _dm(root: Path, loader: dict | None = None, **kwargs: object) -> VideoDataModule:
    """Mean and std given: setup measures nothing, so it decodes no clip."""
    kwargs.setdefault("transforms", SMALL)
    kwargs.setdefault("frames_per_clip", 4)
    return VideoDataModule(root, loader={"batch_size": 8, **(loader or {})}, mean=[0.0] * 3, std=[1.0] * 3, **kwargs)  # type: ignore[arg-type]


def _clips(dm: VideoDataModule, split: str = "train") -> list[torch.Tensor]:
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    return [clips for clips, _, _ in loader]


# -- 1. Damaged data surfaces -------------------------------------------------------------------------


def _flip_bytes(video: Path, out: Path) -> Path:
    """``video`` with 8 bytes inverted in the middle of its second keyframe's H.264 data."""
    import av

    with av.open(str(video)) as container:
        keyframes = [(p.pos, p.size) for p in container.demux(video=0) if p.is_keyframe and p.size]
    pos, size = keyframes[1]
    data = bytearray(video.read_bytes())
    middle = pos + size // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("loader", WORKERS)
def test_flipped_bytes_in_h264_are_an_error_naming_the_file_or_skipped_and_counted(
    good: Path, tmp_path: Path, loader: dict
) -> None:
    root = _tree(good, tmp_path)
    _flip_bytes(good / "train" / "a" / "a0.mp4", root / "train" / "a" / "flipped.mp4")
    # uniform: every clip decodes from frame 0 to past frame 10, through the damaged keyframe.
    dm = _dm(root, loader, sampling="uniform")
    dm.setup("fit")  # the packet table is intact: only decoding finds the damage
    with pytest.raises(DataError, match=r"flipped\.mp4"):
        _clips(dm)
    dm = _dm(root, loader, sampling="uniform", on_error="skip", max_bad_fraction=0.5)
    dm.setup("fit")
    assert sum(len(c) for c in _clips(dm)) == 4
    assert dm.bad_samples["train"]["skipped"] == 1
    assert dm.bad_samples["train"]["first"][0].endswith("flipped.mp4")


@pytest.mark.parametrize("loader", WORKERS)
def test_a_damaged_video_with_several_clips_each_is_named_by_the_error_note(
    good: Path, tmp_path: Path, loader: dict
) -> None:
    """With ``clips_per_video`` > 1 an evaluation sample is a clip: its note names its video and clip
    (it took the clip's number for a video's and named another video, or raised an IndexError)."""
    root = _tree(good, tmp_path)
    _flip_bytes(good / "val" / "b" / "b0.mp4", root / "val" / "b" / "flipped.mp4")
    dm = _dm(root, loader, clips_per_video=3, sampling="uniform")
    dm.setup("fit")
    with pytest.raises(DataError, match=r"flipped\.mp4") as info:
        _clips(dm, "val")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert re.search(r"flipped\.mp4, clip [123] of 3", str(info.value) + notes), (str(info.value), notes)


# -- 2. Frame-size bombs ----------------------------------------------------------------------------


def _bomb(path: Path) -> Path:
    """A 6 KB WebM whose headers (Matroska's and VP8's) declare 9500x9500 frames: 90 megapixels,
    just over Pillow's default limit, about 1 GB of garbage for a 4-frame clip."""
    from chute.datasets.bundled.motion_clips import encode

    encode(path, _frames(4, size=(256, 256)), 25, "libvpx", {"deadline": "realtime", "cpu-used": "8"}, 100)
    data = bytearray(path.read_bytes())
    side = (9500).to_bytes(2, "little")
    start = data.index(b"\x9d\x01\x2a")  # a VP8 keyframe's start code; width and height follow, 16 bits each
    data[start + 3 : start + 7] = side + side
    for element in (b"\xb0", b"\xba"):  # Matroska's PixelWidth and PixelHeight, two bytes each
        data = data.replace(element + b"\x82\x01\x00", element + b"\x82" + (9500).to_bytes(2, "big"))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("loader", WORKERS)
def test_a_video_over_the_decompression_bomb_limit_is_refused_at_setup(
    good: Path, tmp_path: Path, loader: dict
) -> None:
    root = _tree(good, tmp_path)
    _bomb(root / "train" / "b" / "bomb.webm")
    with pytest.raises(DataError, match=r"bomb\.webm.*9500x9500.*PIL\.Image\.MAX_IMAGE_PIXELS"):
        _dm(root, loader).setup("fit")
    dm = _dm(root, loader, on_error="skip", max_bad_fraction=0.5)
    dm.setup("fit")
    assert dm.bad_samples["train"]["skipped"] == 1
    assert len(dm.dataset("train")) == 4
    assert sum(len(c) for c in _clips(dm)) == 4


# -- 3. The display matrix ----------------------------------------------------------------------------

# A landscape 32x16 frame, its left half bright. Shown upright by its display matrix, the bright half is:
UPRIGHT = {0: "left", -90: "top", 90: "bottom", 180: "right"}  # -90: a quarter turn clockwise (a phone's 90)


def _bright_half(clip: torch.Tensor) -> str:
    """Which half of a ``(T, C, H, W)`` clip is the bright one."""
    x = clip.float().mean(dim=(0, 1))
    h, w = x.shape
    halves = {"top": x[: h // 2], "bottom": x[h // 2 :], "left": x[:, : w // 2], "right": x[:, w // 2 :]}
    return max(halves, key=lambda k: float(halves[k].mean()))


@pytest.mark.parametrize("loader", WORKERS)
def test_clips_are_turned_as_the_display_matrix_says(tmp_path: Path, loader: dict) -> None:
    frames = np.zeros((6, 16, 32, 3), np.uint8)
    frames[:, :, :16] = 220
    root = tmp_path / "root"
    for rotation in UPRIGHT:
        video = _write(tmp_path / f"r{rotation}.mp4", frames, rotation=rotation)
        for split in ("train", "val"):
            (root / split / f"r{rotation}").mkdir(parents=True)
            (root / split / f"r{rotation}" / "v.mp4").symlink_to(video)
    dm = _dm(root, loader)
    dm.setup("fit")
    names = dm.class_names
    for batches in (dm.train_dataloader(), dm.val_dataloader()):
        seen = {}
        for clips, labels, _ in batches:
            seen.update({names[int(label)]: _bright_half(clip) for clip, label in zip(clips, labels, strict=True)})
        assert seen == {f"r{rotation}": side for rotation, side in UPRIGHT.items()}


# -- 4. Several video streams ------------------------------------------------------------------------


def _two_streams(path: Path, counts: tuple[int, int]) -> Path:
    """A Matroska file with two H.264 video streams of ``counts`` frames (frame t's brightness 8 t)."""
    import av

    with av.open(str(path), "w") as container:
        streams = []
        for _ in counts:
            stream = container.add_stream("libx264", rate=25, options={"preset": "veryfast", "crf": "10"})
            stream.width, stream.height, stream.pix_fmt = 40, 32, "yuv420p"
            streams.append(stream)
        for stream, n in zip(streams, counts, strict=True):
            for picture in _frames(n):
                for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def test_a_second_longer_video_stream_does_not_make_the_first_look_cut_short(good: Path, tmp_path: Path) -> None:
    root = _tree(good, tmp_path)
    _two_streams(root / "val" / "a" / "two.mkv", (8, 24))
    dm = _dm(root, sampling="uniform", frames_per_clip=8)
    dm.setup("fit")
    index = dm.dataset("val").index
    video = [Path(index.path(v)).name for v in range(len(index))].index("two.mkv")
    assert index.num_frames(video) == 8  # the first stream, the one read
    clips = [
        clip for clips, _, videos in dm.val_dataloader() for clip, v in zip(clips, videos, strict=True) if v == video
    ]
    assert [_frame_number(frame.permute(1, 2, 0).numpy()) for frame in clips[0]] == list(range(8))


# -- 5. Clip settings out of range --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("frames_per_clip", 10**12), ("frames_per_clip", 4097), ("fps", float("inf"))],
)
def test_clip_settings_out_of_range_are_refused_at_construction(good: Path, key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"^{key}=") as info:
        _dm(good, **{key: value})
    assert info.value.key == key


@pytest.mark.parametrize(
    ("override", "key"), [("data.frames_per_clip=1000000000000", "data.frames_per_clip"), ("data.fps=inf", "data.fps")]
)
def test_a_composed_config_names_the_data_key(good: Path, override: str, key: str) -> None:
    from chute.app import build_datamodule
    from chute.config import compose_config, validate_config

    cfg = compose_config("data=video", f"data.root={good}", "data.prepare=null", override)
    with pytest.raises(ConfigError) as info:
        build_datamodule(cfg, validate_config(cfg))
    assert info.value.key == key


# -- 6. Variable frame rate ---------------------------------------------------------------------------


def _shown_at(times_ms: list[int], targets_ms: list[int]) -> list[int]:
    """For each target time, the frame on screen then: the last one shown at or before it."""
    return [int(np.searchsorted(times_ms, t, side="right")) - 1 for t in targets_ms]


def _vfr_tree(tmp_path: Path, ext: str) -> Path:
    root = tmp_path / "vfr"
    video = _write(tmp_path / f"vfr.{ext}", _frames(len(VFR_MS)), times_ms=VFR_MS)
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        (root / split / "a" / f"v.{ext}").symlink_to(video)
    return root


# 11 frames at 10 per second span the whole second: one start, the first frame, in training as in evaluation.
EXPECTED = _shown_at(VFR_MS, [100 * k for k in range(11)])


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
@pytest.mark.parametrize("loader", WORKERS)
def test_fps_samples_a_variable_rate_video_by_its_timestamps(tmp_path: Path, ext: str, loader: dict) -> None:
    assert EXPECTED == [0, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15]  # frame 7 (140 ms) is still shown at 200 ms
    dm = _dm(_vfr_tree(tmp_path, ext), loader, frames_per_clip=11, fps=10)
    dm.setup("fit")
    for split in ("train", "val"):
        (clip,) = (c for batch in _clips(dm, split) for c in batch)
        numbers = [_frame_number(frame.permute(1, 2, 0).numpy()) for frame in clip]
        assert numbers == EXPECTED
        assert [VFR_MS[n] for n in numbers] == [0, 100, 140, 300, 400, 500, 600, 700, 800, 900, 1000]


class _Recorder(L.LightningModule):
    """Keeps every clip it is given (after the DataModule's device-side normalization)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.clips: dict[str, list[torch.Tensor]] = {"train": [], "val": []}

    def training_step(self, batch: tuple[torch.Tensor, ...], _: int) -> torch.Tensor:
        self.clips["train"].extend(batch[0].detach().cpu())
        return (self.weight * batch[0].float().mean()).sum()

    def validation_step(self, batch: tuple[torch.Tensor, ...], _: int) -> None:
        self.clips["val"].extend(batch[0].cpu())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_model_trained_through_lightning_gets_the_frames_shown_at_each_time(tmp_path: Path) -> None:
    dm = _dm(_vfr_tree(tmp_path, "mp4"), {"num_workers": 2}, frames_per_clip=11, fps=10)
    model = _Recorder()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert [len(c) for c in model.clips.values()] == [2, 2]  # one video, two epochs
    for clip in model.clips["train"] + model.clips["val"]:  # normalized with mean 0 and std 1: pixels / 255
        numbers = [_frame_number(frame.permute(1, 2, 0).numpy() * 255) for frame in clip]
        assert numbers == EXPECTED


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_a_clip_cut_from_a_longer_recording_is_read_not_called_cut_short(tmp_path: Path, ext: str) -> None:
    """Its first frame at 2.5 s (``ffmpeg -ss ... -c copy``, a recorded stream): Matroska's DURATION
    tag states where the stream ends (3.3 s), which chute compared with the 0.8 s it holds and
    refused the file as "cut short"."""
    video = _write(tmp_path / f"late.{ext}", _frames(20), times_ms=[2500 + 40 * i for i in range(20)])
    root = tmp_path / "tree"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        (root / split / "a" / video.name).symlink_to(video)
    dm = _dm(root, frames_per_clip=4, stride=1)
    dm.setup("fit")
    (clip,) = (c for batch in _clips(dm, "val") for c in batch)
    numbers = [_frame_number(frame.permute(1, 2, 0).numpy()) for frame in clip]
    assert numbers == [numbers[0] + k for k in range(4)]  # consecutive frames of the video
