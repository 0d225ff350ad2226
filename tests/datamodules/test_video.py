"""VideoDataModule: clips decoded on demand, frame policies, per-clip transforms, bad videos."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from chute import ConfigError, DataError
from chute.datamodules import VideoDataModule
from chute.datasets import MotionClips
from chute.datasets.bundled.motion_clips import FORMATS, encode
from chute.datasets.video import ClipSpec, ClipTransform
from chute.datasets.video_decode import decode_frames, probe_video, torchcodec_video_error
from chute.models import ClipClassifier
from chute.transforms.fused import CenterCropDecode, RandomResizedCropDecode
from tests.datamodules.contract import check_datamodule

TINY = {"image_size": 24, "crop_pct": 1.0, "scale": [0.5, 1.0], "hflip": 0.0}


@pytest.fixture(scope="module")
def motion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MotionClips tree: 24 videos of every motion and format, 1-2 s long."""
    return MotionClips(num_videos=24, val_fraction=0.25, seconds=(1.0, 2.0))(tmp_path_factory.mktemp("v") / "motion")


def _frames(n: int, size: tuple[int, int] = (40, 32)) -> np.ndarray:
    """Frames whose pixels say their number: frame t is filled with 8 * t (+ a fixed pattern)."""
    width, height = size
    pattern = (np.indices((height, width)).sum(axis=0) % 7).astype(np.uint8)[..., None]
    return np.stack([np.repeat(pattern + 8 * t, 3, axis=2) for t in range(n)]).astype(np.uint8)


@pytest.fixture(scope="module")
def numbered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 30-frame video per container and codec, frame t's brightness 8 t, a keyframe every 10 frames."""
    out = tmp_path_factory.mktemp("numbered")
    paths = {}
    for ext, codec, options in FORMATS:
        paths[ext] = out / f"v.{ext}"
        encode(paths[ext], _frames(30), 25, codec, {**options, "crf": "10"} if codec == "libx264" else options, 10)
    return paths


def _frame_number(picture: np.ndarray) -> int:
    return round((float(picture.mean()) - 3.0) / 8)


# -- Which frames make a clip -----------------------------------------------------------------------


def test_random_clips_stay_inside_the_video_with_their_stride() -> None:
    spec = ClipSpec(frames_per_clip=4, stride=3)
    rng = random.Random(0)
    for _ in range(200):
        frames = spec.frames(40, 25.0, rng)
        assert frames.min() >= 0
        assert frames.max() < 40
        assert (np.diff(frames) == 3).all()
    starts = {int(spec.frames(40, 25.0, random.Random(s))[0]) for s in range(300)}
    assert starts == set(range(0, 40 - 9))  # every start that fits is drawn


def test_evaluation_clips_are_the_centre_or_spread_evenly() -> None:
    assert ClipSpec(frames_per_clip=4, stride=2).frames(21, 25.0, None).tolist() == [7, 9, 11, 13]
    spread = ClipSpec(frames_per_clip=2, stride=1, clips_per_video=3)
    assert [spread.frames(32, 25.0, None, k)[0] for k in range(3)] == [5, 15, 25]


def test_a_target_fps_sets_the_step_from_each_videos_rate() -> None:
    spec = ClipSpec(frames_per_clip=3, fps=10.0)
    assert spec.frames(100, 30.0, None).tolist() == [46, 49, 52]  # every third frame of a 30 fps video
    assert spec.frames(100, 10.0, None).tolist() == [48, 49, 50]


def test_uniform_sampling_covers_the_whole_video() -> None:
    spec = ClipSpec(frames_per_clip=4, sampling="uniform")
    assert spec.frames(40, 25.0, None).tolist() == [5, 15, 25, 35]
    drawn = spec.frames(40, 25.0, random.Random(1))
    assert [d // 10 for d in drawn] == [0, 1, 2, 3]  # one frame from each quarter
    assert spec.frames(2, 25.0, None).tolist() == [0, 0, 1, 1]  # shorter than the clip: frames repeat


def test_videos_shorter_than_a_clip_loop_or_pad() -> None:
    assert ClipSpec(frames_per_clip=4, stride=2).frames(5, 25.0, None).tolist() == [0, 2, 4, 1]
    assert ClipSpec(frames_per_clip=4, stride=2, short="pad").frames(5, 25.0, None).tolist() == [0, 2, 4, 4]
    assert not ClipSpec(frames_per_clip=4, stride=2, short="skip").fits(5, 25.0)


def test_a_loop_at_a_target_fps_restarts_at_the_first_frame() -> None:
    """3 frames at 30 fps loop every 0.1 s: at fps=10 every target is a loop's start (0.3 s, a rounding
    error short of 3 loops, gave the last frame)."""
    assert ClipSpec(frames_per_clip=4, fps=10.0).frames(3, 30.0, None).tolist() == [0, 0, 0, 0]
    assert ClipSpec(frames_per_clip=6, fps=15.0).frames(5, 30.0, None).tolist() == [0, 2, 4, 1, 3, 0]
    assert ClipSpec(frames_per_clip=5, fps=20.0).frames(3, 30.0, None).tolist() == [0, 1, 0, 1, 0]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("frames_per_clip", 0),
        ("stride", 0),
        ("fps", -1.0),
        ("sampling", "dense"),
        ("clips_per_video", 0),
        ("short", "x"),
    ],
)
def test_bad_clip_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key):
        ClipSpec(**{key: value})  # type: ignore[arg-type]


# -- Decoding only what a clip needs ----------------------------------------------------------------


@pytest.mark.parametrize("ext", [f[0] for f in FORMATS])
def test_decoded_frames_are_the_frames_asked_for_in_every_container(numbered: dict[str, Path], ext: str) -> None:
    pts, fps, width, height = probe_video(str(numbered[ext]))
    assert (len(pts), width, height) == (30, 40, 32)
    assert fps == pytest.approx(25.0)
    wanted = np.array([17, 3, 3, 29, 12])  # unsorted, repeated, across keyframes
    frames = decode_frames(str(numbered[ext]), pts, wanted)
    assert frames.shape == (5, 32, 40, 3)
    assert [_frame_number(f) for f in frames] == wanted.tolist()


def test_a_clip_decodes_without_reading_past_its_last_frame(numbered: dict[str, Path], tmp_path: Path) -> None:
    """The second half of the file is destroyed: a clip from the first half still decodes, exactly."""
    data = bytearray(numbered["mkv"].read_bytes())
    pts, _, _, _ = probe_video(str(numbered["mkv"]))
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(bytes(data))
    frames = decode_frames(str(broken), pts, np.array([2, 4, 6]))
    assert [_frame_number(f) for f in frames] == [2, 4, 6]
    with pytest.raises(DataError, match=r"broken\.mkv"):
        decode_frames(str(broken), pts, np.array([27, 29]))


# -- One transform per clip -------------------------------------------------------------------------


def test_a_clips_crop_and_flip_are_the_same_for_every_frame() -> None:
    frames = _frames(6, size=(48, 40))
    transform = ClipTransform(RandomResizedCropDecode(16, scale=(0.2, 0.6), hflip=0.5))
    for seed in range(20):
        out = transform(frames, random.Random(seed))
        assert out.shape == (6, 16, 16, 3)
        assert out.dtype == np.uint8
        offsets = out.astype(int) - out[:1].astype(int)  # frames differ by a constant: the same crop
        for t in range(6):
            assert np.abs(offsets[t] - 8 * t).max() <= 1


def test_evaluation_clips_are_deterministic_centre_crops() -> None:
    frames = _frames(4, size=(48, 40))
    transform = ClipTransform(CenterCropDecode(16, resize=18))
    first = transform(frames, None)
    assert np.array_equal(first, transform(frames, None))
    assert first.shape == (4, 16, 16, 3)


# -- The DataModule ---------------------------------------------------------------------------------


def _dm(root: Path, **kwargs: object) -> VideoDataModule:
    kwargs.setdefault("transforms", TINY)
    kwargs.setdefault("frames_per_clip", 4)
    kwargs.setdefault("loader", {"batch_size": 4})
    return VideoDataModule(root, **kwargs)  # type: ignore[arg-type]


def test_contract_motion_clips(motion: Path) -> None:
    dm = check_datamodule(lambda: _dm(motion, clips_per_video=2), batch_size=4)
    assert dm.class_names == ("pan_down", "pan_left", "pan_right", "pan_up", "zoom_in", "zoom_out")
    assert dm.model_kwargs == {"num_classes": 6, "in_channels": 3, "frames_per_clip": 4}
    clips, _labels, videos = next(iter(dm.val_dataloader()))
    assert clips.shape == (4, 4, 3, 24, 24)
    assert videos.tolist() == [0, 0, 1, 1]  # two clips per video, in order
    assert len(dm.dataset("val")) == 2 * len(dm.dataset("val").index)


@pytest.mark.parametrize("loader", [{"num_workers": 2}, {"num_workers": 2, "backend": "threads"}])
def test_clips_are_the_same_whatever_loads_them_and_differ_by_epoch(motion: Path, loader: dict) -> None:
    def epoch_batches(settings: dict, epoch: int) -> list[torch.Tensor]:
        dm = _dm(motion, loader={"batch_size": 4, **settings}, transforms={**TINY, "hflip": 0.5})
        dm.setup("fit")
        train = dm.train_dataloader()
        train.set_epoch(epoch) if hasattr(train, "set_epoch") else None
        return [clips for clips, _, _ in train]

    plain = epoch_batches({}, 0)
    assert all(torch.equal(a, b) for a, b in zip(plain, epoch_batches(loader, 0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(plain, epoch_batches({}, 1), strict=True))


def test_mixed_containers_and_sizes_make_one_batch_shape(motion: Path) -> None:
    dm = _dm(motion, loader={"batch_size": 32})
    dm.setup("fit")
    index = dm.dataset("train").index
    assert {tuple(s) for s in index.sizes} == {(64, 64), (80, 64), (96, 72)} & {tuple(s) for s in index.sizes}
    assert len({tuple(s) for s in index.sizes}) > 1
    assert len(set(index.fps.tolist())) > 1
    assert {Path(index.path(i)).suffix for i in range(len(index))} == {".mp4", ".webm", ".mkv", ".avi"}
    clips, _labels, _ = next(iter(dm.train_dataloader()))
    assert clips.shape[1:] == (4, 3, 24, 24)


def test_flat_layout_with_a_seeded_stratified_hold_out(motion: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for video in (motion / "train").glob("*/*.*"):
        (flat / video.parent.name).mkdir(parents=True, exist_ok=True)
        (flat / video.parent.name / video.name).symlink_to(video)
    dm = _dm(flat, val_fraction=0.34)
    dm.setup("fit")
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 18
    assert set(dm.dataset("val").index.targets.tolist()) == set(range(6))


def test_transforms_the_clips_cannot_take_are_refused(motion: Path) -> None:
    for key, value in (("rotation", 10.0), ("vflip", 0.5), ("mixup_alpha", 0.2), ("backend", "albumentations")):
        with pytest.raises(ConfigError, match=f"transforms.{key}"):
            _dm(motion, transforms={**TINY, key: value})


def test_short_skip_leaves_short_videos_out(motion: Path) -> None:
    dm = _dm(motion, frames_per_clip=10, stride=2, short="skip")  # a 19-frame span: longer than some
    dm.setup("fit")
    index = dm.dataset("train").index
    assert 0 < len(index) < 18
    assert (index.frame_counts >= 19).all()


def test_a_clip_model_trains_through_lightning(motion: Path, tmp_path: Path) -> None:
    dm = _dm(motion, clips_per_video=2, loader={"batch_size": 4, "num_workers": 2, "backend": "threads"})
    model = ClipClassifier(num_classes=6, widths=(8, 16))
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    metrics = trainer.callback_metrics
    assert 0.0 <= float(metrics["val/acc"]) <= 1.0
    assert 0.0 <= float(metrics["val/video_acc"]) <= 1.0
    assert trainer.test(model, datamodule=dm, verbose=False)[0]["test/video_acc"] >= 0.0
    predictions = trainer.predict(model, datamodule=dm)
    assert sum(len(p["preds"]) for p in predictions) == 2 * 6


# -- Bad videos -------------------------------------------------------------------------------------


def _write_bad(folder: Path, numbered: dict[str, Path]) -> dict[str, str]:
    """Each bad kind of file the issue names, and the words its error must hold."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    whole = numbered["mp4"].read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    mkv = numbered["mkv"].read_bytes()
    (folder / "truncated.mkv").write_bytes(mkv[: len(mkv) * 2 // 3])
    with av.open(str(folder / "zero_frames.mkv"), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    (folder / "text.mp4").write_text("not a video\n" * 20)
    with av.open(str(folder / "audio_only.mp4"), "w") as container:
        audio = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in audio.encode(frame):
                container.mux(packet)
    (folder / "codec.mkv").write_bytes(mkv.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/AVC"))
    return {
        "truncated.mp4": "cannot be read", "truncated.mkv": "cut short", "zero_frames.mkv": "",
        "text.mp4": "cannot be read", "audio_only.mp4": "no video stream", "codec.mkv": "cannot be decoded",
    }  # fmt: skip


def test_each_bad_video_is_an_error_naming_the_file(numbered: dict[str, Path], tmp_path: Path) -> None:
    expected = _write_bad(tmp_path / "bad", numbered)
    for name, words in expected.items():
        with pytest.raises(DataError, match=name) as info:
            probe_video(str(tmp_path / "bad" / name))
        assert words in str(info.value)


def test_bad_videos_raise_at_setup_or_are_skipped_and_counted(motion: Path, numbered: dict, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for video in motion.glob("*/*/*.*"):
        target = root / video.relative_to(motion)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(video)
    expected = _write_bad(root / "train" / "pan_left", numbered)
    with pytest.raises(DataError, match=r"pan_left/(truncated|zero_frames|text|audio_only|codec)"):
        _dm(root).setup("fit")
    dm = _dm(root, on_error="skip", max_bad_fraction=0.5)
    dm.setup("fit")
    assert dm.bad_samples["train"]["skipped"] == len(expected)
    assert len(dm.dataset("train")) == 18
    assert sum(len(c) for c, _, _ in dm.train_dataloader()) == 18


class _VideoOfEachClip(L.LightningModule):
    """Predicts each clip's video number (the batch's third element): enough to tell which clip it is of."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Linear(1, 1)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return batch[2]


class _Indices(BasePredictionWriter):
    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self.batches: list[tuple[list[int], list[int]]] = []

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: Any, *args: Any) -> None:
        self.batches.append((list(batch_indices), prediction.tolist()))


@pytest.mark.parametrize("loader", [{}, {"num_workers": 2}, {"num_workers": 2, "backend": "threads"}])
def test_a_prediction_writer_gets_the_index_of_each_clip_when_a_video_that_breaks_is_left_out(
    motion: Path, tmp_path: Path, loader: dict
) -> None:
    """A video that was readable when indexed and is not when read (``on_error="skip"``) leaves its clips
    out of their batches; the writer's ``batch_indices`` are those of the clips predicted, in order (they
    were ``[]`` for a batch that lost clips)."""
    root = tmp_path / "root"
    for video in motion.glob("*/*/*.*"):
        target = root / video.relative_to(motion)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(video)
    dm = _dm(root, clips_per_video=2, on_error="skip", max_bad_fraction=0.5, loader={"batch_size": 4, **loader})
    dm.setup("predict")
    index = dm.dataset("test").index
    broken = [1, 2]  # clips 2-5: the second batch loses all but clips 6 and 7, the first its last two
    for video in broken:
        path = Path(index.path(video))
        path.unlink()
        path.write_text("not a video any more\n" * 20)
    writer = _Indices()
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[writer],
    )  # fmt: skip
    trainer.predict(_VideoOfEachClip(), datamodule=dm, return_predictions=False)
    assert sum(split["skipped"] for split in dm.bad_samples.values()) == 4  # the val split (no test split)
    clips = [i for batch, _ in writer.batches for i in batch]
    assert clips == [i for i in range(2 * len(index)) if i // 2 not in broken]
    for batch, videos in writer.batches:
        assert [i // 2 for i in batch] == videos


# -- The TorchCodec decoder (needs FFmpeg's shared libraries on the system) ---------------------------

TORCHCODEC_MISSING = torchcodec_video_error()


@pytest.mark.skipif(TORCHCODEC_MISSING is None, reason="TorchCodec's video decoder loads on this machine")
def test_torchcodec_without_ffmpeg_is_refused_naming_the_key(motion: Path) -> None:
    with pytest.raises(ConfigError, match=r"decoder='torchcodec'.*FFmpeg's shared libraries.*decoder=pyav"):
        _dm(motion, decoder="torchcodec")


@pytest.mark.skipif(TORCHCODEC_MISSING is not None, reason=f"no TorchCodec video decoder: {TORCHCODEC_MISSING}")
def test_torchcodec_decodes_the_frames_pyav_does(numbered: dict[str, Path], motion: Path, tmp_path: Path) -> None:
    for path in numbered.values():
        pts = probe_video(str(path))[0]
        wanted = np.array([17, 3, 3, 29, 12])
        ours = decode_frames(str(path), pts, wanted, decoder="pyav")
        theirs = decode_frames(str(path), pts, wanted, decoder="torchcodec")
        assert [_frame_number(f) for f in theirs] == wanted.tolist()
        assert np.abs(ours.astype(int) - theirs).mean() < 2
    dm = _dm(motion, decoder="torchcodec", loader={"batch_size": 4, "num_workers": 2})
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(ClipClassifier(num_classes=6, widths=(8, 16)), datamodule=dm)
    assert trainer.state.finished
