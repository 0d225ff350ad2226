"""Lightning DataModules, one per kind of data; all share :class:`ChuteDataModule`."""

from chute.datamodules.base import ChuteDataModule
from chute.datamodules.image_folder import ImageFolderDataModule
from chute.datamodules.litdata import LitDataModule
from chute.datamodules.multitask import MultiTaskDataModule
from chute.datamodules.sequence import SequenceDataModule
from chute.datamodules.streaming import StreamingDataModule
from chute.datamodules.tabular import TabularDataModule

__all__ = [
    "ChuteDataModule",
    "ImageFolderDataModule",
    "LitDataModule",
    "MultiTaskDataModule",
    "SequenceDataModule",
    "StreamingDataModule",
    "TabularDataModule",
]
