"""What every chute DataModule shares: loader settings, seeding and the device-side batch hook."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, Sampler

from chute.loader import LoaderSettings, build_dataloader


class ChuteDataModule(L.LightningDataModule):
    """Base class: builds every DataLoader from one :class:`LoaderSettings` and applies
    ``batch_transform`` to the inputs after they reach the device.

    Subclasses build datasets in ``setup`` and set ``self.batch_transform`` (e.g. a
    :class:`~chute.transforms.NormalizeBatch`), which ``on_after_batch_transfer`` applies to the
    first element of tuple batches or the ``"inputs"`` entry of dict batches. Lightning calls that
    hook in any project, so models receive ready batches; a LightningModule that overrides the
    same hook is ignored by Lightning in favour of the DataModule's.

    Args:
        loader: DataLoader settings (a :class:`LoaderSettings`, a mapping of its fields, or ``None``
            for defaults).
        seed: Seed for splits, shuffling and worker seeding.
    """

    def __init__(self, loader: LoaderSettings | Mapping[str, Any] | None = None, seed: int = 0) -> None:
        super().__init__()
        self.loader_settings = as_loader_settings(loader)
        self.seed = int(seed)
        self.batch_transform: Callable[[Any], Any] | None = None

    def _save_plain_hparams(self, **values: Any) -> None:
        """``save_hyperparameters`` with plain values only (plus seed and loader settings).

        Checkpoints then load with ``torch.load(..., weights_only=True)``: no paths, dataclasses
        or transform objects to unpickle.
        """
        self.save_hyperparameters({**values, "seed": self.seed, "loader": dataclasses.asdict(self.loader_settings)})

    def _dataloader(
        self,
        dataset: Dataset[Any],
        *,
        train: bool,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        sampler: Sampler[Any] | None = None,
    ) -> DataLoader[Any]:
        rank = self.trainer.global_rank if self.trainer is not None else None
        return build_dataloader(
            dataset,
            self.loader_settings,
            train=train,
            seed=self.seed,
            collate_fn=collate_fn,
            sampler=sampler,
            rank=rank,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.batch_transform is None:
            return batch
        if isinstance(batch, (tuple, list)) and batch:
            return type(batch)([self.batch_transform(batch[0]), *batch[1:]])
        if isinstance(batch, dict) and "inputs" in batch:
            return {**batch, "inputs": self.batch_transform(batch["inputs"])}
        return self.batch_transform(batch)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict.get("seed", self.seed))


def as_loader_settings(loader: LoaderSettings | Mapping[str, Any] | None) -> LoaderSettings:
    """Accept settings as an object, a mapping of its fields (e.g. a Hydra node) or ``None``."""
    if loader is None:
        return LoaderSettings()
    if isinstance(loader, LoaderSettings):
        return loader
    if isinstance(loader, Mapping):
        return LoaderSettings(**{str(k): v for k, v in loader.items() if k != "_target_"})
    raise TypeError(f"loader must be LoaderSettings, a mapping or None, not {type(loader).__name__}")
