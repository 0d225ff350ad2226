"""Datasets: indexing and reading data on disk, and writers for the bundled real data."""

from chute.datasets.digits import DigitsFolder
from chute.datasets.folder import FolderIndex, ImageFolderDataset, scan_folder, stratified_split

__all__ = ["DigitsFolder", "FolderIndex", "ImageFolderDataset", "scan_folder", "stratified_split"]
