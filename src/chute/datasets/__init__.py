"""Datasets: indexing and reading data on disk; the writers of the bundled real data are in
:mod:`chute.datasets.bundled` (re-exported here)."""

from chute.datasets.bundled import (
    SKLEARN_TABLES,
    DigitsFolder,
    LengthMajoritySequences,
    MotionClips,
    PhotoFolder,
    SklearnSqlite,
    SklearnTable,
    sklearn_table,
    write_table,
)
from chute.datasets.cache import CachedDataset
from chute.datasets.cache_store import fingerprint
from chute.datasets.folder import ImageFolderDataset
from chute.datasets.folder_index import FolderIndex, discover_splits, scan_folder, stratified_split
from chute.datasets.sequence import CharVocab, SequenceDataset, collate_sequences, padding_waste
from chute.datasets.shard_format import ShardIndex, write_shards
from chute.datasets.sharded_copy import ShardedCopy
from chute.datasets.shards import ShardStream
from chute.datasets.table_read import read_table
from chute.datasets.tabular import MultiTaskDataset, TableEncoder, TabularDataset
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
