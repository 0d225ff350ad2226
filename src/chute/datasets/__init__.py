"""Datasets: indexing and reading data on disk, and writers for the bundled real data."""

from chute.datasets.cache import CachedDataset, fingerprint
from chute.datasets.digits import DigitsFolder
from chute.datasets.folder import FolderIndex, ImageFolderDataset, discover_splits, scan_folder, stratified_split
from chute.datasets.motion_clips import MotionClips
from chute.datasets.photos import PhotoFolder
from chute.datasets.sequence import CharVocab, SequenceDataset, collate_sequences, padding_waste
from chute.datasets.sharded_copy import ShardedCopy
from chute.datasets.shards import ShardIndex, ShardStream, write_shards
from chute.datasets.sklearn_tables import SKLEARN_TABLES, SklearnSqlite, SklearnTable, sklearn_table, write_table
from chute.datasets.synthetic_sequences import LengthMajoritySequences
from chute.datasets.tabular import MultiTaskDataset, TableEncoder, TabularDataset, read_table
from chute.datasets.video import ClipSpec, ClipTransform, VideoClipDataset, VideoIndex, collate_clips, index_videos
from chute.loader.streams import partition

__all__ = [
    "SKLEARN_TABLES",
    "CachedDataset",
    "CharVocab",
    "ClipSpec",
    "ClipTransform",
    "DigitsFolder",
    "FolderIndex",
    "ImageFolderDataset",
    "LengthMajoritySequences",
    "MotionClips",
    "MultiTaskDataset",
    "PhotoFolder",
    "SequenceDataset",
    "ShardIndex",
    "ShardStream",
    "ShardedCopy",
    "SklearnSqlite",
    "SklearnTable",
    "TableEncoder",
    "TabularDataset",
    "VideoClipDataset",
    "VideoIndex",
    "collate_clips",
    "collate_sequences",
    "discover_splits",
    "fingerprint",
    "index_videos",
    "padding_waste",
    "partition",
    "read_table",
    "scan_folder",
    "sklearn_table",
    "stratified_split",
    "write_shards",
    "write_table",
]
