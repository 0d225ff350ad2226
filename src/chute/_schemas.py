"""Hydra schemas of the ``data`` and ``model`` groups, generated: do not edit.

``python -m chute.config`` writes this file from the DataModules' and models' constructors
(:func:`chute.config.schema_source`); ``tests/test_config.py`` fails when it is out of date. It
lets Hydra compose and check a config without importing the classes (torch, Lightning).
"""

# ruff: noqa: UP045  (OmegaConf reads Optional[...] annotations)
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class ImageFolderDataModuleConfig:
    _target_: str = "chute.datamodules.image_folder.ImageFolderDataModule"
    root: str = MISSING
    transforms: Any = None
    image_mode: str = "RGB"
    val_fraction: float = 0.0
    train_dir: str = "train"
    val_dir: str = "val"
    test_dir: str = "test"
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    channels_last: bool = True
    cache: Optional[str] = None
    cache_size: Optional[int] = None
    cache_dir: Optional[str] = None
    device_augment: bool = False
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    decode: str = "auto"
    predict_root: Optional[str] = None
    loader: Any = None
    batch_size: Optional[int] = None
    num_workers: Any = None
    pin_memory: Optional[bool] = None
    seed: Optional[int] = 0
    prepare: Any = None
    collate_fn: Any = None
    imbalance: Any = None
    on_error: str = "raise"
    max_bad_fraction: float = 0.01


@dataclass
class RayImagesDataModuleConfig:
    _target_: str = "chute.datamodules.ray_images.RayImagesDataModule"
    root: str = MISSING
    address: Optional[str] = None
    num_cpus: Optional[int] = None
    engine: str = "tasks"
    transforms: Any = None
    image_mode: str = "RGB"
    val_fraction: float = 0.0
    train_dir: str = "train"
    val_dir: str = "val"
    test_dir: str = "test"
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    channels_last: bool = True
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    decode: str = "auto"
    predict_root: Optional[str] = None
    loader: Any = None
    batch_size: Optional[int] = None
    num_workers: Any = None
    pin_memory: Optional[bool] = None
    seed: Optional[int] = 0
    prepare: Any = None
    collate_fn: Any = None
    imbalance: Any = None
    on_error: str = "raise"
    max_bad_fraction: float = 0.01


@dataclass
class TabularDataModuleConfig:
    _target_: str = "chute.datamodules.tabular.TabularDataModule"
    path: str = MISSING
    target: Optional[str] = None
    numeric: Optional[list[str]] = None
    categorical: list[str] = field(default_factory=lambda: [])
    weight: Optional[str] = None
    task: str = "classification"
    val_path: Optional[str] = None
    test_path: Optional[str] = None
    val_fraction: float = 0.2
    missing: str = "raise"
    fill_value: float = 0.0
    standardize: bool = True
    unknown_category: str = "raise"
    encoding: str = "utf-8"
    predict_path: Optional[str] = None
    loader: Any = None
    batch_size: Optional[int] = None
    num_workers: Any = None
    pin_memory: Optional[bool] = None
    seed: Optional[int] = 0
    prepare: Any = None
    collate_fn: Any = None
    imbalance: Any = None
    on_error: str = "raise"
    max_bad_fraction: float = 0.01


@dataclass
class MultiTaskDataModuleConfig:
    _target_: str = "chute.datamodules.multitask.MultiTaskDataModule"
    path: str = MISSING
    tasks: dict[str, Any] = MISSING
    numeric: Optional[list[str]] = None
    categorical: list[str] = field(default_factory=lambda: [])
    weight: Optional[str] = None
    val_path: Optional[str] = None
    test_path: Optional[str] = None
    val_fraction: float = 0.2
    missing: str = "raise"
    fill_value: float = 0.0
    standardize: bool = True
    unknown_category: str = "raise"
    encoding: str = "utf-8"
    predict_path: Optional[str] = None
    loader: Any = None
    batch_size: Optional[int] = None
    num_workers: Any = None
    pin_memory: Optional[bool] = None
    seed: Optional[int] = 0
    prepare: Any = None
    collate_fn: Any = None
    on_error: str = "raise"
    max_bad_fraction: float = 0.01


@dataclass
class SequenceDataModuleConfig:
    _target_: str = "chute.datamodules.sequence.SequenceDataModule"
    root: str = MISSING
    train_file: str = "train.jsonl"
    val_file: str = "val.jsonl"
    test_file: str = "test.jsonl"
    val_fraction: float = 0.2
    label_key: str = "label"
    vocab_size: Optional[int] = None
    pad_id: int = 0
    max_length: Optional[int] = None
    bucket: bool = True
    pool_batches: int = 50
    min_char_count: int = 1
    loader: Any = None
    batch_size: Optional[int] = None
    num_workers: Any = None
    pin_memory: Optional[bool] = None
    seed: Optional[int] = 0
    prepare: Any = None
    collate_fn: Any = None
    imbalance: Any = None
    on_error: str = "raise"
    max_bad_fraction: float = 0.01


@dataclass
class StreamingDataModuleConfig:
    _target_: str = "chute.datamodules.streaming.StreamingDataModule"
    root: str = MISSING
    shuffle_buffer: int = 1000
    shuffle_shards: bool = True
    train_split: str = "train"
    val_split: str = "val"
    test_split: Optional[str] = None
    loader: Any = None
    batch_size: Optional[int] = None
    num_workers: Any = None
    pin_memory: Optional[bool] = None
    seed: Optional[int] = 0
    prepare: Any = None
    collate_fn: Any = None
    on_error: str = "raise"
    max_bad_fraction: float = 0.01


@dataclass
class VideoDataModuleConfig:
    _target_: str = "chute.datamodules.video.VideoDataModule"
    root: str = MISSING
    frames_per_clip: int = 8
    stride: int = 2
    fps: Optional[float] = None
    sampling: str = "random"
    clips_per_video: int = 1
    short: str = "loop"
    transforms: Any = None
    val_fraction: float = 0.0
    train_dir: str = "train"
    val_dir: str = "val"
    test_dir: str = "test"
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    decoder_threads: int = 1
    decoder: str = "pyav"
    loader: Any = None
    batch_size: Optional[int] = None
    num_workers: Any = None
    pin_memory: Optional[bool] = None
    seed: Optional[int] = 0
    prepare: Any = None
    collate_fn: Any = None
    imbalance: Any = None
    on_error: str = "raise"
    max_bad_fraction: float = 0.01


@dataclass
class SqlDataModuleConfig:
    _target_: str = "chute.datamodules.sql.SqlDataModule"
    url: str = MISSING
    table: str = MISSING
    target: str = MISSING
    key: str = "id"
    numeric: Optional[list[str]] = None
    categorical: list[str] = field(default_factory=lambda: [])
    task: str = "classification"
    val_table: Optional[str] = None
    test_table: Optional[str] = None
    val_fraction: float = 0.2
    missing: str = "raise"
    fill_value: float = 0.0
    standardize: bool = True
    unknown_category: str = "raise"
    snapshot: str = "epoch"
    index: str = "memory"
    shuffle_block: Optional[int] = None
    shuffle_buffer: int = 131072
    fit_rows: int = 200000
    retries: int = 3
    retry_wait: float = 0.5
    loader: Any = None
    batch_size: Optional[int] = None
    num_workers: Any = None
    pin_memory: Optional[bool] = None
    seed: Optional[int] = 0
    prepare: Any = None
    collate_fn: Any = None
    imbalance: Any = None
    on_error: str = "raise"
    max_bad_fraction: float = 0.01


@dataclass
class LitDataModuleConfig:
    _target_: str = "chute.integrations.litdata.LitDataModule"
    input_dir: str = MISSING
    cache_dir: Optional[str] = None
    max_cache_size: Optional[str] = None
    storage_options: Any = None
    retry_seconds: float = 60.0
    train_split: str = "train"
    val_split: str = "val"
    test_split: Optional[str] = None
    loader: Any = None
    batch_size: Optional[int] = None
    num_workers: Any = None
    pin_memory: Optional[bool] = None
    seed: Optional[int] = 0
    prepare: Any = None
    collate_fn: Any = None


@dataclass
class ImageClassifierConfig:
    _target_: str = "chute.models.classifier.ImageClassifier"
    num_classes: int = MISSING
    in_channels: int = 3
    backbone: str = "small_cnn"
    backbone_kwargs: Any = None
    lr: float = 0.003
    weight_decay: float = 0.0005
    label_smoothing: float = 0.0
    class_weights: Optional[list[float]] = None
    channels_last: bool = True


@dataclass
class TabularModelConfig:
    _target_: str = "chute.models.tabular.TabularModel"
    num_features: int = MISSING
    num_classes: int = 2
    task: str = "classification"
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    dropout: float = 0.1
    lr: float = 0.003
    weight_decay: float = 0.0001
    class_weights: Optional[list[float]] = None


@dataclass
class SequenceClassifierConfig:
    _target_: str = "chute.models.sequence.SequenceClassifier"
    vocab_size: int = MISSING
    num_classes: int = MISSING
    pad_id: int = 0
    encoder: str = "conv"
    embed_dim: int = 32
    hidden: int = 64
    kernel_size: int = 3
    use_mask: bool = True
    lr: float = 0.003
    weight_decay: float = 0.0001
    class_weights: Optional[list[float]] = None


@dataclass
class MultiTaskModelConfig:
    _target_: str = "chute.models.multitask.MultiTaskModel"
    num_features: int = MISSING
    heads: dict[str, Any] = MISSING
    task_weights: Any = None
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    dropout: float = 0.1
    lr: float = 0.003
    weight_decay: float = 0.0001


@dataclass
class ClipClassifierConfig:
    _target_: str = "chute.models.video.ClipClassifier"
    num_classes: int = MISSING
    in_channels: int = 3
    frames_per_clip: Optional[int] = None
    widths: list[int] = field(default_factory=lambda: [24, 48, 96])
    dropout: float = 0.1
    lr: float = 0.003
    weight_decay: float = 0.0005
    label_smoothing: float = 0.0
    class_weights: Optional[list[float]] = None


DATA: dict[str, type] = {
    "image_folder": ImageFolderDataModuleConfig,
    "ray_images": RayImagesDataModuleConfig,
    "tabular": TabularDataModuleConfig,
    "multitask": MultiTaskDataModuleConfig,
    "sequence": SequenceDataModuleConfig,
    "streaming": StreamingDataModuleConfig,
    "video": VideoDataModuleConfig,
    "sql": SqlDataModuleConfig,
    "litdata": LitDataModuleConfig,
}


MODELS: dict[str, type] = {
    "image_classifier": ImageClassifierConfig,
    "tabular_model": TabularModelConfig,
    "sequence_classifier": SequenceClassifierConfig,
    "multitask_model": MultiTaskModelConfig,
    "clip_classifier": ClipClassifierConfig,
}
