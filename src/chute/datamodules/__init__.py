"""Lightning DataModules, one per kind of data; all share :class:`ChuteDataModule`.

:data:`DATAMODULES` is the registry: each entry's Hydra schema (``schema/data/<name>``) is made from
its constructor by :func:`chute.config.schema_source`; ``python -m chute.config`` writes them to
:mod:`chute._schemas` after a DataModule joins (a test fails until it does).
"""

from chute.datamodules.base import ChuteDataModule, CommonArgs
from chute.datamodules.image_folder import ImageFolderDataModule
from chute.datamodules.litdata import LitDataModule
from chute.datamodules.multitask import MultiTaskDataModule
from chute.datamodules.sequence import SequenceDataModule
from chute.datamodules.sql import SqlDataModule
from chute.datamodules.streaming import StreamingDataModule
from chute.datamodules.tabular import TabularDataModule
from chute.datamodules.video import VideoDataModule

DATAMODULES: dict[str, type[ChuteDataModule]] = {
    "image_folder": ImageFolderDataModule,
    "tabular": TabularDataModule,
    "multitask": MultiTaskDataModule,
    "sequence": SequenceDataModule,
    "streaming": StreamingDataModule,
    "litdata": LitDataModule,
    "video": VideoDataModule,
    "sql": SqlDataModule,
}

__all__ = [
    "DATAMODULES",
    "ChuteDataModule",
    "CommonArgs",
    "ImageFolderDataModule",
    "LitDataModule",
    "MultiTaskDataModule",
    "SequenceDataModule",
    "SqlDataModule",
    "StreamingDataModule",
    "TabularDataModule",
    "VideoDataModule",
]
