"""Lightning DataModules, one per kind of data; all share :class:`ChuteDataModule`.

:data:`DATAMODULES` is the registry of the kinds read by chute's own loader (integrations, which
run another project's loader, are :data:`chute.integrations.INTEGRATIONS`): each entry's Hydra
schema (``schema/data/<name>``) is made from its constructor by :func:`chute.config.schema_source`;
``python -m chute.config`` writes them to :mod:`chute._schemas` after a DataModule joins (a test
fails until it does).
"""

from chute.datamodules.base import ChuteDataModule, CommonArgs
from chute.datamodules.image_folder import ImageFolderDataModule
from chute.datamodules.multitask import MultiTaskDataModule
from chute.datamodules.ray_images import RayImagesDataModule
from chute.datamodules.sequence import SequenceDataModule
from chute.datamodules.sql import SqlDataModule
from chute.datamodules.streaming import StreamingDataModule
from chute.datamodules.tabular import TabularDataModule
from chute.datamodules.video import VideoDataModule

DATAMODULES: dict[str, type[ChuteDataModule]] = {
    "image_folder": ImageFolderDataModule,
    "ray_images": RayImagesDataModule,
    "tabular": TabularDataModule,
    "multitask": MultiTaskDataModule,
    "sequence": SequenceDataModule,
    "streaming": StreamingDataModule,
    "video": VideoDataModule,
    "sql": SqlDataModule,
}


def __getattr__(name: str) -> object:
    # LitDataModule moved to chute.integrations (LitData's loader, a weaker contract); the old name
    # still resolves, imported only when asked for (chute.integrations imports this package's base).
    if name == "LitDataModule":
        from chute.integrations import LitDataModule

        return LitDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATAMODULES",
    "ChuteDataModule",
    "CommonArgs",
    "ImageFolderDataModule",
    "MultiTaskDataModule",
    "RayImagesDataModule",
    "SequenceDataModule",
    "SqlDataModule",
    "StreamingDataModule",
    "TabularDataModule",
    "VideoDataModule",
]
