"""``ClassFolderDataModule``: what the DataModules over ``root/<split>/<class>/<file>`` trees share.

Images and videos find their splits the same way (:func:`~chute.datasets.folder.discover_splits`),
keep one bad-sample policy per split, take their class targets from the folder names and normalize
with per-channel statistics measured on training samples (kept in ``state_dict``). A new kind of class-folder data
inherits all of it and writes only how a split is indexed and read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import Unpack

from chute.bad_samples import BadSamples
from chute.datamodules.base import ChuteDataModule, CommonArgs
from chute.datasets.folder_index import FolderIndex, discover_splits
from chute.errors import ConfigError, DataError
from chute.loader import Stream, derive_seed
from chute.transforms.batch import NormalizeBatch, check_normalization


class ClassFolderDataModule(ChuteDataModule):
    """Base of the class-folder DataModules: splits, class targets, bad samples and statistics.

    Subclasses name what a sample is (:attr:`sample_what`: ``"image"``, ``"video"``) and the file
    endings that count (:attr:`extensions`), and fill ``self._splits`` in ``index_splits`` (from
    :meth:`_find_splits`); each split's index has ``class_names`` and ``targets``. The arguments are
    those every such DataModule takes; its subclass documents them.
    """

    sample_what = "sample"
    extensions: tuple[str, ...] = ()
    predict_root: str | None = None  # a folder of unlabeled files that predict reads instead (a subclass's)
    #: The layout the batch hook hands the model (``ImageFolderDataModule`` makes it an argument).
    channels_last = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        channels: int,
        channels_hint: str = "",
        val_fraction: float,
        train_dir: str,
        val_dir: str,
        test_dir: str,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        **common: Unpack[CommonArgs],
    ) -> None:
        super().__init__(**common)
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError("val_fraction", val_fraction, "must be in [0, 1)")
        for key, stat in (("mean", mean), ("std", std)):
            if stat is not None and len(stat) != channels:
                raise ConfigError(key, list(stat), f"needs {channels} values{channels_hint}, one per channel")
        if (mean is None) != (std is None):
            raise ConfigError("mean" if mean is None else "std", None, "set both mean and std, or neither")
        if mean is not None and std is not None:
            check_normalization(mean, std)
        self.root = os.fspath(root)
        self.val_fraction = val_fraction
        self.split_dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        self.mean: list[float] | None = list(mean) if mean is not None else None
        self.std: list[float] | None = list(std) if std is not None else None
        self._splits: dict[str, Any] = {}

    # -- What callers read ------------------------------------------------------------------------

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self._split("train").class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def normalization(self) -> tuple[list[float], list[float]] | None:
        return (list(self.mean), list(self.std)) if self.mean is not None and self.std is not None else None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(mean=self.mean, std=self.std)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        drawn = self._seed
        super().load_state_dict(state_dict)
        if self._splits and self._seed != drawn:
            # Lightning sets up before it restores: the splits were cut with this run's seed (a null
            # seed drawn anew, or another one given), and a held-out share would differ from the
            # checkpoint's run. Cut them again with the checkpoint's seed.
            self._forget_splits()
            self.index_splits()
        if state_dict.get("mean") is not None:
            self.mean, self.std = list(state_dict["mean"]), list(state_dict["std"])
            self.batch_transform = NormalizeBatch(self.mean, self.std, channels_last=self.channels_last)

    # -- For subclasses --------------------------------------------------------------------------

    def index_splits(self) -> None:
        """Fill ``self._splits`` (from :meth:`_find_splits`) unless it is filled."""
        raise NotImplementedError

    def _forget_splits(self) -> None:
        """Drop the splits and what was made from them, so that ``index_splits`` finds them again."""
        self._splits = {}

    def _normalize(self) -> None:
        """Measure ``mean``/``std`` on training samples unless given (or restored), and make the batch
        hook normalize with them."""
        if self.mean is None or self.std is None:
            self.mean, self.std = self.measure_stats()
        self.batch_transform = NormalizeBatch(self.mean, self.std, channels_last=self.channels_last)

    def measure_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel ``(mean, std)`` of training samples (subclasses read them; see :meth:`_mean_std`)."""
        raise NotImplementedError

    def _find_splits(self) -> dict[str, FolderIndex | None]:
        """The tree's splits (see :func:`~chute.datasets.folder.discover_splits`), saying once when
        test and predict fall back to the validation split."""
        hint = "" if self.prepare is None else " prepare_data() should have written it; did it run?"
        seed = derive_seed(self.seed, Stream.SPLIT)
        self._seed_fixed = True  # the splits are this seed's (prepare_data cuts them too, for a disk cache)
        what = f"{self.sample_what}s"
        splits = discover_splits(self.root, self.split_dirs, self.val_fraction, seed, self.extensions, what, hint)
        if splits["test"] is splits["val"] is not None:
            test = self.split_dirs["test"]
            uses = "test uses" if self.predict_root is not None else "test and predict use"
            rank_zero_info(f"No '{test}' split under '{self.root}': {uses} the val split.")
        return splits

    def _split(self, name: str) -> Any:
        if not self._splits:
            raise self.not_set_up_error()
        index = self._splits.get(name)
        if index is None:
            raise DataError(
                f"No {name} split under '{self.root}': add "
                f"'{self.root}/{self.split_dirs[name]}/<class>/<{self.sample_what}>' or set val_fraction to hold "
                f"out part of the training {self.sample_what}s."
            )
        return index

    def _bad_samples(self, split: str) -> BadSamples:
        """The split's policy, shared by every dataset built for it so its counts add up."""
        index = self._split(split)
        key = next((name for name, other in self._splits.items() if other is index), split)  # test may be val
        return self.bad_policy(key, self.sample_what, per_pass=len(index))

    def class_labels(self) -> tuple[np.ndarray, int, tuple[str, ...]]:
        train = self._split("train")
        return train.targets, len(train.class_names), tuple(train.class_names)

    def _pick_for_stats(self, size: int, most: int) -> np.ndarray:
        """Up to ``most`` of ``size`` training samples, the same for a seed, for :meth:`_mean_std`."""
        rng = np.random.default_rng(derive_seed(self.seed, Stream.SAMPLE))
        return rng.choice(size, size=min(most, size), replace=False)

    def _mean_std(self, samples: Iterable[torch.Tensor], channels: int, tried: int) -> tuple[list[float], list[float]]:
        """Per-channel mean and std, in ``[0, 1]`` units, of samples whose first axis is the channel
        (``(C, ...)``): ``uint8`` ones scaled by 1/255, floating-point ones taken as ``[0, 1]`` already
        (a pipeline ending in ``ToDtype(float32, scale=True)``), as the batch hook takes them;
        ``tried`` is how many were asked for, for the error when none read."""
        total = torch.zeros(channels, dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        count = 0
        for sample in samples:
            scale = 1.0 if sample.is_floating_point() else 255.0
            pixels = sample.reshape(channels, -1).to(torch.float64) / scale
            total += pixels.sum(dim=1)
            total_sq += (pixels * pixels).sum(dim=1)
            count += pixels.shape[1]
        if count == 0:
            raise DataError(
                f"None of the {tried} training {self.sample_what}s sampled under '{self.root}' can be read."
            )
        mean = total / count
        std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
        return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]
